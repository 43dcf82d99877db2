"""What the flow table shows of a Flow, one pure function per column (the table formats only the
rows on screen, so these run for tens of rows a frame, not for every flow received)."""

from __future__ import annotations

from datetime import UTC, datetime

from flowscope.flow.compact import RESERVED_IDENTITY_NAMES, verdict_text
from flowscope.flow.model import (
    SCTP,
    TCP,
    UDP,
    Endpoint,
    Flow,
    ICMPv4,
    ICMPv6,
    LostEvent,
    Record,
    Service,
    Verdict,
)

COLUMNS = ("TIME", "SOURCE", "DESTINATION", "SERVICE", "PORT", "VERDICT", "DROP REASON", "L7")

# verdict -> Rich colour (readable on the light and the dark theme)
VERDICT_COLOURS = {
    "FORWARDED": "green",
    "ALLOWED": "green",
    "DROPPED": "red",
    "DENIED": "red",
    "ERROR": "magenta",
    "AUDIT": "yellow",
    "AUDITED": "yellow",
    "TRANSLATED": "cyan",
    "REDIRECTED": "blue",
    "TRACED": "blue",
    "LOST": "red",
}


def clock(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%H:%M:%S")


def endpoint_name(ip: str, ep: Endpoint | None, names: tuple[str, ...] = ()) -> str:
    """ns/pod, a reserved identity's name (world, host), a DNS name, or the IP."""
    if ep is not None and ep.pod_name:
        return f"{ep.namespace}/{ep.pod_name}" if ep.namespace else ep.pod_name
    if ep is not None and ep.identity in RESERVED_IDENTITY_NAMES and ep.identity:
        reserved = RESERVED_IDENTITY_NAMES[ep.identity]
        return f"{reserved} {ip}" if ip and reserved == "world" else reserved
    if names:
        return names[0]
    return ip


def source(flow: Flow) -> str:
    return endpoint_name(flow.ip.source if flow.ip else "", flow.source, flow.source_names)


def destination(flow: Flow) -> str:
    return endpoint_name(
        flow.ip.destination if flow.ip else "", flow.destination, flow.destination_names
    )


def service(flow: Flow) -> str:
    svc: Service | None = flow.source_service if flow.is_reply else flow.destination_service
    if svc is None or not svc.name:
        return ""
    return f"{svc.namespace}/{svc.name}" if svc.namespace else svc.name


def port(flow: Flow) -> str:
    l4 = flow.l4
    if isinstance(l4, TCP | UDP | SCTP):
        number = l4.source_port if flow.is_reply else l4.destination_port
        return f"{number}/{type(l4).__name__}"
    if isinstance(l4, ICMPv4 | ICMPv6):
        return f"{type(l4).__name__} {l4.type}"
    return ""


def verdict(flow: Flow) -> str:
    return verdict_text(flow)


def drop_reason(flow: Flow) -> str:
    if flow.kernel_drop_reason:
        return flow.kernel_drop_reason
    if flow.verdict != Verdict.DROPPED and not flow.drop_reason:
        return ""
    reason = flow.drop_reason_desc
    return reason.name if hasattr(reason, "name") else str(reason)


def l7_summary(flow: Flow) -> str:
    """'GET http://web/x', '200 GET … 3ms', 'DNS A web.default.svc.' or 'DNS NXDOMAIN …'."""
    l7 = flow.l7
    if l7 is None:
        return ""
    took = f" {l7.latency_ns / 1e6:.0f}ms" if l7.latency_ns else ""
    if l7.http is not None:
        h = l7.http
        if h.code:
            return f"{h.code} {h.method} {h.url}{took}".replace("  ", " ")
        return f"{h.method} {h.url}"
    if l7.dns is not None:
        d = l7.dns
        kinds = ",".join(d.qtypes)
        if d.rcode:
            rcode = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}.get(d.rcode)
            return f"DNS {rcode or f'rcode {d.rcode}'} {d.query}{took}"
        if d.ips:
            return f"DNS {kinds} {d.query} -> {','.join(d.ips)}{took}"
        return f"DNS {kinds} {d.query}".replace("  ", " ")
    return ""


def row(record: Record) -> tuple[str, ...]:
    """The table's cells for one record, in COLUMNS' order."""
    if isinstance(record, LostEvent):
        from flowscope.flow.compact import lost_source

        count = f"{record.num_events_lost:,} lost"
        return (
            clock(record.time_ns),
            record.node_name,
            "",
            "",
            "",
            "LOST",
            count,
            lost_source(record),
        )
    return (
        clock(record.time_ns),
        source(record),
        destination(record),
        service(record),
        port(record),
        verdict(record),
        drop_reason(record),
        l7_summary(record),
    )
