"""Everything that can be said about a set of manifests without reading the cluster.

Schema (strict, kubernetes-validate), the apiserver's semantic checks, object identity (kind,
namespace, name) and duplicates within one apply. Stateful checks (namespaces exist, immutable
fields) belong to the object store, which runs them against what it reads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowscope.apis import fields, kinds, labels, names, schema
from flowscope.apis.documents import Document, InvalidManifest, Problem
from flowscope.apis.fields import FieldError
from flowscope.apis.kinds import Kind
from flowscope.apis.refs import ObjectRef
from flowscope.errors import FlowscopeError

_ANNOTATIONS_MAX_BYTES = 256 * 1024
# Set by the server: manifests copied from `get -o yaml` carry them; they are not desired state
_SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "managedFields", "selfLink")


@dataclass(frozen=True)
class Checked:
    """A document that passed validation: its kind and the object as it would be stored."""

    doc: Document
    kind: Kind
    obj: dict[str, Any]  # namespace filled in, defaults applied, status and server fields removed
    resource_version: str | None  # the manifest's metadata.resourceVersion: a CAS precondition

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef.of(self.obj)

    def where(self) -> str:
        return self.doc.describe(self.ref.namespace or "default")


def metadata_errors(kind: Kind, meta: Any) -> list[FieldError]:
    if not isinstance(meta, dict):
        return [fields.required("metadata")]
    errs: list[FieldError] = []
    name = meta.get("name")
    if not name:
        if meta.get("generateName"):
            errs.append(
                fields.forbidden("metadata.generateName", "not supported; set metadata.name")
            )
        errs.append(fields.required("metadata.name", "name or generateName is required"))
    elif isinstance(name, str):
        errs += [fields.invalid("metadata.name", name, r) for r in kind.name_syntax(name)]
    ns = meta.get("namespace")
    if ns and isinstance(ns, str) and kind.namespaced:
        errs += [fields.invalid("metadata.namespace", ns, r) for r in names.dns1123_label(ns)]
    errs += labels.label_map_errors(meta.get("labels"), "metadata.labels")
    annotations = meta.get("annotations") or {}
    if isinstance(annotations, dict):
        for key in annotations:
            errs += [
                fields.invalid("metadata.annotations", key, r) for r in names.qualified_name(key)
            ]
        size = sum(len(k) + len(str(v or "")) for k, v in annotations.items())
        if size > _ANNOTATIONS_MAX_BYTES:
            errs.append(fields.too_long("metadata.annotations", "", _ANNOTATIONS_MAX_BYTES))
    return errs


def _identity_problems(obj: dict) -> list[str]:
    missing = [f"{f} not set" for f in ("apiVersion", "kind") if not obj.get(f)]
    return [f"error validating data: [{', '.join(missing)}]"] if missing else []


def check_document(
    doc: Document,
    namespace: str = "default",
    *,
    enforce_namespace: bool = False,
    internal: bool = False,
) -> tuple[Checked | None, list[Problem]]:
    """Validate one document on its own; `namespace` is `-n` (or "default").

    `internal`: written by a controller, so kinds users may not apply are allowed.
    """
    obj = doc.obj
    if not isinstance(obj, dict):
        got = type(obj).__name__.replace("dict", "mapping").replace("str", "string")
        return None, [
            Problem(
                doc.where(),
                f"expected a Kubernetes object (a mapping with apiVersion, kind, metadata), "
                f"got a {got}",
            )
        ]
    where = doc.describe(namespace)
    missing = _identity_problems(obj)
    if missing:
        return None, [Problem(where, m) for m in missing]
    try:
        kind = kinds.for_object(obj.get("apiVersion"), obj.get("kind"))
    except FlowscopeError as e:
        return None, [Problem(where, str(e))]
    if kind.refused and not internal:
        return None, [Problem(where, f"{kind.kind} cannot be applied: {kind.refused}")]

    errs = metadata_errors(kind, obj.get("metadata"))
    if kind.schema is not None:
        errs += schema.errors(obj, kind.schema)
    try:
        errs += kind.checks(obj)
    except (TypeError, AttributeError, KeyError):
        # the semantic checks assume the schema's types; the schema errors already say what is wrong
        if not errs:
            raise
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    ns = meta.get("namespace")
    if kind.namespaced and enforce_namespace and ns and ns != namespace:
        errs.append(
            fields.invalid(
                "metadata.namespace",
                ns,
                f'does not match the namespace "{namespace}" given with -n; '
                f"pass --namespace={ns} or remove -n",
            )
        )
    if errs:
        return None, [Problem(where, str(e)) for e in errs]

    out = copy.deepcopy(obj)
    out.pop("status", None)
    out_meta = out["metadata"]
    rv = out_meta.pop("resourceVersion", None)
    for f in _SERVER_FIELDS:
        out_meta.pop(f, None)
    if kind.namespaced:
        out_meta["namespace"] = ns or namespace
    else:
        out_meta.pop("namespace", None)
    if kind.defaults is not None:
        kind.defaults(out)
    return Checked(doc, kind, out, str(rv) if rv is not None else None), []


def check(
    docs: Sequence[Document],
    namespace: str = "default",
    *,
    enforce_namespace: bool = False,
    internal: bool = False,
) -> list[Checked]:
    """Validate every document and the set (no object twice); raise InvalidManifest if any fail.

    All documents are checked, so one run reports every problem, not just the first.
    """
    problems: list[Problem] = []
    checked: list[Checked] = []
    first_seen: dict[ObjectRef, Checked] = {}
    for doc in docs:
        c, p = check_document(
            doc, namespace, enforce_namespace=enforce_namespace, internal=internal
        )
        problems += p
        if c is None:
            continue
        earlier = first_seen.get(c.ref)
        if earlier is not None:
            problems.append(
                Problem(
                    c.where(),
                    f"duplicate object: {c.ref.display()} is also defined in {earlier.doc.where()}",
                )
            )
            continue
        first_seen[c.ref] = c
        checked.append(c)
    if problems:
        raise InvalidManifest(
            problems, hint="fix the manifest and run the command again; nothing was changed"
        )
    return checked
