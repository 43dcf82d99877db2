"""Manifests in: multi-document YAML or JSON (also `kind: List`) from files, directories or stdin.

Every object keeps where it came from (source, document index, list item) so that an error can
say `pods.yaml document 2 (Pod default/web): spec...: Invalid value: ...`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from flowscope.errors import FlowscopeError

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


@dataclass(frozen=True)
class Document:
    """One object of a manifest and where it came from."""

    source: str  # the path as given, or "STDIN"
    index: int  # 1-based position of the YAML/JSON document in its source
    obj: Any  # normally a dict; anything else is reported by validation
    item: int | None = None  # 1-based position inside a `kind: List`

    def where(self) -> str:
        at = f"{self.source} document {self.index}"
        return at if self.item is None else f"{at} item {self.item}"

    def describe(self, default_namespace: str = "default") -> str:
        """`pods.yaml document 2 (Pod default/web)`, as much as is known of the object."""
        obj = self.obj if isinstance(self.obj, dict) else {}
        kind = obj.get("kind")
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        name = meta.get("name")
        if not isinstance(kind, str) or not kind:
            return self.where()
        if not isinstance(name, str) or not name:
            return f"{self.where()} ({kind})"
        from flowscope.apis import kinds  # late: kinds imports the checks, not needed to parse

        try:
            namespaced = kinds.get(kind).namespaced
        except KeyError:
            namespaced = bool(meta.get("namespace"))
        if namespaced:
            ns = meta.get("namespace") or default_namespace
            return f"{self.where()} ({kind} {ns}/{name})"
        return f"{self.where()} ({kind} {name})"


@dataclass(frozen=True)
class Problem:
    """One reason an apply is refused, tied to the document it is about."""

    where: str  # Document.describe(), or the source for problems before any document
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class InvalidManifest(FlowscopeError):
    """One or more documents are bad; nothing of the apply was written."""

    def __init__(self, problems: Sequence[Problem], hint: str | None = None) -> None:
        self.problems = tuple(problems)
        # main prints "error: " before the message; repeat it per problem, as kubectl does
        super().__init__("\nerror: ".join(str(p) for p in self.problems), hint=hint)


@dataclass
class _Reader:
    problems: list[Problem] = field(default_factory=list)
    docs: list[Document] = field(default_factory=list)


# libyaml's parser when PyYAML was built with it: ~10x faster (10,000 Services in one apply)
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """YAML as the apiserver reads it: duplicate keys are errors, timestamps stay strings."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"key {key!r} already set in map",
                        key_node.start_mark,
                    )
                seen[key] = True
        return super().construct_mapping(node, deep=deep)


# Kubernetes (sigs.k8s.io/yaml) keeps dates as strings; PyYAML would make datetime objects.
_StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}


def _yaml_problem(source: str, index: int, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    reason = getattr(exc, "problem", None) or str(exc)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return Problem(f"{source} document {index}", f"invalid YAML: {at}{reason}")


def _parse_json_stream(source: str, text: str, out: _Reader) -> list[Any]:
    decoder = json.JSONDecoder()
    pos, objs = 0, []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return objs
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            out.problems.append(
                Problem(
                    f"{source} document {len(objs) + 1}",
                    f"invalid JSON: line {e.lineno}, column {e.colno}: {e.msg}",
                )
            )
            return objs
        objs.append(obj)


def _parse_yaml_stream(source: str, text: str, out: _Reader) -> list[Any]:
    objs: list[Any] = []
    try:
        for obj in yaml.load_all(text, Loader=_StrictLoader):
            objs.append(obj)
    except yaml.YAMLError as e:
        out.problems.append(_yaml_problem(source, len(objs) + 1, e))
    return objs


def parse_text(
    source: str, text: str, *, json_only: bool = False
) -> tuple[list[Document], list[Problem]]:
    """The documents of one manifest text, and the problems met reading it."""
    out = _Reader()
    stripped = text.lstrip()
    if json_only or (stripped.startswith(("{", "[")) and not stripped.startswith("[]")):
        objs = _parse_json_stream(source, text, out)
        if out.problems and not json_only:
            # not JSON after all (YAML flow style is a superset): let YAML have its say
            out = _Reader()
            objs = _parse_yaml_stream(source, text, out)
    else:
        objs = _parse_yaml_stream(source, text, out)
    for i, obj in enumerate(objs, start=1):
        if obj is None:
            continue  # an empty document (`---` twice, comments only)
        if isinstance(obj, dict) and obj.get("kind") == "List" and "items" in obj:
            items = obj.get("items")
            if not isinstance(items, list):
                out.problems.append(Problem(f"{source} document {i}", "items: must be a list"))
                continue
            for j, item in enumerate(items, start=1):
                out.docs.append(Document(source, i, item, j))
            continue
        out.docs.append(Document(source, i, obj))
    return out.docs, out.problems


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES)


def load(paths: Iterable[str], stdin: TextIO | None = None) -> list[Document]:
    """All documents of `paths` (files, directories of *.yaml/*.yml/*.json, or "-" for stdin).

    Raises InvalidManifest listing every unreadable source and every malformed document.
    """
    docs: list[Document] = []
    problems: list[Problem] = []
    for raw in paths:
        if raw == STDIN:
            text = (stdin or sys.stdin).read()
            d, p = parse_text("STDIN", text)
            docs += d
            problems += p
            continue
        path = Path(raw)
        if path.is_dir():
            files = _files(path)
            if not files:
                problems.append(
                    Problem(raw, f"no {', '.join('*' + s for s in MANIFEST_SUFFIXES)} files here")
                )
        elif path.exists():
            files = [path]
        else:
            problems.append(Problem("", f'the path "{raw}" does not exist'))
            continue
        for f in files:
            source = str(f) if path.is_dir() else raw
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError) as e:
                problems.append(Problem(source, f"cannot read: {e}"))
                continue
            d, p = parse_text(source, text, json_only=f.suffix == ".json")
            docs += d
            problems += p
    if problems:
        raise InvalidManifest(
            problems, hint="fix the manifest and run the command again; nothing was changed"
        )
    if not docs:
        raise InvalidManifest(
            [Problem("", "no objects passed")], hint="the manifests hold no documents"
        )
    return docs
