"""Time of `flowscope lab up --nodes 3` (and `lab down`), against the bare cost of the same
kernel objects: a fabric namespace with a bridge and three node namespaces with veths, made with
pyroute2 directly. The ratio is what the lab's store, agents and readiness wait add."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from dataplane.lab import fabric, topology
from flowscope.paths import ClusterPaths


def bare_topology(nodes: int) -> float:
    name = f"bb{uuid.uuid4().hex[:6]}"
    paths = ClusterPaths(name)
    plan = topology.plan(name, nodes, "overlay")
    start = time.monotonic()
    try:
        fabric.build_fabric(paths, plan)
        for node in plan.nodes:
            fabric.build_node(paths, plan, node)
        return time.monotonic() - start
    finally:
        fabric.teardown(paths)


def lab(ipam: str, nodes: int) -> tuple[float, float]:
    name = f"bl{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, "-m", "flowscope", "--cluster", name, "lab"]
    start = time.monotonic()
    try:
        subprocess.run(
            [*cmd, "up", "--nodes", str(nodes), "--ipam", ipam], check=True, capture_output=True
        )
        up = time.monotonic() - start
    finally:
        start = time.monotonic()
        subprocess.run([*cmd, "down"], capture_output=True)
    return up, time.monotonic() - start


def main() -> None:
    nodes = 3
    base = min(bare_topology(nodes) for _ in range(3))
    print(f"baseline: bare namespaces+bridge+veths for {nodes} nodes: {base * 1000:.0f} ms")
    for ipam in ("overlay", "vnet"):
        up, down = lab(ipam, nodes)
        print(
            f"lab up --nodes {nodes} --ipam {ipam}: {up:.2f} s (x{up / base:.1f} baseline); "
            f"lab down: {down:.2f} s"
        )


if __name__ == "__main__":
    main()
