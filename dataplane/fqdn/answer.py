"""What a DNS message says, for a flow's l7.dns record and for the DNS cache. Pure, and never
raises on what arrives from a pod or an upstream: malformed, truncated or compressed-pointer-loop
messages give None (dnspython bounds pointer chasing and reports garbage as FormError)."""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype

from flowscope.flow.model import DNS

OBSERVATION_SOURCE = "proxy"


def _parse(wire: bytes) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(wire, ignore_trailing=True, one_rr_per_rrset=False)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        return None


def _question(msg: dns.message.Message) -> tuple[str, tuple[str, ...]]:
    if not msg.question:
        return "", ()
    names = {rrset.name.to_text().lower() for rrset in msg.question}
    qtypes = tuple(dict.fromkeys(dns.rdatatype.to_text(r.rdtype) for r in msg.question))
    return sorted(names)[0], qtypes


def query_summary(wire: bytes) -> DNS | None:
    """A query: its name and types; None when it is not a parseable query."""
    msg = _parse(wire)
    if msg is None or msg.flags & dns.flags.QR:
        return None
    return query_record(msg)


def query_record(msg: dns.message.Message) -> DNS:
    """The l7.dns record of a query already parsed."""
    name, qtypes = _question(msg)
    return DNS(query=name, qtypes=qtypes, observation_source=OBSERVATION_SOURCE)


def response_summary(wire: bytes) -> DNS | None:
    """A response: rcode, the addresses answered, the smallest TTL of the address records, the
    CNAME chain and the record types; None when it is not a parseable response."""
    msg = _parse(wire)
    if msg is None or not msg.flags & dns.flags.QR:
        return None
    name, qtypes = _question(msg)
    ips: list[str] = []
    cnames: list[str] = []
    rrtypes: list[str] = []
    ttls: list[int] = []
    for rrset in msg.answer:
        rrtypes.append(dns.rdatatype.to_text(rrset.rdtype))
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            # a record of another class (or garbled) parses as generic data: no address
            ips += [a for a in (getattr(r, "address", None) for r in rrset) if isinstance(a, str)]
            ttls.append(rrset.ttl)
        elif rrset.rdtype == dns.rdatatype.CNAME:
            cnames += [
                t.to_text().lower() for t in (getattr(r, "target", None) for r in rrset) if t
            ]
    return DNS(
        query=name,
        ips=tuple(dict.fromkeys(ips)),
        ttl=min(ttls) if ttls else 0,
        cnames=tuple(dict.fromkeys(cnames)),
        observation_source=OBSERVATION_SOURCE,
        rcode=int(msg.rcode()),
        qtypes=qtypes,
        rrtypes=tuple(dict.fromkeys(rrtypes)),
    )
