"""Hubble's FlowFilter messages as predicates over flows: each field, AND within a filter, OR across
filters, blacklist exclusion, and errors naming the field."""

from __future__ import annotations

import pytest

from flowscope.flow.model import (
    DNS,
    HTTP,
    IP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    ICMPv4,
    IPVersion,
    L7FlowType,
    Layer7,
    LostEvent,
    LostEventSource,
    Service,
    TCPFlags,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
    Workload,
)
from flowscope.flow.protofilter import (
    FilterError,
    compile_filter,
    compile_selection,
    parse_selector,
)
from flowscope.proto import flow_pb2

T0 = 1_764_366_771_000_000_000

WEB = Flow(
    T0,
    Verdict.FORWARDED,
    ip=IP("10.244.1.5", "10.244.2.7"),
    l4=TCP(40000, 80, TCPFlags.from_bits(0x12)),  # SYN ACK
    source=Endpoint(
        identity=300,
        namespace="default",
        labels=("k8s:app=web", "k8s:tier=front"),
        pod_name="web-1",
        workloads=(Workload("web", "Deployment"),),
    ),
    destination=Endpoint(identity=301, namespace="db", labels=("k8s:app=pg",), pod_name="pg-0"),
    node_name="node-1",
    event_type=EventType.trace(TraceObservationPoint.TO_ENDPOINT),
    destination_service=Service("pg", "db"),
    traffic_direction=TrafficDirection.EGRESS,
    is_reply=False,
    uuid="u-1",
)
DROP = Flow(
    T0 + 1,
    Verdict.DROPPED,
    drop_reason=133,
    ip=IP("fd00::1", "fd00::2", IPVersion.IPv6),
    l4=UDP(5353, 53),
    source=Endpoint(identity=2, labels=("reserved:world",)),
    destination=Endpoint(identity=301, namespace="db", pod_name="pg-0"),
    node_name="node-2",
    event_type=EventType.drop(133),
    traffic_direction=TrafficDirection.INGRESS,
)
PING = Flow(T0 + 2, Verdict.FORWARDED, ip=IP("10.0.0.1", "10.0.0.2"), l4=ICMPv4(8, 0))
FLOWS = {"web": WEB, "drop": DROP, "ping": PING}


def names(**fields) -> set[str]:
    f = compile_filter(flow_pb2.FlowFilter(**fields))
    return {n for n, flow in FLOWS.items() if f.matches(flow)}


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({}, {"web", "drop", "ping"}),
        ({"source_ip": ["10.244.1.5"]}, {"web"}),
        ({"source_ip": ["10.244.0.0/16"]}, {"web"}),
        ({"destination_ip": ["fd00::/64", "10.0.0.2"]}, {"drop", "ping"}),
        ({"source_pod": ["default/web-"]}, {"web"}),
        ({"source_pod": ["web"]}, {"web"}),  # any namespace
        ({"source_pod": ["other/web"]}, set()),
        ({"destination_pod": ["db/"]}, {"web", "drop"}),
        ({"source_label": ["app=web"]}, {"web"}),
        ({"source_label": ["k8s:app in (web, pg),tier"]}, {"web"}),
        ({"source_label": ["app!=web"]}, {"drop"}),  # a missing key is != anything
        ({"source_label": ["!app"]}, {"drop"}),
        ({"source_label": ["reserved:world"]}, {"drop"}),
        ({"source_label": ["k8s:world"]}, set()),
        ({"destination_label": ["app notin (pg)"]}, {"drop"}),
        ({"source_identity": [2, 300]}, {"web", "drop"}),
        ({"destination_identity": [301]}, {"web", "drop"}),
        ({"destination_service": ["db/pg"]}, {"web"}),
        ({"destination_service": ["p"]}, {"web"}),
        ({"source_service": ["pg"]}, set()),
        ({"source_workload": [flow_pb2.Workload(kind="Deployment")]}, {"web"}),
        ({"verdict": [flow_pb2.DROPPED]}, {"drop"}),
        ({"verdict": [flow_pb2.FORWARDED, flow_pb2.DROPPED]}, {"web", "drop", "ping"}),
        ({"drop_reason_desc": [flow_pb2.POLICY_DENIED]}, {"drop"}),
        ({"protocol": ["tcp"]}, {"web"}),
        ({"protocol": ["UDP", "icmp"]}, {"drop", "ping"}),
        ({"source_port": ["40000"]}, {"web"}),
        ({"destination_port": ["53", "80"]}, {"web", "drop"}),
        ({"tcp_flags": [flow_pb2.TCPFlags(SYN=True)]}, {"web"}),
        ({"tcp_flags": [flow_pb2.TCPFlags(SYN=True, FIN=True)]}, set()),
        ({"node_name": ["node-*"]}, {"web", "drop"}),
        ({"node_name": ["node-2"]}, {"drop"}),
        ({"traffic_direction": [flow_pb2.INGRESS]}, {"drop"}),
        ({"reply": [False]}, {"web", "drop"}),  # a drop of unknown direction is not a reply
        ({"reply": [True]}, set()),
        ({"ip_version": [flow_pb2.IPv6]}, {"drop"}),
        ({"event_type": [flow_pb2.EventTypeFilter(type=4)]}, {"web"}),
        ({"event_type": [flow_pb2.EventTypeFilter(type=4, match_sub_type=True)]}, {"web"}),
        (
            {"event_type": [flow_pb2.EventTypeFilter(type=4, match_sub_type=True, sub_type=5)]},
            set(),
        ),
        ({"event_type": [flow_pb2.EventTypeFilter(type=1, sub_type=9)]}, {"drop"}),
        ({"uuid": ["u-1"]}, {"web"}),
        # several fields: all must match
        ({"destination_pod": ["db/"], "verdict": [flow_pb2.FORWARDED]}, {"web"}),
        ({"protocol": ["udp"], "node_name": ["node-1"]}, set()),
    ],
)
def test_each_field_and_their_conjunction(fields: dict, want: set[str]) -> None:
    assert names(**fields) == want


def test_filters_in_a_list_or_and_the_blacklist_excludes() -> None:
    sel = compile_selection(
        whitelist=[
            flow_pb2.FlowFilter(protocol=["tcp"]),
            flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED]),
        ]
    )
    assert [sel.matches(f) for f in (WEB, DROP, PING)] == [True, True, False]
    sel = compile_selection(blacklist=[flow_pb2.FlowFilter(protocol=["icmp"])])
    assert [sel.matches(f) for f in (WEB, DROP, PING)] == [True, True, False]
    sel = compile_selection(
        whitelist=[flow_pb2.FlowFilter(destination_pod=["db/"])],
        blacklist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])],
    )
    assert [sel.matches(f) for f in (WEB, DROP, PING)] == [True, False, False]
    assert compile_selection().empty and not sel.empty
    # lost events pass whatever is asked: the reader must learn it missed something
    lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 3, None, T0)
    assert compile_selection(whitelist=[flow_pb2.FlowFilter(uuid=["none"])]).matches(lost)


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"source_ip": ["10.0.0.1", "10.0.0.300/8"]}, "whitelist[1].source_ip[1]", "CIDR"),
        ({"destination_port": ["http"]}, "whitelist[1].destination_port[0]", "port"),
        ({"source_port": ["70000"]}, "whitelist[1].source_port[0]", "0-65535"),
        ({"http_path": ["/api/("]}, "whitelist[1].http_path[0]", "regular expression"),
        ({"source_fqdn": ["a example"]}, "whitelist[1].source_fqdn[0]", "DNS name"),
        ({"dns_query": ["x("]}, "whitelist[1].dns_query[0]", "regular expression"),
        ({"http_status_code": ["6+"]}, "whitelist[1].http_status_code[0]", "status"),
        ({"http_method": ["FETCH"]}, "whitelist[1].http_method[0]", "HTTP method"),
        ({"protocol": ["gre"]}, "whitelist[1].protocol[0]", "not a protocol"),
        ({"source_label": ["app=(x"]}, "whitelist[1].source_label[0]", "selector"),
        ({"source_pod": [""]}, "whitelist[1].source_pod[0]", "empty"),
        ({"source_pod": ["/web"]}, "whitelist[1].source_pod[0]", "namespace"),
        ({"tcp_flags": [flow_pb2.TCPFlags()]}, "whitelist[1].tcp_flags[0]", "no flag"),
        ({"verdict": [42]}, "whitelist[1].verdict[0]", "Verdict"),
        ({"node_name": [" "]}, "whitelist[1].node_name[0]", "empty"),
    ],
)
def test_bad_values_and_unsupported_fields_name_the_field(
    fields: dict, field: str, says: str
) -> None:
    with pytest.raises(FilterError, match=says) as exc:
        compile_selection(whitelist=[flow_pb2.FlowFilter(), flow_pb2.FlowFilter(**fields)])
    assert exc.value.field == field and str(exc.value).startswith(field + ": ")


def test_blacklist_errors_name_the_blacklist() -> None:
    with pytest.raises(FilterError) as exc:
        compile_selection(blacklist=[flow_pb2.FlowFilter(destination_ip=["nope"])])
    assert exc.value.field == "blacklist[0].destination_ip[0]"


def test_selector_syntax() -> None:
    (req,) = parse_selector("k8s:app==web")
    assert (req.source, req.key, req.op, req.values) == ("k8s", "app", "in", frozenset({"web"}))
    assert len(parse_selector("a, b in (1,2), !c, d!=e")) == 4
    for bad in ("", "a in ()", ":a", "a b"):
        with pytest.raises(ValueError):
            parse_selector(bad)


def test_fqdn_matches_the_names_of_either_end_with_wildcards() -> None:
    named = Flow(
        T0,
        Verdict.FORWARDED,
        ip=IP("10.244.1.5", "10.224.0.254"),
        l4=TCP(40000, 80),
        source_names=("web.x.svc.cluster.local",),
        destination_names=("api.example.com.",),
    )

    def hits(**fields: list[str]) -> list[bool]:
        f = compile_filter(flow_pb2.FlowFilter(**fields))
        return [f.matches(x) for x in (named, WEB)]

    assert hits(destination_fqdn=["api.example.com"]) == [True, False]
    assert hits(destination_fqdn=["*.EXAMPLE.com"]) == [True, False]
    assert hits(destination_fqdn=["*.example.org"]) == [False, False]
    assert hits(source_fqdn=["web.*.svc.cluster.local"]) == [True, False]
    assert hits(source_fqdn=["api.example.com"]) == [False, False]


def test_http_filters_are_checked_and_match_no_l4_flow() -> None:
    for fields in (
        {"http_method": ["get", "POST"]},
        {"http_status_code": ["404", "5+", "40+"]},
        {"http_path": [r"/page/\\d+"]},
    ):
        f = compile_filter(flow_pb2.FlowFilter(**fields))
        assert not f.matches(WEB) and not f.matches(DROP)
    # as a blacklist it takes nothing away
    sel = compile_selection(blacklist=[flow_pb2.FlowFilter(http_method=["GET"])])
    assert sel.matches(WEB)


def _l7(**record) -> Flow:
    return Flow(
        T0,
        Verdict.FORWARDED,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(40000, 80),
        type=FlowType.L7,
        l7=Layer7(L7FlowType.RESPONSE, 1_000_000, **record),
    )


def test_l7_filters_match_the_l7_record_as_hubble_does() -> None:
    get_ok = _l7(http=HTTP(200, "GET", "http://web/page/12?q=1", "HTTP/1.1"))
    post_503 = _l7(http=HTTP(503, "post", "http://web/api", "HTTP/1.1"))
    request = _l7(http=HTTP(0, "GET", "http://web/page/1", "HTTP/1.1"))
    dns = _l7(dns=DNS("api.example.com.", ("1.2.3.4",), 30, qtypes=("A",)))
    flows = (get_ok, post_503, request, dns, WEB)

    def hits(**fields) -> list[bool]:
        f = compile_filter(flow_pb2.FlowFilter(**fields))
        return [f.matches(x) for x in flows]

    assert hits(http_method=["get"]) == [True, False, True, False, False]
    assert hits(http_method=["POST"]) == [False, True, False, False, False]
    # a request has no status; "5+" is a prefix, "404" exact
    assert hits(http_status_code=["5+"]) == [False, True, False, False, False]
    assert hits(http_status_code=["200"]) == [True, False, False, False, False]
    assert hits(http_status_code=["20+", "50+"]) == [True, True, False, False, False]
    # the path is matched without the query string
    assert hits(http_path=[r"^/page/\d+$"]) == [True, False, True, False, False]
    assert hits(http_path=["q=1"]) == [False] * 5
    assert hits(dns_query=[r"example\.com\.$"]) == [False, False, False, True, False]
    assert hits(protocol=["http"]) == [True, True, True, False, False]
    assert hits(protocol=["dns", "tcp"]) == [True, True, True, True, True]
    assert hits(protocol=["dns"]) == [False, False, False, True, False]
