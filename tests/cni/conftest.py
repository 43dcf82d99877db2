"""A node of our own for the CNI tests: a node namespace, pod namespaces, and an agent serving
CNI on a socket, driven through the real `flowscope-cni` executable as containerd would run it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from dataplane.cni.conf import write_conflist
from dataplane.cni.runtime import invoke_plugin
from dataplane.cni.server import serve_cni
from dataplane.cni.service import CNIService
from dataplane.endpoint.endpoint import Endpoint
from dataplane.ipam import IPAM, IPAMConfig
from flowscope.store.memory import MemoryKV
from tests.conftest import unique

VENV_BIN = str(Path(sys.executable).parent)
PLUGIN = str(Path(VENV_BIN) / "flowscope-cni")
NODE_IP = IPv4Address("10.250.0.1")  # on the node namespace's lo only


def sh(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Node:
    """A node namespace (forwarding on, NODE_IP on lo) and the pod namespaces made in it."""

    netns: str
    pods: list[str] = field(default_factory=list)

    def pod(self) -> str:
        """A new pod namespace's path."""
        name = f"{self.netns}.p{len(self.pods)}"
        sh(["ip", "netns", "add", name])
        self.pods.append(name)
        return f"/run/netns/{name}"


@pytest.fixture
def node() -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.fail("needs root (run via `make test`)")
    n = Node(f"fs.{unique('cni')}.node")
    sh(["ip", "netns", "add", n.netns])
    try:
        sh(["ip", "-n", n.netns, "link", "set", "lo", "up"])
        sh(["ip", "-n", n.netns, "addr", "add", f"{NODE_IP}/32", "dev", "lo"])
        sh(["nsenter", f"--net=/run/netns/{n.netns}", "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield n
    finally:
        for name in [*n.pods, n.netns]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        assert not [p for p in [*n.pods, n.netns] if Path("/run/netns", p).exists()]


class RecordingHooks:
    def __init__(self) -> None:
        self.links: list[str] = []
        self.added: list[Endpoint] = []
        self.removed: list[Endpoint] = []
        self.fail_add = False

    async def host_link_created(self, host_ifname: str) -> None:
        self.links.append(host_ifname)

    async def endpoint_added(self, endpoint: Endpoint) -> None:
        if self.fail_add:
            raise RuntimeError("datapath refused the endpoint")
        self.added.append(endpoint)

    async def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.removed.append(endpoint)


@dataclass
class Agent:
    node: Node
    service: CNIService
    conflist: Path
    socket: str
    kv: Any
    hooks: RecordingHooks

    async def cni(self, command: str, netns: str = "", cid: str = "", **kw: Any) -> dict:
        return await invoke_plugin(
            command,
            self.conflist,
            container_id=cid,
            netns_path=netns,
            ifname=kw.pop("ifname", "eth0"),
            cni_args=kw.pop("cni_args", {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": cid}),
            cni_path=[VENV_BIN],
            run_in_netns=self.node.netns,
            **kw,
        )


def ipam_config(max_pods: int = 250) -> IPAMConfig:
    return IPAMConfig(
        "overlay",
        IPv4Network("10.250.0.0/24"),
        pod_cidr=IPv4Network("10.250.64.0/18"),
        max_pods=max_pods,
    )


@contextlib.asynccontextmanager
async def running_agent(node: Node, kv: Any, max_pods: int = 250) -> AsyncIterator[Agent]:
    # A short directory: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    tmp = tempfile.mkdtemp(prefix="fscni")
    ipam = IPAM(kv, ipam_config(max_pods), "n1", NODE_IP)
    await ipam.ensure_node()
    hooks = RecordingHooks()
    service = CNIService(kv, "n1", node.netns, ipam, hooks)
    sock = f"{tmp}/agent.sock"
    server = await serve_cni(service, sock)
    conflist = write_conflist(Path(tmp), "t", "n1", sock)
    try:
        yield Agent(node, service, conflist, sock, kv, hooks)
    finally:
        server.close()
        await server.wait_closed()
        await service.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def agent(node: Node) -> AsyncIterator[Agent]:
    async with running_agent(node, MemoryKV()) as a:
        yield a


async def ping(netns: str, ip: str) -> bool:
    """One echo request, one second to answer: the first packet must get through."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net={netns}",
        "ping",
        "-c1",
        "-W1",
        "-n",
        ip,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0


async def links(netns: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "-o", "-n", netns, "link", "show", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return [line.split(":")[1].strip().split("@")[0] for line in out.decode().splitlines()]
