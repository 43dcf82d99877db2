"""A flow as an OTLP log record's attributes, in OpenTelemetry's semantic conventions where one
exists (network.*, source.*, destination.*, k8s.*, http.*, url.*, dns.*) and flowscope.* for what
has none (verdict, drop reason, identities, workloads, service, observation point).

Pure functions: the exporter calls them per record; tests call them with hand-made flows.
Attribute values are str, int, bool or sequences of str, as OTLP carries them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flowscope.flow.model import (
    SCTP,
    TCP,
    UDP,
    Endpoint,
    Flow,
    ICMPv4,
    ICMPv6,
    IPVersion,
    LostEvent,
    Record,
)

AttrValue = str | int | bool | tuple[str, ...]
Attributes = dict[str, AttrValue]

# network.transport: OTel's values for the L4 protocol
_TRANSPORT: dict[type, str] = {TCP: "tcp", UDP: "udp", SCTP: "sctp", ICMPv4: "icmp", ICMPv6: "icmp"}
_NETWORK_TYPE = {IPVersion.IPv4: "ipv4", IPVersion.IPv6: "ipv6"}


def enum_name(value: object) -> str:
    """An enum member's name, or the number as text when the value is not a known member."""
    return getattr(value, "name", None) or str(value)


def _end(attrs: Attributes, side: str, ep: Endpoint | None) -> None:
    """The k8s.* and flowscope.* attributes of one end ("source" / "destination")."""
    if ep is None:
        return
    if ep.namespace:
        attrs[f"flowscope.{side}.namespace"] = ep.namespace
    if ep.pod_name:
        attrs[f"flowscope.{side}.pod"] = ep.pod_name
    if ep.identity:
        attrs[f"flowscope.{side}.identity"] = ep.identity
    if ep.labels:
        attrs[f"flowscope.{side}.labels"] = tuple(ep.labels)
    if ep.workloads:
        w = ep.workloads[0]
        attrs[f"flowscope.{side}.workload"] = w.name
        if w.kind:
            attrs[f"flowscope.{side}.workload_kind"] = w.kind


def flow_attributes(flow: Flow) -> Attributes:
    """The log record's attributes for one flow.

    OTel's k8s.namespace.name / k8s.pod.name describe one pod; a flow has two. They name the
    pod the flow was observed for: the source on egress (and when the direction is unknown),
    the destination on ingress. Both ends are always in flowscope.source.* and
    flowscope.destination.*."""
    attrs: Attributes = {"flowscope.verdict": enum_name(flow.verdict)}
    if flow.node_name:
        attrs["k8s.node.name"] = flow.node_name
    if flow.drop_reason:
        attrs["flowscope.drop_reason"] = enum_name(flow.drop_reason_desc)
    if flow.kernel_drop_reason:
        attrs["flowscope.kernel_drop_reason"] = flow.kernel_drop_reason
    if flow.type:
        attrs["flowscope.type"] = enum_name(flow.type)
    if flow.traffic_direction:
        attrs["flowscope.traffic_direction"] = enum_name(flow.traffic_direction)
    if flow.trace_observation_point:
        attrs["flowscope.observation_point"] = enum_name(flow.trace_observation_point)
    if flow.is_reply is not None:
        attrs["flowscope.is_reply"] = flow.is_reply
    if flow.ip is not None:
        if flow.ip.ip_version in _NETWORK_TYPE:
            attrs["network.type"] = _NETWORK_TYPE[flow.ip.ip_version]
        attrs["source.address"] = flow.ip.source
        attrs["destination.address"] = flow.ip.destination
    if flow.l4 is not None:
        attrs["network.transport"] = _TRANSPORT[type(flow.l4)]
        if isinstance(flow.l4, TCP | UDP | SCTP):
            attrs["source.port"] = flow.l4.source_port
            attrs["destination.port"] = flow.l4.destination_port
        else:
            attrs["flowscope.icmp.type"] = flow.l4.type
            attrs["flowscope.icmp.code"] = flow.l4.code
    if isinstance(flow.l4, TCP) and flow.l4.flags is not None:
        attrs["flowscope.tcp.flags"] = tuple(flow.l4.flags.summary_names())
    _end(attrs, "source", flow.source)
    _end(attrs, "destination", flow.destination)
    observed = flow.destination if flow.traffic_direction == 1 else flow.source  # 1: INGRESS
    if observed is not None and observed.namespace:
        attrs["k8s.namespace.name"] = observed.namespace
    if observed is not None and observed.pod_name:
        attrs["k8s.pod.name"] = observed.pod_name
    if flow.destination_service is not None and flow.destination_service.name:
        svc = flow.destination_service
        attrs["flowscope.destination.service"] = f"{svc.namespace}/{svc.name}".lstrip("/")
    if flow.source_names:
        attrs["flowscope.source.names"] = tuple(flow.source_names)
    if flow.destination_names:
        attrs["flowscope.destination.names"] = tuple(flow.destination_names)
    if flow.policy_cookie is not None:
        attrs["flowscope.policy_cookie"] = flow.policy_cookie
    attrs.update(l7_attributes(flow))
    return attrs


def l7_attributes(flow: Flow) -> Attributes:
    """http.* / url.* / dns.* of a flow's L7 record (empty for L3/L4 flows)."""
    l7 = flow.l7
    if l7 is None:
        return {}
    attrs: Attributes = {"flowscope.l7.type": enum_name(l7.type)}
    if l7.latency_ns:
        attrs["flowscope.l7.latency_ns"] = l7.latency_ns
    if l7.http is not None:
        http = l7.http
        if http.method:
            attrs["http.request.method"] = http.method
        if http.code:
            attrs["http.response.status_code"] = http.code
        if http.url:
            attrs["url.full"] = http.url
            parts = urlsplit(http.url)
            if parts.path:
                attrs["url.path"] = parts.path
        if http.protocol:
            name, _, version = http.protocol.partition("/")
            attrs["network.protocol.name"] = name.lower()
            if version:
                attrs["network.protocol.version"] = version
    if l7.dns is not None:
        dns = l7.dns
        if dns.query:
            attrs["dns.question.name"] = dns.query.rstrip(".")
        if dns.ips:
            attrs["dns.answers"] = tuple(dns.ips)
        if dns.qtypes:
            attrs["flowscope.dns.qtypes"] = tuple(dns.qtypes)
        attrs["flowscope.dns.rcode"] = dns.rcode
    return attrs


def lost_attributes(event: LostEvent) -> Attributes:
    attrs: Attributes = {
        "flowscope.lost.source": enum_name(event.source),
        "flowscope.lost.events": event.num_events_lost,
    }
    if event.node_name:
        attrs["k8s.node.name"] = event.node_name
    if event.cpu is not None:
        attrs["flowscope.lost.cpu"] = event.cpu
    return attrs


def record_attributes(record: Record) -> Attributes:
    return flow_attributes(record) if isinstance(record, Flow) else lost_attributes(record)
