"""The HTTP L7 redirect on real sockets: the socket LB attached (with its sock_ops program) to a
cgroup of the test's own, a "pod" process in that cgroup and in a namespace of the test's own,
backend servers in the namespace, and the "proxy" listener on 127.0.0.1:PROXY_PORT inside it.

A connect to a destination in l7_redirect lands on the listener; the listener finds the original
destination by {its netns cookie, the client's port} (as the agent does), once; getpeername in
the pod shows the original destination; other destinations are untouched.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from pyroute2 import netns

from dataplane.agent.nodel7 import netns_cookie
from dataplane.lab.sandbox import remove_cgroup_tree
from dataplane.maps.l7map import OriginalDst, Redirect
from dataplane.maps.lbmap import Backend, Service
from flowscope.setns import socket_in_netns
from probes.socklb import SocketLB
from tests.conftest import unique
from tests.probes.test_socklb_netns import BACKEND_IPS, TCP_PORT, VIP, Pod, Servers, _plumb

pytestmark = pytest.mark.privileged

CGROUP2 = Path("/sys/fs/cgroup/unified")
BPFFS = Path("/sys/fs/bpf")
PROXY_PORT = 15080


class Proxy(threading.Thread):
    """Accepts on 127.0.0.1:PROXY_PORT in the namespace; for each connection looks the original
    destination up as the agent does and answers it as one line."""

    def __init__(self, ns: str, lb: SocketLB) -> None:
        super().__init__(daemon=True)
        self.lb = lb
        self.sock = socket_in_netns(f"/run/netns/{ns}", socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", PROXY_PORT))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.cookie = netns_cookie(self.sock)
        self.stop = threading.Event()
        self.seen: list[tuple[tuple[str, int], OriginalDst | None, OriginalDst | None]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                orig = self.lb.l7.take_original(self.cookie, peer[1])
                again = self.lb.l7.take_original(self.cookie, peer[1])  # read once
                self.seen.append((peer, orig, again))
                line = "none" if orig is None else f"proxy {orig.ip}:{orig.port} {orig.backend}"
                conn.sendall(line.encode() + b"\n")

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(5)
        self.sock.close()


@dataclass
class World:
    lb: SocketLB
    pod: Pod
    proxy: Proxy
    cgroup: Path


@pytest.fixture
def world() -> Iterator[World]:
    name = unique("fsl7r")
    ns, cgroup, pin_dir = name, CGROUP2 / name, BPFFS / name
    servers = Servers(ns)
    lb = pod = proxy = None
    netns.create(ns)
    try:
        asyncio.run(_plumb(ns))
        cgroup.mkdir()
        lb = SocketLB.load(pin_dir)
        lb.attach(cgroup)
        lb.attach_l7(cgroup)
        servers.start()
        servers.ready.wait(5)
        if servers.error:
            raise servers.error
        proxy = Proxy(ns, lb)
        proxy.start()
        pod = Pod(cgroup, ns)
        yield World(lb, pod, proxy, cgroup)
    finally:
        if pod is not None:
            pod.close()
        if proxy is not None:
            proxy.close()
        servers.stop.set()
        if servers.is_alive():
            servers.join(5)
        if lb is not None:
            lb.detach()
            lb.detach_l7()
            lb.unpin()
            lb.close()
        remove_cgroup_tree(cgroup)
        shutil.rmtree(pin_dir, ignore_errors=True)
        netns.remove(ns)
    assert not cgroup.exists() and not pin_dir.exists()


def redirect(ip: str, port: int = TCP_PORT) -> dict[Redirect, int]:
    return {Redirect(IPv4Address(ip), port): PROXY_PORT}


def test_a_pod_address_with_rules_lands_on_the_proxy_which_finds_it(world: World) -> None:
    target = BACKEND_IPS[0]
    assert world.lb.l7.sync(redirect(target)) == (1, 0)
    assert all(world.lb.attached(world.cgroup, l7=True).values())
    out = world.pod.tcp(target, TCP_PORT)
    assert out["reply"] == f"proxy {target}:{TCP_PORT} ('{target}', {TCP_PORT})", out
    # the application sees the address it asked for, not the proxy on loopback
    assert out["peer"] == [target, TCP_PORT]
    (peer, orig, again), *_ = world.proxy.seen
    assert peer[0] == "127.0.0.1"
    assert orig == OriginalDst(IPv4Address(target), TCP_PORT, IPv4Address(target), TCP_PORT)
    assert again is None
    # other destinations go where they were going
    other = world.pod.tcp(BACKEND_IPS[1], TCP_PORT)
    assert other["reply"] == f"{BACKEND_IPS[1]}:{TCP_PORT}"
    assert len(world.proxy.seen) == 1
    stats = world.lb.stats()
    assert stats["l7_redirected"] == 1
    assert stats["l7_port_recorded"] == 1
    assert stats["l7_peername"] >= 1


def test_through_a_service_the_key_is_the_backend_and_the_peer_the_service(world: World) -> None:
    target = BACKEND_IPS[1]
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", (Backend(target, TCP_PORT),)))
    world.lb.l7.sync(redirect(target))
    out = world.pod.tcp(VIP, 80)
    assert out["reply"] == f"proxy {VIP}:80 ('{target}', {TCP_PORT})", out
    assert out["peer"] == [VIP, 80]
    # a service whose backend has no rules: translated, not redirected
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", (Backend(BACKEND_IPS[2], TCP_PORT),)))
    direct = world.pod.tcp(VIP, 80)
    assert direct["reply"] == f"{BACKEND_IPS[2]}:{TCP_PORT}"
    assert direct["peer"] == [VIP, 80]


def test_sync_removes_a_redirect_and_udp_is_never_redirected(world: World) -> None:
    target = BACKEND_IPS[0]
    world.lb.l7.sync(redirect(target))
    world.lb.l7.sync(redirect(target, 5353))  # the UDP servers' port
    assert world.lb.l7.redirects() == redirect(target, 5353)
    assert world.pod.tcp(target, TCP_PORT)["reply"] == f"{target}:{TCP_PORT}"
    udp = world.pod.udp(target, 5353)
    assert udp["reply"] == f"{target}:5353", udp
    assert world.proxy.seen == []
    assert world.lb.stats()["l7_redirected"] == 0
