"""Plumbing a pod interface with netlink, in namespaces of our own."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from ipaddress import IPv4Address

import pytest

from dataplane.endpoint.endpoint import Endpoint
from dataplane.endpoint.netns import open_rtnl, run_in_netns
from dataplane.endpoint.plumbing import InterfaceExists, Plumber
from tests.conftest import unique

pytestmark = pytest.mark.privileged


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.fail("needs root (run via `make test`)")
    base = f"fs.{unique('ep')}"
    node, pod = f"{base}.node", f"{base}.pod"
    for name in (node, pod):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield node, f"/run/netns/{pod}"
    finally:
        for name in (node, pod):
            subprocess.run(["ip", "netns", "del", name], check=False)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


async def test_plumb_check_unplumb(namespaces: tuple[str, str]) -> None:
    node, pod = namespaces
    plumber = Plumber(node)
    ip = IPv4Address("10.250.99.7")
    try:
        done = await plumber.plumb("c1", "eth0", pod, ip, 1400)
        podns = pod.rsplit("/", 1)[1]
        assert "10.250.99.7/32" in sh("ip", "-n", podns, "addr", "show", "eth0")
        assert "default via 169.254.1.1 dev eth0" in sh("ip", "-n", podns, "route")
        neigh = sh("ip", "-n", podns, "neigh", "show", "dev", "eth0")
        assert f"169.254.1.1 lladdr {done.host_mac} PERMANENT" in neigh
        assert "mtu 1400" in sh("ip", "-n", podns, "link", "show", "eth0")
        assert "inet6" not in sh("ip", "-n", podns, "addr", "show", "eth0")  # no DAD
        assert f"10.250.99.7 dev {done.host_ifname}" in sh("ip", "-n", node, "route")
        host_neigh = sh("ip", "-n", node, "neigh", "show", "dev", done.host_ifname)
        assert f"10.250.99.7 lladdr {done.pod_mac} PERMANENT" in host_neigh
        forwarding = sh(
            "nsenter",
            f"--net=/run/netns/{node}",
            "cat",
            f"/proc/sys/net/ipv4/conf/{done.host_ifname}/forwarding",
        )
        assert forwarding.strip() == "1"
        ep = Endpoint(
            "n1",
            "c1",
            "eth0",
            pod,
            ip,
            done.pod_mac,
            done.host_ifname,
            done.host_mac,
            done.host_ifindex,
            1400,
            "default",
            "a",
            "u",
            datetime.now(UTC).isoformat(),
        )
        assert await plumber.check(ep) == []
        sh("ip", "-n", podns, "addr", "flush", "dev", "eth0")
        # the kernel takes an interface's routes and neighbours along with its last address
        assert await plumber.check(ep) == [
            f"address 10.250.99.7/32 is missing on pod interface {pod}:eth0",
            f"default route via 169.254.1.1 is missing in {pod}",
            f"neighbour 169.254.1.1 -> {done.host_mac} is missing in {pod}",
        ]
        with pytest.raises(InterfaceExists):
            await plumber.plumb("c2", "eth0", pod, IPv4Address("10.250.99.8"), 1500)
        assert await plumber.host_ifnames() == [done.host_ifname]  # the failed one left nothing
        assert await plumber.unplumb("c1", "eth0")
        assert not await plumber.unplumb("c1", "eth0")
        assert await plumber.check(ep) == [
            f"host interface {done.host_ifname} is missing from /run/netns/{node}"
        ]
    finally:
        await plumber.close()


async def test_namespace_helpers_never_create_or_leak(namespaces: tuple[str, str]) -> None:
    node, _ = namespaces
    own = os.stat("/proc/thread-self/ns/net").st_ino
    inside = await asyncio.to_thread(
        run_in_netns, f"/run/netns/{node}", lambda: os.stat("/proc/thread-self/ns/net").st_ino
    )
    assert inside != own == os.stat("/proc/thread-self/ns/net").st_ino
    missing = f"{node}.missing"
    with pytest.raises(FileNotFoundError):
        await open_rtnl(missing)
    assert not os.path.exists(f"/run/netns/{missing}")
    ipr = await open_rtnl(node)
    try:
        names = [link.get("ifname") async for link in await ipr.link("dump")]
        assert names == ["lo"]  # the node namespace's, not ours
    finally:
        ipr.close()
