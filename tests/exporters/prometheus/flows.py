"""Hand-made flows for the Prometheus exporter's tests and benchmark: L3/L4 trace, drop and
policy-verdict events, and L7 DNS and HTTP records as the L7 proxy will report them."""

from __future__ import annotations

from flowscope.flow.model import (
    DNS,
    HTTP,
    IP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    ICMPv4,
    L7FlowType,
    Layer7,
    MessageType,
    TCPFlags,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
    Workload,
)

T0 = 1_764_000_000_000_000_000


def pod(ns: str, name: str, app: str, identity: int = 1000) -> Endpoint:
    return Endpoint(
        id=identity % 4000,
        identity=identity,
        namespace=ns,
        labels=(f"k8s:app={app}", f"k8s:io.kubernetes.pod.namespace={ns}"),
        pod_name=name,
        workloads=(Workload(app, "Deployment"),),
    )


WEB = pod("default", "web-7d4b9c-x2k1p", "web", 1001)
DB = pod("default", "db-5f6c7-abcde", "db", 1002)
CLIENT = pod("shop", "client-66b8d-qwert", "client", 1003)
WORLD = Endpoint(identity=2, labels=("reserved:world",))
HOST = Endpoint(identity=1, labels=("reserved:host",))


def tcp(
    src: Endpoint = WEB,
    dst: Endpoint = DB,
    dport: int = 5432,
    flags: int = 0x02,
    verdict: Verdict = Verdict.FORWARDED,
    reply: bool | None = False,
    drop_reason: int = 0,
    sip: str = "10.0.1.5",
    dip: str = "10.0.2.7",
    direction: TrafficDirection = TrafficDirection.EGRESS,
    event: EventType | None = None,
) -> Flow:
    if event is None:
        event = (
            EventType.drop(drop_reason)
            if verdict == Verdict.DROPPED
            else EventType.trace(TraceObservationPoint.TO_ENDPOINT)
        )
    return Flow(
        time_ns=T0,
        verdict=verdict,
        drop_reason=drop_reason,
        ip=IP(sip, dip),
        l4=TCP(40000, dport, TCPFlags.from_bits(flags)),
        source=src,
        destination=dst,
        event_type=event,
        is_reply=reply,
        traffic_direction=direction,
        node_name="node-1",
    )


def udp(dport: int = 53, reply: bool | None = False, dst: Endpoint = DB) -> Flow:
    return Flow(
        time_ns=T0,
        verdict=Verdict.FORWARDED,
        ip=IP("10.0.1.5", "10.0.2.7"),
        l4=UDP(40001, dport),
        source=WEB,
        destination=dst,
        event_type=EventType.trace(TraceObservationPoint.TO_STACK),
        is_reply=reply,
        node_name="node-1",
    )


def icmp(type_: int = 8, code: int = 0) -> Flow:
    return Flow(
        time_ns=T0,
        verdict=Verdict.FORWARDED,
        ip=IP("10.0.1.5", "10.0.2.7"),
        l4=ICMPv4(type_, code),
        source=WEB,
        destination=DB,
        event_type=EventType.trace(TraceObservationPoint.FROM_ENDPOINT),
        node_name="node-1",
    )


def policy_verdict(
    verdict: Verdict = Verdict.DROPPED,
    match: int = 2,
    direction: TrafficDirection = TrafficDirection.INGRESS,
    src: Endpoint = CLIENT,
) -> Flow:
    return Flow(
        time_ns=T0,
        verdict=verdict,
        drop_reason=133 if verdict == Verdict.DROPPED else 0,
        ip=IP("10.0.3.9", "10.0.1.5"),
        l4=TCP(40002, 80, TCPFlags.from_bits(0x02)),
        source=src,
        destination=WEB,
        event_type=EventType.policy_verdict(),
        traffic_direction=direction,
        policy_match_type=match,
        is_reply=False,
        node_name="node-1",
    )


def dns(
    reply: bool,
    query: str = "db.default.svc.cluster.local.",
    qtypes: tuple[str, ...] = ("A",),
    rcode: int = 0,
    ips: tuple[str, ...] = (),
    rrtypes: tuple[str, ...] = (),
    verdict: Verdict = Verdict.FORWARDED,
) -> Flow:
    return Flow(
        time_ns=T0,
        verdict=verdict,
        type=2,
        ip=IP("10.0.1.5", "10.0.0.10") if not reply else IP("10.0.0.10", "10.0.1.5"),
        l4=UDP(40003, 53) if not reply else UDP(53, 40003),
        l7=Layer7(
            L7FlowType.RESPONSE if reply else L7FlowType.REQUEST,
            dns=DNS(query=query, ips=ips, rcode=rcode, qtypes=qtypes, rrtypes=rrtypes),
        ),
        source=WEB,
        destination=DB,
        event_type=EventType(MessageType.ACCESS_LOG, 0),
        is_reply=reply,
        traffic_direction=TrafficDirection.EGRESS,
        node_name="node-1",
    )


def http(
    response: bool,
    method: str = "GET",
    code: int = 200,
    latency_s: float = 0.0,
    url: str = "http://db/api",
    direction: TrafficDirection = TrafficDirection.EGRESS,
    src: Endpoint = WEB,
    dst: Endpoint = DB,
) -> Flow:
    return Flow(
        time_ns=T0,
        verdict=Verdict.FORWARDED,
        type=2,
        ip=IP("10.0.1.5", "10.0.2.7"),
        l4=TCP(40004, 80),
        l7=Layer7(
            L7FlowType.RESPONSE if response else L7FlowType.REQUEST,
            latency_ns=int(latency_s * 1e9),
            http=HTTP(code=code if response else 0, method=method, url=url, protocol="HTTP/1.1"),
        ),
        source=src,
        destination=dst,
        event_type=EventType(MessageType.ACCESS_LOG, 0),
        is_reply=response,
        traffic_direction=direction,
        node_name="node-1",
    )
