"""A simple allow-list over flows, as `observe --namespace/--pod/--verdict` asks for it.

Each given field must match (and within a field, any value): a namespace or pod matches when
either end of the flow is in it, pods as in Hubble as "NS/POD-NAME-PREFIX" or "POD-NAME-PREFIX".
Lost events always pass: a reader must learn that it missed something, whatever it asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowscope.flow.model import Endpoint, Flow, Record, Verdict


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

    @property
    def empty(self) -> bool:
        return not (self.namespaces or self.pods or self.verdicts)

    def matches(self, record: Record) -> bool:
        if not isinstance(record, Flow):
            return True
        ends = (record.source, record.destination)
        if self.verdicts and record.verdict not in self.verdicts:
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
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> FlowFilter:
        """From {"namespace": ..., "pod": ..., "verdict": ...}; ValueError naming the field."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ValueError("filters: expected an object")
        unknown = set(raw) - {"namespace", "pod", "verdict"}
        if unknown:
            raise ValueError(
                f"filters.{sorted(unknown)[0]}: unknown filter; use namespace, pod or verdict"
            )
        verdicts = []
        for text in _names(raw.get("verdict"), "verdict"):
            try:
                verdicts.append(parse_verdict(text))
            except ValueError as exc:
                raise ValueError(f"filters.verdict: {exc}") from None
        return cls(
            _names(raw.get("namespace"), "namespace"),
            _names(raw.get("pod"), "pod"),
            tuple(verdicts),
        )


def _pod_matches(ep: Endpoint | None, pattern: str) -> bool:
    if ep is None or not ep.pod_name:
        return False
    ns, sep, prefix = pattern.rpartition("/")
    if sep and ns != ep.namespace:
        return False
    return ep.pod_name.startswith(prefix)
