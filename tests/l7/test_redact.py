"""Redaction of what goes into flows: credentials headers, configured headers, query strings."""

from __future__ import annotations

import pytest

from dataplane.l7.redact import NO_REDACTION, REDACTED, QueryRedaction, Redaction


@pytest.mark.parametrize("name", ["Authorization", "proxy-authorization", "COOKIE", "Set-Cookie"])
def test_default_headers_are_redacted_whatever_their_case(name: str) -> None:
    assert Redaction().header_value(name, "secret") == REDACTED


def test_other_headers_are_kept_and_extra_ones_can_be_named() -> None:
    assert Redaction().header_value("X-Api-Key", "k") == "k"
    extra = Redaction.with_extra_headers("X-Api-Key")
    assert extra.header_value("x-api-key", "k") == REDACTED
    assert extra.header_value("Cookie", "c") == REDACTED  # the defaults stay
    only = Redaction(headers=("X-Only",))
    assert only.header_value("Cookie", "c") == "c" and only.header_value("x-only", "v") == REDACTED


@pytest.mark.parametrize(
    ("mode", "url", "want"),
    [
        (QueryRedaction.REDACT, "http://a/p?x=1&y=2", f"http://a/p?{REDACTED}"),
        (QueryRedaction.REDACT, "http://a/p", "http://a/p"),
        (QueryRedaction.REDACT, "http://a/p?", f"http://a/p?{REDACTED}"),
        (QueryRedaction.REDACT, "http://a/p#frag", "http://a/p"),
        (QueryRedaction.REMOVE, "http://a/p?x=1", "http://a/p"),
        (QueryRedaction.KEEP, "http://a/p?x=1", "http://a/p?x=1"),
    ],
)
def test_url_query(mode: QueryRedaction, url: str, want: str) -> None:
    assert Redaction(query=mode).url(url) == want


def test_disabled_keeps_everything() -> None:
    assert NO_REDACTION.header_value("Authorization", "Bearer t") == "Bearer t"
    assert NO_REDACTION.url("http://a/p?t=1") == "http://a/p?t=1"
    assert NO_REDACTION.headers_of((("Cookie", "c"),)) == (("Cookie", "c"),)
