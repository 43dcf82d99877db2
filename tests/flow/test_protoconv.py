"""Flow/LostEvent <-> protobuf: lossless round trips, and protojson equal to our (Hubble's) JSON.

Hubble's `-o json` is protojson with UseProtoNames, i.e. MessageToDict(...,
preserving_proto_field_name=True); that equals json.loads(record.to_json()) except in the edge
cases the tests at the end name one by one.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
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
)
from flowscope.flow.model import (
    DNS,
    HTTP,
    HTTPHeader,
    L7FlowType,
    Layer7,
    MessageType,
    PolicyMatchType,
    ServiceTranslation,
    SocketTranslationPoint,
)
from flowscope.flow.protoconv import (
    flow_from_proto,
    flow_to_proto,
    lost_event_from_proto,
    lost_event_to_proto,
    record_from_response,
    record_to_response,
    response_to_dict,
)
from flowscope.proto import flow_pb2, observer_pb2

T0 = 1_764_366_771_123_456_789  # 2025-11-28T21:52:51.123456789Z
WEB = Endpoint(
    1201,
    48213,
    "default",
    ("k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"),
    "web-7d9f8-abcde",
    (Workload("web", "Deployment"),),
    cluster_name="lab",
)
DB = Endpoint(88, 51002, "data", ("k8s:app=db",), "db-0", (Workload("db", "StatefulSet"),))

CORPUS: dict[str, Flow | LostEvent] = {
    "policy-verdict": Flow(
        time_ns=T0,
        verdict=Verdict.FORWARDED,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(43210, 5432, TCPFlags(SYN=True)),
        source=WEB,
        destination=DB,
        node_name="node-2",
        event_type=EventType.policy_verdict(),
        traffic_direction=TrafficDirection.INGRESS,
        policy_match_type=PolicyMatchType.L3_L4,
        is_reply=False,
        ingress_allowed_by=(
            Policy("allow-web", "data", ("k8s:io.cilium.k8s.policy.name=allow-web",), 4),
        ),
        policy_cookie=0x00010002,
        summary="TCP Flags: SYN",
        uuid="5f0c1a5e-0b6e-4e5b-9d7a-0b8f1c2d3e4f",
    ),
    "drop-with-reason": Flow(
        time_ns=T0 + 1,
        verdict=Verdict.DROPPED,
        drop_reason=DropReason.POLICY_DENIED,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(43211, 5432, TCPFlags(SYN=True)),
        source=WEB,
        destination=DB,
        node_name="node-2",
        event_type=EventType.drop(DropReason.POLICY_DENIED),
        traffic_direction=TrafficDirection.INGRESS,
        is_reply=False,
        ingress_denied_by=(Policy("deny-all", "data", (), 3, "CiliumNetworkPolicy"),),
        policy_cookie=0,
        summary="TCP Flags: SYN",
    ),
    "trace-tcp-flags": Flow(
        time_ns=T0 + 2_000,
        verdict=Verdict.FORWARDED,
        ip=IP("fd00:10:244:2::7", "fd00:10:244:1::5", IPVersion.IPv6),
        l4=TCP(5432, 43210, TCPFlags(SYN=True, ACK=True)),
        source=DB,
        destination=WEB,
        node_name="node-1",
        source_names=("db-0.db.data.svc.cluster.local",),
        event_type=EventType.trace(TraceObservationPoint.TO_ENDPOINT),
        traffic_direction=TrafficDirection.EGRESS,
        trace_observation_point=TraceObservationPoint.TO_ENDPOINT,
        is_reply=True,
        interface=NetworkInterface(17, "lxc1a2b3c"),
        summary="TCP Flags: SYN, ACK",
    ),
    "translated-trace-sock": Flow(
        time_ns=T0 + 3_000_000,
        verdict=Verdict.TRANSLATED,
        ip=IP("10.244.1.5", "10.96.0.20"),
        l4=UDP(0, 53),
        source=WEB,
        destination=Endpoint(40, 102, "kube-system", ("k8s:k8s-app=kube-dns",), "coredns-1"),
        type=FlowType.SOCK,
        node_name="node-1",
        event_type=EventType.trace_sock(SocketTranslationPoint.SOCK_XLATE_POINT_POST_DIRECTION_FWD),
        destination_service=Service("kube-dns", "kube-system"),
        is_reply=False,
        sock_xlate_point=SocketTranslationPoint.SOCK_XLATE_POINT_POST_DIRECTION_FWD,
        socket_cookie=2**64 - 2,
        cgroup_id=98_765,
        service_translation=ServiceTranslation("10.96.0.20", 53, "10.244.3.9", 53),
        summary="UDP",
    ),
    "kernel-drop": Flow(
        time_ns=T0 + 4_000_000_000,
        verdict=Verdict.DROPPED,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=SCTP(9000, 9001),
        source=WEB,
        destination=DB,
        node_name="node-2",
        event_type=EventType(MessageType.DROP, 0),
        interface=NetworkInterface(4, ""),
        kernel_drop_reason="NO_SOCKET",
        summary="SCTP",
    ),
    "icmp-unknown-drop-reason": Flow(
        time_ns=T0 + 5,
        verdict=Verdict.DROPPED,
        drop_reason=250,  # a number our DropReason does not name: stays a number
        ip=IP("10.244.1.5", "10.0.0.1"),
        l4=ICMPv4(8, 0),
        source=WEB,
        destination_names=("gw.example",),
        node_name="node-1",
        event_type=EventType.drop(250),
        source_service=Service("web", "default"),
        egress_denied_by=(Policy("egress", "default"),),
        egress_allowed_by=(Policy("dns", "default", ("k8s:a=b",), 2**64 - 1),),
    ),
    "lost-ring": LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 1234, 0, T0 + 6, "node-3"),
    "lost-queue": LostEvent(LostEventSource.OBSERVER_EVENTS_QUEUE, 2**40, None, T0 + 7, "relay"),
}


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_round_trips_through_the_message_and_its_bytes(name: str) -> None:
    record = CORPUS[name]
    resp = record_to_response(record)
    assert record_from_response(resp) == record
    wire = observer_pb2.GetFlowsResponse.FromString(resp.SerializeToString())
    assert record_from_response(wire) == record


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_protojson_with_proto_names_is_our_hubble_json(name: str) -> None:
    record = CORPUS[name]
    assert response_to_dict(record_to_response(record)) == json.loads(record.to_json())


def test_hubble_keys_come_from_proto_names_not_json_names() -> None:
    resp = record_to_response(CORPUS["drop-with-reason"])
    ours = response_to_dict(resp)["flow"]
    for key in ("drop_reason_desc", "Type", "IP", "l4", "traffic_direction", "node_name"):
        assert key in ours
    assert ours["IP"]["ipVersion"] == "IPv4"  # Hubble's proto names this field in camel case
    assert ours["source"]["ID"] == 1201 and ours["drop_reason_desc"] == "POLICY_DENIED"
    # canonical proto3 JSON (lowerCamelCase json_name) is NOT what hubble prints
    canonical = json_format.MessageToDict(resp)["flow"]
    assert "dropReasonDesc" in canonical and "drop_reason_desc" not in canonical
    assert "trafficDirection" in canonical and "nodeName" in canonical


def test_hubble_client_setting_only_drop_reason_desc() -> None:
    msg = flow_pb2.Flow(verdict=flow_pb2.DROPPED, drop_reason_desc=flow_pb2.POLICY_DENY)
    msg.time.FromNanoseconds(T0)
    flow = flow_from_proto(msg)
    assert flow.drop_reason == DropReason.POLICY_DENY == 181
    assert flow.drop_reason_desc is DropReason.POLICY_DENY


def test_lost_event_messages() -> None:
    ev = CORPUS["lost-ring"]
    assert isinstance(ev, LostEvent)
    msg = lost_event_to_proto(ev)
    assert msg.HasField("cpu") and msg.cpu.value == 0  # cpu 0 is not "no cpu"
    assert lost_event_from_proto(msg, ev.time_ns, ev.node_name) == ev
    assert not lost_event_to_proto(CORPUS["lost-queue"]).HasField("cpu")


def test_node_status_is_not_a_record() -> None:
    resp = observer_pb2.GetFlowsResponse(
        node_status=observer_pb2.NodeStatusEvent(
            state_change=observer_pb2.NODE_UNAVAILABLE, node_names=["node-3"]
        )
    )
    with pytest.raises(ValueError, match="node_status is not a flow or lost_events"):
        record_from_response(resp)
    assert response_to_dict(resp) == {
        "node_status": {"state_change": "NODE_UNAVAILABLE", "node_names": ["node-3"]}
    }


@pytest.mark.parametrize(
    ("flow", "field"),
    [
        (Flow(T0, source=Endpoint(identity=2**32)), "flow.source"),
        (Flow(T0, policy_cookie=2**32), "flow.policy_cookie"),
        (Flow(T0, l4=TCP(2**32, 80)), "flow.l4.TCP"),
        (Flow(T0, ingress_allowed_by=(Policy("p", revision=-1),)), r"flow.ingress_allowed_by\[0\]"),
        (Flow(T0, socket_cookie=2**64), "flow"),
    ],
)
def test_values_that_do_not_fit_name_the_field(flow: Flow, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        flow_to_proto(flow)


# --- properties over flows built from the model's types ---------------------------------------

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text("abcxyz-./:=0123456789", max_size=12)
word = st.text("abcxyz-0123456789", min_size=1, max_size=10)


UNNAMED = st.integers(300, 2**31 - 1)  # above every enum's names


def enum_or_unknown(cls):
    """A member of the enum or a number it does not name (open enums keep those)."""
    return st.one_of(st.sampled_from(cls), UNNAMED)


def strategies(nonempty: bool):
    """Flows; with nonempty, every sub-message the flow has is non-empty (see the last tests)."""
    s = word if nonempty else text
    first = st.integers(1, 2**16 - 1) if nonempty else u16
    endpoints = st.builds(
        Endpoint,
        id=first,
        identity=u32,
        namespace=text,
        labels=st.lists(text, max_size=3).map(tuple),
        pod_name=text,
        workloads=st.lists(st.builds(Workload, text, text), max_size=2).map(tuple),
        cluster_name=text,
    )
    flags = st.integers(1 if nonempty else 0, 511).map(TCPFlags.from_bits)
    # Flow.to_dict writes ipVersion IP_NOT_USED where protojson leaves the zero out (see below)
    ip_versions = enum_or_unknown(IPVersion)
    if nonempty:
        ip_versions = ip_versions.filter(lambda v: v != IPVersion.IP_NOT_USED)
    l4s = st.one_of(
        st.none(),
        st.builds(TCP, u16, u16, st.one_of(st.none(), flags)),
        st.builds(UDP, u16, u16),
        st.builds(SCTP, u16, u16),
        st.builds(ICMPv4, st.integers(0, 255), st.integers(0, 255)),
        st.builds(ICMPv6, st.integers(0, 255), st.integers(0, 255)),
    )
    strings = st.lists(text, max_size=2).map(tuple)
    dns = st.builds(DNS, s, strings, u32, strings, text, u32, strings, strings)
    http = st.builds(
        HTTP, u32, s, text, text, st.lists(st.builds(HTTPHeader, text, text), max_size=2).map(tuple)
    )
    l7s = st.one_of(
        st.none(),
        st.builds(Layer7, enum_or_unknown(L7FlowType), u64, dns=dns),
        st.builds(Layer7, enum_or_unknown(L7FlowType), u64, http=http),
    )
    policies = st.lists(
        st.builds(Policy, text, text, st.lists(text, max_size=2).map(tuple), u64, text),
        max_size=2,
    ).map(tuple)
    return st.builds(
        Flow,
        time_ns=st.integers(0, 2**62),
        verdict=enum_or_unknown(Verdict),
        drop_reason=st.one_of(st.just(0), st.sampled_from(DropReason), st.integers(1, 2**31 - 1)),
        ip=st.one_of(st.none(), st.builds(IP, s, text, ip_versions, st.booleans())),
        l4=l4s,
        l7=l7s,
        source=st.one_of(st.none(), endpoints),
        destination=st.one_of(st.none(), endpoints),
        type=enum_or_unknown(FlowType),
        node_name=text,
        source_names=st.lists(text, max_size=2).map(tuple),
        destination_names=st.lists(text, max_size=2).map(tuple),
        event_type=st.one_of(
            st.none(),
            st.builds(
                EventType,
                st.integers(1 if nonempty else 0, 2**31 - 1),
                st.integers(0, 2**31 - 1),
            ),
        ),
        source_service=st.one_of(st.none(), st.builds(Service, s, text)),
        destination_service=st.one_of(st.none(), st.builds(Service, s, text)),
        traffic_direction=enum_or_unknown(TrafficDirection),
        policy_match_type=u32,
        trace_observation_point=enum_or_unknown(TraceObservationPoint),
        is_reply=st.one_of(st.none(), st.booleans()),
        interface=st.one_of(
            st.none(), st.builds(NetworkInterface, u32.map(lambda i: i or 1), text)
        ),
        sock_xlate_point=enum_or_unknown(SocketTranslationPoint),
        socket_cookie=u64,
        cgroup_id=u64,
        egress_allowed_by=policies,
        ingress_allowed_by=policies,
        egress_denied_by=policies,
        ingress_denied_by=policies,
        policy_cookie=st.one_of(st.none(), u32),
        kernel_drop_reason=text,
        service_translation=st.one_of(st.none(), st.builds(ServiceTranslation, s, u16, text, u16)),
        summary=st.text(max_size=20),
        uuid=text,
    )


lost_events = st.builds(
    LostEvent,
    source=enum_or_unknown(LostEventSource),
    num_events_lost=u64,
    cpu=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    time_ns=st.integers(0, 2**62),
    node_name=text,
)


@settings(max_examples=150)
@given(st.one_of(strategies(nonempty=False), lost_events))
def test_any_record_round_trips_losslessly(record: Flow | LostEvent) -> None:
    wire = record_to_response(record).SerializeToString()
    assert record_from_response(observer_pb2.GetFlowsResponse.FromString(wire)) == record


@settings(max_examples=150)
@given(st.one_of(strategies(nonempty=True), lost_events))
def test_any_record_protojson_is_our_json(record: Flow | LostEvent) -> None:
    assert response_to_dict(record_to_response(record)) == json.loads(record.to_json())


# --- where our JSON and protojson differ, on purpose --------------------------------------------


def test_difference_present_but_empty_submessages() -> None:
    """A sub-message the flow has but with every field zero: protojson writes {} (the field is
    set), Flow.to_dict leaves it out (its JSON cannot tell Endpoint() from no endpoint). The
    message keeps the difference, so the round trip is exact. Real case: a socket translation
    whose client pod is unknown has source=Endpoint()."""
    flow = Flow(T0, source=Endpoint(), l4=TCP(0, 80, TCPFlags()), event_type=EventType(0, 0))
    proto_json = response_to_dict(record_to_response(flow))["flow"]
    ours = json.loads(flow.to_json())["flow"]
    assert proto_json["source"] == {} and "source" not in ours
    assert proto_json["event_type"] == {} and "event_type" not in ours
    assert proto_json["l4"] == {"TCP": {"destination_port": 80, "flags": {}}}
    assert ours["l4"] == {"TCP": {"destination_port": 80}}
    assert flow_from_proto(flow_to_proto(flow)) == flow


def test_difference_drop_reason_beyond_int32() -> None:
    """drop_reason is a uint32 but the drop_reason_desc enum an int32: a number above 2^31-1
    keeps drop_reason exactly and has no drop_reason_desc, where Flow.to_dict writes the number."""
    flow = Flow(T0, Verdict.DROPPED, drop_reason=2**31)
    proto_json = response_to_dict(record_to_response(flow))["flow"]
    assert proto_json["drop_reason"] == 2**31 and "drop_reason_desc" not in proto_json
    assert json.loads(flow.to_json())["flow"]["drop_reason_desc"] == 2**31
    assert flow_from_proto(flow_to_proto(flow)) == flow


def test_difference_enum_given_as_a_bare_number() -> None:
    """A Flow built with a bare int for a named enum value (Verdict 2, not Verdict.DROPPED):
    protojson names it, Flow.to_dict writes the number. The model's own readers always make the
    enum member, and the round trip gives it back as one (equal to the int)."""
    flow = Flow(T0, verdict=2)
    assert response_to_dict(record_to_response(flow))["flow"]["verdict"] == "DROPPED"
    assert json.loads(flow.to_json())["flow"]["verdict"] == 2
    back = flow_from_proto(flow_to_proto(flow))
    assert back == flow and back.verdict is Verdict.DROPPED


def test_difference_ip_version_not_used() -> None:
    """IP.to_dict writes "ipVersion": "IP_NOT_USED" (it prunes zero numbers, not the zero enum's
    name); protojson leaves a zero enum out. Readers of either take the missing field as
    IP_NOT_USED, so both read back to the same flow."""
    flow = Flow(T0, ip=IP("10.0.0.1", "10.0.0.2", IPVersion.IP_NOT_USED))
    proto_json = response_to_dict(record_to_response(flow))["flow"]
    assert proto_json["IP"] == {"source": "10.0.0.1", "destination": "10.0.0.2"}
    assert json.loads(flow.to_json())["flow"]["IP"]["ipVersion"] == "IP_NOT_USED"
    assert Flow.from_json({"flow": proto_json}) == flow == flow_from_proto(flow_to_proto(flow))
