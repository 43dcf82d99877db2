"""A simple allow-list over flows, as `observe --namespace/--pod/--verdict/--type/--service`
asks for it.

Each given field must match (and within a field, any value): a namespace or pod matches when
either end of the flow is in it, pods as in Hubble as "NS/POD-NAME-PREFIX" or "POD-NAME-PREFIX".
An event type is Hubble's `--type` value: "trace", "drop", "policy-verdict", "trace-sock", ...,
optionally with a sub-type after a colon (a number, or a name: "trace:to-endpoint",
"trace-sock:post-xlate-fwd"). A service ("NS/NAME" or "NAME") matches the flow's source or
destination service. Lost events always pass: a reader must learn that it missed something,
whatever it asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from flowscope.flow.model import (
    Endpoint,
    Flow,
    MessageType,
    Record,
    Service,
    SocketTranslationPoint,
    TraceObservationPoint,
    Verdict,
)

T = TypeVar("T")

# Hubble's --type names (Cilium's monitor message type names)
EVENT_TYPE_NAMES = {
    "drop": MessageType.DROP,
    "debug": MessageType.DEBUG,
    "capture": MessageType.CAPTURE,
    "trace": MessageType.TRACE,
    "policy-verdict": MessageType.POLICY_VERDICT,
    "trace-sock": MessageType.TRACE_SOCK,
    "l7": MessageType.ACCESS_LOG,
    "agent": MessageType.AGENT,
}
_SUB_TYPE_NAMES: dict[int, dict[str, int]] = {
    MessageType.TRACE: {p.label: p.datapath_code for p in TraceObservationPoint if p.value},
    MessageType.TRACE_SOCK: {p.label: p.value for p in SocketTranslationPoint if p.value},
}


@dataclass(frozen=True)
class EventTypeFilter:
    """One --type value: a monitor message type and, optionally, its sub-type."""

    type: int
    sub_type: int | None = None

    def matches(self, flow: Flow) -> bool:
        ev = flow.event_type
        if ev is None or ev.type != self.type:
            return False
        return self.sub_type is None or ev.sub_type == self.sub_type

    def __str__(self) -> str:
        name = next((n for n, t in EVENT_TYPE_NAMES.items() if t == self.type), str(self.type))
        if self.sub_type is None:
            return name
        subs = _SUB_TYPE_NAMES.get(self.type, {})
        sub = next((n for n, v in subs.items() if v == self.sub_type), str(self.sub_type))
        return f"{name}:{sub}"


def parse_event_type(text: str) -> EventTypeFilter:
    """A --type value ("trace-sock", "trace:to-endpoint", "drop:133"); ValueError saying what
    is allowed."""
    name, sep, sub = text.strip().lower().partition(":")
    kind = EVENT_TYPE_NAMES.get(name)
    if kind is None:
        raise ValueError(f"{text!r} is not an event type; use one of {', '.join(EVENT_TYPE_NAMES)}")
    if not sep:
        return EventTypeFilter(kind)
    names = _SUB_TYPE_NAMES.get(kind, {})
    if sub in names:
        return EventTypeFilter(kind, names[sub])
    if sub.isdigit():
        return EventTypeFilter(kind, int(sub))
    allowed = f" (or one of {', '.join(names)})" if names else ""
    raise ValueError(f"{text!r}: sub-type {sub!r} is not a number{allowed}")


def parse_each(texts: Iterable[str], parse: Callable[[str], T], label: str) -> tuple[T, ...]:
    """Every text parsed; the first bad one raises ValueError prefixed with `label` (the flag or
    field it came from)."""
    out = []
    for text in texts:
        try:
            out.append(parse(text))
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
    return tuple(out)


def _names(raw: Any, field: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise ValueError(f"filters.{field}: expected a non-empty string or a list of them")
    return tuple(raw)


def parse_verdict(text: str) -> Verdict:
    try:
        return Verdict[text.upper()]
    except KeyError:
        names = ", ".join(v.name for v in Verdict if v)
        raise ValueError(f"{text!r} is not a verdict; use one of {names}") from None


@dataclass(frozen=True)
class FlowFilter:
    namespaces: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()  # "ns/prefix" or "prefix"
    verdicts: tuple[Verdict, ...] = ()
    event_types: tuple[EventTypeFilter, ...] = ()
    services: tuple[str, ...] = ()  # "ns/name" or "name"

    @property
    def empty(self) -> bool:
        return not (
            self.namespaces or self.pods or self.verdicts or self.event_types or self.services
        )

    def matches(self, record: Record) -> bool:
        if not isinstance(record, Flow):
            return True
        ends = (record.source, record.destination)
        if self.verdicts and record.verdict not in self.verdicts:
            return False
        if self.event_types and not any(t.matches(record) for t in self.event_types):
            return False
        if self.services and not any(
            _service_matches(svc, p)
            for svc in (record.source_service, record.destination_service)
            for p in self.services
        ):
            return False
        if self.namespaces and not any(
            ep is not None and ep.namespace in self.namespaces for ep in ends
        ):
            return False
        return not self.pods or any(_pod_matches(ep, p) for ep in ends for p in self.pods)

    def to_dict(self) -> dict[str, list[str]]:
        d: dict[str, list[str]] = {}
        if self.namespaces:
            d["namespace"] = list(self.namespaces)
        if self.pods:
            d["pod"] = list(self.pods)
        if self.verdicts:
            d["verdict"] = [v.name for v in self.verdicts]
        if self.event_types:
            d["type"] = [str(t) for t in self.event_types]
        if self.services:
            d["service"] = list(self.services)
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> FlowFilter:
        """From {"namespace": ..., "pod": ..., "verdict": ..., "type": ..., "service": ...};
        ValueError naming the field."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError("filters: expected an object")
        unknown = set(raw) - set(_FIELDS)
        if unknown:
            raise ValueError(
                f"filters.{sorted(unknown)[0]}: unknown filter; use {', '.join(_FIELDS)}"
            )
        verdicts = parse_each(
            _names(raw.get("verdict"), "verdict"), parse_verdict, "filters.verdict"
        )
        types = parse_each(_names(raw.get("type"), "type"), parse_event_type, "filters.type")
        return cls(
            _names(raw.get("namespace"), "namespace"),
            _names(raw.get("pod"), "pod"),
            verdicts,
            types,
            _names(raw.get("service"), "service"),
        )


_FIELDS = ("namespace", "pod", "verdict", "type", "service")


def _service_matches(svc: Service | None, pattern: str) -> bool:
    if svc is None or not svc.name:
        return False
    ns, sep, name = pattern.rpartition("/")
    return svc.name == name and (not sep or ns == svc.namespace)


def _pod_matches(ep: Endpoint | None, pattern: str) -> bool:
    if ep is None or not ep.pod_name:
        return False
    ns, sep, prefix = pattern.rpartition("/")
    if sep and ns != ep.namespace:
        return False
    return ep.pod_name.startswith(prefix)
