"""The DNS server on loopback, fed by a store (MemoryKV and real etcd): UDP and TCP, changes
followed, forwarding to an upstream (another instance of the server), refusals, garbage."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest

from dataplane.dns.forward import Upstream, forward
from dataplane.dns.server import ClusterDNS, listen
from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.store import KV, MemoryKV
from tests.conftest import free_port

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
}


@asynccontextmanager
async def running(kv: KV, **options) -> AsyncIterator[tuple[ClusterDNS, int]]:
    server = ClusterDNS(kv, **options)
    await server.load()
    port = free_port()
    transport, tcp = await listen(server, lambda f, k: socket.socket(f, k), "127.0.0.1", port)
    task = asyncio.create_task(server.run())
    try:
        yield server, port
    finally:
        task.cancel()
        transport.close()
        tcp.close()
        await tcp.wait_closed()


async def ask(port: int, name: str, qtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, qtype)
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(query, "127.0.0.1", port=port, timeout=2)


def ips(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


async def eventually(check, what: str, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not (got := await check()):
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)
    return got


async def test_answers_over_udp_and_tcp_and_follows_the_store(kv: KV) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")
    await store.apply([SERVICE])
    ip = (await store.get("Service", "default", "web"))["spec"]["clusterIP"]
    async with running(kv, dns_ip="10.0.0.10") as (_server, port):
        for tcp in (False, True):
            reply = await ask(port, "web.default.svc.cluster.local.", tcp=tcp)
            assert reply.rcode() == dns.rcode.NOERROR and ips(reply) == [ip]
            assert reply.flags & dns.flags.AA
        assert (await ask(port, "other.default.svc.cluster.local.")).rcode() == 3
        # a new service is answered without a restart; a deleted one is gone
        await store.apply([{**SERVICE, "metadata": {"name": "other", "namespace": "default"}}])

        async def other_resolves():
            return ips(await ask(port, "other.default.svc.cluster.local."))

        assert await eventually(other_resolves, "the new service resolves")
        await store.delete([ObjectRef("Service", "default", "web")])

        async def web_gone():
            return (await ask(port, "web.default.svc.cluster.local.")).rcode() == 3

        await eventually(web_gone, "the deleted service is NXDOMAIN")


async def test_names_outside_are_refused_without_upstreams() -> None:
    async with running(MemoryKV()) as (_server, port):
        reply = await ask(port, "example.com.")
        assert reply.rcode() == dns.rcode.REFUSED


async def test_names_outside_are_forwarded_to_an_upstream() -> None:
    outside = MemoryKV()
    await ObjectStore(outside, service_cidr="10.9.0.0/16").apply([SERVICE])
    async with running(outside, domain="outside.test") as (_up, up_port):
        upstream = Upstream("127.0.0.1", up_port)
        async with running(MemoryKV(), upstreams=[upstream]) as (_server, port):
            for tcp in (False, True):
                reply = await ask(port, "web.default.svc.outside.test.", tcp=tcp)
                assert reply.rcode() == dns.rcode.NOERROR
                assert ips(reply)[0].startswith("10.9.")
            # the upstream's negative answers come through as they are
            reply = await ask(port, "nope.default.svc.outside.test.")
            assert reply.rcode() == dns.rcode.NXDOMAIN


async def test_a_dead_upstream_is_servfail() -> None:
    dead = Upstream("127.0.0.1", free_port())  # nothing listens: refused at once
    async with running(MemoryKV(), upstreams=[dead]) as (_server, port):
        assert (await ask(port, "example.com.")).rcode() == dns.rcode.SERVFAIL
        assert (await ask(port, "example.com.", tcp=True)).rcode() == dns.rcode.SERVFAIL


async def test_forward_tries_the_next_upstream() -> None:
    async with running(MemoryKV(), domain="outside.test") as (_up, up_port):
        query = dns.message.make_query("svc.outside.test.", "A")
        reply = await forward(
            query.to_wire(),
            [Upstream("127.0.0.1", free_port()), Upstream("127.0.0.1", up_port)],
            tcp=False,
            timeout=1,
        )
        assert reply is not None and dns.message.from_wire(reply).id == query.id


async def test_garbage_never_stops_the_server() -> None:
    async with running(MemoryKV()) as (_server, port):
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.1", port))
            for junk in (b"", b"\x00", b"\xff" * 12, b"\x12\x34\x01\x00" + b"\xff" * 40):
                await loop.sock_sendall(sock, junk)
            reply = await asyncio.wait_for(loop.sock_recv(sock, 512), 2)
            assert reply[:2] == b"\x12\x34" and reply[3] & 0xF == dns.rcode.FORMERR
        # TCP: a frame cut short, then a client that says nothing
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\x40abc")
        writer.close()
        _r2, silent = await asyncio.open_connection("127.0.0.1", port)
        reply = await ask(port, "cluster.local.", "SOA")
        assert reply.rcode() == dns.rcode.NOERROR
        silent.close()


def test_upstream_parsing() -> None:
    assert Upstream.parse("10.1.2.3") == Upstream("10.1.2.3", 53)
    assert str(Upstream.parse("10.1.2.3:5353")) == "10.1.2.3:5353"
    for bad in ("nope", "10.1.2.3:0", "10.1.2.3:x", "::1"):
        with pytest.raises(Exception, match="--upstream"):
            Upstream.parse(bad)


async def test_too_many_forwards_at_once_fail_fast(monkeypatch) -> None:
    import dataplane.dns.server as server_module

    async with running(MemoryKV(), domain="outside.test") as (_up, up_port):
        upstream = Upstream("127.0.0.1", up_port)
        async with running(MemoryKV(), upstreams=[upstream]) as (_server, port):
            assert (await ask(port, "outside.test.", "SOA")).rcode() == dns.rcode.NOERROR
            monkeypatch.setattr(server_module, "MAX_FORWARDS", 0)
            assert (await ask(port, "outside.test.", "SOA")).rcode() == dns.rcode.SERVFAIL
            # names of the cluster are answered whatever the forwarding load
            assert (await ask(port, "cluster.local.", "SOA")).rcode() == dns.rcode.NOERROR
