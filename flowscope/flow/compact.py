"""The one-line form of a flow, as `hubble observe` prints it by default (its compact output):

  Nov 28 21:52:51.123: x/a:43210 (ID:300) -> y/b:80 (ID:301) to-endpoint FORWARDED (TCP Flags: SYN)
  Nov 28 21:52:51.124: x/a:43211 (ID:300) -> y/b:81 (ID:301) Policy denied DROPPED (TCP Flags: SYN)

time (UTC), source, its identity, arrow (-> request, <- reply with the ends swapped, <> unknown),
destination, its identity, the event's type (trace point, drop reason, policy verdict), verdict,
and the summary in parentheses.

A flow through a service (one with `service_translation`: the socket LB's TRANSLATED event, and the
packets of the connection it translated) names three ends, client -> service -> backend (times cut):

  x/a (ID:300) -> y/web:8000 -> y/web-b:80 (ID:301) post-xlate-fwd TRANSLATED (TCP)
  x/a:43210 (ID:300) -> y/web:8000 -> y/web-b:80 (ID:301) to-endpoint FORWARDED (TCP Flags: SYN)
  x/a:43210 (ID:300) <- y/web:8000 <- y/web-b:80 (ID:301) to-endpoint FORWARDED (TCP Flags: ...)

The service is written with its own port (the one the client asked for), the backend with the
port the packets carry; hubble prints only one of the two.

With a COLOR palette (`observe --color`), hubble's colours: hosts cyan, identities magenta,
verdicts green (forwarded), red (dropped, error) or yellow (audit, traced, translated).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowscope.flow.dropreason import describe
from flowscope.flow.model import (
    SCTP,
    TCP,
    UDP,
    Endpoint,
    Flow,
    FlowType,
    L7FlowType,
    LostEvent,
    LostEventSource,
    MessageType,
    PolicyMatchType,
    Record,
    SocketTranslationPoint,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
)
from flowscope.flow.summary import summary_of, summary_of_l7
from flowscope.flow.timestamp import stamp_milli

# Cilium's reserved identities as its NumericIdentity.String() names them.
RESERVED_IDENTITY_NAMES = {
    0: "unknown",
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world-ipv4",
    10: "world-ipv6",
}
_RESET = "\x1b[0m"
_VERDICT_COLORS = {
    Verdict.FORWARDED: "\x1b[32m",
    Verdict.REDIRECTED: "\x1b[32m",
    Verdict.DROPPED: "\x1b[31m",
    Verdict.ERROR: "\x1b[31m",
    Verdict.AUDIT: "\x1b[33m",
    Verdict.TRACED: "\x1b[33m",
    Verdict.TRANSLATED: "\x1b[33m",
}


@dataclass(frozen=True)
class Palette:
    """How parts of a line are coloured (ANSI escapes, as hubble's printer uses them)."""

    enabled: bool = False

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.enabled and text else text

    def host(self, text: str) -> str:
        return self._paint("\x1b[36m", text)

    def identity(self, text: str) -> str:
        return self._paint("\x1b[35m", text)

    def verdict(self, flow: Flow, text: str) -> str:
        try:
            code = _VERDICT_COLORS.get(Verdict(flow.verdict))
        except ValueError:
            code = None
        return self._paint(code, text) if code else text


PLAIN = Palette()
COLOR = Palette(enabled=True)

# Trace event sub-types (the datapath's observation point numbers) and their names.
_TRACE_POINTS = {p.datapath_code: p.label for p in TraceObservationPoint if p.value}


def _ports(flow: Flow) -> tuple[str, str]:
    if isinstance(flow.l4, TCP | UDP | SCTP):
        return str(flow.l4.source_port), str(flow.l4.destination_port)
    return "", ""


def _host(ip: str, port: str, ep: Endpoint | None, svc, names: tuple[str, ...]) -> str:
    host = ip
    ns = ep.namespace if ep else ""
    if svc is not None:
        ns = svc.namespace
    if ep and ep.pod_name:
        host = f"{ns}/{ep.pod_name}" if ns else ep.pod_name
    elif svc is not None and svc.name:
        host = f"{ns}/{svc.name}" if ns else svc.name
    elif names:
        host = ",".join(names)
    if port and port != "0":
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return host


def _identity(ep: Endpoint | None) -> str:
    ident = ep.identity if ep else 0
    name = RESERVED_IDENTITY_NAMES.get(ident)
    return f"({name})" if name else f"(ID:{ident})"


def flow_type(flow: Flow) -> str:
    """The type column: trace point ('to-endpoint'), drop reason, 'policy-verdict:L3-L4 INGRESS'."""
    if flow.kernel_drop_reason:
        return f"kernel-drop:{flow.kernel_drop_reason}"
    if flow.l7 is not None:
        protocol = "dns" if flow.l7.dns else "http" if flow.l7.http else "l7"
        try:
            kind = L7FlowType(flow.l7.type).name.lower()
        except ValueError:
            kind = str(flow.l7.type)
        return f"{protocol}-{kind}"
    if flow.event_type is not None and flow.event_type.type == MessageType.TRACE_SOCK:
        try:
            return SocketTranslationPoint(flow.sock_xlate_point).label
        except ValueError:
            return str(flow.sock_xlate_point)
    if flow.type == FlowType.SOCK:
        return "sock-trace"
    if flow.event_type is None:
        return "UNKNOWN"
    kind, sub = flow.event_type.type, flow.event_type.sub_type
    if kind == MessageType.TRACE:
        return _TRACE_POINTS.get(sub, str(sub))
    if kind == MessageType.DROP:
        return describe(sub)
    if kind == MessageType.POLICY_VERDICT:
        try:
            match = PolicyMatchType(flow.policy_match_type).label
        except ValueError:
            match = "unknown"
        try:
            direction = TrafficDirection(flow.traffic_direction).name
        except ValueError:
            direction = str(flow.traffic_direction)
        return f"policy-verdict:{match} {direction}"
    return "UNKNOWN"


def verdict_text(flow: Flow) -> str:
    try:
        verdict = Verdict(flow.verdict)
    except ValueError:
        return str(flow.verdict)
    if flow.event_type is not None and flow.event_type.type == MessageType.POLICY_VERDICT:
        if verdict in (Verdict.FORWARDED, Verdict.REDIRECTED):
            return "ALLOWED"
        if verdict in (Verdict.DROPPED, Verdict.ERROR):
            return "DENIED"
        if verdict is Verdict.AUDIT:
            return "AUDITED"
    return verdict.name


def _service_and_backend(flow: Flow, arrow: str) -> str | None:
    """'y/web:8000 -> y/web-b:80' for a flow through a service: the service, then the backend
    (the flow's destination, or its source for a reply)."""
    xlate = flow.service_translation
    if xlate is None:
        return None
    reply = bool(flow.is_reply)
    svc = flow.source_service if reply else flow.destination_service
    backend = flow.source if reply else flow.destination
    service = _host(xlate.service_ip, str(xlate.service_port), None, svc, ())
    return (
        f"{service} {arrow} {_host(xlate.backend_ip, str(xlate.backend_port), backend, None, ())}"
    )


def host_names(flow: Flow) -> tuple[str, str]:
    """The source and destination as hubble names them (pod, service, DNS name or IP, :port)."""
    src_port, dst_port = _ports(flow)
    if flow.ip is None:
        return "", ""
    return (
        _host(flow.ip.source, src_port, flow.source, flow.source_service, flow.source_names),
        _host(
            flow.ip.destination,
            dst_port,
            flow.destination,
            flow.destination_service,
            flow.destination_names,
        ),
    )


def summary_text(flow: Flow) -> str:
    if flow.summary:
        return flow.summary
    return summary_of_l7(flow.l7) if flow.l7 is not None else summary_of(flow.l4)


def format_flow(flow: Flow, *, node_name: bool = False, palette: Palette = PLAIN) -> str:
    src_port, dst_port = _ports(flow)
    if flow.ip is not None:
        src = _host(flow.ip.source, src_port, flow.source, flow.source_service, flow.source_names)
        dst = _host(
            flow.ip.destination,
            dst_port,
            flow.destination,
            flow.destination_service,
            flow.destination_names,
        )
    else:
        src = dst = ""
    src_id, dst_id = _identity(flow.source), _identity(flow.destination)
    arrow = "->"
    if flow.is_reply is None:
        arrow = "<>"
    elif flow.is_reply:
        src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
    through = _service_and_backend(flow, arrow)
    if through is not None:
        dst = through  # the far end (after the flip of a reply): service, then backend
    node = f" [{flow.node_name}]" if node_name else ""
    p = palette
    return (
        f"{stamp_milli(flow.time_ns)}{node}: {p.host(src)} {p.identity(src_id)} {arrow} "
        f"{p.host(dst)} {p.identity(dst_id)} {flow_type(flow)} "
        f"{p.verdict(flow, verdict_text(flow))} ({summary_text(flow)})"
    )


def format_lost(event: LostEvent) -> str:
    return f"EVENTS LOST: {lost_source(event)} CPU({event.cpu or 0}) {event.num_events_lost}"


def lost_source(event: LostEvent) -> str:
    try:
        return LostEventSource(event.source).name
    except ValueError:
        return str(event.source)


def format_compact(record: Record, *, node_name: bool = False, palette: Palette = PLAIN) -> str:
    if isinstance(record, LostEvent):
        return format_lost(record)
    return format_flow(record, node_name=node_name, palette=palette)
