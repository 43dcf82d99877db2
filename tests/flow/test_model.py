"""The flow record: Hubble's JSON shape and names, round trips, and reading Hubble's own output."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowscope.flow import (
    IP,
    SCTP,
    TCP,
    UDP,
    DropReason,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    ICMPv4,
    ICMPv6,
    IPVersion,
    LostEvent,
    LostEventSource,
    NetworkInterface,
    Policy,
    Service,
    TCPFlags,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
    Workload,
    record_from_json,
)
from flowscope.flow.timestamp import format_rfc3339, parse_rfc3339

T0 = 1_764_366_771_123_456_789  # 2025-11-28T21:52:51.123456789Z


def dropped_flow() -> Flow:
    return Flow(
        time_ns=T0,
        verdict=Verdict.DROPPED,
        drop_reason=DropReason.POLICY_DENIED,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(43210, 80, TCPFlags(SYN=True)),
        source=Endpoint(12, 300, "x", ("k8s:pod=a", "k8s:io.kubernetes.pod.namespace=x"), "a"),
        destination=Endpoint(
            7, 301, "y", ("k8s:pod=b",), "b", (Workload("b", "Pod"),), cluster_name="lab"
        ),
        node_name="node-2",
        event_type=EventType.drop(133),
        traffic_direction=TrafficDirection.INGRESS,
        is_reply=False,
        ingress_denied_by=(Policy("deny-all", "y", (), 3),),
        policy_cookie=0,
        summary="TCP Flags: SYN",
    )


def test_json_is_hubbles_get_flows_response() -> None:
    line = dropped_flow().to_json()
    assert "\n" not in line
    obj = json.loads(line)
    assert list(obj) == ["flow", "node_name", "time"]
    assert obj["node_name"] == "node-2"
    assert obj["time"] == "2025-11-28T21:52:51.123456789Z"
    flow = obj["flow"]
    assert flow["verdict"] == "DROPPED"
    assert flow["drop_reason"] == 133
    assert flow["drop_reason_desc"] == "POLICY_DENIED"
    assert flow["IP"] == {"source": "10.244.1.5", "destination": "10.244.2.7", "ipVersion": "IPv4"}
    assert flow["l4"] == {
        "TCP": {"source_port": 43210, "destination_port": 80, "flags": {"SYN": True}}
    }
    assert flow["source"]["ID"] == 12 and flow["source"]["identity"] == 300
    assert flow["source"]["labels"][0] == "k8s:pod=a"
    assert flow["source"]["pod_name"] == "a"
    assert flow["destination"]["workloads"] == [{"name": "b", "kind": "Pod"}]
    assert flow["Type"] == "L3_L4"
    assert flow["event_type"] == {"type": 1, "sub_type": 133}
    assert flow["traffic_direction"] == "INGRESS"
    assert flow["is_reply"] is False  # a BoolValue: written even when false
    assert flow["ingress_denied_by"] == [
        {"name": "deny-all", "namespace": "y", "revision": "3", "kind": "NetworkPolicy"}
    ]
    assert flow["policy_cookie"] == 0  # our extension: 0 is a cookie too, so it is written
    assert flow["Summary"] == "TCP Flags: SYN"
    assert "trace_observation_point" not in flow  # zero values are left out, as protojson does
    assert "uuid" not in flow and "policy_match_type" not in flow


def test_round_trip_of_a_full_flow() -> None:
    flow = dropped_flow()
    assert Flow.from_json(flow.to_json()) == flow
    assert record_from_json(flow.to_json()) == flow


def test_forwarded_reply_without_reply_knowledge_and_unknown_direction() -> None:
    flow = Flow(T0, Verdict.FORWARDED, ip=IP("10.0.0.1", "10.0.0.2"), l4=UDP(5353, 53))
    d = flow.to_dict()
    assert "is_reply" not in d and "traffic_direction" not in d and "drop_reason" not in d
    back = Flow.from_json(flow.to_json())
    assert back.is_reply is None and back == flow


def test_reads_hubbles_own_output() -> None:
    """A line as `hubble observe -o json` prints it, with fields we do not model."""
    line = (
        '{"flow":{"time":"2023-03-23T22:35:16.365474664Z","uuid":"5b0e2a1c",'
        '"verdict":"FORWARDED","ethernet":{"source":"aa:bb","destination":"cc:dd"},'
        '"IP":{"source":"10.244.0.113","destination":"10.244.0.188","ipVersion":"IPv4"},'
        '"l4":{"TCP":{"source_port":41528,"destination_port":80,"flags":{"SYN":true,"ACK":true}}},'
        '"source":{"ID":1157,"identity":27914,"namespace":"default",'
        '"labels":["k8s:class=xwing"],"pod_name":"xwing"},'
        '"destination":{"ID":251,"identity":17062,"namespace":"default","pod_name":"deathstar"},'
        '"Type":"L3_L4","node_name":"kind-worker","event_type":{"type":4},'
        '"traffic_direction":"EGRESS","trace_observation_point":"TO_ENDPOINT","is_reply":false,'
        '"interface":{"index":12,"name":"lxc1234"},"Summary":"TCP Flags: SYN, ACK"},'
        '"node_name":"kind-worker","time":"2023-03-23T22:35:16.365474664Z"}'
    )
    flow = Flow.from_json(line)
    assert flow.verdict is Verdict.FORWARDED
    assert flow.l4 == TCP(41528, 80, TCPFlags(SYN=True, ACK=True))
    assert flow.source.identity == 27914 and flow.destination.pod_name == "deathstar"
    assert flow.trace_observation_point is TraceObservationPoint.TO_ENDPOINT
    assert flow.traffic_direction is TrafficDirection.EGRESS
    assert flow.interface == NetworkInterface(12, "lxc1234")
    assert flow.uuid == "5b0e2a1c"
    assert flow.time_ns == parse_rfc3339("2023-03-23T22:35:16.365474664Z")


def test_drop_reason_from_desc_only_and_unknown_numbers_kept() -> None:
    obj = {
        "flow": {
            "time": "2025-01-01T00:00:00Z",
            "verdict": "DROPPED",
            "drop_reason_desc": "CT_MAP_INSERTION_FAILED",
        }
    }
    assert Flow.from_json(obj).drop_reason == 155
    flow = Flow(T0, Verdict.DROPPED, drop_reason=250)  # a reason this table does not know
    assert flow.drop_reason_desc == 250
    assert flow.to_dict()["drop_reason_desc"] == 250
    assert Flow.from_json(flow.to_json()).drop_reason == 250


def test_verdict_and_drop_reason_numbers_are_flow_protos() -> None:
    assert [(v.name, v.value) for v in Verdict] == [
        ("VERDICT_UNKNOWN", 0),
        ("FORWARDED", 1),
        ("DROPPED", 2),
        ("ERROR", 3),
        ("AUDIT", 4),
        ("REDIRECTED", 5),
        ("TRACED", 6),
        ("TRANSLATED", 7),
    ]
    assert DropReason.POLICY_DENIED == 133 and DropReason.POLICY_DENY == 181
    assert DropReason.CT_MAP_INSERTION_FAILED == 155 and DropReason.TTL_EXCEEDED == 196
    assert DropReason.POLICY_DENIED.description == "Policy denied"
    assert TraceObservationPoint.TO_ENDPOINT == 101 and TraceObservationPoint.FROM_ENDPOINT == 5
    assert TraceObservationPoint.TO_ENDPOINT.datapath_code == 0


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"flow": {"verdict": "DROPPED"}}, "flow.time"),
        ({"flow": {"time": "yesterday"}}, "RFC 3339"),
        ({"flow": {"time": "2025-01-01T00:00:00Z", "verdict": "SMASHED"}}, "flow.verdict"),
        ({"flow": {"time": "2025-01-01T00:00:00Z", "l4": {"QUIC": {}}}}, "l4"),
        ({"flow": {"time": "2025-01-01T00:00:00Z", "source": {"ID": "x1"}}}, "flow.source.ID"),
        ({"flow": {"time": "2025-01-01T00:00:00Z", "is_reply": "yes"}}, "flow.is_reply"),
        ({"node_name": "n"}, "not a flow"),
    ],
)
def test_bad_json_names_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        record_from_json(json.dumps(bad))


def test_lost_event_json() -> None:
    lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 42, cpu=0, time_ns=T0, node_name="n1")
    obj = json.loads(lost.to_json())
    assert obj == {
        "lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": "42", "cpu": 0},
        "node_name": "n1",
        "time": "2025-11-28T21:52:51.123456789Z",
    }
    assert record_from_json(lost.to_json()) == lost
    no_cpu = LostEvent(LostEventSource.OBSERVER_EVENTS_QUEUE, 3, time_ns=T0)
    assert "cpu" not in json.loads(no_cpu.to_json())["lost_events"]
    assert record_from_json(no_cpu.to_json()) == no_cpu


def test_timestamps() -> None:
    assert format_rfc3339(0) == "1970-01-01T00:00:00Z"
    assert format_rfc3339(1_500_000_000) == "1970-01-01T00:00:01.500Z"
    assert format_rfc3339(1_000_001_000) == "1970-01-01T00:00:01.000001Z"
    assert parse_rfc3339("1970-01-01T01:00:00+01:00") == 0
    assert parse_rfc3339("2025-11-28T21:52:51.1Z") == parse_rfc3339("2025-11-28T21:52:51.100Z")


ports = st.integers(0, 65535)
names = st.text("abcxyz-0123456789", min_size=1, max_size=10)
endpoints = st.builds(
    Endpoint,
    id=st.integers(0, 2**16),
    identity=st.integers(0, 2**24 + 100),
    namespace=names,
    labels=st.lists(names.map(lambda s: f"k8s:app={s}"), max_size=3).map(tuple),
    pod_name=names,
)
l4s = st.one_of(
    st.none(),
    st.builds(TCP, ports, ports, st.one_of(st.none(), st.integers(1, 511).map(TCPFlags.from_bits))),
    st.builds(UDP, ports, ports),
    st.builds(SCTP, ports, ports),
    st.builds(ICMPv4, st.integers(0, 255), st.integers(0, 15)),
    st.builds(ICMPv6, st.integers(0, 255), st.integers(0, 15)),
)
flows = st.builds(
    Flow,
    time_ns=st.integers(0, 2**62),
    verdict=st.sampled_from(Verdict),
    drop_reason=st.sampled_from([0, *DropReason]),
    ip=st.one_of(
        st.none(),
        st.builds(IP, st.just("10.0.0.1"), st.just("10.0.0.2"), st.sampled_from(IPVersion)),
    ),
    l4=l4s,
    source=st.one_of(st.none(), endpoints),
    destination=st.one_of(st.none(), endpoints),
    type=st.sampled_from(FlowType),
    node_name=names,
    event_type=st.one_of(st.none(), st.builds(EventType, st.integers(1, 5), st.integers(0, 255))),
    destination_service=st.one_of(st.none(), st.builds(Service, names, names)),
    traffic_direction=st.sampled_from(TrafficDirection),
    policy_match_type=st.integers(0, 4),
    trace_observation_point=st.sampled_from(TraceObservationPoint),
    is_reply=st.one_of(st.none(), st.booleans()),
    policy_cookie=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    summary=st.text(max_size=20),
)


@given(flows)
def test_any_flow_round_trips(flow: Flow) -> None:
    assert Flow.from_json(flow.to_json()) == flow
