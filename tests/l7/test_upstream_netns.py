"""The upstream leg made inside another network namespace (as the node agent makes it inside the
client pod's): a request through the proxy reaches a server that only that namespace can see."""

from __future__ import annotations

import asyncio
import socket

import pytest
from pyroute2 import AsyncIPRoute, netns

import flowscope.netns_sockets  # noqa: F401  (installs the thread-based netns.create)
from dataplane.l7.httpproxy import HTTPProxy, ProxyConfig, serve
from dataplane.l7.httprules import parse_http_rules
from dataplane.l7.upstream import netns_upstream
from flowscope.flow.model import L7FlowType, Verdict
from flowscope.setns import socket_in_netns
from tests.conftest import unique
from tests.l7.httpharness import Client

pytestmark = pytest.mark.privileged


async def test_proxy_reaches_a_server_inside_the_namespace() -> None:
    name = unique("fsl7-")
    netns.create(name)
    path = f"/run/netns/{name}"
    listener = server = None
    try:
        async with AsyncIPRoute(netns=name, flags=0) as ipr:
            lo = (await ipr.link_lookup(ifname="lo"))[0]
            await ipr.link("set", index=lo, state="up")
        seen: list[bytes] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ninside")
            await writer.drain()
            writer.close()

        inner = socket_in_netns(path, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        inner.bind(("127.0.0.1", 0))
        inner.listen()
        inner.setblocking(False)
        port = inner.getsockname()[1]
        server = await asyncio.start_server(answer, sock=inner)

        flows = []
        proxy = HTTPProxy(ProxyConfig(connect_timeout=2), emit=flows.append)
        outer = socket.socket()
        outer.bind(("127.0.0.1", 0))
        outer.listen()
        outer.setblocking(False)
        rules = parse_http_rules([{"path": "/ok"}], "test")
        listener = await serve(
            outer,
            lambda _s: ("127.0.0.1", port),  # the original destination, as the namespace sees it
            proxy,
            rules_for=lambda _c, _d: rules,
            upstream_for=lambda _c, dst: netns_upstream(path, dst),
        )
        c = await Client.connect(listener.address)
        await c.send(b"GET /ok HTTP/1.1\r\nHost: inside\r\n\r\n")
        reply = await c.reply()
        await c.close()
        assert reply.code == 200 and reply.body == b"inside"
        assert len(seen) == 1 and seen[0].startswith(b"GET /ok HTTP/1.1")
        assert [(f.l7.type, f.verdict) for f in flows] == [
            (L7FlowType.REQUEST, Verdict.FORWARDED),
            (L7FlowType.RESPONSE, Verdict.FORWARDED),
        ]
        # nothing listens on that port in this (the root) namespace
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        if listener is not None:
            await listener.close()
        if server is not None:
            server.close()
        netns.remove(name)
