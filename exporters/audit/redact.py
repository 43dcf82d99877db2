"""Redaction of sensitive L7 values in a flow's JSON mapping, as Hubble redacts them: header
values replaced by HUBBLE_REDACTED, the URL's query and fragment cleared, a URL password
replaced. Pure: a new dict is returned, the input is left alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "HUBBLE_REDACTED"  # Hubble's defaults.SensitiveValueRedacted
DEFAULT_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")


@dataclass(frozen=True)
class Redaction:
    enabled: bool = True
    headers: tuple[str, ...] = DEFAULT_HEADERS  # matched without regard to case
    url_query: bool = True
    url_userinfo: bool = True

    @property
    def _header_keys(self) -> frozenset[str]:
        return frozenset(h.lower() for h in self.headers)


def redact_url(url: str, query: bool, userinfo: bool) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if userinfo and parts.password is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{parts.username or ''}:{REDACTED}@{host}"
    if query:
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_flow(flow: dict[str, Any], rules: Redaction) -> dict[str, Any]:
    """The flow's JSON mapping with its HTTP record redacted (the same dict when nothing is)."""
    http = (flow.get("l7") or {}).get("http")
    if not rules.enabled or not http:
        return flow
    http = dict(http)
    keys = rules._header_keys
    if http.get("headers") and keys:
        http["headers"] = [
            {**h, "value": REDACTED} if str(h.get("key", "")).lower() in keys else h
            for h in http["headers"]
        ]
    if http.get("url") and (rules.url_query or rules.url_userinfo):
        http["url"] = redact_url(http["url"], rules.url_query, rules.url_userinfo)
    return {**flow, "l7": {**flow["l7"], "http": http}}
