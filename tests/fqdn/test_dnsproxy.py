"""The DNS proxy on loopback, with a real upstream DNS server: flows, DNS rules, the answer
learned before the client gets it, and bad input that never breaks it."""

from __future__ import annotations

import asyncio
import socket
import struct

import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.dns.forward import Upstream, plain_socket
from dataplane.fqdn.answer import query_summary, response_summary
from dataplane.fqdn.dnsproxy import DNSProxy
from dataplane.fqdn.selector import FQDNSelector
from flowscope.flow.model import DNS, Endpoint, L7FlowType, Verdict
from tests.conftest import free_port

ZONE = {"api.example.com.": ["10.9.0.1", "10.9.0.2"], "www.example.org.": ["10.9.0.3"]}


def zone_answer(data: bytes) -> bytes:
    """An authoritative stand-in: the names of ZONE, NXDOMAIN for others."""
    query = dns.message.from_wire(data)
    response = dns.message.make_response(query)
    name = query.question[0].name.to_text().lower()
    if name in ZONE:
        response.answer.append(dns.rrset.from_text(name, 30, "IN", "A", *ZONE[name]))
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


class Upstream53(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.transport.sendto(zone_answer(data), addr)


async def upstream_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    reply = zone_answer(await reader.readexactly(length))
    writer.write(struct.pack("!H", len(reply)) + reply)
    await writer.drain()
    writer.close()


@pytest.fixture
async def proxy():
    loop = asyncio.get_running_loop()
    up_port = free_port()
    upstream, _ = await loop.create_datagram_endpoint(Upstream53, local_addr=("127.0.0.1", up_port))
    upstream_stream = await asyncio.start_server(upstream_tcp, "127.0.0.1", up_port)
    flows, learned, rules = [], [], {}

    async def learn(summary: DNS) -> None:
        await asyncio.sleep(0.01)
        learned.append(summary)

    p = DNSProxy(
        address="127.0.0.1",
        port=free_port(),
        upstreams=lambda: [Upstream("127.0.0.1", up_port)],
        allowed=lambda ip: rules.get(ip),
        learn=learn,
        emit=flows.append,
        describe=lambda ip: Endpoint(1, 100, "shop", (), f"pod-{ip}"),
        new_socket=plain_socket,
        node_name="node-1",
        timeout=0.5,
    )
    await p.start()
    try:
        yield p, flows, learned, rules
    finally:
        await p.close()
        upstream.close()
        upstream_stream.close()


async def ask(port: int, wire: bytes, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, wire)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)


async def test_query_and_answer_become_flows_and_are_learned_first(proxy) -> None:
    p, flows, learned, _ = proxy
    reply = await ask(p.port, dns.message.make_query("API.example.com", "A").to_wire())
    answer = response_summary(reply)
    assert sorted(answer.ips) == ["10.9.0.1", "10.9.0.2"] and answer.ttl == 30
    assert [s.query for s in learned] == ["api.example.com."]  # before the reply left
    request, response = flows
    assert request.l7.type == L7FlowType.REQUEST and request.l7.dns.query == "api.example.com."
    assert request.verdict == Verdict.FORWARDED and request.is_reply is False
    assert request.ip.source == "127.0.0.1" and request.l4.destination_port == p.port
    assert response.l7.type == L7FlowType.RESPONSE and response.is_reply is True
    assert sorted(response.l7.dns.ips) == ["10.9.0.1", "10.9.0.2"] and response.l7.latency_ns > 0
    assert response.node_name == "node-1" and response.destination.pod_name == "pod-127.0.0.1"


async def test_nxdomain_is_passed_with_its_rcode(proxy) -> None:
    p, flows, _, _ = proxy
    reply = await ask(p.port, dns.message.make_query("nope.example.com", "A").to_wire())
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN
    assert flows[-1].l7.dns.rcode == dns.rcode.NXDOMAIN


async def test_a_name_no_dns_rule_allows_is_refused_and_not_forwarded(proxy) -> None:
    p, flows, learned, rules = proxy
    rules["127.0.0.1"] = (FQDNSelector.parse({"matchPattern": "*.example.org"}, "r"),)
    reply = await ask(p.port, dns.message.make_query("api.example.com", "A").to_wire())
    assert dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
    (flow,) = flows
    assert flow.verdict == Verdict.DROPPED and flow.drop_reason == 133 and not learned
    reply = await ask(p.port, dns.message.make_query("www.example.org", "A").to_wire())
    assert response_summary(reply).ips == ("10.9.0.3",)


async def test_tcp_queries_too(proxy) -> None:
    p, flows, _, _ = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    wire = dns.message.make_query("www.example.org", "A").to_wire()
    writer.write(struct.pack("!H", len(wire)) + wire)
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    reply = await reader.readexactly(length)
    writer.close()
    assert response_summary(reply).ips == ("10.9.0.3",)
    assert flows[0].l4.__class__.__name__ == "TCP"


async def test_upstream_down_is_servfail_not_a_hang(proxy) -> None:
    p, _, _, _ = proxy
    p.upstreams = lambda: [Upstream("127.0.0.1", free_port())]
    reply = await ask(p.port, dns.message.make_query("api.example.com", "A").to_wire())
    assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL


async def test_garbage_gets_formerr_or_nothing_and_the_proxy_keeps_serving(proxy) -> None:
    p, _, _, _ = proxy
    wire = dns.message.make_query("api.example.com", "A").to_wire()
    formerr = await ask(p.port, wire[:14])  # truncated question
    assert formerr[:2] == wire[:2] and formerr[3] & 0x0F == dns.rcode.FORMERR
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x01", ("127.0.0.1", p.port))  # not even a header: no answer
        s.sendto(b"\x00\x01" + b"\x00" * 10 + b"\xc0\x0c", ("127.0.0.1", p.port))  # pointer loop
    await asyncio.sleep(0.05)
    assert sorted(response_summary(await ask(p.port, wire)).ips) == ["10.9.0.1", "10.9.0.2"]
    del loop


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_summaries_never_raise_on_any_bytes(data: bytes) -> None:
    query_summary(data)
    response_summary(data)


def _valid() -> bytes:
    response = dns.message.make_response(dns.message.make_query("a.example.com", "A"))
    response.answer.append(dns.rrset.from_text("a.example.com.", 5, "IN", "CNAME", "b.example."))
    response.answer.append(dns.rrset.from_text("b.example.", 5, "IN", "A", "10.0.0.1"))
    return response.to_wire()


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8), st.integers(0, 200)
)
def test_mutated_and_truncated_answers_never_raise(flips, cut) -> None:
    wire = bytearray(_valid())
    for at, value in flips:
        wire[at % len(wire)] = value
    for data in (bytes(wire), bytes(wire[:cut])):
        summary = response_summary(data)
        assert summary is None or isinstance(summary.ips, tuple)
