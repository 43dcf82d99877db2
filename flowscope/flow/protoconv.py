"""Flow and LostEvent <-> their protobuf messages (proto/flowscope/flow/v1/flow.proto), losslessly.

Every field of the model has a place in the message: the optional ones (is_reply, policy_cookie,
LostEvent.cpu) are wrapper messages so "absent" and "zero" stay apart, and sub-messages are set
exactly when the model has them, even empty. Enum numbers without a name in our enums travel as
numbers (proto3 enums are open) and come back as ints, as Flow.from_dict keeps them.

On the stream a record is a GetFlowsResponse: the Flow or LostEvent plus the node that observed it
and when. `response_to_dict` writes it as `hubble observe -o json` does: protojson with the .proto
field names (Hubble's generated MarshalJSON sets UseProtoNames), which for flows and lost events
equals Flow.to_json / LostEvent.to_json parsed (tests/flow/test_protoconv.py lists the edge cases
where the two differ).
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from google.protobuf import json_format, wrappers_pb2

from flowscope.flow.model import (
    DNS,
    HTTP,
    IP,
    SCTP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    HTTPHeader,
    ICMPv4,
    ICMPv6,
    IPVersion,
    L7FlowType,
    Layer7,
    LostEvent,
    LostEventSource,
    NetworkInterface,
    Policy,
    Record,
    Service,
    ServiceTranslation,
    SocketTranslationPoint,
    TCPFlags,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
    Workload,
)
from flowscope.proto import flow_pb2, observer_pb2

E = TypeVar("E", bound=enum.IntEnum)

_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
_POLICY_LISTS = ("egress_allowed_by", "ingress_allowed_by", "egress_denied_by", "ingress_denied_by")
_INT32_MAX = 2**31 - 1


def _build(cls: Any, field: str, **values: Any) -> Any:
    """cls(**values), with protobuf's range and type errors naming the field they are in."""
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{field}: {exc}") from None


def _enum(cls: type[E], number: int) -> E | int:
    try:
        return cls(number)
    except ValueError:
        return number


# --- to protobuf --------------------------------------------------------------------------------


def _endpoint_pb(ep: Endpoint, field: str) -> flow_pb2.Endpoint:
    return _build(
        flow_pb2.Endpoint,
        field,
        ID=ep.id,
        identity=ep.identity,
        cluster_name=ep.cluster_name,
        namespace=ep.namespace,
        labels=ep.labels,
        pod_name=ep.pod_name,
        workloads=[flow_pb2.Workload(name=w.name, kind=w.kind) for w in ep.workloads],
    )


def _l4_pb(l4: Any) -> flow_pb2.Layer4:
    name = type(l4).__name__
    if isinstance(l4, TCP):
        body = _build(
            flow_pb2.TCP,
            "flow.l4.TCP",
            source_port=l4.source_port,
            destination_port=l4.destination_port,
            flags=(
                flow_pb2.TCPFlags(**{n: getattr(l4.flags, n) for n in _TCP_FLAGS})
                if l4.flags is not None
                else None
            ),
        )
    elif isinstance(l4, UDP | SCTP):
        body = _build(
            getattr(flow_pb2, name),
            f"flow.l4.{name}",
            source_port=l4.source_port,
            destination_port=l4.destination_port,
        )
    elif isinstance(l4, ICMPv4 | ICMPv6):
        body = _build(getattr(flow_pb2, name), f"flow.l4.{name}", type=l4.type, code=l4.code)
    else:
        raise ValueError(f"flow.l4: {name} is not one of TCP, UDP, SCTP, ICMPv4, ICMPv6")
    return flow_pb2.Layer4(**{name: body})


def _policy_pb(p: Policy, field: str) -> flow_pb2.Policy:
    return _build(
        flow_pb2.Policy,
        field,
        name=p.name,
        namespace=p.namespace,
        labels=p.labels,
        revision=p.revision,
        kind=p.kind,
    )


def _l7_pb(l7: Layer7) -> flow_pb2.Layer7:
    msg = _build(flow_pb2.Layer7, "flow.l7", type=int(l7.type), latency_ns=l7.latency_ns)
    if l7.dns is not None:
        d = l7.dns
        msg.dns.CopyFrom(
            _build(
                flow_pb2.DNS,
                "flow.l7.dns",
                query=d.query,
                ips=d.ips,
                ttl=d.ttl,
                cnames=d.cnames,
                observation_source=d.observation_source,
                rcode=d.rcode,
                qtypes=d.qtypes,
                rrtypes=d.rrtypes,
            )
        )
    elif l7.http is not None:
        h = l7.http
        msg.http.CopyFrom(
            _build(
                flow_pb2.HTTP,
                "flow.l7.http",
                code=h.code,
                method=h.method,
                url=h.url,
                protocol=h.protocol,
                headers=[flow_pb2.HTTPHeader(key=x.key, value=x.value) for x in h.headers],
            )
        )
    return msg


def _l7(msg: flow_pb2.Layer7) -> Layer7:
    which = msg.WhichOneof("record")
    dns = http = None
    if which == "dns":
        d = msg.dns
        dns = DNS(
            d.query,
            tuple(d.ips),
            d.ttl,
            tuple(d.cnames),
            d.observation_source,
            d.rcode,
            tuple(d.qtypes),
            tuple(d.rrtypes),
        )
    elif which == "http":
        h = msg.http
        http = HTTP(
            h.code,
            h.method,
            h.url,
            h.protocol,
            tuple(HTTPHeader(x.key, x.value) for x in h.headers),
        )
    return Layer7(_enum(L7FlowType, msg.type), msg.latency_ns, dns, http)


def flow_to_proto(flow: Flow) -> flow_pb2.Flow:
    """The Flow message for a flow; ValueError naming the field when a value does not fit."""
    msg = _build(
        flow_pb2.Flow,
        "flow",
        uuid=flow.uuid,
        verdict=int(flow.verdict),
        drop_reason=flow.drop_reason,
        Type=int(flow.type),
        node_name=flow.node_name,
        source_names=flow.source_names,
        destination_names=flow.destination_names,
        traffic_direction=int(flow.traffic_direction),
        policy_match_type=flow.policy_match_type,
        trace_observation_point=int(flow.trace_observation_point),
        sock_xlate_point=int(flow.sock_xlate_point),
        socket_cookie=flow.socket_cookie,
        cgroup_id=flow.cgroup_id,
        kernel_drop_reason=flow.kernel_drop_reason,
        Summary=flow.summary,
    )
    msg.time.FromNanoseconds(flow.time_ns)
    # drop_reason_desc is drop_reason as an enum (an int32: a larger number has no desc)
    if 0 < flow.drop_reason <= _INT32_MAX:
        msg.drop_reason_desc = flow.drop_reason
    if flow.ip is not None:
        msg.IP.CopyFrom(
            _build(
                flow_pb2.IP,
                "flow.IP",
                source=flow.ip.source,
                destination=flow.ip.destination,
                ipVersion=int(flow.ip.ip_version),
                encrypted=flow.ip.encrypted,
            )
        )
    if flow.l4 is not None:
        msg.l4.CopyFrom(_l4_pb(flow.l4))
    if flow.l7 is not None:
        msg.l7.CopyFrom(_l7_pb(flow.l7))
    if flow.source is not None:
        msg.source.CopyFrom(_endpoint_pb(flow.source, "flow.source"))
    if flow.destination is not None:
        msg.destination.CopyFrom(_endpoint_pb(flow.destination, "flow.destination"))
    if flow.event_type is not None:
        msg.event_type.CopyFrom(
            _build(
                flow_pb2.CiliumEventType,
                "flow.event_type",
                type=int(flow.event_type.type),
                sub_type=int(flow.event_type.sub_type),
            )
        )
    for name in ("source_service", "destination_service"):
        svc: Service | None = getattr(flow, name)
        if svc is not None:
            getattr(msg, name).CopyFrom(flow_pb2.Service(name=svc.name, namespace=svc.namespace))
    if flow.is_reply is not None:
        msg.is_reply.value = flow.is_reply
    if flow.interface is not None:
        msg.interface.CopyFrom(
            _build(
                flow_pb2.NetworkInterface,
                "flow.interface",
                index=flow.interface.index,
                name=flow.interface.name,
            )
        )
    for name in _POLICY_LISTS:
        getattr(msg, name).extend(
            _policy_pb(p, f"flow.{name}[{i}]") for i, p in enumerate(getattr(flow, name))
        )
    if flow.policy_cookie is not None:
        msg.policy_cookie.CopyFrom(
            _build(wrappers_pb2.UInt32Value, "flow.policy_cookie", value=flow.policy_cookie)
        )
    if flow.service_translation is not None:
        st = flow.service_translation
        msg.service_translation.CopyFrom(
            _build(
                flow_pb2.ServiceTranslation,
                "flow.service_translation",
                service_ip=st.service_ip,
                service_port=st.service_port,
                backend_ip=st.backend_ip,
                backend_port=st.backend_port,
            )
        )
    return msg


def lost_event_to_proto(event: LostEvent) -> flow_pb2.LostEvent:
    msg = _build(
        flow_pb2.LostEvent,
        "lost_events",
        source=int(event.source),
        num_events_lost=event.num_events_lost,
    )
    if event.cpu is not None:
        msg.cpu.CopyFrom(_build(wrappers_pb2.Int32Value, "lost_events.cpu", value=event.cpu))
    return msg


def record_to_response(record: Record) -> observer_pb2.GetFlowsResponse:
    """A Flow or LostEvent as one record of the GetFlows stream (and of the Kafka topic)."""
    if isinstance(record, Flow):
        resp = observer_pb2.GetFlowsResponse(flow=flow_to_proto(record))
    elif isinstance(record, LostEvent):
        resp = observer_pb2.GetFlowsResponse(lost_events=lost_event_to_proto(record))
    else:
        raise TypeError(f"not a Flow or LostEvent: {type(record).__name__}")
    resp.node_name = record.node_name
    resp.time.FromNanoseconds(record.time_ns)
    return resp


# --- from protobuf ------------------------------------------------------------------------------


def _endpoint(msg: flow_pb2.Endpoint) -> Endpoint:
    return Endpoint(
        id=msg.ID,
        identity=msg.identity,
        namespace=msg.namespace,
        labels=tuple(msg.labels),
        pod_name=msg.pod_name,
        workloads=tuple(Workload(w.name, w.kind) for w in msg.workloads),
        cluster_name=msg.cluster_name,
    )


def _l4(msg: flow_pb2.Layer4) -> Any:
    name = msg.WhichOneof("protocol")
    if name is None:
        return None
    body = getattr(msg, name)
    if name == "TCP":
        flags = (
            TCPFlags(**{n: getattr(body.flags, n) for n in _TCP_FLAGS})
            if body.HasField("flags")
            else None
        )
        return TCP(body.source_port, body.destination_port, flags)
    if name in ("UDP", "SCTP"):
        return {"UDP": UDP, "SCTP": SCTP}[name](body.source_port, body.destination_port)
    return {"ICMPv4": ICMPv4, "ICMPv6": ICMPv6}[name](body.type, body.code)


def _policy(msg: flow_pb2.Policy) -> Policy:
    return Policy(msg.name, msg.namespace, tuple(msg.labels), msg.revision, msg.kind)


def flow_from_proto(msg: flow_pb2.Flow) -> Flow:
    """The Flow a Flow message carries (flow_to_proto's inverse)."""
    st = msg.service_translation
    return Flow(
        time_ns=msg.time.ToNanoseconds(),
        verdict=_enum(Verdict, msg.verdict),
        # Hubble clients may set only the enum (drop_reason is deprecated there)
        drop_reason=msg.drop_reason or msg.drop_reason_desc,
        ip=(
            IP(
                msg.IP.source,
                msg.IP.destination,
                _enum(IPVersion, msg.IP.ipVersion),
                msg.IP.encrypted,
            )
            if msg.HasField("IP")
            else None
        ),
        l4=_l4(msg.l4) if msg.HasField("l4") else None,
        l7=_l7(msg.l7) if msg.HasField("l7") else None,
        source=_endpoint(msg.source) if msg.HasField("source") else None,
        destination=_endpoint(msg.destination) if msg.HasField("destination") else None,
        type=_enum(FlowType, msg.Type),
        node_name=msg.node_name,
        source_names=tuple(msg.source_names),
        destination_names=tuple(msg.destination_names),
        event_type=(
            EventType(msg.event_type.type, msg.event_type.sub_type)
            if msg.HasField("event_type")
            else None
        ),
        source_service=(
            Service(msg.source_service.name, msg.source_service.namespace)
            if msg.HasField("source_service")
            else None
        ),
        destination_service=(
            Service(msg.destination_service.name, msg.destination_service.namespace)
            if msg.HasField("destination_service")
            else None
        ),
        traffic_direction=_enum(TrafficDirection, msg.traffic_direction),
        policy_match_type=msg.policy_match_type,
        trace_observation_point=_enum(TraceObservationPoint, msg.trace_observation_point),
        is_reply=msg.is_reply.value if msg.HasField("is_reply") else None,
        interface=(
            NetworkInterface(msg.interface.index, msg.interface.name)
            if msg.HasField("interface")
            else None
        ),
        sock_xlate_point=_enum(SocketTranslationPoint, msg.sock_xlate_point),
        socket_cookie=msg.socket_cookie,
        cgroup_id=msg.cgroup_id,
        **{name: tuple(_policy(p) for p in getattr(msg, name)) for name in _POLICY_LISTS},
        policy_cookie=msg.policy_cookie.value if msg.HasField("policy_cookie") else None,
        kernel_drop_reason=msg.kernel_drop_reason,
        service_translation=(
            ServiceTranslation(st.service_ip, st.service_port, st.backend_ip, st.backend_port)
            if msg.HasField("service_translation")
            else None
        ),
        summary=msg.Summary,
        uuid=msg.uuid,
    )


def lost_event_from_proto(
    msg: flow_pb2.LostEvent, time_ns: int = 0, node_name: str = ""
) -> LostEvent:
    """The LostEvent a message carries; its time and node come from the enclosing response."""
    return LostEvent(
        source=_enum(LostEventSource, msg.source),
        num_events_lost=msg.num_events_lost,
        cpu=msg.cpu.value if msg.HasField("cpu") else None,
        time_ns=time_ns,
        node_name=node_name,
    )


def record_from_response(resp: observer_pb2.GetFlowsResponse) -> Record:
    """The Flow or LostEvent of one stream record; ValueError for a node_status (or empty) one."""
    kind = resp.WhichOneof("response_types")
    if kind == "flow":
        return flow_from_proto(resp.flow)
    if kind == "lost_events":
        return lost_event_from_proto(resp.lost_events, resp.time.ToNanoseconds(), resp.node_name)
    raise ValueError(f"GetFlowsResponse: {kind or 'nothing'} is not a flow or lost_events record")


def response_to_dict(resp: observer_pb2.GetFlowsResponse) -> dict[str, Any]:
    """The response as `hubble observe -o json` prints it: protojson with the proto field names
    (not the lowerCamelCase json_names), enums by name, 64-bit integers as strings."""
    return json_format.MessageToDict(resp, preserving_proto_field_name=True)
