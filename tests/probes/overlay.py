"""A small overlay-mode world of network namespaces for masquerade tests, plumbed with pyroute2.

    outside (10.224.0.100, a VNET host with no route to the pod CIDR)
        |
    fabric: bridge br0 (the VNET)
        |                         |
    node A eth0 10.224.0.4     node B eth0 10.224.0.5      (forwarding on)
      |        |                  |
    pod a1   pod a2             pod b1
    10.244.1.5 10.244.1.6       10.244.2.5

Pods have a /32 and a default route via 169.254.1.1 on their veth, as Cilium plumbs them; nodes
route each other's pod /24 over the bridge without encapsulation. Every namespace name starts
with a unique prefix and `close()` deletes them all.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from pyroute2 import AsyncIPRoute, netns

from tests.conftest import unique
from tests.probes.packets import icmp_echo

NATIVE_CIDR = "10.244.0.0/16"
OUTSIDE_IP = "10.224.0.100"
GATEWAY = "169.254.1.1"


async def plumb_pod(node_ns: str, pod_ns: str, host_if: str, ip: str) -> None:
    """A pod as the CNI plugs it, in miniature: a veth from the node, the pod's /32 routed to
    it, and the pod's default route via the link-local gateway on the host side."""
    async with AsyncIPRoute(netns=node_ns, flags=0) as ipr:
        await ipr.link(
            "add", ifname=host_if, kind="veth", peer={"ifname": "eth0", "net_ns_fd": pod_ns}
        )
        idx = (await ipr.link_lookup(ifname=host_if))[0]
        await ipr.addr("add", index=idx, address=GATEWAY, prefixlen=32)
        await ipr.link("set", index=idx, state="up")
        await ipr.route("add", dst=f"{ip}/32", oif=idx, scope=253)
    async with AsyncIPRoute(netns=pod_ns, flags=0) as ipr:
        await ipr.link("set", ifname="lo", state="up")
        eth0 = (await ipr.link_lookup(ifname="eth0"))[0]
        await ipr.addr("add", index=eth0, address=ip, prefixlen=32)
        await ipr.link("set", index=eth0, state="up")
        await ipr.route("add", dst=f"{GATEWAY}/32", oif=eth0, scope=253)
        await ipr.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=eth0)


@dataclass(frozen=True)
class Node:
    ns: str
    ip: str
    pod_block: str


@dataclass(frozen=True)
class Pod:
    ns: str
    ip: str
    node: Node


@dataclass
class Overlay:
    prefix: str = field(default_factory=lambda: unique("fsmq"))
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)

    @property
    def fabric(self) -> str:
        return f"{self.prefix}-fabric"

    @property
    def outside(self) -> str:
        return f"{self.prefix}-outside"

    def _ns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        netns.create(name)
        self.namespaces.append(name)
        return name

    async def build(self) -> Overlay:
        self._ns("fabric")
        async with AsyncIPRoute(netns=self.fabric, flags=0) as ipr:
            await ipr.link("add", ifname="br0", kind="bridge")
            await ipr.link("set", ifname="br0", state="up")
        await self._vnet_host("outside", f"{OUTSIDE_IP}/16")
        a = await self._node("a", "10.224.0.4", "10.244.1.0/24")
        b = await self._node("b", "10.224.0.5", "10.244.2.0/24")
        await self._route(a.ns, b.pod_block, b.ip)
        await self._route(b.ns, a.pod_block, a.ip)
        await self._pod("a1", a, "10.244.1.5")
        await self._pod("a2", a, "10.244.1.6")
        await self._pod("b1", b, "10.244.2.5")
        return self

    async def _vnet_host(self, role: str, cidr: str) -> str:
        ns = self._ns(role)
        async with AsyncIPRoute(netns=self.fabric, flags=0) as ipr:
            await ipr.link(
                "add", ifname=f"up-{role}", kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns}
            )
            br = (await ipr.link_lookup(ifname="br0"))[0]
            await ipr.link("set", ifname=f"up-{role}", master=br, state="up")
        async with AsyncIPRoute(netns=ns, flags=0) as ipr:
            await ipr.link("set", ifname="lo", state="up")
            eth0 = (await ipr.link_lookup(ifname="eth0"))[0]
            ip, plen = cidr.split("/")
            await ipr.addr("add", index=eth0, address=ip, prefixlen=int(plen))
            await ipr.link("set", index=eth0, state="up")
        return ns

    async def _node(self, name: str, ip: str, block: str) -> Node:
        ns = await self._vnet_host(name, f"{ip}/16")
        # /proc/sys is per network namespace; a test may use a helper process for it
        subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
        )
        node = Node(ns, ip, block)
        self.nodes[name] = node
        return node

    async def _route(self, ns: str, dst: str, gateway: str) -> None:
        async with AsyncIPRoute(netns=ns, flags=0) as ipr:
            await ipr.route("add", dst=dst, gateway=gateway)

    async def _pod(self, name: str, node: Node, ip: str) -> Pod:
        ns = self._ns(name)
        await plumb_pod(node.ns, ns, f"lxc{name}", ip)
        pod = Pod(ns, ip, node)
        self.pods[name] = pod
        return pod

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            with contextlib.suppress(OSError, FileNotFoundError):
                netns.remove(ns)
        self.namespaces.clear()


def sock(ns: str, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """An AF_INET socket living in namespace `ns`, usable from this process."""
    return netns.create_socket(ns, socket.AF_INET, kind, proto, flags=0)


class PeerServer:
    """TCP and UDP servers in one namespace that answer every message with the peer they saw,
    `ip:port|<message>`, like a tiny agnhost. Threads stop on close()."""

    def __init__(self, ns: str, port: int) -> None:
        self.tcp = sock(ns)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("0.0.0.0", port))
        self.tcp.listen(16)
        self.udp = sock(ns, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", port))
        self.udp_peers: list[tuple[str, int]] = []
        self._conns: list[socket.socket] = []
        self._threads = [
            threading.Thread(target=self._accept, daemon=True),
            threading.Thread(target=self._udp_loop, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.tcp.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(1 << 16):
                if data.startswith(b"BULK"):  # bulk transfer: count until the marker
                    total = len(data)
                    while not data.endswith(b"END"):
                        data = conn.recv(1 << 16)
                        if not data:
                            return
                        total += len(data)
                    conn.sendall(f"{peer[0]}:{peer[1]}|{total}".encode())
                    continue
                conn.sendall(f"{peer[0]}:{peer[1]}|".encode() + data)

    def _udp_loop(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(1 << 16)
            except OSError:
                return
            if peer is None:  # shut down by close()
                return
            self.udp_peers.append(peer)
            with contextlib.suppress(OSError):  # e.g. no route back to a pod address
                self.udp.sendto(f"{peer[0]}:{peer[1]}|".encode() + data, peer)

    def close(self) -> None:
        for s in [self.tcp, self.udp, *self._conns]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def ask_tcp(conn: socket.socket, message: bytes) -> tuple[str, int, bytes]:
    """Send a message on a connected socket; returns the (ip, port) the server saw and the echo."""
    conn.sendall(message)
    reply = conn.recv(1 << 16)
    peer, _, echo = reply.partition(b"|")
    ip, _, port = peer.decode().partition(":")
    return ip, int(port), echo


def ping(ns: str, dst: str, ident: int, timeout: float = 1.0) -> bool:
    """One ICMP echo from namespace `ns` over a raw socket; True when the matching reply came."""
    s = sock(ns, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.settimeout(timeout)
        s.sendto(icmp_echo(ident, 1, b"flowscope"), (dst, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(2048)
            except TimeoutError:
                return False
            icmp = data[(data[0] & 0xF) * 4 :]
            if icmp[0] == 0 and int.from_bytes(icmp[4:6], "big") == ident:
                return True
        return False
    finally:
        s.close()
