"""Pod-to-pod TCP throughput (iperf3) and new-connection rate with the eBPF datapath enforcing
20 NetworkPolicies with flow events on, against the same lab with the datapath's tc filters
removed from the pods' host veths. Target (issue 4): throughput ratio >= 0.90.

One 2-node overlay lab: a client pod on node-1, a server pod on node-2 (cross-node pair) and one
on node-1 (same-node pair). The policies select all three pods (ingress on the servers, egress on
the client) and allow the measured traffic; port 81, which the servers also serve, stays denied,
which is checked in both modes so that "baseline" provably runs without the programs.

Datapath and baseline alternate within each round (the order flips each round) in the same lab,
because a shared machine drifts: the printed ratio is the median of the rounds' ratios, whose
two runs are seconds apart. The node agents keep running in both modes, with what is not on the
pods' veths: the uplinks' masquerade program and the node-wide tracepoint probes; their CPU is
printed too. The measurements run from a driver script inside the client pod (no `lab exec`
start-up per sample), against an iperf3 server and a bare accept loop in the server pods.
Connections are closed with RST (SO_LINGER 0) so that the client never runs out of ports held
in TIME_WAIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import connloop
from dataplane.endpoint.registry import EndpointRegistry
from flowscope import clusterinfo
from flowscope.paths import ClusterPaths
from flowscope.store.etcd import EtcdKV
from probes import libbpf, tcattach
from probes.datapath import FROM_ENDPOINT, TC_HANDLE, TC_PRIO, TO_ENDPOINT

ROUNDS = 6
IPERF_SECONDS = 2
CONNECT_SECONDS = 1.5
IPERF_PORT = 5201
ACCEPT_PORT = 8080  # an accept loop (bench/connloop.c), for the connection rate
SERVED_PORT = 80  # the pods' built-in responder
DENIED_PORT = 81  # also served, allowed by no policy
FLOWSCOPE = [sys.executable, "-m", "flowscope"]
MODES = ("datapath", "baseline")
HOOKS = ((tcattach.Hook.EGRESS, TO_ENDPOINT), (tcattach.Hook.INGRESS, FROM_ENDPOINT))

# Runs inside the client pod for the whole benchmark, answering one JSON line per command, so
# that no measurement pays for starting `lab exec`:
#   iperf IP PORT SECONDS         iperf3's JSON report (retried while the server is not listening)
#   connect BIN IP PORT SECONDS   back-to-back connect + close (RST) by the C connloop BIN:
#                                 {"ok", "failed", "seconds"}
#   probe IP PORT                 {"connected": bool} for one connect with a 0.5 s timeout
SETTLED_CPU = 0.10  # fraction of a core under which the agents count as idle

DRIVER = """
import json, socket, subprocess, sys, time

def iperf(ip, port, seconds):
    for _ in range(50):
        out = subprocess.run(
            ["iperf3", "-c", ip, "-p", port, "-t", seconds, "-J"], capture_output=True, text=True
        ).stdout
        report = json.loads(out) if out.strip().startswith("{") else {"error": "no report"}
        if "refused" not in report.get("error", ""):
            return report
        time.sleep(0.1)
    return report

def connect(binary, ip, port, seconds):
    out = subprocess.run([binary, "connect", ip, port, seconds], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-500:] or f"exit {out.returncode}"}
    return json.loads(out.stdout)

def probe(ip, port):
    try:
        socket.create_connection((ip, int(port)), timeout=0.5).close()
        return {"connected": True}
    except OSError:
        return {"connected": False}

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    print(json.dumps({"iperf": iperf, "connect": connect, "probe": probe}[cmd](*args)), flush=True)
"""


def pod(ns: str, name: str, labels: dict[str, str], node: str) -> dict[str, Any]:
    ports = [
        {"name": "http", "containerPort": SERVED_PORT, "protocol": "TCP"},
        {"name": "admin", "containerPort": DENIED_PORT, "protocol": "TCP"},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "bench", "ports": ports}],
        },
    }


def netpol(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def workload() -> list[dict[str, Any]]:
    """Namespaces `front` (the client) and `back` (both servers), the three pods."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "front", "labels": {"team": "web", "env": "bench"}},
        },
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "back", "labels": {"team": "api", "env": "bench"}},
        },
        pod("front", "client", {"app": "client", "tier": "web"}, "node-1"),
        pod("back", "server", {"app": "server", "tier": "api", "track": "stable"}, "node-2"),
        pod("back", "local", {"app": "server", "tier": "api", "track": "canary"}, "node-1"),
    ]


def policies(pod_cidr: str) -> list[dict[str, Any]]:
    """20 policies of the usual kinds: default denies, then allows by namespace, pod, both in one
    peer, expressions, named and numbered ports, a port range, ipBlocks with except, DNS."""
    tcp = lambda port: {"port": port, "protocol": "TCP"}  # noqa: E731
    servers = {"matchLabels": {"app": "server"}}
    clients = {"matchLabels": {"app": "client"}}
    web_ns = {"matchLabels": {"team": "web"}}
    api_ns = {"matchLabels": {"team": "api"}}
    bench_ns = {"matchExpressions": [{"key": "env", "operator": "In", "values": ["bench"]}]}
    back = [
        ("default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        (
            "web-to-http",
            {
                "podSelector": servers,
                "ingress": [{"from": [{"namespaceSelector": web_ns}], "ports": [tcp("http")]}],
            },
        ),
        (
            "client-to-tools",
            {
                "podSelector": servers,
                "ingress": [
                    {
                        "from": [{"namespaceSelector": web_ns, "podSelector": clients}],
                        "ports": [tcp(IPERF_PORT), tcp(ACCEPT_PORT)],
                    }
                ],
            },
        ),
        (
            "tiers",
            {
                "podSelector": {
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "db"]}]
                },
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": bench_ns,
                                "podSelector": {
                                    "matchExpressions": [{"key": "tier", "operator": "Exists"}]
                                },
                            }
                        ],
                        "ports": [tcp(SERVED_PORT), tcp(IPERF_PORT)],
                    }
                ],
            },
        ),
        ("same-ns", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        (
            "pod-cidr-range",
            {
                "podSelector": servers,
                "ingress": [
                    {
                        "from": [{"ipBlock": {"cidr": pod_cidr, "except": ["10.244.250.0/24"]}}],
                        "ports": [{"port": 5000, "endPort": 5300, "protocol": "TCP"}],
                    }
                ],
            },
        ),
        (
            "partners",
            {
                "podSelector": servers,
                "ingress": [
                    {
                        "from": [
                            {"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}}
                        ],
                        "ports": [tcp(443)],
                    }
                ],
            },
        ),
        (
            "metrics",
            {
                "podSelector": servers,
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}],
                        "ports": [tcp(9090)],
                    }
                ],
            },
        ),
        (
            "stable-only",
            {
                "podSelector": {"matchLabels": {"track": "stable"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {},
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "app", "operator": "NotIn", "values": ["batch"]}
                                    ]
                                },
                            }
                        ],
                        "ports": [tcp("http")],
                    }
                ],
            },
        ),
        (
            "canary",
            {
                "podSelector": {"matchLabels": {"track": "canary"}},
                "ingress": [{"from": [{"podSelector": clients, "namespaceSelector": {}}]}],
            },
        ),
        (
            "udp-dns",
            {"podSelector": servers, "ingress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]},
        ),
        (
            "api-egress",
            {
                "podSelector": servers,
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"namespaceSelector": api_ns}]},
                    {"ports": [{"port": 53, "protocol": "UDP"}]},
                ],
            },
        ),
    ]
    front = [
        ("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        (
            "dns",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, tcp(53)]}],
            },
        ),
        (
            "to-api",
            {
                "podSelector": clients,
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"namespaceSelector": api_ns, "podSelector": servers}],
                        "ports": [tcp(SERVED_PORT), tcp(IPERF_PORT), tcp(ACCEPT_PORT)],
                    }
                ],
            },
        ),
        (
            "to-bench",
            {
                "podSelector": clients,
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": bench_ns}], "ports": [tcp("http")]}],
            },
        ),
        (
            "outside",
            {
                "podSelector": clients,
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "ipBlock": {
                                    "cidr": "0.0.0.0/0",
                                    "except": ["10.0.0.0/8", "192.168.0.0/16"],
                                }
                            }
                        ],
                        "ports": [tcp(443)],
                    }
                ],
            },
        ),
        (
            "pod-cidr",
            {
                "podSelector": {
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]
                },
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"ipBlock": {"cidr": pod_cidr}}],
                        "ports": [{"port": 5000, "endPort": 5300, "protocol": "TCP"}],
                    }
                ],
            },
        ),
        ("same-ns", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        (
            "from-api",
            {
                "podSelector": clients,
                "ingress": [{"from": [{"namespaceSelector": api_ns}], "ports": [tcp(8080)]}],
            },
        ),
    ]
    out = [netpol("back", n, s) for n, s in back] + [netpol("front", n, s) for n, s in front]
    assert len(out) == 20
    return out


@dataclass(frozen=True)
class Veth:
    netns: str
    ifname: str


class BenchLab:
    def __init__(self, name: str) -> None:
        self.name = name
        self.paths = ClusterPaths(name)
        self._background: list[subprocess.Popen] = []

    def run(self, *args: str, input: str | None = None, timeout: float = 180) -> str:
        proc = subprocess.run(
            [*FLOWSCOPE, "--cluster", self.name, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"flowscope {' '.join(args)}: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def background(self, ref: str, *argv: str, quiet: bool = False) -> subprocess.Popen:
        # its own process group: ending it ends the command it runs in the pod too
        proc = subprocess.Popen(
            [*FLOWSCOPE, "--cluster", self.name, "lab", "exec", ref, "--", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._background.append(proc)
        return proc

    def stop_background(self) -> None:
        for proc in self._background:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
                proc.communicate(timeout=5)
        self._background.clear()

    def agents_cpu(self) -> float:
        """CPU seconds the node agents (collectors included) have used so far."""
        total = 0.0
        for node in ("node-1", "node-2"):
            pid = int((self.paths.run_dir / f"agent-{node}.pid").read_text().split()[0])
            stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return total

    def settle(self, timeout: float = 30.0) -> float:
        """Wait until the agents are idle again (under SETTLED_CPU of a core over 0.5 s): a
        burst of connections leaves their collectors draining flow events for a while, which
        would otherwise be charged to the next measurement. Returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            c0, t0 = self.agents_cpu(), time.monotonic()
            time.sleep(0.5)
            if (self.agents_cpu() - c0) / (time.monotonic() - t0) < SETTLED_CPU:
                break
        return time.monotonic() - started

    def wait_running(self, count: int, timeout: float = 60) -> dict[str, str]:
        """NS/POD -> pod IP, once `count` pods run (the lab's own, in kube-system: not counted)."""
        deadline = time.monotonic() + timeout
        while True:
            pods = json.loads(self.run("get", "pods", "-A", "-o", "json"))["items"]
            ips = {
                f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["status"]["podIP"]
                for p in pods
                if p.get("status", {}).get("phase") == "Running"
                and p["status"].get("podIP")
                and p["metadata"]["namespace"] != "kube-system"
            }
            if len(ips) >= count:
                return ips
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ips)}/{count} pods running")
            time.sleep(0.2)

    async def host_veths(self, refs: list[str]) -> dict[str, Veth]:
        """NS/POD -> its host-side veth, from the node agents' endpoint registry."""
        info = clusterinfo.load(self.name)
        kv = EtcdKV(info.etcd_url)
        try:
            out = {}
            for node in info.nodes:
                for ep in await EndpointRegistry(kv, node.name).list():
                    ref = f"{ep.pod_namespace}/{ep.pod_name}"
                    if ref in refs:
                        out[ref] = Veth(self.paths.node_netns(node.name), ep.host_ifname)
        finally:
            await kv.close()
        missing = set(refs) - out.keys()
        if missing:
            raise RuntimeError(f"no endpoint registered for {sorted(missing)}")
        return out

    async def set_datapath(self, veths: list[Veth], node_of: dict[Veth, str], on: bool) -> None:
        """Attach the node's pinned programs to the veths (on) or remove the datapath's filters
        (off), then check the hooks hold exactly that."""
        for veth in veths:
            for hook, prog in HOOKS:
                if on:
                    pin = self.paths.node_bpf_dir(node_of[veth]) / "datapath" / prog
                    fd = libbpf.obj_get(pin)
                    try:
                        await tcattach.attach(
                            veth.netns,
                            veth.ifname,
                            hook,
                            fd,
                            name=prog,
                            prio=TC_PRIO,
                            handle=TC_HANDLE,
                        )
                    finally:
                        os.close(fd)
                else:
                    att = tcattach.TcAttachment(
                        veth.netns, veth.ifname, hook, TC_PRIO, TC_HANDLE, prog
                    )
                    await tcattach.detach(att)
                found = await tcattach.filters(veth.netns, veth.ifname, hook)
                ours = [f for f in found if (f.prio, f.handle) == (TC_PRIO, TC_HANDLE)]
                if bool(ours) != on:
                    raise RuntimeError(f"{veth.ifname} {hook.name}: filters are {found}")


class Driver:
    """The DRIVER script running in a pod; one request at a time."""

    def __init__(self, lab: BenchLab, ref: str) -> None:
        self.ref = ref
        self.proc = lab.background(ref, sys.executable, "-u", "-c", DRIVER)
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise RuntimeError(f"driver in {self.ref} ended: {self.proc.stderr.read()[-1000:]}")
        return json.loads(line)

    def request(self, *words: object) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def throughput(self, ip: str) -> float:
        """Bits per second received in one iperf3 run."""
        report = self.request("iperf", ip, IPERF_PORT, IPERF_SECONDS)
        try:
            return float(report["end"]["sum_received"]["bits_per_second"])
        except KeyError:
            raise RuntimeError(f"iperf3 to {ip}: {report.get('error', report)}") from None

    def connection_rate(self, ip: str) -> tuple[float, int]:
        """New connections per second, and how many connects failed (a 1 s timeout: a SYN
        lost to a full accept queue or to a drop), reported rather than fatal."""
        result = self.connect(ip, ACCEPT_PORT, CONNECT_SECONDS)
        return result["ok"] / result["seconds"], int(result["failed"])

    def connect(self, ip: str, port: int, seconds: float) -> dict[str, Any]:
        """Back-to-back connections for `seconds` by the C connloop: {"ok", "failed", "seconds"}."""
        result = self.request("connect", connloop.binary(), ip, port, seconds)
        if "error" in result:
            raise RuntimeError(f"connloop in {self.ref} to {ip}:{port}: {result['error']}")
        return result

    def connects(self, ip: str, port: int) -> bool:
        return bool(self.request("probe", ip, port)["connected"])


def start_acceptor(lab: BenchLab, ref: str, port: int) -> None:
    """The C connloop accepting and closing on `port` in the pod, with a deep backlog (the
    pods' built-in responder lets its 100-deep queue overflow under this load, and a SYN
    dropped there costs the client a 1 s retransmission), until the benchmark ends."""
    proc = lab.background(ref, str(connloop.binary()), "accept", str(port))
    assert proc.stdout is not None and proc.stderr is not None
    if proc.stdout.readline().strip() != "listening":
        raise RuntimeError(f"acceptor in {ref}: {proc.stderr.read()[-500:]}")


def start_server(lab: BenchLab, ref: str) -> None:
    """An accept loop and an iperf3 server in the pod, for the whole benchmark."""
    start_acceptor(lab, ref, ACCEPT_PORT)
    lab.background(ref, "iperf3", "-s", "-p", str(IPERF_PORT), quiet=True)


def main() -> None:
    name = f"bd{uuid.uuid4().hex[:6]}"
    lab = BenchLab(name)
    started = time.monotonic()
    try:
        lab.run("lab", "up", "--nodes", "2", "--ipam", "overlay")
        info = clusterinfo.load(name)
        lab.run("apply", "-f", "-", input=yaml.safe_dump_all(workload()))
        ips = lab.wait_running(3)
        lab.run("apply", "-f", "-", input=yaml.safe_dump_all(policies(str(info.pod_cidr))))
        client = "front/client"
        pairs = {"cross-node": "back/server", "same-node": "back/local"}
        veths = asyncio.run(lab.host_veths([client, *pairs.values()]))
        node_of = {
            veths[client]: "node-1",
            veths["back/server"]: "node-2",
            veths["back/local"]: "node-1",
        }
        for server in pairs.values():
            start_server(lab, server)
        driver = Driver(lab, client)
        # the policies are in force once the denied port is cut
        deadline = time.monotonic() + 20
        while driver.connects(ips["back/server"], DENIED_PORT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {DENIED_PORT} still open 20 s after the policies")
            time.sleep(0.2)
        print(
            f"lab {name}: 2 nodes (overlay), 3 pods, 20 NetworkPolicies, flow events on; "
            f"ready in {time.monotonic() - started:.0f} s",
            flush=True,
        )

        t0, c0 = time.monotonic(), lab.agents_cpu()
        time.sleep(2)
        idle = (lab.agents_cpu() - c0) / (time.monotonic() - t0) * 100
        results: dict[tuple[str, str, str], list[float]] = {}
        usage: dict[tuple[str, str], tuple[float, float]] = {}  # (wall s, agents' CPU s)
        failures: dict[str, int] = {}  # mode -> connects that failed
        settles: list[float] = []  # seconds the agents needed to go idle before a measurement
        for rnd in range(ROUNDS):
            for on in (True, False) if rnd % 2 == 0 else (False, True):
                asyncio.run(lab.set_datapath(list(node_of), node_of, on))
                mode = "datapath" if on else "baseline"
                for target in pairs.values():  # the denied port shows which mode runs
                    if driver.connects(ips[target], DENIED_PORT) == on:
                        raise RuntimeError(f"{mode}: port {DENIED_PORT} of {target} is wrong")
                for pair, server in pairs.items():
                    settles.append(lab.settle())
                    marks = [(time.monotonic(), lab.agents_cpu())]
                    bps = driver.throughput(ips[server])
                    marks.append((time.monotonic(), lab.agents_cpu()))
                    rate, failed = driver.connection_rate(ips[server])
                    failures[mode] = failures.get(mode, 0) + failed
                    marks.append((time.monotonic(), lab.agents_cpu()))
                    for kind, (t0, c0), (t1, c1) in zip(
                        ("throughput", "connections"), marks, marks[1:], strict=False
                    ):
                        wall, cpu = usage.get((kind, mode), (0.0, 0.0))
                        usage[(kind, mode)] = (wall + t1 - t0, cpu + c1 - c0)
                    results.setdefault((pair, "throughput", mode), []).append(bps)
                    results.setdefault((pair, "connections", mode), []).append(rate)
                    print(
                        f"  round {rnd + 1} {mode:8} {pair:10}: {bps / 1e9:6.2f} Gbit/s, "
                        f"{rate:6.0f} new connections/s" + (f", {failed} failed" if failed else ""),
                        flush=True,
                    )
        asyncio.run(lab.set_datapath(list(node_of), node_of, True))

        print(
            f"{ROUNDS} rounds, datapath and baseline alternating (iperf3 -t {IPERF_SECONDS}; "
            f"connect+close for {CONNECT_SECONDS:g} s); medians, and the median of each round's "
            "ratio (its two runs are seconds apart, so machine load cancels out best there):"
        )
        for pair in pairs:
            for metric, unit, scale, target in (
                ("throughput", "Gbit/s", 1e9, " (target >= 0.90)"),
                ("connections", "new conn/s", 1, ""),
            ):
                digits = 2 if scale > 1 else 0
                dp, base = (results[(pair, metric, m)] for m in MODES)
                paired = statistics.median(d / b for d, b in zip(dp, base, strict=True))
                print(
                    f"{pair:10} {metric:11}: datapath {statistics.median(dp) / scale:.{digits}f}, "
                    f"baseline {statistics.median(base) / scale:.{digits}f} {unit}; "
                    f"ratio {paired:.2f}{target}"
                )
        print(
            f"before each measurement the agents went idle in at most {max(settles):.1f} s "
            f"(median {statistics.median(settles):.1f} s): the flow events of the previous "
            "connection burst, drained by the collectors"
        )
        print(
            "failed connects (1 s timeout): "
            + ", ".join(f"{m} {failures.get(m, 0)}" for m in MODES)
        )
        # the tracepoint probes (TCP state changes) and flow collection run in both modes
        print(f"node agents' CPU (both together, % of one core): idle {idle:.0f}%")
        for kind in ("throughput", "connections"):
            dp, base = ((lambda w, c: c / w * 100)(*usage[(kind, m)]) for m in MODES)
            print(f"  during the {kind} runs: datapath {dp:.0f}%, baseline {base:.0f}%")
    finally:
        lab.stop_background()
        subprocess.run(
            [*FLOWSCOPE, "--cluster", name, "lab", "down"], capture_output=True, timeout=180
        )
        print(f"(whole run {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
