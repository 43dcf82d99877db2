"""FQDN selectors: CiliumNetworkPolicy's `toFQDNs` entries and `rules.dns` entries.

    {matchName: "api.example.com"}     exactly that name (case-insensitive, trailing dot optional)
    {matchPattern: "*.example.com"}    "*" stands for any run of name characters within one
                                       label; "**." at the start also spans labels
    {matchPattern: "*"}                every name

Names are compared in their canonical form: lower case, fully qualified (a trailing dot), as
Cilium does, so "API.Example.com" and "api.example.com." are one name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_NAME_CHARS = re.compile(r"^[-a-zA-Z0-9_.]+$")
_PATTERN_CHARS = re.compile(r"^[-a-zA-Z0-9_.*]+$")
_LABEL = "[-a-z0-9_]*"


class SelectorError(ValueError):
    """A selector that cannot be used; `field` is its path in the policy."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def canonical(name: str) -> str:
    """'API.example.com' -> 'api.example.com.'"""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = canonical(pattern)
    if pattern == "*.":
        return re.compile(r"^.+$")
    spans = pattern.startswith("**.")
    body = pattern[3:] if spans else pattern
    regex = _LABEL.join(re.escape(part) for part in body.split("*"))
    if spans:  # "**.example.com": one or more labels before example.com
        regex = rf"(?:{_LABEL}\.)+" + regex
    return re.compile(f"^{regex}$")


@dataclass(frozen=True)
class FQDNSelector:
    match_name: str = ""  # canonical
    match_pattern: str = ""  # canonical
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: Any, path: str) -> FQDNSelector:
        if not isinstance(raw, Mapping):
            raise SelectorError(path, "expected an object with matchName or matchPattern")
        unknown = set(raw) - {"matchName", "matchPattern"}
        if unknown:
            raise SelectorError(f"{path}.{sorted(unknown)[0]}", "unknown field")
        name, pattern = raw.get("matchName"), raw.get("matchPattern")
        if (name is None) == (pattern is None):
            raise SelectorError(path, "set exactly one of matchName and matchPattern")
        if name is not None:
            if not isinstance(name, str) or not name.strip(".") or not _NAME_CHARS.match(name):
                raise SelectorError(f"{path}.matchName", f"{name!r} is not a DNS name")
            return cls(match_name=canonical(name))
        if not isinstance(pattern, str) or not pattern or not _PATTERN_CHARS.match(pattern):
            raise SelectorError(
                f"{path}.matchPattern",
                f"{pattern!r} is not a name pattern (letters, digits, '-', '_', '.', '*')",
            )
        return cls(match_pattern=canonical(pattern), _regex=_pattern_regex(pattern))

    def matches(self, name: str) -> bool:
        name = canonical(name)
        if self.match_name:
            return name == self.match_name
        regex = self._regex or _pattern_regex(self.match_pattern)
        return regex.match(name) is not None

    def __str__(self) -> str:
        return (
            f"matchName: {self.match_name}"
            if self.match_name
            else (f"matchPattern: {self.match_pattern}")
        )


def any_matches(selectors: Iterable[FQDNSelector], name: str) -> bool:
    return any(s.matches(name) for s in selectors)
