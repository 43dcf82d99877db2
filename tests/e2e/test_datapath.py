"""The datapath on a real 3-node lab: enforcement that outlives its agent, audit mode, flows in
`observe`, node-local host traffic, ipBlock to the outside world, and a new pod's first packet.

Pods a, b, c of namespaces x, y, z (examples/netpol/) sit on node-1, node-2, node-3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flowscope.paths import ClusterPaths
from tests.conftest import unique
from tests.e2e.lab import FLOWSCOPE, WORLD, Lab
from tests.e2e.test_netpol import BASE, _placed

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

TRAFFIC = str(Path(__file__).with_name("traffic.py"))

X_ISOLATED = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, ingress: []}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}, {port: 9000}]
"""


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique("dp"))
    try:
        lab.run("lab", "up", "--nodes", "3", "--ipam", "overlay", timeout=180)
        lab.apply(yaml.safe_dump_all(_placed(BASE)))
        lab.wait_running(9)
        lab.apply(X_ISOLATED)
        until(lambda: not lab.probe("z/a", "x/a:80", timeout=0.5)["connected"])
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


def until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


def pod_ip(lab: Lab, ref: str) -> str:
    ns, name = ref.split("/")
    (pod,) = [p for p in lab.pods(ns) if p["metadata"]["name"] == name]
    return pod["status"]["podIP"]


def in_pod(lab: Lab, ref: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*FLOWSCOPE, "--cluster", lab.name, "lab", "exec", ref, "--", sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def flows(lab: Lab, *args: str) -> list[dict]:
    out = lab.run("observe", "--last", "5000", "-o", "json", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]


def test_enforcement_outlives_agents_killed_under_traffic(lab: Lab) -> None:
    xa = pod_ip(lab, "x/a")
    server = in_pod(lab, "x/a", TRAFFIC, "echo-server", "9000", "14")
    time.sleep(0.5)
    streams = in_pod(lab, "y/b", TRAFFIC, "stream", xa, "9000", "9")
    allowed = in_pod(lab, "y/a", TRAFFIC, "connects", xa, "80", "9")
    denied = in_pod(lab, "z/a", TRAFFIC, "connects", xa, "80", "9")
    paths = ClusterPaths(lab.name)
    time.sleep(2)
    killed = {}
    for node in ("node-1", "node-2", "node-3"):
        pidfile = paths.run_dir / f"agent-{node}.pid"
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)  # the agents this test's lab started
        killed[node] = pid
    time.sleep(2)
    lab.run("lab", "up", "--nodes", "3", "--ipam", "overlay", timeout=120)  # restarts them
    for node, pid in killed.items():
        new = int((paths.run_dir / f"agent-{node}.pid").read_text().split()[0])
        assert new != pid, f"agent of {node} was not restarted"
    stream_r, allowed_r, denied_r = result(streams), result(allowed), result(denied)
    result(server)
    assert denied_r["ok"] == 0, f"denied traffic passed: {denied_r}"
    assert denied_r["failed"] > 0
    assert allowed_r["failed"] == 0 and allowed_r["ok"] > 50, f"allowed traffic cut: {allowed_r}"
    assert stream_r["error"] is None and stream_r["failed"] == 0, stream_r
    assert stream_r["ok"] > 100, stream_r
    # the restarted agents enforce the same policy
    assert not lab.probe("z/a", "x/a:80", timeout=0.5)["connected"]
    assert lab.probe("y/c", "x/a:80")["connected"]


def test_drops_and_allows_show_in_observe_with_their_names(lab: Lab) -> None:
    assert not lab.probe("z/b", "x/a:80", timeout=0.5)["connected"]
    assert lab.probe("y/b", "x/a:80")["connected"]

    def seen() -> bool:
        got = flows(lab)
        drops = [
            f
            for f in got
            if f.get("verdict") == "DROPPED"
            and f.get("drop_reason") == 133
            and f["source"].get("pod_name") == "b"
            and f["source"].get("namespace") == "z"
            and f["destination"].get("pod_name") == "a"
        ]
        allows = [
            f
            for f in got
            if f.get("verdict") == "FORWARDED"
            and f.get("traffic_direction") == "INGRESS"
            and {"name": "a-from-y", "namespace": "x", "kind": "NetworkPolicy"}
            in f.get("ingress_allowed_by", [])
        ]
        return bool(drops and allows and drops[0]["drop_reason_desc"] == "POLICY_DENIED")

    until(seen, 10, "a POLICY_DENIED drop and an allow naming x/a-from-y")
    compact = lab.run("observe", "--last", "5000", "--verdict", "DROPPED").stdout
    assert "Policy denied DROPPED" in compact and "z/b:" in compact


def test_namespace_audit_mode_passes_would_be_drops_as_audit(lab: Lab) -> None:
    audited = yaml.safe_load_all(yaml.safe_dump_all(_placed(BASE)))
    docs = []
    for obj in audited:
        if obj["kind"] == "Namespace" and obj["metadata"]["name"] == "x":
            obj["metadata"]["annotations"] = {"policy.flowscope.io/audit-mode": "true"}
        docs.append(obj)
    lab.apply(yaml.safe_dump_all(docs))
    try:
        until(lambda: lab.probe("z/c", "x/b:80", timeout=0.5)["connected"], what="audit mode")
        until(
            lambda: any(
                f.get("verdict") == "AUDIT" and f["source"].get("namespace") == "z"
                for f in flows(lab, "--verdict", "AUDIT")
            ),
            10,
            "an AUDIT flow",
        )
    finally:
        lab.apply(yaml.safe_dump_all(_placed(BASE)))
    until(lambda: not lab.probe("z/c", "x/b:80", timeout=0.5)["connected"], what="enforcing")


def test_node_local_host_reaches_isolated_pods(lab: Lab) -> None:
    xb = pod_ip(lab, "x/b")  # on node-2, isolated by deny-all
    script = (
        "import socket;"
        f"s=socket.create_connection(('{xb}', 80), timeout=2);"
        "s.sendall(b'GET /hostname HTTP/1.0\\r\\n\\r\\n');print(s.recv(4096)[-1:])"
    )
    netns = ClusterPaths(lab.name).node_netns("node-2")
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, f"node-2 could not reach its isolated pod: {out.stderr}"
    # another node is not the local host: denied
    netns3 = ClusterPaths(lab.name).node_netns("node-3")
    other = subprocess.run(
        ["ip", "netns", "exec", netns3, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert other.returncode != 0


def test_ip_block_egress_to_the_outside_world(lab: Lab) -> None:
    lab.apply(
        f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: only-world-80, namespace: z}}
spec:
  podSelector: {{matchLabels: {{pod: b}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {WORLD}/32}}}}]
    ports: [{{port: 80}}]
"""
    )
    try:
        until(lambda: not lab.probe("z/b", f"{WORLD}:8080", timeout=0.5)["connected"])
        assert lab.probe("z/b", f"{WORLD}:80")["connected"]
        assert not lab.probe("z/b", "y/a:80", timeout=0.5)["connected"]
        assert lab.probe("z/a", f"{WORLD}:8080")["connected"]  # not selected
    finally:
        lab.run("delete", "networkpolicy", "only-world-80", "-n", "z")


def test_a_new_pod_reaches_a_peer_that_allows_it_on_the_first_packet(lab: Lab) -> None:
    lab.apply(
        """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-new, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: fresh}}}]
"""
    )
    name = unique("new")
    lab.apply(
        f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: y, labels: {{role: fresh}}}}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: agnhost
"""
    )
    try:
        lab.wait_running(10)
        # the identity of these labels is new to the cluster: node-3 (x/c's) had to learn it
        # before the ADD on node-1 returned; a lost SYN would show as a 1 s retransmit
        first = lab.probe(f"y/{name}", "x/c:80", timeout=3)
        assert first["connected"], first
        assert first["latency_ms"] < 500, first
    finally:
        lab.run("delete", "pod", name, "-n", "y")
        lab.run("delete", "networkpolicy", "c-from-new", "-n", "x")


def test_kernel_events_show_tcp_states(lab: Lab) -> None:
    assert lab.probe("y/a", "x/a:80")["connected"]

    def ends(f: dict) -> tuple[str, str]:
        src, dst = f.get("source", {}), f.get("destination", {})
        return (
            f"{src.get('namespace')}/{src.get('pod_name')}",
            f"{dst.get('namespace')}/{dst.get('pod_name')}",
        )

    def opened() -> set[tuple[str, str]]:
        return {
            ends(f)
            for f in flows(lab)
            if f.get("Type") == "SOCK" and f.get("Summary", "").endswith("-> ESTABLISHED")
        }

    # both ends of the connection, each named by its node's collector (the client's socket
    # in y/a, the server's accepted one in x/a)
    until(
        lambda: {("y/a", "x/a"), ("x/a", "y/a")} <= opened(),
        10,
        "the TCP state changes of both ends, named by their pods",
    )


def test_ip_block_selects_pod_addresses_with_except(lab: Lab) -> None:
    """ipBlock peers match pod IPs too (the e2e suite's CIDR cases): the ipcache entry of a pod
    carries the CIDR identity of the longest ipBlock prefix covering its address."""
    zb, zc = pod_ip(lab, "z/b"), pod_ip(lab, "z/c")
    lab.apply(
        f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-pod-cidr-but-zc, namespace: y}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: ["{zc}/32"]}}}}]
"""
    )
    try:
        until(lambda: not lab.probe("z/c", "y/a:80", timeout=0.5)["connected"], what="except")
        assert lab.probe("z/b", "y/a:80")["connected"], f"{zb} is inside the ipBlock"
        assert lab.probe("x/b", "y/a:80")["connected"]
        assert lab.probe("z/c", "y/b:80")["connected"]  # y/b is not selected
    finally:
        lab.run("delete", "networkpolicy", "from-pod-cidr-but-zc", "-n", "y")


def test_policy_trace_gives_the_datapaths_answer(lab: Lab) -> None:
    for src, dst in [
        ("z/a", "x/a"),
        ("y/a", "x/a"),
        ("x/b", "x/c"),
        ("z/c", "z/a"),
        ("y/c", "x/b"),
    ]:
        probe = lab.probe(src, f"{dst}:80", timeout=0.5)
        trace = lab.run("policy", "trace", "--from", src, "--to", dst, "--port", "80", check=False)
        assert trace.returncode in (0, 1), trace.stderr
        assert (trace.returncode == 0) == probe["connected"], f"{src} -> {dst}: {trace.stdout}"
