"""A flow's Summary as Hubble's parser writes it: "TCP Flags: SYN, ACK", "UDP",
"ICMPv4 EchoRequest". Producers fill Flow.summary with it; the compact line falls back to it."""

from __future__ import annotations

from flowscope.flow.model import L4, SCTP, TCP, UDP, ICMPv4, ICMPv6

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
