"""How the proxy reaches a request's original destination: the upstream connection.

On a node, the proxy opens it inside the client pod's network namespace, so that it leaves from
the pod's address and through the pod's own datapath (its policy and flows), as the pod's own
connection would have. In tests and benchmarks it is opened from here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from flowscope.setns import socket_in_netns

Address = tuple[str, int]
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ConnectUpstream = Callable[[], Awaitable[Streams]]


def direct_upstream(client: Address, original_dst: Address) -> ConnectUpstream:
    """Connect to the original destination from this namespace (tests, benchmarks)."""
    del client
    return lambda: asyncio.open_connection(*original_dst)


def netns_upstream(netns_path: str, original_dst: Address) -> ConnectUpstream:
    """Connect to the original destination from inside the network namespace at `netns_path`
    (e.g. /run/netns/fs.<cluster>.<pod>): the socket is made there by a short-lived thread
    (setns moves only that thread) and connected from the event loop."""

    async def connect() -> Streams:
        ip, port = original_dst
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = await asyncio.to_thread(
            socket_in_netns, netns_path, family, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    return connect
