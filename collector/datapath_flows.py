"""The datapath's flow events (probes/datapath.c, decoded by dataplane.maps.flowevent) as flow
records with names: endpoints, identities, labels, the policy that allowed the flow, and the
service a translated connection was made to (collector.translations)."""

from __future__ import annotations

import functools

from collector.enrich import Enricher
from collector.translations import Link, RecentTranslations
from dataplane.maps.flowevent import CtState, FlowEvent, ObservationPoint, member_of
from dataplane.policy.entry import Direction
from flowscope.flow.model import (
    IP,
    SCTP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    ICMPv4,
    NetworkInterface,
    Policy,
    TCPFlags,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
)
from flowscope.flow.summary import summary_of

_IPPROTO_ICMP, _IPPROTO_TCP, _IPPROTO_UDP, _IPPROTO_SCTP = 1, 6, 17, 132


_text = functools.lru_cache(maxsize=65536)(str)  # an address's text, once per address


@functools.cache
def _tcp_summary(bits: int) -> str:
    return summary_of(TCP(flags=TCPFlags.from_bits(bits)))


def _l4(ev: FlowEvent):
    if ev.proto == _IPPROTO_TCP:
        return TCP(ev.sport, ev.dport, TCPFlags.from_bits(ev.tcp_flags))
    if ev.proto == _IPPROTO_UDP:
        return UDP(ev.sport, ev.dport)
    if ev.proto == _IPPROTO_SCTP:
        return SCTP(ev.sport, ev.dport)
    if ev.proto == _IPPROTO_ICMP:
        return ICMPv4(ev.icmp_type, ev.icmp_code)
    return None


def datapath_flow(
    ev: FlowEvent,
    enricher: Enricher,
    node: str,
    wall_offset: int,
    links: RecentTranslations | None = None,
) -> Flow:
    """One event as a flow, named now (the collector names whole batches instead:
    collector.columns). The local endpoint is the source at from-endpoint (the pod sends)
    and the destination at to-endpoint; the endpoint id belongs to that side only. A packet of
    a connection the socket LB translated (found in `links`) names the service: as
    destination_service on the client's packets, as source_service on the backend's replies."""
    from_endpoint = ev.obs_point == ObservationPoint.FROM_ENDPOINT
    src_id = ev.endpoint_id if from_endpoint else 0
    dst_id = 0 if from_endpoint else ev.endpoint_id
    saddr, daddr = _text(ev.saddr), _text(ev.daddr)
    src = enricher.endpoint(saddr, ev.src_identity, src_id)
    dst = enricher.endpoint(daddr, ev.dst_identity, dst_id)
    allowed: tuple[Policy, ...] = ()
    if ev.verdict == Verdict.FORWARDED and ev.ct_state == CtState.NEW:  # its allow rule
        allowed = enricher.allowed_by(ev.policy_cookie, policy_direction(ev.traffic_direction))
    link = None
    if links is not None and (ev.proto == _IPPROTO_TCP or ev.proto == _IPPROTO_UDP):
        time_ns = ev.ktime_ns + wall_offset
        if ev.is_reply:  # backend -> client
            link = links.lookup((daddr, saddr, int(ev.sport), int(ev.proto)), time_ns)
        else:
            link = links.lookup((saddr, daddr, int(ev.dport), int(ev.proto)), time_ns)
    names = (enricher.names_of(saddr), enricher.names_of(daddr))
    return named_flow(ev, src, dst, allowed, link, node, wall_offset, names)


def policy_direction(traffic_direction: int) -> Direction:
    """The policy direction whose rule allowed a packet seen in this traffic direction."""
    return Direction.EGRESS if traffic_direction == TrafficDirection.EGRESS else Direction.INGRESS


def named_flow(
    ev: FlowEvent,
    src: Endpoint,
    dst: Endpoint,
    allowed: tuple[Policy, ...],
    link: Link | None,
    node: str,
    wall_offset: int,
    names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
) -> Flow:
    """The flow of an event whose names were found already: its two endpoints, the policy
    that allowed it (new connections only), its socket-LB translation and the DNS names its
    addresses are known by (what the node's DNS proxy saw answered for them)."""
    l4 = _l4(ev)
    verdict = member_of(Verdict, ev.verdict)
    point = member_of(TraceObservationPoint, ev.obs_point)
    if verdict == Verdict.DROPPED:
        event_type = EventType.drop(int(ev.drop_reason))
    elif int(ev.event_type) == EventType.policy_verdict().type:
        event_type = EventType.policy_verdict()
    else:
        event_type = EventType.trace(point)
    direction = member_of(TrafficDirection, ev.traffic_direction)
    return Flow(
        time_ns=ev.ktime_ns + wall_offset,
        verdict=verdict,
        drop_reason=int(ev.drop_reason) if verdict == Verdict.DROPPED else 0,
        ip=IP(_text(ev.saddr), _text(ev.daddr)),
        l4=l4,
        source=src,
        destination=dst,
        type=FlowType.L3_L4,
        source_names=names[0],
        destination_names=names[1],
        node_name=node,
        event_type=event_type,
        traffic_direction=direction,
        trace_observation_point=point,
        is_reply=ev.is_reply,
        interface=NetworkInterface(ev.ifindex, "") if ev.ifindex else None,
        egress_allowed_by=allowed if direction == TrafficDirection.EGRESS else (),
        ingress_allowed_by=allowed if direction == TrafficDirection.INGRESS else (),
        policy_cookie=ev.policy_cookie or None,
        destination_service=link.service if link and not ev.is_reply else None,
        source_service=link.service if link and ev.is_reply else None,
        service_translation=link.translation if link else None,
        summary=_tcp_summary(ev.tcp_flags) if ev.proto == _IPPROTO_TCP else summary_of(l4),
    )
