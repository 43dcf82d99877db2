"""Driving a lab cluster from tests through the real `flowscope` command, as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

FLOWSCOPE = [sys.executable, "-m", "flowscope"]
WORLD = "10.224.0.254"  # the lab's outside host
SYSTEM = frozenset({"kube-system"})  # namespaces of the lab's own pods (the cluster DNS)
T = TypeVar("T")


def until(check: Callable[[], T], what: str, timeout: float = 20, interval: float = 0.2) -> T:
    """Poll `check` until it returns something true (the lab follows the store quickly, but not
    instantly) and return that; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: never happened within {timeout} s"
        time.sleep(interval)


@dataclass
class Lab:
    name: str

    def run(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*FLOWSCOPE, "--cluster", self.name, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"flowscope {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def apply(self, yaml_text: str) -> None:
        self.run("apply", "-f", "-", input=yaml_text)

    def pods(self, namespace: str | None = None) -> list[dict]:
        scope = ["-n", namespace] if namespace else ["-A"]
        out = self.run("get", "pods", *scope, "-o", "json").stdout
        return json.loads(out)["items"]

    def wait_running(self, count: int, timeout: float = 60) -> list[dict]:
        """Until `count` of the tests' pods run; the lab's own (kube-system: the cluster DNS)
        are not counted, nor returned."""
        deadline = time.monotonic() + timeout
        while True:
            pods = [p for p in self.pods() if p["metadata"].get("namespace") not in SYSTEM]
            running = [
                p
                for p in pods
                if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")
            ]
            if len(running) >= count:
                return running
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(running)}/{count} pods running: "
                    + json.dumps([p.get("status") for p in pods])[:2000]
                )
            time.sleep(0.1)

    def probe(self, source: str, target: str, protocol: str = "TCP", timeout: float = 2.0) -> dict:
        proc = self.run(
            "lab",
            "probe",
            source,
            target,
            "--protocol",
            protocol,
            "--timeout",
            str(timeout),
            "-o",
            "json",
            check=False,
        )
        assert proc.returncode in (0, 1), proc.stderr
        result = json.loads(proc.stdout)
        assert result["connected"] == (proc.returncode == 0)
        return result

    def seen_as(self, pod: str, host: str = WORLD) -> str:
        """The source address `host`'s responder sees for a connection from `pod`."""
        script = (
            "import urllib.request as u;"
            f"print(u.urlopen('http://{host}/clientip', timeout=2).read().decode())"
        )
        out = self.run("lab", "exec", pod, "--", "python3", "-c", script).stdout
        return out.strip().rpartition(":")[0]


def client_and_server(namespace: str) -> str:
    """A namespace with two pods on different nodes: `server` (app=server) on node-1 and
    `client` (app=client) on node-2, both answering on port 80."""
    pods = "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  containers: [{{name: main, image: agnhost, ports: [{{containerPort: 80}}]}}]
"""
        for name, node in (("server", "node-1"), ("client", "node-2"))
    )
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n{pods}"


def server_port_80_from_client(namespace: str) -> str:
    """A NetworkPolicy for client_and_server's pods: the server takes only the client, only on
    TCP 80 (so a probe of port 81 is a POLICY_DENIED drop)."""
    return f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server-80-only, namespace: {namespace}}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Ingress]
  ingress:
    - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
      ports: [{{protocol: TCP, port: 80}}]
"""


@contextlib.contextmanager
def kafka_lab(name: str, namespace: str) -> Iterator[Lab]:
    """A 2-node overlay lab with Kafka, client_and_server(namespace) running under
    server_port_80_from_client: the exporters' end-to-end tests' traffic."""
    workload = client_and_server(namespace) + server_port_80_from_client(namespace)
    with running_lab(
        name, "--nodes", "2", "--ipam", "overlay", "--kafka", workload=workload, pods=2
    ) as lab:
        yield lab


@contextlib.contextmanager
def running_lab(name: str, *up_args: str, workload: str = "", pods: int = 0) -> Iterator[Lab]:
    """`lab up NAME UP_ARGS`, `workload` applied and `pods` of it running; down afterwards,
    also when the test fails."""
    lab = Lab(name)
    try:
        lab.run("lab", "up", *up_args, timeout=180)
        if workload:
            lab.apply(workload)
            lab.wait_running(pods)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)
