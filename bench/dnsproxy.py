"""DNS lookup latency with DNS visibility on (through the node's DNS proxy, as every pod's
lookups go) against off (the same queries straight to the kube-dns pod, bypassing the proxy), on
a 1-node lab. `python -m bench dnsproxy`.

One client pod sends sequential UDP queries for a cluster name; rounds alternate the two paths so
both see the same machine load. Printed: the latency per lookup (median, p99) of each path, their
ratio, and the agent's CPU per proxied lookup.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid

import yaml

from bench.datapath import BenchLab
from dataplane.dns.resolvconf import dns_service_ip
from flowscope import clusterinfo

ROUNDS = 6
QUERIES = 400  # per round and path
NAME = "kubernetes.default.svc.cluster.local"

# runs in the pod with the host's python3 (stdlib only): QUERIES lookups, their latencies in us
CLIENT = r"""
import random, socket, struct, sys, time
ip, n, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((ip, 53))
out = []
for _ in range(n):
    qid = random.getrandbits(16)
    wire = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    t = time.perf_counter_ns()
    s.send(wire)
    while True:
        data = s.recv(4096)
        if data[:2] == wire[:2]:
            break
    out.append((time.perf_counter_ns() - t) // 1000)
print(" ".join(map(str, out)))
"""

WORKLOAD = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}},
    {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": "bench"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "agnhost"}]},
    },
]


def lookups(lab: BenchLab, server: str) -> list[int]:
    out = lab.run(
        "lab", "exec", "bench/client", "--", "python3", "-c", CLIENT, server, str(QUERIES), NAME
    )
    return [int(x) for x in out.split()]


def agent_cpu(lab: BenchLab) -> float:
    import os
    from pathlib import Path

    pid = int((lab.paths.run_dir / "agent-node-1.pid").read_text().split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    name = f"bq{uuid.uuid4().hex[:6]}"
    lab = BenchLab(name)
    try:
        lab.run("lab", "up", "--nodes", "1", "--ipam", "overlay")
        info = clusterinfo.load(name)
        lab.run("apply", "-f", "-", input=yaml.safe_dump_all(WORKLOAD))
        lab.wait_running(1)
        pods = json.loads(lab.run("get", "pods", "-n", "kube-system", "-o", "json"))["items"]
        dns_pod = next(p["status"]["podIP"] for p in pods if p["status"].get("podIP"))
        proxy = str(dns_service_ip(info.service_cidr))
        print(
            f"lab {name}: 1 node, a client pod; {QUERIES} lookups of {NAME} per round, "
            f"{ROUNDS} rounds; proxy at {proxy}, kube-dns pod at {dns_pod}",
            flush=True,
        )
        lookups(lab, proxy)  # warm: the pod's first socket, the proxy's first upstream
        on: list[int] = []
        off: list[int] = []
        cpu = 0.0
        for rnd in range(ROUNDS):
            for visible in (True, False) if rnd % 2 == 0 else (False, True):
                if visible:
                    c0 = agent_cpu(lab)
                    on += lookups(lab, proxy)
                    cpu += agent_cpu(lab) - c0
                else:
                    off += lookups(lab, dns_pod)
            print(
                f"  round {rnd + 1}: on median {statistics.median(on):.0f} us, "
                f"off median {statistics.median(off):.0f} us",
                flush=True,
            )

        def p99(xs: list[int]) -> float:
            return sorted(xs)[int(len(xs) * 0.99)]

        print(
            f"visibility on  (through the proxy): median {statistics.median(on):.0f} us, "
            f"p99 {p99(on):.0f} us, mean {statistics.mean(on):.0f} us"
        )
        print(
            f"visibility off (straight to kube-dns): median {statistics.median(off):.0f} us, "
            f"p99 {p99(off):.0f} us, mean {statistics.mean(off):.0f} us"
        )
        print(
            f"ratio on/off: median {statistics.median(on) / statistics.median(off):.2f}, "
            f"p99 {p99(on) / p99(off):.2f}"
        )
        print(
            f"agent CPU per proxied lookup: {cpu / len(on) * 1e6:.0f} us "
            f"(the agent also drains the datapath's flow events of those packets)"
        )
    finally:
        time.sleep(0.2)
        try:
            lab.run("lab", "down", timeout=120)
        except RuntimeError as e:
            print(f"lab down: {e}")


if __name__ == "__main__":
    main()
