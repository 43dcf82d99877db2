"""`hubble observe`'s filter flags, read into the GetFlowsRequest's whitelist and blacklist.

Hubble's rules, kept here:
- each flag adds values to the request's filters; values of one flag are alternatives (OR),
  different flags must all hold (AND);
- a flag about either end (--pod, --ip, --label, --port, --identity, --fqdn, --service) makes two
  filters: one with the value as the source, one as the destination (a flow matches either);
  the --from-*/--to-* forms set one end in both;
- --namespace (-n), --from-namespace, --to-namespace go into the pod and service filters of
  their end ("NS/" for any pod there; a pod without a namespace gets it);
- `--not` sends the next filter flag to the blacklist instead (`--not --verdict DROPPED`);
- some flags cannot be combined (--from-pod with --namespace, --ip with --from-ip, ...).

Each value is checked here with the server's own parser (flowscope.flow.protofilter), so a bad
one is a UsageError naming the flag, before anything is sent.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowscope.errors import UsageError
from flowscope.flow.compact import RESERVED_IDENTITY_NAMES
from flowscope.flow.filter import parse_event_type
from flowscope.flow.protofilter import FilterError, compile_filter
from flowscope.proto import flow_pb2

# flag -> (FlowFilter field of the left filter, of the right filter); for one-end flags both
# are the same field, for either-end flags source on the left and destination on the right
_FIELDS: dict[str, tuple[str, str]] = {
    "pod": ("source_pod", "destination_pod"),
    "from-pod": ("source_pod", "source_pod"),
    "to-pod": ("destination_pod", "destination_pod"),
    "ip": ("source_ip", "destination_ip"),
    "from-ip": ("source_ip", "source_ip"),
    "to-ip": ("destination_ip", "destination_ip"),
    "label": ("source_label", "destination_label"),
    "from-label": ("source_label", "source_label"),
    "to-label": ("destination_label", "destination_label"),
    "port": ("source_port", "destination_port"),
    "from-port": ("source_port", "source_port"),
    "to-port": ("destination_port", "destination_port"),
    "identity": ("source_identity", "destination_identity"),
    "from-identity": ("source_identity", "source_identity"),
    "to-identity": ("destination_identity", "destination_identity"),
    "fqdn": ("source_fqdn", "destination_fqdn"),
    "from-fqdn": ("source_fqdn", "source_fqdn"),
    "to-fqdn": ("destination_fqdn", "destination_fqdn"),
    "service": ("source_service", "destination_service"),
    "from-service": ("source_service", "source_service"),
    "to-service": ("destination_service", "destination_service"),
    "verdict": ("verdict", "verdict"),
    "drop-reason-desc": ("drop_reason_desc", "drop_reason_desc"),
    "type": ("event_type", "event_type"),
    "protocol": ("protocol", "protocol"),
    "tcp-flags": ("tcp_flags", "tcp_flags"),
    "traffic-direction": ("traffic_direction", "traffic_direction"),
    "is-reply": ("reply", "reply"),
    "node-name": ("node_name", "node_name"),
    "http-method": ("http_method", "http_method"),
    "http-status": ("http_status_code", "http_status_code"),
    "http-path": ("http_path", "http_path"),
    "uuid": ("uuid", "uuid"),
}
_NAMESPACE_FLAGS = ("namespace", "from-namespace", "to-namespace")
# Hubble's groups of flags that cannot be combined (for the flags flowscope has)
_CONFLICTS = (
    ("from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace"),
    ("from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"),
    ("to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace"),
    ("to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"),
    ("to-pod", "namespace"),
    ("from-pod", "namespace"),
    ("to-service", "namespace"),
    ("from-service", "namespace"),
    ("label", "from-label"),
    ("label", "to-label"),
    ("service", "from-service"),
    ("service", "to-service"),
    ("port", "to-port"),
    ("port", "from-port"),
    ("identity", "to-identity"),
    ("identity", "from-identity"),
)
_IDENTITY_NUMBERS = {name: number for number, name in RESERVED_IDENTITY_NAMES.items()}
_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
FILTER_FLAGS = (*_FIELDS, *_NAMESPACE_FLAGS)


# --- value parsers: the flag's text -> the FlowFilter field's value -------------------------------


def _verdict(text: str) -> int:
    try:
        return flow_pb2.Verdict.Value(text.strip().upper())
    except ValueError:
        names = ", ".join(n for n in flow_pb2.Verdict.keys() if n != "VERDICT_UNKNOWN")  # noqa: SIM118
        raise ValueError(f"{text!r} is not a verdict; use one of {names}") from None


def _drop_reason(text: str) -> int:
    try:
        return flow_pb2.DropReason.Value(text.strip().upper())
    except ValueError:
        raise ValueError(f"{text!r} is not a drop reason (e.g. POLICY_DENIED)") from None


def _event_type(text: str) -> flow_pb2.EventTypeFilter:
    parsed = parse_event_type(text)
    if parsed.sub_type is None:
        return flow_pb2.EventTypeFilter(type=parsed.type)
    return flow_pb2.EventTypeFilter(type=parsed.type, sub_type=parsed.sub_type, match_sub_type=True)


def _identity(text: str) -> int:
    name = text.strip().lower()
    if name in _IDENTITY_NUMBERS:
        return _IDENTITY_NUMBERS[name]
    if name.isdigit() and int(name) < 2**32:
        return int(name)
    names = ", ".join(sorted(_IDENTITY_NUMBERS))
    raise ValueError(f"{text!r} is not a security identity; use a number or one of {names}")


def _tcp_flags(text: str) -> flow_pb2.TCPFlags:
    flags = flow_pb2.TCPFlags()
    for part in text.split(","):
        name = part.strip().upper()
        if name not in _TCP_FLAGS:
            raise ValueError(f"unknown TCP flag {part.strip()!r}; use {', '.join(_TCP_FLAGS)}")
        setattr(flags, name, True)
    return flags


def _direction(text: str) -> int:
    value = text.strip().lower()
    if value not in ("ingress", "egress"):
        raise ValueError(f"{text!r}: invalid traffic direction, expected ingress or egress")
    return flow_pb2.TrafficDirection.Value(value.upper())


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{text!r}: write true or false")
    return value == "true"


_PARSERS: dict[str, Callable[[str], object]] = {
    "verdict": _verdict,
    "drop-reason-desc": _drop_reason,
    "type": _event_type,
    "identity": _identity,
    "from-identity": _identity,
    "to-identity": _identity,
    "tcp-flags": _tcp_flags,
    "traffic-direction": _direction,
    "is-reply": _bool,
}


# --- argparse: flags recorded in the order given (for --not) --------------------------------------


class _Record(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        ops = list(getattr(namespace, "filter_ops", None) or [])
        ops.append((self.metavar_name, values))
        namespace.filter_ops = ops


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    """Every filter flag, recorded in order into `args.filter_ops`."""

    def add(flag: str, help: str, *short: str, **kw: object) -> None:
        action = type(f"_Record_{flag}", (_Record,), {"metavar_name": flag})
        parser.add_argument(*short, f"--{flag}", action=action, dest="filter_ops", help=help, **kw)

    parser.set_defaults(filter_ops=[])
    add("not", "the next filter flag excludes instead (e.g. --not --verdict DROPPED)", nargs=0)
    for end, word in (("", "from or to"), ("from-", "from"), ("to-", "to")):
        add(f"{end}pod", f"flows {word} pods [NS/]NAME-PREFIX", metavar="[NS/]POD")
        add(f"{end}ip", f"flows {word} an IP address or CIDR", metavar="IP|CIDR")
        add(f"{end}label", f"flows {word} endpoints with labels (app=web)", metavar="SELECTOR")
        add(f"{end}port", f"flows {word} a port", metavar="PORT")
        add(f"{end}identity", f"flows {word} a security identity", metavar="ID|NAME")
        add(f"{end}fqdn", f"flows {word} a DNS name (*.example.com)", metavar="NAME")
        add(f"{end}service", f"flows {word} a service [NS/]NAME", metavar="[NS/]SERVICE")
    add("namespace", "flows from or to pods in a namespace", "-n", metavar="NS")
    add("from-namespace", "flows from pods in a namespace", metavar="NS")
    add("to-namespace", "flows to pods in a namespace", metavar="NS")
    add("verdict", "FORWARDED, DROPPED, AUDIT, TRANSLATED, ... (repeat for several)")
    add("drop-reason-desc", "drops for this reason (POLICY_DENIED, ...)", metavar="REASON")
    add(
        "type",
        "event type: trace, drop, policy-verdict, trace-sock, ...; e.g. trace:to-endpoint",
        "-t",
        metavar="TYPE[:SUB]",
    )
    add("protocol", "tcp, udp, sctp, icmp, icmpv4, icmpv6")
    add("tcp-flags", "flows with these TCP flags (syn, ack,fin, ...)", metavar="FLAGS")
    add("traffic-direction", "ingress or egress", metavar="DIRECTION")
    add("is-reply", "replies (or, with =false, requests)", nargs="?", const="true", metavar="BOOL")
    add("node-name", "flows observed on these nodes (patterns: node-*)", metavar="PATTERN")
    add("http-method", "HTTP requests and responses with this method (GET)", metavar="METHOD")
    add("http-status", "HTTP responses with this code or prefix (404, 5+)", metavar="CODE")
    add("http-path", "HTTP requests whose path matches this regex", metavar="REGEX")
    add("uuid", "the flow with this identifier")


# --- the filters ----------------------------------------------------------------------------------


@dataclass
class _Tracker:
    """One list (whitelist or blacklist) being built: `left OR right`, as hubble builds it."""

    left: flow_pb2.FlowFilter | None = None
    right: flow_pb2.FlowFilter | None = None
    ns: list[str] = field(default_factory=list)
    src_ns: list[str] = field(default_factory=list)
    dst_ns: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def add(self, flag: str, value: object) -> None:
        left_field, right_field = _FIELDS[flag]
        for side, name in (("left", left_field), ("right", right_field)):
            f = getattr(self, side)
            if f is None:
                f = flow_pb2.FlowFilter()
                setattr(self, side, f)
            target = getattr(f, name)
            if isinstance(value, flow_pb2.EventTypeFilter | flow_pb2.TCPFlags):
                target.add().CopyFrom(value)
            else:
                target.append(value)

    def filters(self) -> list[flow_pb2.FlowFilter]:
        if self.left is None and self.right is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left = self.left or flow_pb2.FlowFilter()
        right = self.right or flow_pb2.FlowFilter()
        if self.dst_ns:
            _apply_ns(left, "destination", self.dst_ns)
            _apply_ns(right, "destination", self.dst_ns)
        if self.src_ns:
            _apply_ns(left, "source", self.src_ns)
            _apply_ns(right, "source", self.src_ns)
        if self.ns:
            _apply_ns(left, "source", self.ns)
            _apply_ns(right, "destination", self.ns)
        return [left] if left == right else [left, right]


def _apply_ns(f: flow_pb2.FlowFilter, end: str, namespaces: list[str]) -> None:
    pods, services = getattr(f, f"{end}_pod"), getattr(f, f"{end}_service")
    if not pods and not services:
        pods.append("")
    for values in (pods, services):
        named = [v if "/" in v else f"{ns}/{v}" for v in values for ns in namespaces]
        # a value that already names its namespace stays once
        unique = list(dict.fromkeys(named))
        del values[:]
        values.extend(unique)


def _check(flag: str, field_name: str, value: object) -> None:
    """The server's own check of one value; UsageError naming the flag."""
    probe = flow_pb2.FlowFilter()
    target = getattr(probe, field_name)
    if isinstance(value, flow_pb2.EventTypeFilter | flow_pb2.TCPFlags):
        target.add().CopyFrom(value)
    else:
        target.append(value)
    try:
        compile_filter(probe, "filter")
    except FilterError as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise UsageError(f"--{flag} {value!r}: {reason}") from None


def build_filters(
    ops: list[tuple[str, str | None]],
) -> tuple[list[flow_pb2.FlowFilter], list[flow_pb2.FlowFilter]]:
    """The whitelist and blacklist the recorded flags ask for; UsageError naming a bad flag."""
    white, black = _Tracker(), _Tracker()
    negate = False
    for flag, raw in ops:
        if flag == "not":
            if negate:
                raise UsageError("--not: two in a row; write --not before each filter to exclude")
            negate = True
            continue
        tracker = black if negate else white
        negate = False
        if flag not in tracker.changed:
            tracker.changed.append(flag)
        for group in _CONFLICTS:
            if flag in group:
                other = next((c for c in tracker.changed if c != flag and c in group), None)
                if other:
                    raise UsageError(f"filters --{other} and --{flag} cannot be combined")
        text = "" if raw is None else str(raw)
        if flag in _NAMESPACE_FLAGS:
            if not text or "/" in text:
                raise UsageError(f"--{flag} {text!r}: give a namespace name")
            {"namespace": tracker.ns, "from-namespace": tracker.src_ns}.get(
                flag, tracker.dst_ns
            ).append(text)
            continue
        parse = _PARSERS.get(flag)
        if parse is not None:
            try:
                value: object = parse(text)
            except ValueError as exc:
                raise UsageError(f"--{flag}: {exc}") from None
        else:
            value = text
        _check(flag, _FIELDS[flag][0], value)
        tracker.add(flag, value)
    if negate:
        raise UsageError("--not: nothing follows it; write --not before a filter flag")
    return white.filters(), black.filters()


class _TextParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting: a filter typed in a config
    file or the TUI's filter bar is an error to report, not a reason to quit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise UsageError(message or "not a filter")


def parse_filter_text(
    text: str,
) -> tuple[list[flow_pb2.FlowFilter], list[flow_pb2.FlowFilter]]:
    """One line of observe's filter flags ("--from-pod default/web --verdict DROPPED") as the
    whitelist and blacklist observe would send; UsageError naming the offending flag. The one
    reader of filter text: export configs and the TUI's filter bar speak observe's language."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"filter: {exc}") from None
    if words and not words[0].startswith("-"):
        raise UsageError(f"{words[0]!r}: filters are flags, e.g. --from-pod default/web")
    parser = _TextParser(prog="filter", add_help=False, allow_abbrev=False)
    add_filter_flags(parser)
    args = parser.parse_args(words)
    return build_filters(args.filter_ops or [])


def filter_from_table(entry: Any) -> flow_pb2.FlowFilter:
    """A FlowFilter written as a table in protobuf's JSON mapping ({"source_pod": ["a/b"]});
    UsageError with the first line of the reason (it names the bad key)."""
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(dict(entry), flow_pb2.FlowFilter())
    except (json_format.ParseError, TypeError, ValueError) as e:
        raise UsageError(f"not a FlowFilter: {str(e).splitlines()[0]}") from None
