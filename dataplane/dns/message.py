"""DNS messages on the wire, pure: a datagram or TCP frame in, the reply's bytes out.

Whatever arrives, the outcome is one of: a query to answer (parsed), a reply already decided
(FORMERR for what does not parse but has a header, NOTIMP for other opcodes, BADVERS for EDNS
versions above 0), or nothing at all (shorter than a header, or itself a response: answering
responses would let two servers bounce packets forever).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rrset

from dataplane.dns.records import Answer

HEADER = 12
UDP_DEFAULT = 512  # the most a client without EDNS accepts over UDP
TCP_MAX = 65535
OUR_PAYLOAD = 1232  # the EDNS buffer size we advertise (the DNS flag day value)


@dataclass(frozen=True)
class Query:
    message: dns.message.Message
    wire: bytes

    @property
    def question(self) -> dns.rrset.RRset:
        return self.message.question[0]

    def max_size(self, tcp: bool) -> int:
        """How large a reply the client takes: TCP any; UDP its EDNS payload, else 512."""
        if tcp:
            return TCP_MAX
        if self.message.edns >= 0:
            return max(UDP_DEFAULT, min(self.message.payload, TCP_MAX))
        return UDP_DEFAULT


def _header_reply(wire: bytes, rcode: int) -> bytes:
    """A reply with only a header: for queries too broken to parse beyond it."""
    qid, flags = struct.unpack("!HH", wire[:4])
    flags = (flags & 0x7900) | dns.flags.QR | rcode  # keep opcode and RD, set QR and rcode
    return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


def _response(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=True, our_payload=OUR_PAYLOAD)
    return response


def parse(wire: bytes) -> Query | bytes | None:
    """A query to answer, the bytes of a reply already decided, or None (drop it)."""
    if len(wire) < HEADER:
        return None
    if wire[2] & 0x80:  # QR: a response
        return None
    try:
        message = dns.message.from_wire(wire, ignore_trailing=False)
    except Exception:  # every kind of garbage must become FORMERR
        return _header_reply(wire, dns.rcode.FORMERR)
    try:
        if message.opcode() != dns.opcode.QUERY:
            return _encoded(_with_rcode(message, dns.rcode.NOTIMP), TCP_MAX)
        if len(message.question) != 1 or message.answer or message.authority:
            return _encoded(_with_rcode(message, dns.rcode.FORMERR), TCP_MAX)
        if message.edns > 0:
            return _encoded(_with_rcode(message, dns.rcode.BADVERS), TCP_MAX)
    except Exception:  # a message dnspython parsed but cannot answer
        return _header_reply(wire, dns.rcode.FORMERR)
    return Query(message, wire)


def _with_rcode(query: dns.message.Message, rcode: int) -> dns.message.Message:
    response = _response(query)
    response.set_rcode(rcode)
    return response


def _encoded(response: dns.message.Message, max_size: int) -> bytes:
    try:
        return response.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        # what fits: the question and the TC bit, so the client asks again over TCP
        for section in (response.answer, response.authority, response.additional):
            section.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=max_size)


def reply(query: Query, answer: Answer, tcp: bool) -> bytes:
    """The authoritative reply carrying `answer`, truncated (TC) if the client cannot take it."""
    response = _response(query.message)
    response.flags |= dns.flags.AA
    response.set_rcode(answer.rcode)
    response.answer.extend(answer.answer)
    response.authority.extend(answer.authority)
    response.additional.extend(answer.additional)
    return _encoded(response, query.max_size(tcp))


def refused(query: Query) -> bytes:
    """For names that are not the cluster's when there is nowhere to forward them."""
    return _encoded(_with_rcode(query.message, dns.rcode.REFUSED), UDP_DEFAULT)


def servfail(query: Query) -> bytes:
    return _encoded(_with_rcode(query.message, dns.rcode.SERVFAIL), UDP_DEFAULT)


def is_in_class(query: Query) -> bool:
    return query.question.rdclass == dns.rdataclass.IN


def matches(query: Query, response_wire: bytes) -> bool:
    """Whether an upstream's bytes are a response to this query (same ID, QR set)."""
    return (
        len(response_wire) >= HEADER
        and response_wire[:2] == query.wire[:2]
        and bool(response_wire[2] & 0x80)
    )
