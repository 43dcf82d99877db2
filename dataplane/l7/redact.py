"""Redaction of sensitive values in what the L7 proxy puts into flows.

Only flows are redacted: the bytes the proxy forwards are never changed. Header values of the
credentials headers (and any header the config names) become "HUBBLE_REDACTED"; a URL's query string
becomes "?HUBBLE_REDACTED" (or is removed), since tokens and personal data often ride in queries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

REDACTED = "HUBBLE_REDACTED"  # Hubble's marker (defaults.SensitiveValueRedacted), as the audit uses
DEFAULT_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")


class QueryRedaction(enum.Enum):
    REDACT = "redact"  # "/p?a=1" -> "/p?HUBBLE_REDACTED"
    REMOVE = "remove"  # "/p?a=1" -> "/p"
    KEEP = "keep"


@dataclass(frozen=True)
class Redaction:
    enabled: bool = True
    headers: tuple[str, ...] = DEFAULT_HEADERS  # more names may be added; matched without case
    query: QueryRedaction = QueryRedaction.REDACT

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", frozenset(h.lower() for h in self.headers))

    @classmethod
    def with_extra_headers(cls, *names: str) -> Redaction:
        """The defaults plus these header names."""
        return cls(headers=DEFAULT_HEADERS + tuple(names))

    def header_value(self, name: str, value: str) -> str:
        if self.enabled and name.lower() in self._keys:  # type: ignore[attr-defined]
            return REDACTED
        return value

    def headers_of(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple((n, self.header_value(n, v)) for n, v in headers)

    def url(self, url: str) -> str:
        """The URL with its query (and fragment, which clients should not send) redacted."""
        if not self.enabled or self.query is QueryRedaction.KEEP:
            return url
        base, sep, _rest = url.partition("?")
        base = base.partition("#")[0]
        if not sep:
            return base
        return f"{base}?{REDACTED}" if self.query is QueryRedaction.REDACT else base


NO_REDACTION = Redaction(enabled=False)
