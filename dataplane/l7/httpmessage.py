"""The heads of HTTP/1.1 messages as the proxy sees them, decoded from h11's events.

Rules match a RequestHead and flows are made from it; both are pure and need no socket. Header
names keep the case they were sent with (h11's raw items), values are decoded as Latin-1 so that
any byte a client sends is representable and nothing raises on odd input.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _head_size(first_line: int, headers: tuple[tuple[str, str], ...]) -> int:
    return first_line + sum(len(n) + len(v) + 4 for n, v in headers) + 2


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str  # the request target as sent: "/path?query" (or an absolute URL)
    headers: tuple[tuple[str, str], ...] = ()  # (name, value) in the order sent
    http_version: str = "1.1"

    @classmethod
    def from_h11(cls, event: h11.Request) -> RequestHead:
        return cls(
            _text(event.method),
            _text(event.target),
            tuple((_text(n), _text(v)) for n, v in event.headers.raw_items()),
            _text(event.http_version),
        )

    @property
    def size(self) -> int:
        """The head's size in bytes as sent (give or take optional whitespace)."""
        return _head_size(len(self.method) + len(self.target) + 11, self.headers)

    @property
    def host(self) -> str:
        """The Host header's value ('' when there is none, as HTTP/1.0 allows)."""
        return self.header("host") or ""

    @property
    def _absolute(self) -> tuple[str, str] | None:
        """(authority, path) of an absolute-form target ("http://a/p"), else None."""
        scheme, sep, rest = self.target.partition("://")
        if not sep or "/" in scheme or not scheme:
            return None
        authority, slash, path = rest.partition("/")
        return authority, slash + path or "/"

    @property
    def authority(self) -> str:
        """The host the request names: an absolute-form target's, which RFC 9112 says wins
        over the Host header, else the Host header (Envoy's :authority)."""
        absolute = self._absolute
        return absolute[0] if absolute is not None else self.host

    @property
    def path(self) -> str:
        """The target in origin form, query included (Envoy's :path)."""
        absolute = self._absolute
        return absolute[1] if absolute is not None else self.target

    @property
    def protocol(self) -> str:
        return f"HTTP/{self.http_version}"

    def header(self, name: str) -> str | None:
        """The first value of a header, by name without regard to case."""
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


@dataclass(frozen=True)
class ResponseHead:
    code: int
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    http_version: str = "1.1"

    @classmethod
    def from_h11(cls, event: h11.Response | h11.InformationalResponse) -> ResponseHead:
        return cls(
            event.status_code,
            _text(event.reason),
            tuple((_text(n), _text(v)) for n, v in event.headers.raw_items()),
            _text(event.http_version),
        )

    @property
    def size(self) -> int:
        return _head_size(len(self.reason) + 15, self.headers)

    @property
    def protocol(self) -> str:
        return f"HTTP/{self.http_version}"
