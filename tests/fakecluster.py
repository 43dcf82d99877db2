"""A cluster of a test's own for the CLI: its cluster.json under a run root of the test's own, as
`lab up` writes it, and the real `flowscope` command run against it in a subprocess.

Shared by the CLI tests (apply/get/delete, policy trace, service list, observe): they differ in
what the cluster points at (the test etcd, or nothing) and which nodes it lists, not in how it is
written or how the command is run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from flowscope.clusterinfo import ClusterInfo, NodeInfo

REPO = Path(__file__).resolve().parents[1]
NO_ETCD = "http://127.0.0.1:1"  # for commands that must not need the store


def write_cluster(
    run_root: Path,
    name: str,
    *,
    etcd_url: str = NO_ETCD,
    service_cidr: str = "10.96.0.0/16",
    nodes: Iterable[str] = (),
) -> ClusterInfo:
    """An overlay cluster's cluster.json at run_root/name; node i is at 10.224.0.(i+4)."""
    info = ClusterInfo(
        name=name,
        ipam="overlay",
        vnet_cidr=IPv4Network("10.224.0.0/16"),
        pod_cidr=IPv4Network("10.244.0.0/16"),
        service_cidr=IPv4Network(service_cidr),
        gateway=IPv4Address("10.224.0.1"),
        etcd_url=etcd_url,
        nodes=tuple(
            NodeInfo(n, IPv4Address(f"10.224.0.{i + 4}"), f"fs.{name}.{n}")
            for i, n in enumerate(nodes)
        ),
    )
    (run_root / name).mkdir(parents=True, exist_ok=True)
    (run_root / name / "cluster.json").write_text(info.to_json())
    return info


def cli_env(run_root: Path) -> dict[str, str]:
    return {**os.environ, "FLOWSCOPE_RUN_ROOT": str(run_root)}


class CLI:
    """`python -m <module> --cluster <cluster> ...` with the test's run root."""

    def __init__(self, run_root: Path, cluster: str, module: str = "flowscope") -> None:
        self.run_root = run_root
        self.env = cli_env(run_root)
        self.cluster = cluster
        self.module = module

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", self.module, "--cluster", self.cluster, *args]

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args),
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        """The command running, its output piped (for commands that follow or stream)."""
        return await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
