"""Label selectors: parse (object form and kubectl's `-l` string form), validate and match.

Pure: the NetworkPolicy compiler, the EndpointSlice controller and `get -l` share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flowscope.apis import fields, names
from flowscope.apis.fields import FieldError

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        if len(self.values) == 1:
            op = "=" if self.operator == "In" else "!="
            return f"{self.key}{op}{self.values[0]}"
        op = "in" if self.operator == "In" else "notin"
        return f"{self.key} {op} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """All requirements must hold (AND). No requirements selects everything."""

    requirements: tuple[Requirement, ...] = ()
    # Set for a selector that selects nothing (a nil selector in Go; a Service without selector).
    nothing: bool = False

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements and not self.nothing

    def __str__(self) -> str:
        if self.nothing:
            return "<none>"
        return ",".join(str(r) for r in self.requirements) or "<none>"


EVERYTHING = Selector()
NOTHING = Selector(nothing=True)


class SelectorSyntaxError(ValueError):
    pass


def from_match_labels(match_labels: Mapping[str, str] | None) -> Selector:
    """A map selector (Service.spec.selector): equality on every key."""
    reqs = tuple(Requirement(k, "In", (v,)) for k, v in sorted((match_labels or {}).items()))
    return Selector(reqs)


def from_label_selector(obj: Mapping[str, Any] | None) -> Selector:
    """A metav1.LabelSelector (matchLabels + matchExpressions); assumes it passed `errors`.

    None (absent) selects nothing; {} selects everything, as the API defines them.
    """
    if obj is None:
        return NOTHING
    reqs = list(from_match_labels(obj.get("matchLabels")).requirements)
    for expr in obj.get("matchExpressions") or ():
        reqs.append(
            Requirement(expr["key"], expr["operator"], tuple(sorted(expr.get("values") or ())))
        )
    return Selector(tuple(reqs))


def label_map_errors(labels: Any, path: str) -> list[FieldError]:
    """Keys are qualified names, values label values (metadata.labels, Service.spec.selector)."""
    errs: list[FieldError] = []
    if not labels:
        return errs
    for key, value in labels.items():
        errs.extend(fields.invalid(path, key, r) for r in names.qualified_name(key))
        if value is None:
            continue
        if not isinstance(value, str):
            errs.append(fields.invalid(fields.index(path, key), value, "must be a string"))
            continue
        errs.extend(
            fields.invalid(fields.index(path, key), value, r) for r in names.label_value(value)
        )
    return errs


def selector_errors(obj: Mapping[str, Any] | None, path: str) -> list[FieldError]:
    """The apiserver's checks of a metav1.LabelSelector."""
    if not obj:
        return []
    errs = label_map_errors(obj.get("matchLabels"), fields.child(path, "matchLabels"))
    for i, expr in enumerate(obj.get("matchExpressions") or ()):
        p = fields.index(fields.child(path, "matchExpressions"), i)
        key = expr.get("key")
        if not key:
            errs.append(fields.required(fields.child(p, "key")))
        else:
            errs.extend(
                fields.invalid(fields.child(p, "key"), key, r) for r in names.qualified_name(key)
            )
        op = expr.get("operator")
        values = expr.get("values") or []
        if op in ("In", "NotIn"):
            if not values:
                errs.append(
                    fields.required(
                        fields.child(p, "values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    )
                )
        elif op in ("Exists", "DoesNotExist"):
            if values:
                errs.append(
                    fields.forbidden(
                        fields.child(p, "values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    )
                )
        elif op is None:
            errs.append(fields.required(fields.child(p, "operator")))
        else:
            errs.append(fields.unsupported(fields.child(p, "operator"), op, OPERATORS))
        for j, v in enumerate(values):
            vp = fields.index(fields.child(p, "values"), j)
            errs.extend(fields.invalid(vp, v, r) for r in names.label_value(str(v)))
    return errs


# --- kubectl's string form: `a=b,c!=d,e in (x,y),f notin (z),g,!h` ---

_TOKEN = re.compile(r"\s*(?:(?P<paren>[(),])|(?P<op>==|!=|=|!)|(?P<word>[^\s(),=!]+))")


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            return
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorSyntaxError(f"unexpected character at position {pos}: {text[pos:]!r}")
        kind = m.lastgroup or "word"
        yield kind, m.group(kind), m.start(kind)
        pos = m.end()


def parse(text: str) -> Selector:
    """Parse kubectl's `-l` selector; raises SelectorSyntaxError naming the problem."""
    toks = list(_tokens(text))
    reqs: list[Requirement] = []
    i = 0

    def expect(kind: str, what: str) -> str:
        nonlocal i
        if i >= len(toks) or toks[i][0] != kind:
            found = repr(toks[i][1]) if i < len(toks) else "end of input"
            raise SelectorSyntaxError(f"expected {what} but found {found} in {text!r}")
        i += 1
        return toks[i - 1][1]

    def check_key(key: str) -> str:
        errs = names.qualified_name(key)
        if errs:
            raise SelectorSyntaxError(f"invalid label key {key!r}: {errs[0]}")
        return key

    def check_value(value: str) -> str:
        errs = names.label_value(value)
        if errs:
            raise SelectorSyntaxError(f"invalid label value {value!r}: {errs[0]}")
        return value

    while i < len(toks):
        if toks[i][0] == "op" and toks[i][1] == "!":
            i += 1
            reqs.append(Requirement(check_key(expect("word", "a label key")), "DoesNotExist"))
        else:
            key = check_key(expect("word", "a label key"))
            nxt = toks[i] if i < len(toks) else None
            if nxt is None or nxt[1] == ",":
                reqs.append(Requirement(key, "Exists"))
            elif nxt[0] == "op" and nxt[1] in ("=", "==", "!="):
                i += 1
                value = ""
                if i < len(toks) and toks[i][0] == "word":
                    value = toks[i][1]
                    i += 1
                op = "NotIn" if nxt[1] == "!=" else "In"
                reqs.append(Requirement(key, op, (check_value(value),)))
            elif nxt[0] == "word" and nxt[1] in ("in", "notin"):
                i += 1
                if expect("paren", "'('") != "(":
                    raise SelectorSyntaxError(f"expected '(' after {nxt[1]!r} in {text!r}")
                values: list[str] = []
                while True:
                    if i < len(toks) and toks[i][0] == "word":
                        values.append(check_value(toks[i][1]))
                        i += 1
                    sep = expect("paren", "',' or ')'")
                    if sep == ")":
                        break
                    if sep != ",":
                        raise SelectorSyntaxError(f"expected ',' or ')' in {text!r}")
                op = "In" if nxt[1] == "in" else "NotIn"
                reqs.append(Requirement(key, op, tuple(sorted(set(values)))))
            else:
                raise SelectorSyntaxError(
                    f"expected '=', '!=', 'in' or 'notin' after {key!r} but found {nxt[1]!r}"
                    f" in {text!r}"
                )
        if i < len(toks):
            if toks[i][1] != ",":
                raise SelectorSyntaxError(f"expected ',' but found {toks[i][1]!r} in {text!r}")
            i += 1
            if i == len(toks):
                raise SelectorSyntaxError(f"expected a requirement after ',' in {text!r}")
    return Selector(tuple(reqs))
