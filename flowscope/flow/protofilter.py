"""Hubble's flow filters (flowscope.flow.v1.FlowFilter messages) as predicates over our Flow.

Hubble's rules: within one FlowFilter every field that is set must match (AND), and a field
matches when any of its values does; a list of FlowFilters matches when any of them does (OR). A
GetFlows request sends a flow when it matches the whitelist (or there is none) and does not match
the blacklist. Lost events always pass, as in flowscope.flow.filter: a reader must learn that it
missed something, whatever it asked for.

Differences from Hubble, on purpose:
- a pod or service without a namespace ("web-") matches in any namespace (Hubble's server wants
  the empty namespace; its CLI adds "default/"), as `observe --pod` does here;
- label selector keys take Cilium's source prefix with a colon ("k8s:app=web"); a key without
  one matches the label from any source;
- FQDN filters match the DNS names a flow's ends are known by (source_names /
  destination_names), with Hubble's wildcard: "*" stands for any run of name characters;
- HTTP filters (http_method, http_status_code, http_path), dns_query and the L7 protocols
  ("http", "dns") are checked as Hubble checks them, against a flow's L7 record. L7 flows are
  made by the node agent's proxies one by one, never in columnar batches, so over columns these
  criteria hold for no row.

compile_selection() raises FilterError (a ValueError) whose message starts with the offending
field's path, e.g. "whitelist[0].source_ip[1]: ...".

Columnar pre-filter: most criteria can also be decided over `FlowColumns` (rows of flows kept as
numpy columns, with the names they point to in lists), so that a reader of a ring of columnar
batches builds only the flows that may match. `FlowSelection.prefilter(columns)` is a mask that
holds for every row `matches` would accept (a superset: criteria that columns cannot decide
count as met in a whitelist, and a blacklist filter excludes rows only when every criterion of
it was decided); callers check the rows that pass with `matches`. Name criteria (pod,
namespace, label, service, workload, identity, node) are evaluated once per distinct name.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from flowscope.flow.model import (
    HTTP,
    SCTP,
    TCP,
    UDP,
    Endpoint,
    Flow,
    ICMPv4,
    ICMPv6,
    Record,
    Service,
)
from flowscope.proto import flow_pb2

Predicate = Callable[[Flow], bool]
ColumnMask = Callable[["FlowColumns"], np.ndarray]
# a mask from names: (columns, the rows still in question) -> mask, right on those rows
NameMask = Callable[["FlowColumns", np.ndarray], np.ndarray]
Builder = Callable[[Sequence[Any], str], "Criterion"]

_TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
_HTTP_METHODS = frozenset(
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"]
)
_L7_PROTOCOLS = ("http", "dns", "kafka")
_L4_PROTOCOLS: dict[str, tuple[type, ...]] = {
    "tcp": (TCP,),
    "udp": (UDP,),
    "sctp": (SCTP,),
    "icmp": (ICMPv4, ICMPv6),
    "icmpv4": (ICMPv4,),
    "icmpv6": (ICMPv6,),
}


class FilterError(ValueError):
    """A filter that cannot be used; `field` is the path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


IS_REPLY_FALSE, IS_REPLY_TRUE, IS_REPLY_UNKNOWN = 0, 1, 2  # FlowColumns.is_reply
# the IP protocol number of each l4 class (FlowColumns.protocol; 0: a flow without l4)
PROTOCOL_NUMBERS: dict[type, int] = {TCP: 6, UDP: 17, SCTP: 132, ICMPv4: 1, ICMPv6: 58}


@dataclass(frozen=True, eq=False)
class FlowColumns:
    """Rows of flows as columns (numpy arrays of one length), for the pre-filter.

    Each column holds what the row's Flow would hold: the IPv4 addresses as numbers, the l4
    protocol number (PROTOCOL_NUMBERS) and ports (0 without), TCP flag bits (FIN 0x01 ... NS
    0x100), Hubble's numbers for verdict, drop reason (0 unless dropped), traffic direction,
    event type and sub-type, ip_version, is_reply (IS_REPLY_*). Name columns index lists of
    names: `ends` holds (list << 32 | index) into endpoint_lists, whose items are (source,
    destination) pairs (`endpoint_pair`); source_service and destination_service index
    services, `node` nodes; -1: none. Rows marked `opaque` are not described (records kept
    another way): every pre-filter passes them."""

    time_ns: np.ndarray
    source_ip: np.ndarray
    destination_ip: np.ndarray
    protocol: np.ndarray
    source_port: np.ndarray
    destination_port: np.ndarray
    tcp_flags: np.ndarray
    verdict: np.ndarray
    drop_reason: np.ndarray
    event_type: np.ndarray
    event_sub_type: np.ndarray
    traffic_direction: np.ndarray
    ip_version: np.ndarray
    is_reply: np.ndarray
    ends: np.ndarray
    endpoint_lists: Sequence[Sequence[tuple[Endpoint, Endpoint]]]
    source_service: np.ndarray
    destination_service: np.ndarray
    services: Sequence[Service]
    node: np.ndarray
    nodes: Sequence[str]
    opaque: np.ndarray

    def __len__(self) -> int:
        return len(self.time_ns)

    def endpoint_pair(self, key: int) -> tuple[Endpoint, Endpoint]:
        return self.endpoint_lists[key >> 32][key & 0xFFFF_FFFF]


@dataclass(frozen=True)
class Criterion:
    """One field of a FlowFilter: its predicate over a Flow and, when columns can decide it,
    the same answer over FlowColumns rows."""

    matches: Predicate
    mask: ColumnMask | None = None  # from the columns alone
    by_name: NameMask | None = None  # from the names the rows point to (after the others)

    @property
    def decided_by_columns(self) -> bool:
        return self.mask is not None or self.by_name is not None


@dataclass(frozen=True)
class CompiledFilter:
    """One FlowFilter: every predicate must hold."""

    predicates: tuple[Predicate, ...]
    criteria: tuple[Criterion, ...] = ()

    def matches(self, flow: Flow) -> bool:
        return all(p(flow) for p in self.predicates)

    @property
    def decided_by_columns(self) -> bool:
        """Every criterion can be decided over columns (the mask is exact)."""
        return len(self.criteria) == len(self.predicates) and all(
            c.decided_by_columns for c in self.criteria
        )

    def mask(self, columns: FlowColumns) -> np.ndarray:
        """Rows that may match: the decidable criteria hold (exact when decided_by_columns).
        Name criteria come last and look only at the rows the others left."""
        out = np.ones(len(columns), bool)
        for c in self.criteria:
            if c.mask is not None:
                out &= c.mask(columns)
        for c in self.criteria:
            if c.by_name is not None and out.any():
                out &= c.by_name(columns, out)
        return out


@dataclass(frozen=True)
class FlowSelection:
    """A request's whitelist and blacklist; `matches` is what a FlowStream follower calls."""

    whitelist: tuple[CompiledFilter, ...] = ()
    blacklist: tuple[CompiledFilter, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.whitelist or self.blacklist)

    def matches(self, record: Record) -> bool:
        if not isinstance(record, Flow):
            return True
        if self.whitelist and not any(f.matches(record) for f in self.whitelist):
            return False
        return not any(f.matches(record) for f in self.blacklist)

    def prefilter(self, columns: FlowColumns) -> np.ndarray:
        """A mask of the rows that may match: every row `matches` accepts is in it."""
        if self.whitelist:
            keep = np.zeros(len(columns), bool)
            for f in self.whitelist:
                keep |= f.mask(columns)
        else:
            keep = np.ones(len(columns), bool)
        for f in self.blacklist:
            if f.decided_by_columns:  # else it might not match a row: keep the row
                keep &= ~f.mask(columns)
        keep |= columns.opaque
        return keep


def compile_selection(
    whitelist: Iterable[flow_pb2.FlowFilter] = (),
    blacklist: Iterable[flow_pb2.FlowFilter] = (),
) -> FlowSelection:
    """The selection a GetFlowsRequest's lists ask for; FilterError naming the bad field."""
    return FlowSelection(
        tuple(compile_filter(f, f"whitelist[{i}]") for i, f in enumerate(whitelist)),
        tuple(compile_filter(f, f"blacklist[{i}]") for i, f in enumerate(blacklist)),
    )


def compile_filter(msg: flow_pb2.FlowFilter, path: str = "filter") -> CompiledFilter:
    """One FlowFilter as a predicate; FilterError naming the field (under `path`)."""
    criteria: list[Criterion] = []
    # ListFields: only the fields set, so a field added to the schema later is refused below
    for fd, values in msg.ListFields():
        name = fd.name
        where = f"{path}.{name}"
        build = _BUILDERS.get(name)
        if build is None:
            raise FilterError(where, "not supported yet")
        criteria.append(build(list(values), where))
    return CompiledFilter(tuple(c.matches for c in criteria), tuple(criteria))


def _by_name(
    test: Callable[[Any], bool], name: Callable[[FlowColumns, int], Any], column: str
) -> NameMask:
    """A mask from a test of names: `test` runs once per distinct name object among the rows
    in question (`name(columns, key)` for each distinct key of `column`; -1: None), and the
    answers are spread back over the rows by key. Right on the rows in question only."""

    def mask(columns: FlowColumns, within: np.ndarray) -> np.ndarray:
        keys = getattr(columns, column)
        distinct = np.unique(keys[within])
        memo: dict[int, bool] = {}  # by object: the enricher hands out one Endpoint per end

        def answer(key: int) -> bool:
            found = None if key < 0 else name(columns, key)
            ident = id(found)
            hit = memo.get(ident)
            if hit is None:
                hit = memo[ident] = test(found)
            return hit

        hits = np.fromiter((answer(k) for k in distinct.tolist()), bool, len(distinct))
        at = np.minimum(np.searchsorted(distinct, keys), len(distinct) - 1)
        return hits[at] & (distinct[at] == keys)

    return mask


def _end_criterion(end: str, test: Callable[[Endpoint | None], bool]) -> Criterion:
    side = 0 if end == "source" else 1
    return Criterion(
        lambda flow: test(getattr(flow, end)),
        by_name=_by_name(test, lambda c, key: c.endpoint_pair(key)[side], "ends"),
    )


# --- one builder per field: (values, field path) -> criterion ------------------------------------


def _each(values: Sequence[Any], where: str, parse: Callable[[Any], Any]) -> list[Any]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(parse(v))
        except ValueError as exc:
            raise FilterError(f"{where}[{i}]", str(exc)) from None
    return out


def _parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        # strict=False: "10.0.1.5/24" means the /24 it is in, as Go's ParseCIDR reads it
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None


def _ip(end: str) -> Builder:
    def build(values: Sequence[str], where: str) -> Criterion:
        nets = _each(values, where, _parse_network)
        # the columns hold IPv4 addresses (as numbers): an IPv6 network matches none of them
        ranges = [
            (int(n.network_address), int(n.broadcast_address))
            for n in nets
            if isinstance(n, ipaddress.IPv4Network)
        ]

        def match(flow: Flow) -> bool:
            if flow.ip is None:
                return False
            text = getattr(flow.ip, end)
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                return False
            return any(addr in net for net in nets)

        def mask(columns: FlowColumns) -> np.ndarray:
            addr = getattr(columns, f"{end}_ip")
            out = np.zeros(len(addr), bool)
            for low, high in ranges:
                out |= (addr >= low) & (addr <= high)
            return out

        return Criterion(match, mask)

    return build


def _parse_namespaced(text: str) -> tuple[str | None, str]:
    if not text:
        raise ValueError("empty; use [NAMESPACE/][NAME-PREFIX]")
    ns, sep, prefix = text.partition("/")
    if sep and not ns:
        raise ValueError(f"{text!r}: empty namespace; use [NAMESPACE/][NAME-PREFIX]")
    return (ns if sep else None), prefix


def _namespaced_matches(
    patterns: Sequence[tuple[str | None, str]], namespace: str, name: str
) -> bool:
    if not namespace and not name:
        return False
    return any(
        (ns is None or ns == namespace) and name.startswith(prefix) for ns, prefix in patterns
    )


def _pod(end: str) -> Builder:
    def build(values: Sequence[str], where: str) -> Criterion:
        patterns = _each(values, where, _parse_namespaced)

        def test(ep: Endpoint | None) -> bool:
            return ep is not None and _namespaced_matches(patterns, ep.namespace, ep.pod_name)

        return _end_criterion(end, test)

    return build


def _service(end: str) -> Builder:
    attr = f"{end}_service"

    def build(values: Sequence[str], where: str) -> Criterion:
        patterns = _each(values, where, _parse_namespaced)

        def test(svc: Service | None) -> bool:
            return svc is not None and _namespaced_matches(patterns, svc.namespace, svc.name)

        return Criterion(
            lambda flow: test(getattr(flow, attr)),
            by_name=_by_name(test, lambda c, key: c.services[key], attr),
        )

    return build


# --- label selectors (Kubernetes syntax) ---------------------------------------------------------

_KEY = r"[A-Za-z0-9_.\-/:]+"
_VALUE = r"[A-Za-z0-9_.\-]*"
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_EQUALS = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")


@dataclass(frozen=True)
class _Requirement:
    source: str | None  # Cilium label source ("k8s"); None or "any": any source
    key: str
    op: str  # exists, !exists, in, notin
    values: frozenset[str] = frozenset()

    def matches(self, labels: Sequence[tuple[str, str, str]]) -> bool:
        found = [
            value
            for source, key, value in labels
            if key == self.key and self.source in (None, "any", source)
        ]
        if self.op == "exists":
            return bool(found)
        if self.op == "!exists":
            return not found
        hit = any(v in self.values for v in found)
        return hit if self.op == "in" else not hit


def _split_requirements(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _key(raw: str) -> tuple[str | None, str]:
    source, sep, key = raw.partition(":")
    if not sep:
        return None, raw
    if not source or not key:
        raise ValueError(f"{raw!r} is not a label key; use KEY or SOURCE:KEY")
    return source, key


def parse_selector(text: str) -> tuple[_Requirement, ...]:
    """A Kubernetes label selector ("app=web,tier in (a,b),!canary"); ValueError saying why."""
    if not text.strip():
        raise ValueError("empty label selector")
    reqs = []
    for part in _split_requirements(text):
        if m := _SET.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise ValueError(f"{part!r}: no values in the set")
            reqs.append(_Requirement(*_key(m.group(1)), m.group(2), values))
        elif m := _EQUALS.match(part):
            op = "notin" if m.group(2) == "!=" else "in"
            reqs.append(_Requirement(*_key(m.group(1)), op, frozenset([m.group(3)])))
        elif m := _EXISTS.match(part):
            op = "!exists" if m.group(1) else "exists"
            reqs.append(_Requirement(*_key(m.group(2)), op))
        else:
            raise ValueError(f"{part!r} in {text!r} is not a label selector requirement")
    return tuple(reqs)


def _split_label(label: str) -> tuple[str, str, str]:
    """Cilium's "k8s:app=web" as (source, key, value); a label without source has none."""
    source, sep, rest = label.partition(":")
    if not sep:
        source, rest = "", label
    key, _, value = rest.partition("=")
    return source, key, value


def _label(end: str) -> Builder:
    def build(values: Sequence[str], where: str) -> Criterion:
        selectors = _each(values, where, parse_selector)

        def test(ep: Endpoint | None) -> bool:
            if ep is None:
                return False
            labels = [_split_label(lbl) for lbl in ep.labels]
            return any(all(r.matches(labels) for r in sel) for sel in selectors)

        return _end_criterion(end, test)

    return build


# --- scalar fields -------------------------------------------------------------------------------


def _identity(end: str) -> Builder:
    def build(values: Sequence[int], where: str) -> Criterion:
        wanted = frozenset(values)
        return _end_criterion(end, lambda ep: ep is not None and ep.identity in wanted)

    return build


def _workload(end: str) -> Builder:
    def build(values: Sequence[flow_pb2.Workload], where: str) -> Criterion:
        wanted = [(w.name, w.kind) for w in values]
        for i, (name, kind) in enumerate(wanted):
            if not name and not kind:
                raise FilterError(f"{where}[{i}]", "set name, kind or both")

        def test(ep: Endpoint | None) -> bool:
            return ep is not None and any(
                (not name or w.name == name) and (not kind or w.kind == kind)
                for w in ep.workloads
                for name, kind in wanted
            )

        return _end_criterion(end, test)

    return build


def _parse_port(text: str) -> int:
    try:
        port = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r} is not a port number (0-65535)")
    return port


_PORTED = np.array([PROTOCOL_NUMBERS[c] for c in (TCP, UDP, SCTP)])


def _port(end: str) -> Builder:
    def build(values: Sequence[str], where: str) -> Criterion:
        ports = frozenset(_each(values, where, _parse_port))
        listed = np.array(sorted(ports))

        def match(flow: Flow) -> bool:
            l4 = flow.l4
            return isinstance(l4, TCP | UDP | SCTP) and getattr(l4, f"{end}_port") in ports

        def mask(columns: FlowColumns) -> np.ndarray:
            return np.isin(columns.protocol, _PORTED) & np.isin(
                getattr(columns, f"{end}_port"), listed
            )

        return Criterion(match, mask)

    return build


def _parse_protocol(text: str) -> tuple[type, ...] | str:
    """An L4 protocol's classes, or the name of an L7 one."""
    name = text.strip().lower()
    if name in _L7_PROTOCOLS:
        return name
    classes = _L4_PROTOCOLS.get(name)
    if classes is None:
        known = ", ".join((*_L4_PROTOCOLS, *_L7_PROTOCOLS))
        raise ValueError(f"{text!r} is not a protocol; use one of {known}")
    return classes


def _protocol(values: Sequence[str], where: str) -> Criterion:
    parsed = _each(values, where, _parse_protocol)
    classes = tuple(c for group in parsed if not isinstance(group, str) for c in group)
    l7 = {name for name in parsed if isinstance(name, str)}
    numbers = np.array([PROTOCOL_NUMBERS[c] for c in classes])

    def match(flow: Flow) -> bool:
        if isinstance(flow.l4, classes):
            return True
        record = flow.l7
        return record is not None and (
            ("http" in l7 and record.http is not None) or ("dns" in l7 and record.dns is not None)
        )

    return Criterion(match, lambda columns: np.isin(columns.protocol, numbers))


def _tcp_flags(values: Sequence[flow_pb2.TCPFlags], where: str) -> Criterion:
    wanted = []
    for i, msg in enumerate(values):
        names = tuple(n for n in _TCP_FLAG_NAMES if getattr(msg, n))
        if not names:
            raise FilterError(f"{where}[{i}]", "no flag set")
        wanted.append(names)
    bits = [sum(1 << _TCP_FLAG_NAMES.index(n) for n in names) for names in wanted]

    def match(flow: Flow) -> bool:
        l4 = flow.l4
        if not isinstance(l4, TCP) or l4.flags is None:
            return False
        # a flow matches a filter value when it has every flag that value sets
        return any(all(getattr(l4.flags, n) for n in names) for names in wanted)

    def mask(columns: FlowColumns) -> np.ndarray:
        flags = columns.tcp_flags
        out = np.zeros(len(flags), bool)
        for b in bits:
            out |= (flags & b) == b
        return out & (columns.protocol == PROTOCOL_NUMBERS[TCP])

    return Criterion(match, mask)


def _parse_node_pattern(text: str) -> str:
    if not text.strip():
        raise ValueError("empty node name pattern")
    return text.strip()


def _node_name(values: Sequence[str], where: str) -> Criterion:
    patterns = _each(values, where, _parse_node_pattern)

    def test(name: str | None) -> bool:
        return name is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return Criterion(
        lambda flow: test(flow.node_name),
        by_name=_by_name(test, lambda c, key: c.nodes[key], "node"),
    )


def _enum_field(attr: str, enum_type: Any) -> Builder:
    def build(values: Sequence[int], where: str) -> Criterion:
        for i, v in enumerate(values):
            if v not in enum_type.values():
                raise FilterError(f"{where}[{i}]", f"{v} is not a {enum_type.DESCRIPTOR.name}")
        wanted = frozenset(values)
        listed = np.array(sorted(wanted))
        return Criterion(
            lambda flow: int(_attr_of(flow, attr)) in wanted,
            lambda columns: np.isin(getattr(columns, attr), listed),
        )

    return build


def _attr_of(flow: Flow, attr: str) -> int:
    if attr == "ip_version":
        return int(flow.ip.ip_version) if flow.ip is not None else 0
    return int(getattr(flow, attr))


def _reply(values: Sequence[bool], where: str) -> Criterion:
    wanted = frozenset(values)

    def match(flow: Flow) -> bool:
        # Hubble's rule: a drop not known to be a reply counts as not a reply (old clients read
        # the deprecated `reply` field, always false for drops); otherwise unknown matches nothing
        if flow.is_reply is None:
            return flow.verdict == flow_pb2.DROPPED and False in wanted
        return flow.is_reply in wanted

    def mask(columns: FlowColumns) -> np.ndarray:
        reply = columns.is_reply
        out = np.zeros(len(reply), bool)
        if True in wanted:
            out |= reply == IS_REPLY_TRUE
        if False in wanted:
            out |= reply == IS_REPLY_FALSE
            out |= (reply == IS_REPLY_UNKNOWN) & (columns.verdict == flow_pb2.DROPPED)
        return out

    return Criterion(match, mask)


def _event_type(values: Sequence[flow_pb2.EventTypeFilter], where: str) -> Criterion:
    wanted = [(f.type, f.sub_type if f.match_sub_type else None) for f in values]

    def match(flow: Flow) -> bool:
        ev = flow.event_type
        return ev is not None and any(
            ev.type == t and (sub is None or ev.sub_type == sub) for t, sub in wanted
        )

    def mask(columns: FlowColumns) -> np.ndarray:
        out = np.zeros(len(columns), bool)
        for t, sub in wanted:
            hit = columns.event_type == t
            if sub is not None:
                hit &= columns.event_sub_type == sub
            out |= hit
        return out

    return Criterion(match, mask)


def _uuid(values: Sequence[str], where: str) -> Criterion:
    wanted = frozenset(values)
    return Criterion(lambda flow: flow.uuid in wanted)  # not in the columns


# --- names and HTTP ------------------------------------------------------------------------------

_FQDN_PATTERN = re.compile(r"^[-a-zA-Z0-9_.*]+$")


def _parse_fqdn(text: str) -> re.Pattern[str]:
    name = text.strip().rstrip(".").lower()
    if not name or not _FQDN_PATTERN.match(name):
        raise ValueError(f"{text!r} is not a DNS name pattern (letters, digits, '-', '.', '*')")
    parts = (re.escape(p) for p in name.split("*"))
    return re.compile("^" + "[-a-z0-9_.]*".join(parts) + "$")


def _fqdn(end: str) -> Builder:
    def build(values: Sequence[str], where: str) -> Criterion:
        patterns = _each(values, where, _parse_fqdn)

        def match(flow: Flow) -> bool:
            names = getattr(flow, f"{end}_names")
            return any(p.match(n.rstrip(".").lower()) for n in names for p in patterns)

        return Criterion(match)  # DNS names are not in the columns

    return build


def _parse_method(text: str) -> str:
    method = text.strip().upper()
    if method not in _HTTP_METHODS:
        raise ValueError(f"{text!r} is not an HTTP method ({', '.join(sorted(_HTTP_METHODS))})")
    return method


def _parse_status(text: str) -> str:
    # Hubble's form: a code ("404") or a prefix of one ending in "+" ("5+", "40+")
    if not re.fullmatch(r"[1-5][0-9]{2}|[1-5][0-9]?\+", text.strip()):
        raise ValueError(f"{text!r} is not an HTTP status code (404) or prefix (5+, 40+)")
    return text.strip()


def _parse_regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression: {exc}") from None


def _no_l7_rows(columns: FlowColumns) -> np.ndarray:
    return np.zeros(len(columns), bool)  # columnar batches hold no L7 flows


def _http(parse: Callable[[str], Any], test: Callable[[HTTP, list[Any]], bool]) -> Builder:
    def build(values: Sequence[str], where: str) -> Criterion:
        parsed = _each(values, where, parse)

        def match(flow: Flow) -> bool:
            http = flow.l7.http if flow.l7 is not None else None
            return http is not None and test(http, parsed)

        return Criterion(match, _no_l7_rows)

    return build


def _method_is(http: HTTP, methods: list[str]) -> bool:
    return http.method.upper() in methods


def _status_is(http: HTTP, codes: list[str]) -> bool:
    # a request (code 0) has no status to match
    code = str(http.code)
    return http.code != 0 and any(
        code.startswith(c[:-1]) if c.endswith("+") else code == c for c in codes
    )


def _path_is(http: HTTP, patterns: list[re.Pattern[str]]) -> bool:
    path = urlsplit(http.url).path
    return any(p.search(path) for p in patterns)


def _dns_query(values: Sequence[str], where: str) -> Criterion:
    patterns = _each(values, where, _parse_regex)

    def match(flow: Flow) -> bool:
        dns = flow.l7.dns if flow.l7 is not None else None
        return dns is not None and any(p.search(dns.query) for p in patterns)

    return Criterion(match, _no_l7_rows)


_BUILDERS: dict[str, Builder] = {
    "uuid": _uuid,
    "source_ip": _ip("source"),
    "destination_ip": _ip("destination"),
    "source_pod": _pod("source"),
    "destination_pod": _pod("destination"),
    "source_label": _label("source"),
    "destination_label": _label("destination"),
    "source_service": _service("source"),
    "destination_service": _service("destination"),
    "source_workload": _workload("source"),
    "destination_workload": _workload("destination"),
    "source_identity": _identity("source"),
    "destination_identity": _identity("destination"),
    "traffic_direction": _enum_field("traffic_direction", flow_pb2.TrafficDirection),
    "verdict": _enum_field("verdict", flow_pb2.Verdict),
    "drop_reason_desc": _enum_field("drop_reason", flow_pb2.DropReason),
    "ip_version": _enum_field("ip_version", flow_pb2.IPVersion),
    "event_type": _event_type,
    "protocol": _protocol,
    "source_port": _port("source"),
    "destination_port": _port("destination"),
    "reply": _reply,
    "tcp_flags": _tcp_flags,
    "node_name": _node_name,
    "source_fqdn": _fqdn("source"),
    "destination_fqdn": _fqdn("destination"),
    "http_method": _http(_parse_method, _method_is),
    "http_status_code": _http(_parse_status, _status_is),
    "http_path": _http(_parse_regex, _path_is),
    "dns_query": _dns_query,
}
