"""Label selectors: kubectl's string form, the object form, matching and validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowscope.apis import labels
from flowscope.apis.labels import Requirement, Selector, SelectorSyntaxError


def test_parse_every_operator_of_the_string_form() -> None:
    sel = labels.parse("a=b,c!=d,e in (y, x),f notin (z),g,!h,i==j")
    assert sel.requirements == (
        Requirement("a", "In", ("b",)),
        Requirement("c", "NotIn", ("d",)),
        Requirement("e", "In", ("x", "y")),
        Requirement("f", "NotIn", ("z",)),
        Requirement("g", "Exists"),
        Requirement("h", "DoesNotExist"),
        Requirement("i", "In", ("j",)),
    )
    assert str(sel) == "a=b,c!=d,e in (x,y),f!=z,g,!h,i=j"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a in x", "expected '\\('"),
        ("a=b,", "expected a requirement after ','"),
        ("a b", "expected '=', '!=', 'in' or 'notin'"),
        ("!", "expected a label key"),
        ("a in (x", "expected ',' or '\\)'"),
        ("Bad Key=1", "expected '=', '!=', 'in' or 'notin'"),
        ("a=-x", "invalid label value '-x'"),
        ("-a=x", "invalid label key '-a'"),
    ],
)
def test_parse_errors_say_what_was_expected(text: str, match: str) -> None:
    with pytest.raises(SelectorSyntaxError, match=match):
        labels.parse(text)


def test_matching_semantics_of_each_operator() -> None:
    lbl = {"app": "web", "tier": "front"}
    assert labels.parse("app=web").matches(lbl)
    assert not labels.parse("app=db").matches(lbl)
    assert labels.parse("app!=db").matches(lbl)
    assert labels.parse("missing!=x").matches(lbl)  # != and notin hold for absent keys
    assert labels.parse("missing notin (x)").matches(lbl)
    assert not labels.parse("missing in (x)").matches(lbl)
    assert labels.parse("tier in (back,front)").matches(lbl)
    assert labels.parse("app,!missing").matches(lbl)
    assert not labels.parse("!app").matches(lbl)
    assert labels.parse("").matches({})


def test_object_form_nil_selects_nothing_empty_selects_everything() -> None:
    assert not labels.from_label_selector(None).matches({"a": "b"})
    assert labels.from_label_selector({}).matches({"a": "b"})
    sel = labels.from_label_selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert sel.matches({"app": "web", "env": "prod"})
    assert not sel.matches({"app": "web", "env": "dev"})
    assert not sel.matches({"app": "web", "env": "prod", "legacy": "1"})


def test_selector_errors_in_the_apiservers_words() -> None:
    errs = labels.selector_errors(
        {
            "matchLabels": {"bad key": "v", "ok": "-bad-"},
            "matchExpressions": [
                {"key": "a", "operator": "In", "values": []},
                {"key": "b", "operator": "Exists", "values": ["x"]},
                {"key": "c", "operator": "Gt", "values": ["1"]},
            ],
        },
        "spec.podSelector",
    )
    text = [str(e) for e in errs]
    assert any(t.startswith('spec.podSelector.matchLabels: Invalid value: "bad key"') for t in text)
    assert any(
        t.startswith('spec.podSelector.matchLabels[ok]: Invalid value: "-bad-"') for t in text
    )
    assert (
        "spec.podSelector.matchExpressions[0].values: Required"
        " value: must be specified when `operator` is 'In' or 'NotIn'"
    ) in text
    assert (
        "spec.podSelector.matchExpressions[1].values: Forbidden: may"
        " not be specified when `operator` is 'Exists' or"
        " 'DoesNotExist'"
    ) in text
    assert (
        "spec.podSelector.matchExpressions[2].operator: Unsupported"
        ' value: "Gt": supported values: "In", "NotIn", "Exists",'
        ' "DoesNotExist"'
    ) in text


_keys = st.sampled_from(["app", "tier", "env", "example.com/role"])
_vals = st.sampled_from(["a", "b", "c"])


@given(
    st.dictionaries(_keys, _vals),
    st.lists(st.tuples(_keys, st.sampled_from(["=", "!="]), _vals), max_size=4),
)
def test_string_form_round_trips_and_matches_like_its_definition(lbl, reqs) -> None:
    text = ",".join(f"{k}{op}{v}" for k, op, v in reqs)
    sel = labels.parse(text)
    expected = all((lbl.get(k) == v) if op == "=" else (lbl.get(k) != v) for k, op, v in reqs)
    assert sel.matches(lbl) == expected
    assert labels.parse(str(sel)) == sel if reqs else str(sel) == "<none>"


def test_nothing_selector() -> None:
    assert not Selector(nothing=True).matches({})
