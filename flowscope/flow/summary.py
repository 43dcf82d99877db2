"""A flow's Summary as Hubble's parser writes it: "TCP Flags: SYN, ACK", "UDP",
"ICMPv4 EchoRequest", "DNS Query example.com. A", "HTTP/1.1 GET http://web/". Producers fill
Flow.summary with it; the compact line falls back to it."""

from __future__ import annotations

from flowscope.flow.model import L4, SCTP, TCP, UDP, ICMPv4, ICMPv6, L7FlowType, Layer7

_ICMPV4_TYPES = {
    0: "EchoReply",
    3: "DestinationUnreachable",
    4: "SourceQuench",
    5: "Redirect",
    8: "EchoRequest",
    11: "TimeExceeded",
    12: "ParameterProblem",
    13: "TimestampRequest",
    14: "TimestampReply",
}
_ICMPV4_CODES = {
    3: (
        "Net",
        "Host",
        "Protocol",
        "Port",
        "FragmentationNeeded",
        "SourceRoutingFailed",
        "NetUnknown",
        "HostUnknown",
        "SourceIsolated",
        "NetAdminProhibited",
        "HostAdminProhibited",
        "NetTOS",
        "HostTOS",
        "CommAdminProhibited",
        "HostPrecedence",
        "PrecedenceCutoff",
    ),
    11: ("TTLExceeded", "FragmentReassemblyTimeExceeded"),
}
_ICMPV6_TYPES = {
    1: "DestinationUnreachable",
    2: "PacketTooBig",
    3: "TimeExceeded",
    4: "ParameterProblem",
    128: "EchoRequest",
    129: "EchoReply",
    133: "RouterSolicitation",
    134: "RouterAdvertisement",
    135: "NeighborSolicitation",
    136: "NeighborAdvertisement",
}


def icmpv4_name(type_: int, code: int) -> str:
    name = _ICMPV4_TYPES.get(type_, str(type_))
    codes = _ICMPV4_CODES.get(type_)
    if codes is not None:
        return f"{name}({codes[code] if code < len(codes) else code})"
    return name


def summary_of(l4: L4 | None) -> str:
    match l4:
        case TCP(flags=flags):
            names = flags.summary_names() if flags else []
            return "TCP Flags: " + ", ".join(names)
        case UDP():
            return "UDP"
        case SCTP():
            return "SCTP"
        case ICMPv4(type=t, code=c):
            return f"ICMPv4 {icmpv4_name(t, c)}"
        case ICMPv6(type=t):
            return f"ICMPv6 {_ICMPV6_TYPES.get(t, str(t))}"
    return ""


# DNS response codes by number (RFC 1035, 2136, 6895), as Hubble names them in summaries
RCODE_NAMES = (
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
)


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES[rcode] if rcode < len(RCODE_NAMES) else str(rcode)


def summary_of_l7(l7: Layer7) -> str:
    """Hubble's L7 summaries: "DNS Query x. A", "DNS Answer "1.2.3.4" TTL: 30 (Proxy x. A)",
    "HTTP/1.1 GET http://web/", "HTTP/1.1 200 3ms (GET http://web/)"."""
    if l7.dns is not None:
        d = l7.dns
        qtypes = ",".join(d.qtypes)
        if l7.type != L7FlowType.RESPONSE:
            return f"DNS Query {d.query} {qtypes}"
        source = "Proxy"
        if d.rcode != 0:
            return f"DNS Answer RCode: {rcode_name(d.rcode)} ({source} {d.query} {qtypes})"
        answer = ",".join((*d.ips, *d.cnames))
        return f'DNS Answer "{answer}" TTL: {d.ttl} ({source} {d.query} {qtypes})'
    if l7.http is not None:
        h = l7.http
        if l7.type == L7FlowType.RESPONSE:
            ms = l7.latency_ns // 1_000_000
            return f"{h.protocol} {h.code} {ms}ms ({h.method} {h.url})"
        return f"{h.protocol} {h.method} {h.url}"
    return ""
