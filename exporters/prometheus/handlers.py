"""Hubble's flow metrics (cilium pkg/hubble/metrics/*): the same names, labels and rules for
which flows count, computed over our Flow.

Each handler is made from one MetricConfig: its context options add labels after (or, for dns
and drop, before) Hubble's own, its include/exclude filters pick the flows it sees, and its
families fold label sets beyond the cardinality limit into "other" (series.py).

Known, deliberate differences from Hubble: the icmp metric's family label is "IPv6" for ICMPv6
(Hubble writes "IPv4" for both, a bug); "workload" context (see context.py); the http metrics'
`exemplars` option is accepted but adds none (our flows carry no trace context yet).
"""

from __future__ import annotations

from collections.abc import Callable

from exporters.prometheus.config import MetricConfig
from exporters.prometheus.series import MetricSet
from flowscope.flow.dropreason import DropReason
from flowscope.flow.model import (
    SCTP,
    TCP,
    UDP,
    Flow,
    ICMPv4,
    ICMPv6,
    IPVersion,
    L7FlowType,
    MessageType,
    PolicyMatchType,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
)

NAMESPACE = "hubble"
_FORWARDED = (Verdict.FORWARDED, Verdict.REDIRECTED)
_TRACE_POINTS = {p.datapath_code: p.label for p in TraceObservationPoint if p.value}
_RESERVED_HOST = 1
_WORLD = "reserved:world"

# DNS response codes as Hubble names them (pkg/hubble/metrics/dns/rcode.go)
RCODE_NAMES = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
    4: "Not Implemented", 5: "Query Refused", 6: "Name Exists when it should not",
    7: "RR Set Exists when it should not", 8: "RR Set that should exist does not",
    9: "Not Authorized", 10: "Name not contained in zone", 11: "DSO-TYPE Not Implemented",
    16: "Bad OPT Version", 17: "Key not recognized", 18: "Signature out of time window",
    19: "Bad TKEY Mode", 20: "Duplicate key name", 21: "Algorithm not supported",
    22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}  # fmt: skip

# ICMP type (and code) names as gopacket's ICMPv4TypeCode/ICMPv6TypeCode String() prints them
_ICMP4: dict[int, tuple[str, dict[int, str] | None]] = {
    0: ("EchoReply", None),
    3: ("DestinationUnreachable", {0: "Net", 1: "Host", 2: "Protocol", 3: "Port",
        4: "FragmentationNeeded", 5: "SourceRoutingFailed", 6: "NetUnknown", 7: "HostUnknown",
        8: "SourceIsolated", 9: "NetAdminProhibited", 10: "HostAdminProhibited", 11: "NetTOS",
        12: "HostTOS", 13: "CommAdminProhibited", 14: "HostPrecedence",
        15: "PrecedenceCutoff"}),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Network", 1: "Host", 2: "TOS+Network", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("Timestamp", None), 14: ("TimestampReply", None), 15: ("InfoRequest", None),
    16: ("InfoReply", None), 17: ("AddressMaskRequest", None), 18: ("AddressMaskReply", None),
}  # fmt: skip
_ICMP6: dict[int, tuple[str, dict[int, str] | None]] = {
    1: ("DestinationUnreachable", {0: "NoRouteToDst", 1: "AdminProhibited",
        2: "BeyondScopeOfSrc", 3: "Unreachable", 4: "PortUnreachable",
        5: "SrcAddressFailedPolicy", 6: "RejectRouteToDst"}),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: ("ParameterProblem", {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader",
        2: "UnrecognizedIPv6Option"}),
    128: ("EchoRequest", None), 129: ("EchoReply", None), 133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None), 135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None), 137: ("Redirect", None),
}  # fmt: skip


def icmp_type_name(table: dict, type_: int, code: int) -> str:
    entry = table.get(type_)
    if entry is None:
        return f"{type_}({code})"
    name, codes = entry
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    return f"{name}({codes[code]})" if code in codes else f"{name}(Code: {code})"


def flow_protocol(flow: Flow) -> str:
    """Hubble's v1.FlowProtocol: the L7 protocol, else the L4 one."""
    if flow.l7 is not None:
        if flow.l7.dns is not None:
            return "DNS"
        if flow.l7.http is not None:
            return "HTTP"
        return "Unknown L7"
    l4 = flow.l4
    if l4 is not None:
        return _L4_NAMES.get(type(l4), "Unknown L4")
    return "Unknown flow"


_L4_NAMES = {TCP: "TCP", UDP: "UDP", ICMPv4: "ICMPv4", ICMPv6: "ICMPv6", SCTP: "SCTP"}


def verdict_name(flow: Flow) -> str:
    v = flow.verdict
    return v.name if isinstance(v, Verdict) else str(v)


def drop_reason_name(flow: Flow) -> str:
    r = flow.drop_reason_desc
    return r.name if isinstance(r, DropReason) else str(r)


def _direction(flow: Flow) -> str:
    d = flow.traffic_direction
    return TrafficDirection(d).name.lower() if d in TrafficDirection._value2member_map_ else str(d)


def _event_type(flow: Flow) -> int:
    return flow.event_type.type if flow.event_type is not None else 0


class Handler:
    """One Hubble metric: `process(flow)` counts it when it passes the metric's filters."""

    def __init__(self, metrics: MetricSet, config: MetricConfig) -> None:
        self.config = config
        self.context = config.context
        self.limit = config.cardinality_limit
        self.selection = config.selection()
        self._has_context = bool(config.context.label_names())
        self.setup(metrics)

    def setup(self, metrics: MetricSet) -> None:
        raise NotImplementedError

    def context_values(self, flow: Flow, invert: bool = False) -> tuple[str, ...]:
        return self.context.label_values(flow, invert) if self._has_context else ()

    def process(self, flow: Flow) -> None:
        if self.selection is None or self.selection.matches(flow):
            self.count(flow)

    def count(self, flow: Flow) -> None:
        raise NotImplementedError


def _name(short: str) -> str:
    return f"{NAMESPACE}_{short}"


class FlowsProcessed(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.flows = metrics.counter(
            _name("flows_processed_total"),
            "Total number of flows processed",
            ("protocol", "type", "subtype", "verdict", *self.context.label_names()),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        et = flow.event_type
        kind = et.type if et is not None else 0
        subtype = ""
        if kind == MessageType.ACCESS_LOG:
            name = "L7"
            if flow.l7 is not None:
                l7 = flow.l7
                subtype = "DNS" if l7.dns is not None else "HTTP" if l7.http is not None else ""
        elif kind == MessageType.DROP:
            name = "Drop"
        elif kind == MessageType.CAPTURE:
            name = "Capture"
        elif kind == MessageType.TRACE:
            name = "Trace"
            subtype = _TRACE_POINTS.get(et.sub_type if et else 0, "")
        elif kind == MessageType.POLICY_VERDICT:
            name = "PolicyVerdict"
        else:
            name, subtype = "Unknown", str(int(kind))
        labels = (flow_protocol(flow), name, subtype, verdict_name(flow))
        self.flows.inc(labels + self.context_values(flow))


class Drop(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.drops = metrics.counter(
            _name("drop_total"),
            "Number of drops",
            (*self.context.label_names(), "reason", "protocol"),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        if flow.verdict != Verdict.DROPPED:
            return
        self.drops.inc((*self.context_values(flow), drop_reason_name(flow), flow_protocol(flow)))


class TCPFlagsMetric(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.flags = metrics.counter(
            _name("tcp_flags_total"),
            "TCP flag occurrences",
            ("flag", "family", *self.context.label_names()),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        l4 = flow.l4
        if flow.verdict not in _FORWARDED or not isinstance(l4, TCP) or l4.flags is None:
            return
        if flow.ip is None:
            return
        family = IPVersion(flow.ip.ip_version).name
        ctx = self.context_values(flow)
        f = l4.flags
        if f.FIN:
            self.flags.inc(("FIN", family, *ctx))
        if f.SYN:
            self.flags.inc(("SYN-ACK" if f.ACK else "SYN", family, *ctx))
        if f.RST:
            self.flags.inc(("RST", family, *ctx))


class PortDistribution(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.ports = metrics.counter(
            _name("port_distribution_total"),
            "Numbers of packets distributed by destination port",
            ("protocol", "port", *self.context.label_names()),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        # a flow not known to be a request (is_reply unset) does not say its service port
        if flow.verdict not in _FORWARDED or flow.l4 is None or flow.is_reply is not False:
            return
        l4 = flow.l4
        if isinstance(l4, TCP | UDP | SCTP):
            labels = (_L4_NAMES[type(l4)], str(l4.destination_port))
        else:
            labels = (_L4_NAMES[type(l4)], "0")
        self.ports.inc(labels + self.context_values(flow))


class ICMP(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.icmp = metrics.counter(
            _name("icmp_total"),
            "Number of ICMP messages",
            ("family", "type", *self.context.label_names()),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        l4 = flow.l4
        if isinstance(l4, ICMPv4):
            labels = ("IPv4", icmp_type_name(_ICMP4, l4.type, l4.code))
        elif isinstance(l4, ICMPv6):
            labels = ("IPv6", icmp_type_name(_ICMP6, l4.type, l4.code))
        else:
            return
        self.icmp.inc(labels + self.context_values(flow))


class DNSMetric(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.include_query = self.config.option("query") is not None
        self.ignore_aaaa = self.config.option("ignoreAAAA") is not None
        ctx = self.context.label_names()
        query = ("query",) if self.include_query else ()
        both = (*ctx, "rcode", "qtypes", "ips_returned", *query)
        self.queries = metrics.counter(
            _name("dns_queries_total"), "Number of DNS queries observed", both, self.limit
        )
        self.responses = metrics.counter(
            _name("dns_responses_total"), "Number of DNS responses observed", both, self.limit
        )
        self.types = metrics.counter(
            _name("dns_response_types_total"),
            "Number of DNS response types observed",
            (*ctx, "type", "qtypes", *query),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        dns = flow.l7.dns if flow.l7 is not None else None
        if dns is None:
            return
        if self.ignore_aaaa and dns.qtypes == ("AAAA",):
            return
        ctx = self.context_values(flow)
        qtypes = ",".join(dns.qtypes)
        query = (dns.query,) if self.include_query else ()
        ips = str(len(dns.ips))
        if flow.verdict == Verdict.DROPPED:
            self.queries.inc((*ctx, "Policy denied", qtypes, ips, *query))
        elif not flow.is_reply:
            self.queries.inc((*ctx, "", qtypes, ips, *query))
        else:
            rcode = RCODE_NAMES.get(dns.rcode, "")
            self.responses.inc((*ctx, rcode, qtypes, ips, *query))
            for rrtype in dns.rrtypes:
                self.types.inc((*ctx, rrtype, qtypes, *query))


def _reporter(flow: Flow) -> str:
    d = flow.traffic_direction
    return "client" if d == TrafficDirection.EGRESS else "server" if d == 1 else "unknown"


def _http_duration(metrics: MetricSet, ctx: tuple[str, ...], limit: int):
    """http's and httpV2's request duration histogram (the same series in both)."""
    return metrics.histogram(
        _name("http_request_duration_seconds"),
        "Quantiles of HTTP request duration in seconds",
        (*ctx, "method", "reporter"),
        limit,
    )


class HTTPMetric(Handler):
    """Hubble's http (v1): requests on REQUEST records, responses and the duration on RESPONSE
    records (the duration is the response's latency_ns)."""

    def setup(self, metrics: MetricSet) -> None:
        ctx = self.context.label_names()
        self.requests = metrics.counter(
            _name("http_requests_total"),
            "Count of HTTP requests",
            (*ctx, "method", "protocol", "reporter"),
            self.limit,
        )
        self.responses = metrics.counter(
            _name("http_responses_total"),
            "Count of HTTP responses",
            (*ctx, "method", "protocol", "status", "reporter"),
            self.limit,
        )
        self.duration = _http_duration(metrics, ctx, self.limit)

    def count(self, flow: Flow) -> None:
        l7 = flow.l7
        if l7 is None or l7.http is None:
            return
        http = l7.http
        if l7.type == L7FlowType.REQUEST:
            ctx = self.context_values(flow)
            self.requests.inc((*ctx, http.method, http.protocol, _reporter(flow)))
        elif l7.type == L7FlowType.RESPONSE:
            ctx = self.context_values(flow)
            reporter = _reporter(flow)
            status = str(http.code)
            self.responses.inc((*ctx, http.method, http.protocol, status, reporter))
            self.duration.observe((*ctx, http.method, reporter), l7.latency_ns / 1e9)


class HTTPV2Metric(Handler):
    """Hubble's httpV2: everything from RESPONSE records, context of the request's direction."""

    def setup(self, metrics: MetricSet) -> None:
        ctx = self.context.label_names()
        self.requests = metrics.counter(
            _name("http_requests_total"),
            "Count of HTTP requests",
            (*ctx, "method", "protocol", "status", "reporter"),
            self.limit,
        )
        self.duration = _http_duration(metrics, ctx, self.limit)

    def count(self, flow: Flow) -> None:
        l7 = flow.l7
        if l7 is None or l7.http is None or l7.type != L7FlowType.RESPONSE:
            return
        http = l7.http
        ctx = self.context_values(flow, invert=True)
        reporter = _reporter(flow)
        self.requests.inc((*ctx, http.method, http.protocol, str(http.code), reporter))
        self.duration.observe((*ctx, http.method, reporter), l7.latency_ns / 1e9)


class PolicyVerdicts(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.verdicts = metrics.counter(
            _name("policy_verdicts_total"),
            "Total number of Cilium network policy verdicts",
            ("direction", "match", "action", *self.context.label_names()),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        kind = _event_type(flow)
        if kind == MessageType.POLICY_VERDICT:
            if flow.source is not None and flow.source.identity == _RESERVED_HOST:
                return  # the host may reach every local endpoint: not a verdict worth counting
            try:
                match = PolicyMatchType(flow.policy_match_type).label.lower()
            except ValueError:
                match = str(flow.policy_match_type)
        elif kind == MessageType.ACCESS_LOG:
            l7 = flow.l7
            sub = ""
            if l7 is not None:
                sub = "dns" if l7.dns is not None else "http" if l7.http is not None else ""
            match = f"l7/{sub}"
        else:
            return
        action = verdict_name(flow).lower()
        self.verdicts.inc((_direction(flow), match, action, *self.context_values(flow)))


class FlowsToWorld(Handler):
    def setup(self, metrics: MetricSet) -> None:
        self.any_drop = self.config.option("any-drop") is not None
        self.port = self.config.option("port") is not None
        self.syn_only = self.config.option("syn-only") is not None
        port = ("port",) if self.port else ()
        self.flows = metrics.counter(
            _name("flows_to_world_total"),
            "Total number of flows to reserved:world",
            ("protocol", "verdict", *port, *self.context.label_names()),
            self.limit,
        )

    def count(self, flow: Flow) -> None:
        dst, l4 = flow.destination, flow.l4
        if dst is None or _WORLD not in dst.labels or flow.event_type is None or l4 is None:
            return
        dropped = flow.verdict == Verdict.DROPPED
        if dropped and not self.any_drop and flow.drop_reason != DropReason.POLICY_DENIED:
            return  # without any-drop only policy drops count
        reply = bool(flow.is_reply)
        if not dropped and reply:
            return  # a reply would count the ephemeral port
        if self.syn_only:
            syn = isinstance(l4, TCP) and l4.flags is not None and l4.flags.SYN
            if not syn or reply:
                return
        labels: tuple[str, ...] = (flow_protocol(flow), verdict_name(flow))
        if self.port:
            port = str(l4.destination_port) if isinstance(l4, TCP | UDP | SCTP) else ""
            labels += (port,)
        self.flows.inc(labels + self.context_values(flow))


HANDLERS: dict[str, Callable[[MetricSet, MetricConfig], Handler]] = {
    "flow": FlowsProcessed,
    "drop": Drop,
    "tcp": TCPFlagsMetric,
    "port-distribution": PortDistribution,
    "icmp": ICMP,
    "dns": DNSMetric,
    "http": HTTPMetric,
    "httpV2": HTTPV2Metric,
    "policy": PolicyVerdicts,
    "flows-to-world": FlowsToWorld,
}


def build_handlers(metrics: MetricSet, configs: tuple[MetricConfig, ...]) -> list[Handler]:
    return [HANDLERS[c.name](metrics, c) for c in configs]
