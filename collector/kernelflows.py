"""Kernel events from the tracepoint probes (drops with the kernel's reason, TCP state changes,
retransmits) as flow records, so they show up in `observe` beside the datapath's own flows.

Hubble has no field for the kernel's skb drop reason: such a drop is a DROPPED flow whose
drop_reason is DROP_REASON_UNKNOWN (0) and whose `kernel_drop_reason` (our extension) names the
kernel's reason ("NO_SOCKET"). TCP state changes and retransmits are TRACED flows of type SOCK.

QUEUE_PURGE is not reported: the kernel frees a closing socket's unread queue that way on every
ordinary close, which says nothing about the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from collector.enrich import Enricher
from dataplane.maps.kernelevent import KernelEvent, Kind
from flowscope.flow.model import (
    IP,
    SCTP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    IPVersion,
    MessageType,
    NetworkInterface,
    Verdict,
)

_IPPROTO_TCP, _IPPROTO_UDP, _IPPROTO_SCTP = 6, 17, 132
_PROTOCOL_NAMES = {1: "ICMPv4", _IPPROTO_TCP: "TCP", _IPPROTO_UDP: "UDP", _IPPROTO_SCTP: "SCTP"}
BENIGN_DROP_REASONS = frozenset({"QUEUE_PURGE"})
TC_DROP_REASONS = frozenset({"TC_INGRESS", "TC_EGRESS"})


def reportable(event: KernelEvent, datapath_device: Callable[[int, int], bool]) -> bool:
    """False for drops that say nothing new: benign ones, and the datapath's own tc drops on an
    endpoint's veth (`datapath_device(netns, ifindex)`), which it reported with their reason."""
    if event.kind is not Kind.DROP:
        return True
    if event.drop_reason_name in BENIGN_DROP_REASONS:
        return False
    return not (
        event.drop_reason_name in TC_DROP_REASONS and datapath_device(event.netns, event.ifindex)
    )


def monotonic_to_wall_offset() -> int:
    """Add to a CLOCK_MONOTONIC timestamp (bpf_ktime_get_ns) to get nanoseconds since the epoch."""
    return time.time_ns() - time.monotonic_ns()


def kernel_flow(event: KernelEvent, enricher: Enricher, node: str, wall_offset: int) -> Flow:
    return named_kernel_flow(event, kernel_ends(event, enricher), node, wall_offset)


Ends = tuple[Endpoint | None, Endpoint | None]


def kernel_ends(event: KernelEvent, enricher: Enricher) -> Ends:
    """The endpoints of an event's two addresses (names as they are now: the collector takes
    them when it collects the event and builds the flow later, when a reader asks)."""
    if event.saddr is None or event.daddr is None:
        return None, None
    saddr, daddr = _unmapped(event.saddr), _unmapped(event.daddr)
    return enricher.by_ip(str(saddr)), enricher.by_ip(str(daddr))


def named_kernel_flow(event: KernelEvent, ends: Ends, node: str, wall_offset: int) -> Flow:
    ip = None
    if event.saddr is not None and event.daddr is not None:
        saddr, daddr = _unmapped(event.saddr), _unmapped(event.daddr)
        version = IPVersion.IPv4 if saddr.version == 4 else IPVersion.IPv6
        ip = IP(str(saddr), str(daddr), version)
    return build_kernel_flow(
        event.kind,
        event.time_ns + wall_offset,
        ip,
        event.protocol,
        event.sport,
        event.dport,
        event.ifindex,
        ends,
        event.drop_reason_name or str(event.drop_reason),
        event.old_state,
        event.new_state,
        node,
    )


def build_kernel_flow(
    kind: int,
    time_ns: int,
    ip: IP | None,
    protocol: int,
    sport: int,
    dport: int,
    ifindex: int,
    ends: Ends,
    drop_reason: str,
    old_state: str | None,
    new_state: str | None,
    node: str,
) -> Flow:
    """The flow of a kernel event from its values, names found and time on the wall clock
    (the one builder of both the per-event and the columnar path: the same flows either way)."""
    l4 = None
    src, dst = ends
    if protocol == _IPPROTO_TCP:
        l4 = TCP(sport, dport)
    elif protocol == _IPPROTO_UDP:
        l4 = UDP(sport, dport)
    elif protocol == _IPPROTO_SCTP:
        l4 = SCTP(sport, dport)
    common = dict(
        time_ns=time_ns,
        ip=ip,
        l4=l4,
        source=src,
        destination=dst,
        node_name=node,
        interface=NetworkInterface(ifindex, "") if ifindex else None,
    )
    if kind == Kind.DROP:
        return Flow(
            verdict=Verdict.DROPPED,
            type=FlowType.L3_L4,
            event_type=EventType(MessageType.DROP, 0),
            kernel_drop_reason=drop_reason,
            summary=_PROTOCOL_NAMES.get(protocol, f"IP protocol {protocol}"),
            **common,
        )
    if kind == Kind.STATE:
        summary = f"TCP state {_state(old_state)} -> {_state(new_state)}"
    else:
        summary = f"TCP retransmit in {_state(new_state)}"
    return Flow(verdict=Verdict.TRACED, type=FlowType.SOCK, summary=summary, **common)


def _unmapped(addr: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """A dual-stack socket's IPv4 peer (::ffff:10.244.1.2) as the IPv4 address it is."""
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _state(name: str | None) -> str:
    return (name or "?").removeprefix("TCP_")
