"""Wire handling: every input gives a reply or nothing, never an exception (fuzzed)."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.dns import message
from dataplane.dns.records import cluster_records, resolve
from tests.dns.test_records import DB, RECORDS, WEB, endpoint_slice, port


def answer_wire(wire: bytes, records=RECORDS, tcp: bool = False) -> bytes | None:
    """What the server's in-zone path does with one message."""
    query = message.parse(wire)
    if not isinstance(query, message.Query):
        return query
    answer = resolve(records, query.question.name, query.question.rdtype)
    return message.reply(query, answer, tcp) if answer else message.refused(query)


def test_a_query_round_trip() -> None:
    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    reply = dns.message.from_wire(answer_wire(q.to_wire()))
    assert reply.id == q.id and reply.flags & dns.flags.QR and reply.flags & dns.flags.AA
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rd.address for rd in reply.answer[0]] == ["10.0.0.20"]
    assert reply.question == q.question


def test_short_and_response_messages_are_dropped() -> None:
    assert message.parse(b"") is None
    assert message.parse(b"\x00" * 11) is None
    response = dns.message.make_response(dns.message.make_query("x.", "A"))
    assert message.parse(response.to_wire()) is None  # never answer a response


def test_garbage_after_a_header_is_formerr_with_the_id() -> None:
    wire = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xff\xff\xff"
    reply = message.parse(wire)
    assert isinstance(reply, bytes)
    qid, flags = struct.unpack("!HH", reply[:4])
    assert qid == 0xBEEF and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    assert flags & 0x0100  # RD copied


def test_compression_pointer_loop_is_formerr() -> None:
    # question name = pointer to itself at offset 12
    wire = struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    reply = message.parse(wire)
    assert isinstance(reply, bytes) and reply[3] & 0xF == dns.rcode.FORMERR


def test_two_questions_are_formerr_other_opcodes_notimp() -> None:
    q = dns.message.make_query("web.default.svc.cluster.local.", "A")
    q.question.append(q.question[0])
    reply = dns.message.from_wire(message.parse(q.to_wire()))
    assert reply.rcode() == dns.rcode.FORMERR
    notify = dns.message.make_query("cluster.local.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(message.parse(notify.to_wire()))
    assert reply.rcode() == dns.rcode.NOTIMP


def test_edns_version_above_zero_is_badvers() -> None:
    q = dns.message.make_query("web.default.svc.cluster.local.", "A", use_edns=1)
    reply = dns.message.from_wire(message.parse(q.to_wire()))
    assert reply.rcode() == dns.rcode.BADVERS


def test_edns_query_gets_edns_reply() -> None:
    q = dns.message.make_query("web.default.svc.cluster.local.", "A", use_edns=0, payload=4096)
    reply = dns.message.from_wire(answer_wire(q.to_wire()))
    assert reply.edns == 0 and reply.payload == message.OUR_PAYLOAD


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp() -> None:
    ips = [f"10.244.{i // 250}.{i % 250 + 1}" for i in range(200)]
    big = endpoint_slice("shop", "db", [(ip, True) for ip in ips], [port("pg", 5432)])
    records = cluster_records([DB, WEB], [big])
    q = dns.message.make_query("db.shop.svc.cluster.local.", "A")
    udp = dns.message.from_wire(answer_wire(q.to_wire(), records))
    assert udp.flags & dns.flags.TC and not udp.answer
    assert len(answer_wire(q.to_wire(), records)) <= 512
    tcp = dns.message.from_wire(answer_wire(q.to_wire(), records, tcp=True))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 200
    # an EDNS client with a big buffer gets it all over UDP
    q = dns.message.make_query("db.shop.svc.cluster.local.", "A", use_edns=0, payload=4096)
    assert len(dns.message.from_wire(answer_wire(q.to_wire(), records)).answer[0]) == 200


def test_upstream_reply_matching() -> None:
    q = message.parse(dns.message.make_query("example.com.", "A").to_wire())
    good = dns.message.make_response(q.message).to_wire()
    assert message.matches(q, good)
    assert not message.matches(q, q.wire)  # not a response
    assert not message.matches(q, b"\x00\x01" + good[2:])  # another ID
    assert not message.matches(q, good[:5])


_NAMES = st.sampled_from(
    [
        "web.default.svc.cluster.local.",
        "db.shop.svc.cluster.local.",
        "_pg._tcp.db.shop.svc.cluster.local.",
        "cluster.local.",
        "x.y.pod.cluster.local.",
        "20.0.0.10.in-addr.arpa.",
        "example.com.",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_raise(wire: bytes) -> None:
    out = answer_wire(wire)
    assert out is None or (isinstance(out, bytes) and out[2] & 0x80)


@settings(max_examples=300, deadline=None)
@given(
    _NAMES,
    st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 255, 65535]),
    st.data(),
)
def test_fuzz_mutated_queries_never_raise(name: str, qtype: int, data) -> None:
    q = dns.message.make_query(name, qtype, use_edns=data.draw(st.sampled_from([None, 0])))
    wire = bytearray(q.to_wire())
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    out = answer_wire(bytes(wire[:cut] if data.draw(st.booleans()) else wire))
    if out is not None:
        reply = dns.message.from_wire(out) if out[5] or len(out) > 12 else None
        assert out[:2] == bytes(wire[:2])  # the reply carries the query's ID
        assert reply is None or reply.flags & dns.flags.QR


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=80))
def test_fuzz_names_in_the_zone(label: str) -> None:
    try:
        q = dns.message.make_query(f"{label}.cluster.local.", dns.rdatatype.A)
    except Exception:
        return  # not a name dnspython can encode (empty label, too long)
    reply = dns.message.from_wire(answer_wire(q.to_wire()))
    assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    assert reply.flags & dns.flags.AA
