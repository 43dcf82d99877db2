"""Cilium's HTTP rules: parsing with field-level errors, and the decision (table tests)."""

from __future__ import annotations

import pytest

from dataplane.l7.httpmessage import RequestHead
from dataplane.l7.httprules import HTTPRuleError, HTTPRules, parse_http_rules

FIELD = "spec.ingress[0].toPorts[0].rules.http"


def req(method: str, target: str, host: str = "web.lab", **headers: str) -> RequestHead:
    hs = (("Host", host), *((k.replace("_", "-"), v) for k, v in headers.items()))
    return RequestHead(method, target, hs)


ADMIN = {"name": "X-Role", "value": "admin"}
CASES = [
    # (rules, request, allowed)
    ([], req("DELETE", "/anything"), True),  # an empty L7 section allows all
    ([{"method": "GET"}], req("GET", "/x"), True),
    ([{"method": "GET"}], req("POST", "/x"), False),
    ([{"method": "GET"}], req("GETX", "/x"), False),  # anchored: the whole method
    ([{"method": "GET|HEAD"}], req("HEAD", "/x"), True),
    ([{"path": "/public"}], req("GET", "/public"), True),
    ([{"path": "/public"}], req("GET", "/public/x"), False),  # anchored at the end too
    ([{"path": "/public"}], req("GET", "/x/public"), False),
    ([{"path": "/public"}], req("GET", "/public?a=1"), False),  # the query is part of :path
    ([{"path": "/public(\\?.*)?"}], req("GET", "/public?a=1"), True),
    ([{"path": "/v1/.*"}], req("GET", "/v1/items/3"), True),
    ([{"method": "GET", "path": "/v1/.*"}], req("PUT", "/v1/items/3"), False),  # all fields
    ([{"host": "web\\.lab"}], req("GET", "/", host="web.lab"), True),
    ([{"host": "web\\.lab"}], req("GET", "/", host="evil.lab"), False),
    ([{"host": "web\\.lab"}], req("GET", "/", host="web.lab:8080"), False),
    ([{"host": "web\\.lab(:[0-9]+)?"}], req("GET", "/", host="web.lab:8080"), True),
    ([{"headers": ["X-Token: abc"]}], req("GET", "/", X_Token="abc"), True),
    ([{"headers": ["X-Token: abc"]}], req("GET", "/", X_Token="abd"), False),
    ([{"headers": ["X-Token: abc"]}], req("GET", "/"), False),
    ([{"headers": ["x-token"]}], req("GET", "/", X_Token="anything"), True),  # presence, any case
    ([{"headers": ["X-Token"]}], req("GET", "/"), False),
    (
        [{"headerMatches": [{"name": "X-Role", "value": "admin"}]}],
        req("GET", "/", X_Role="admin"),
        True,
    ),
    (
        [{"headerMatches": [{"name": "X-Role", "value": "admin"}]}],
        req("GET", "/", X_Role="user"),
        False,
    ),
    (
        [{"headerMatches": [{"name": "X-Role", "value": "a", "mismatch": "LOG"}]}],
        req("GET", "/"),
        True,
    ),
    ([{"method": "POST"}, {"path": "/ok"}], req("GET", "/ok"), True),  # any rule
    ([{"method": "POST"}, {"path": "/ok"}], req("GET", "/no"), False),
    ([{}], req("PATCH", "/whatever"), True),  # a rule with no fields matches all
    # an absolute-form target: its path and its authority are what is matched
    ([{"path": "/public"}], req("GET", "http://web.lab/public"), True),
    ([{"path": "/public"}], req("GET", "http://web.lab/private"), False),
    ([{"host": "web\\.lab"}], req("GET", "http://evil.lab/x", host="web.lab"), False),
    ([{"host": "web\\.lab"}], req("GET", "http://web.lab/x", host="evil.lab"), True),
    ([{"path": "/"}], req("GET", "http://web.lab"), True),
]


@pytest.mark.parametrize(("rules", "request_", "allowed"), CASES)
def test_decision(rules: list, request_: RequestHead, allowed: bool) -> None:
    assert parse_http_rules(rules, FIELD).allows(request_) is allowed


def test_none_is_an_empty_section() -> None:
    assert parse_http_rules(None, FIELD) == HTTPRules()


def test_union_of_sections() -> None:
    gets = parse_http_rules([{"method": "GET"}], FIELD)
    posts = parse_http_rules([{"method": "POST"}], FIELD)
    both = HTTPRules.union([gets, posts])
    assert both.allows(req("GET", "/")) and both.allows(req("POST", "/"))
    assert not both.allows(req("PUT", "/"))
    assert HTTPRules.union([gets, HTTPRules()]).allows(req("PUT", "/"))  # an open section wins


BAD = [
    ([{"path": "/v1/(unclosed"}], f"{FIELD}[0].path: bad regex"),
    ([{"method": "GET"}, {"method": "*"}], f"{FIELD}[1].method: bad regex"),
    ([{"host": 42}], f"{FIELD}[0].host: expected a regular expression string"),
    ([{"pathx": "/"}], f"{FIELD}[0].pathx: unknown field"),
    (["GET /"], f"{FIELD}[0]: expected an object"),
    ({"method": "GET"}, f"{FIELD}: expected a list"),
    ([{"headers": "X-A"}], f"{FIELD}[0].headers: expected a list"),
    ([{"headers": ["X-A", ""]}], f"{FIELD}[0].headers[1]: expected 'Name' or 'Name: value'"),
    ([{"headers": [": v"]}], f"{FIELD}[0].headers[0]: no header name"),
    ([{"headerMatches": [{"value": "v"}]}], f"{FIELD}[0].headerMatches[0].name: a header name"),
    ([{"headerMatches": [{"name": "A", "mismatch": "DROP"}]}], "headerMatches[0].mismatch: 'DROP'"),
    ([{"headerMatches": [{"name": "A", "mismatch": "ADD"}]}], "mismatch: ADD is not supported"),
    ([{"headerMatches": [{"name": "A", "secret": {"name": "s"}}]}], "headerMatches[0].secret"),
    ([{"headerMatches": [{"name": "A", "other": 1}]}], "headerMatches[0].other: unknown field"),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_bad_rules_name_the_field(raw: object, message: str) -> None:
    with pytest.raises(HTTPRuleError) as info:
        parse_http_rules(raw, FIELD)
    assert str(info.value).startswith(FIELD) and message in str(info.value)
    assert info.value.exit_code != 0


def test_bad_regex_has_a_hint() -> None:
    with pytest.raises(HTTPRuleError) as info:
        parse_http_rules([{"path": "["}], FIELD)
    assert info.value.hint and "regular expression" in info.value.hint
