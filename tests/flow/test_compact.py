"""The one-line form, as `hubble observe` prints flows by default."""

from __future__ import annotations

from flowscope.flow import (
    IP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowFilter,
    ICMPv4,
    LostEvent,
    LostEventSource,
    PolicyMatchType,
    Service,
    TCPFlags,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
)
from flowscope.flow.compact import format_compact
from flowscope.flow.model import DNS, HTTP, FlowType, L7FlowType, Layer7, MessageType
from flowscope.flow.summary import summary_of

T0 = 1_764_366_771_123_456_789  # Nov 28 21:52:51.123 UTC
A = Endpoint(12, 12345, "x", ("k8s:pod=a",), "a")
B = Endpoint(7, 23456, "y", ("k8s:pod=b",), "b")


def test_forwarded_and_dropped() -> None:
    fwd = Flow(
        T0,
        Verdict.FORWARDED,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(43210, 80, TCPFlags(SYN=True)),
        source=A,
        destination=B,
        event_type=EventType.trace(TraceObservationPoint.TO_ENDPOINT),
        is_reply=False,
    )
    assert format_compact(fwd) == (
        "Nov 28 21:52:51.123: x/a:43210 (ID:12345) -> y/b:80 (ID:23456) "
        "to-endpoint FORWARDED (TCP Flags: SYN)"
    )
    drop = Flow(
        T0,
        Verdict.DROPPED,
        drop_reason=133,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(43210, 81, TCPFlags(SYN=True)),
        source=A,
        destination=B,
        node_name="node-2",
        event_type=EventType.drop(133),
        summary="TCP Flags: SYN",
    )
    assert format_compact(drop, node_name=True) == (
        "Nov 28 21:52:51.123 [node-2]: x/a:43210 (ID:12345) <> y/b:81 (ID:23456) "
        "Policy denied DROPPED (TCP Flags: SYN)"
    )


def test_reply_swaps_ends_and_reserved_identities_have_names() -> None:
    reply = Flow(
        1_000_000_000,
        Verdict.FORWARDED,
        ip=IP("10.244.2.7", "10.224.0.254"),
        l4=UDP(81, 40000),
        source=B,
        destination=Endpoint(identity=2),
        event_type=EventType.trace(TraceObservationPoint.FROM_ENDPOINT),
        is_reply=True,
    )
    assert format_compact(reply) == (
        "Jan  1 00:00:01.000: 10.224.0.254:40000 (world) <- y/b:81 (ID:23456) "
        "from-endpoint FORWARDED (UDP)"
    )


def test_policy_verdict_and_service_and_icmp() -> None:
    verdict = Flow(
        T0,
        Verdict.AUDIT,
        ip=IP("10.244.1.5", "10.96.0.10"),
        l4=ICMPv4(8, 0),
        source=A,
        destination=Endpoint(),
        destination_service=Service("dns", "kube-system"),
        event_type=EventType.policy_verdict(),
        policy_match_type=PolicyMatchType.L3_L4,
        traffic_direction=TrafficDirection.EGRESS,
        is_reply=False,
    )
    assert format_compact(verdict) == (
        "Nov 28 21:52:51.123: x/a (ID:12345) -> kube-system/dns (unknown) "
        "policy-verdict:L3-L4 EGRESS AUDITED (ICMPv4 EchoRequest)"
    )


def test_lost_events() -> None:
    lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 17, cpu=1, time_ns=T0)
    assert format_compact(lost) == "EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(1) 17"


def test_summaries() -> None:
    assert (
        summary_of(TCP(1, 2, TCPFlags(FIN=True, ACK=True, SYN=True))) == "TCP Flags: SYN, ACK, FIN"
    )
    assert summary_of(ICMPv4(3, 3)) == "ICMPv4 DestinationUnreachable(Port)"
    assert summary_of(None) == ""


def test_filter() -> None:
    flow = Flow(T0, Verdict.DROPPED, source=A, destination=B)
    assert FlowFilter().matches(flow)
    assert FlowFilter(namespaces=("y",)).matches(flow)
    assert not FlowFilter(namespaces=("z",)).matches(flow)
    assert FlowFilter(pods=("x/a",)).matches(flow) and FlowFilter(pods=("b",)).matches(flow)
    assert not FlowFilter(pods=("y/a",)).matches(flow)
    assert not FlowFilter(verdicts=(Verdict.FORWARDED,)).matches(flow)
    assert FlowFilter(namespaces=("x",), verdicts=(Verdict.DROPPED,)).matches(flow)
    lost = LostEvent(LostEventSource.OBSERVER_EVENTS_QUEUE, 1)
    assert FlowFilter(namespaces=("z",)).matches(lost)  # losses always reach the reader
    f = FlowFilter.from_dict({"namespace": "x", "verdict": ["dropped"]})
    assert f == FlowFilter(("x",), (), (Verdict.DROPPED,))
    assert FlowFilter.from_dict(f.to_dict()) == f
    for bad, field in (({"verdict": "SMASHED"}, "verdict"), ({"node": "n"}, "node")):
        try:
            FlowFilter.from_dict(bad)
        except ValueError as exc:
            assert f"filters.{field}" in str(exc)
        else:
            raise AssertionError(bad)


def test_l7_flows_as_hubble_prints_them() -> None:
    def l7(kind: L7FlowType, **record) -> Flow:
        reply = kind == L7FlowType.RESPONSE
        return Flow(
            T0,
            Verdict.FORWARDED,
            ip=IP("10.244.2.7", "10.244.1.5") if reply else IP("10.244.1.5", "10.244.2.7"),
            l4=UDP(53, 40000) if reply else UDP(40000, 53),
            source=B if reply else A,
            destination=A if reply else B,
            type=FlowType.L7,
            event_type=EventType(MessageType.ACCESS_LOG),
            is_reply=reply,
            l7=Layer7(kind, 3_400_000 if reply else 0, **record),
        )

    query = DNS("api.example.com.", qtypes=("A",))
    assert format_compact(l7(L7FlowType.REQUEST, dns=query)) == (
        "Nov 28 21:52:51.123: x/a:40000 (ID:12345) -> y/b:53 (ID:23456) "
        "dns-request FORWARDED (DNS Query api.example.com. A)"
    )
    answer = DNS("api.example.com.", ("1.2.3.4", "1.2.3.5"), 30, qtypes=("A",), rrtypes=("A",))
    assert format_compact(l7(L7FlowType.RESPONSE, dns=answer)).endswith(
        "x/a:40000 (ID:12345) <- y/b:53 (ID:23456) dns-response FORWARDED "
        '(DNS Answer "1.2.3.4,1.2.3.5" TTL: 30 (Proxy api.example.com. A))'
    )
    nx = DNS("nope.example.com.", rcode=3, qtypes=("AAAA",))
    assert format_compact(l7(L7FlowType.RESPONSE, dns=nx)).endswith(
        "(DNS Answer RCode: NXDOMAIN (Proxy nope.example.com. AAAA))"
    )
    get = HTTP(0, "GET", "http://b/public", "HTTP/1.1")
    assert format_compact(l7(L7FlowType.REQUEST, http=get)).endswith(
        "http-request FORWARDED (HTTP/1.1 GET http://b/public)"
    )
    ok = HTTP(200, "GET", "http://b/public", "HTTP/1.1")
    assert format_compact(l7(L7FlowType.RESPONSE, http=ok)).endswith(
        "http-response FORWARDED (HTTP/1.1 200 3ms (GET http://b/public))"
    )
