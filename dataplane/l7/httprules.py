"""Cilium's HTTP rules (CiliumNetworkPolicy `toPorts[].rules.http[]`) and their decision.

A rule is {method, path, host, headers, headerMatches}; every field it names must match. method,
path and host are extended regular expressions matched against the whole value, as Cilium
anchors them (Envoy's safe_regex matches the full string); path is matched against the request
target in origin form, query included, as Envoy's `:path` is, and host against the authority
(an absolute-form target's, else the Host header), as Envoy's `:authority` is. `headers`
entries are "Name: value" (that exact value) or "Name" (present). `headerMatches` entries are
{name, value, mismatch}: an empty mismatch means the header must have that value; LOG lets the
request through either way. A request is allowed when any rule matches; an L7 section with no
rules allows every request.

Pure: parsing gives field-level errors naming the path into the policy, matching needs no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dataplane.l7.httpmessage import RequestHead
from flowscope.errors import UsageError


class HTTPRuleError(UsageError):
    """A rule that cannot be used; the message starts with the field's path in the policy."""


_RULE_FIELDS = frozenset({"method", "path", "host", "headers", "headerMatches"})
_MATCH_FIELDS = frozenset({"name", "value", "mismatch", "secret"})
_MISMATCH_ACTIONS = ("", "LOG", "ADD", "DELETE", "REPLACE")


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    value: str | None = None  # None: the header must be present
    log_only: bool = False  # mismatch LOG: a mismatch does not deny

    def matches(self, request: RequestHead) -> bool:
        if self.log_only:
            return True
        got = request.header(self.name)
        if got is None:
            return False
        return self.value is None or got == self.value


@dataclass(frozen=True)
class HTTPRule:
    method: re.Pattern[str] | None = None
    path: re.Pattern[str] | None = None
    host: re.Pattern[str] | None = None
    headers: tuple[HeaderMatch, ...] = ()

    def matches(self, request: RequestHead) -> bool:
        return (
            (self.method is None or self.method.fullmatch(request.method) is not None)
            and (self.path is None or self.path.fullmatch(request.path) is not None)
            and (self.host is None or self.host.fullmatch(request.authority) is not None)
            and all(h.matches(request) for h in self.headers)
        )


@dataclass(frozen=True)
class HTTPRules:
    """The rules of one L7 section (one port of one policy, or the union the node computed)."""

    rules: tuple[HTTPRule, ...] = ()

    def allows(self, request: RequestHead) -> bool:
        return not self.rules or any(rule.matches(request) for rule in self.rules)

    @classmethod
    def union(cls, sections: Iterable[HTTPRules]) -> HTTPRules:
        """Several policies selecting the same port: allowed when any section allows. A section
        with no rules allows everything, and so does the union then."""
        rules: list[HTTPRule] = []
        for section in sections:
            if not section.rules:
                return cls()
            rules.extend(section.rules)
        return cls(tuple(rules))


def _regex(raw: Any, field: str) -> re.Pattern[str] | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise HTTPRuleError(
            f"{field}: expected a regular expression string, got {type(raw).__name__}",
            hint="quote the value in the policy's YAML",
        )
    try:
        return re.compile(raw)
    except re.error as exc:
        raise HTTPRuleError(
            f"{field}: bad regex {raw!r}: {exc}",
            hint="method, path and host are regular expressions matched against the whole value",
        ) from None


def _header(raw: Any, field: str) -> HeaderMatch:
    if not isinstance(raw, str) or not raw.strip():
        raise HTTPRuleError(
            f"{field}: expected 'Name' or 'Name: value', got {raw!r}",
            hint="a header rule is a string such as 'X-Token: abc' or 'X-Token'",
        )
    name, _, value = raw.strip().partition(" ")
    name = name.rstrip(":")
    if not name:
        raise HTTPRuleError(f"{field}: no header name in {raw!r}")
    value = value.strip()
    return HeaderMatch(name, value or None)


def _header_match(raw: Any, field: str) -> HeaderMatch:
    if not isinstance(raw, dict):
        raise HTTPRuleError(f"{field}: expected an object {{name, value, mismatch}}")
    unknown = sorted(set(raw) - _MATCH_FIELDS)
    if unknown:
        raise HTTPRuleError(f"{field}.{unknown[0]}: unknown field")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise HTTPRuleError(f"{field}.name: a header name is required")
    if raw.get("secret") is not None:
        raise HTTPRuleError(
            f"{field}.secret: header values from secrets are not supported",
            hint="give the value inline in `value`",
        )
    value = raw.get("value")
    if value is not None and not isinstance(value, str):
        raise HTTPRuleError(f"{field}.value: expected a string, got {type(value).__name__}")
    mismatch = raw.get("mismatch") or ""
    if mismatch not in _MISMATCH_ACTIONS:
        raise HTTPRuleError(
            f"{field}.mismatch: {mismatch!r} is not one of {list(_MISMATCH_ACTIONS[1:])}"
        )
    if mismatch in ("ADD", "DELETE", "REPLACE"):
        raise HTTPRuleError(
            f"{field}.mismatch: {mismatch} is not supported (the proxy forwards requests "
            "unchanged)",
            hint="use LOG, or leave mismatch out to deny on a mismatch",
        )
    return HeaderMatch(name, value or None, log_only=mismatch == "LOG")


def parse_http_rule(raw: Any, field: str) -> HTTPRule:
    if not isinstance(raw, dict):
        raise HTTPRuleError(f"{field}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _RULE_FIELDS)
    if unknown:
        raise HTTPRuleError(
            f"{field}.{unknown[0]}: unknown field",
            hint=f"an HTTP rule has {sorted(_RULE_FIELDS)}",
        )
    headers = raw.get("headers") or []
    if not isinstance(headers, list):
        raise HTTPRuleError(f"{field}.headers: expected a list of strings")
    matches = raw.get("headerMatches") or []
    if not isinstance(matches, list):
        raise HTTPRuleError(f"{field}.headerMatches: expected a list of objects")
    return HTTPRule(
        method=_regex(raw.get("method"), f"{field}.method"),
        path=_regex(raw.get("path"), f"{field}.path"),
        host=_regex(raw.get("host"), f"{field}.host"),
        headers=tuple(_header(h, f"{field}.headers[{i}]") for i, h in enumerate(headers))
        + tuple(_header_match(m, f"{field}.headerMatches[{i}]") for i, m in enumerate(matches)),
    )


def parse_http_rules(raw: Any, field: str) -> HTTPRules:
    """The `http` list of a port rule's `rules`; `field` is its path in the policy, e.g.
    "spec.ingress[0].toPorts[0].rules.http". An empty list allows every request."""
    if raw is None:
        return HTTPRules()
    if not isinstance(raw, list):
        raise HTTPRuleError(f"{field}: expected a list of HTTP rules, got {type(raw).__name__}")
    return HTTPRules(tuple(parse_http_rule(r, f"{field}[{i}]") for i, r in enumerate(raw)))
