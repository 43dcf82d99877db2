"""Forwarding names outside the cluster domain to upstream resolvers, as CoreDNS's forward plugin.

The query goes out unchanged (same ID, same EDNS) over the transport the client used, to each
upstream in turn until one answers in time. Sockets come from a factory so that the server can
open them inside its pod's network namespace: forwarded queries are the pod's traffic, subject
to its egress policy, as they are for CoreDNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from flowscope.errors import UsageError

SocketFactory = Callable[[int, int], socket.socket]  # (family, type) -> an unconnected socket
TIMEOUT = 2.0  # seconds per upstream


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """`IP` or `IP:PORT`."""
        host, sep, port_text = text.partition(":")
        try:
            ip = str(IPv4Address(host))
            port = int(port_text) if sep else 53
        except ValueError:
            raise UsageError(f"--upstream {text!r}: write an IPv4 address, or IP:PORT") from None
        if not 1 <= port <= 65535:
            raise UsageError(f"--upstream {text!r}: port {port} is out of range 1-65535")
        return cls(ip, port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def plain_socket(family: int, kind: int) -> socket.socket:
    return socket.socket(family, kind)


async def _udp(wire: bytes, upstream: Upstream, new_socket: SocketFactory, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    sock = await asyncio.to_thread(new_socket, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (upstream.host, upstream.port))
        await loop.sock_sendall(sock, wire)
        while True:  # a connected UDP socket only hears this upstream; skip stale IDs
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
            if data[:2] == wire[:2]:
                return data


async def _read_exactly(loop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ConnectionError("upstream closed the connection")
        data += chunk
    return data


async def _tcp(wire: bytes, upstream: Upstream, new_socket: SocketFactory, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    sock = await asyncio.to_thread(new_socket, socket.AF_INET, socket.SOCK_STREAM)

    async def exchange() -> bytes:
        await loop.sock_connect(sock, (upstream.host, upstream.port))
        await loop.sock_sendall(sock, struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", await _read_exactly(loop, sock, 2))
        return await _read_exactly(loop, sock, length)

    with sock:
        sock.setblocking(False)
        return await asyncio.wait_for(exchange(), timeout)


async def forward(
    wire: bytes,
    upstreams: Sequence[Upstream],
    *,
    tcp: bool,
    new_socket: SocketFactory = plain_socket,
    timeout: float = TIMEOUT,
) -> bytes | None:
    """The first upstream's reply to `wire`, or None when none answered."""
    exchange = _tcp if tcp else _udp
    for upstream in upstreams:
        with contextlib.suppress(OSError, TimeoutError, ConnectionError):
            return await exchange(wire, upstream, new_socket, timeout)
    return None
