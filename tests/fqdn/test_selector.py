"""FQDN selectors as Cilium matches them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.fqdn.selector import FQDNSelector, SelectorError, canonical


def sel(**raw: str) -> FQDNSelector:
    return FQDNSelector.parse(raw, "toFQDNs[0]")


def test_match_name_is_exact_case_insensitive_dot_optional() -> None:
    s = sel(matchName="API.example.com")
    assert s.matches("api.example.com") and s.matches("api.EXAMPLE.com.")
    assert not s.matches("x.api.example.com") and not s.matches("api.example.co")


def test_match_pattern_star_stays_within_one_label() -> None:
    s = sel(matchPattern="*.example.com")
    assert s.matches("api.example.com.") and s.matches("a-b_c.example.com")
    assert not s.matches("a.b.example.com") and not s.matches("example.com")
    assert sel(matchPattern="api-*.example.com").matches("api-eu.example.com")
    assert not sel(matchPattern="api-*.example.com").matches("web-eu.example.com")


def test_double_star_spans_labels_and_lone_star_matches_all() -> None:
    s = sel(matchPattern="**.example.com")
    assert s.matches("a.b.example.com") and s.matches("a.example.com")
    assert not s.matches("example.com")
    assert sel(matchPattern="*").matches("anything.at.all.")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "toFQDNs[0]"),
        ({"matchName": "a.com", "matchPattern": "*"}, "toFQDNs[0]"),
        ({"matchName": "a b.com"}, "toFQDNs[0].matchName"),
        ({"matchPattern": "a/b"}, "toFQDNs[0].matchPattern"),
        ({"matchNames": "a.com"}, "toFQDNs[0].matchNames"),
    ],
)
def test_bad_selectors_name_the_field(raw: dict, field: str) -> None:
    with pytest.raises(SelectorError) as exc:
        FQDNSelector.parse(raw, "toFQDNs[0]")
    assert exc.value.field == field


labels = st.text("abcxyz0-", min_size=1, max_size=6)


@given(st.lists(labels, min_size=1, max_size=4))
def test_a_name_matches_itself_and_star_patterns_of_its_shape(parts: list[str]) -> None:
    name = ".".join(parts)
    assert sel(matchName=name).matches(name)
    assert sel(matchPattern=name).matches(name)
    star = ".".join(["*", *parts[1:]])
    assert sel(matchPattern=star).matches(name)
    assert canonical(name).endswith(".")
