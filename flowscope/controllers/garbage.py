"""Garbage collection through ownerReferences, for the owners the workload controllers make.

As Kubernetes' garbage collector with background propagation: an object all of whose owners
are gone (no object of the owner's kind and name with the owner's uid) is deleted, so deleting
a Deployment deletes its ReplicaSets, and those their pods. The caches can lag (a ReplicaSet just
created, its pods already seen), so these are candidates: the manager confirms each owner's
absence against the store before deleting, as the real collector does with a live lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flowscope.apis.refs import ObjectRef

OWNER_KINDS = ("Deployment", "ReplicaSet")  # owners whose dependents are collected here
DEPENDENT_KINDS = ("ReplicaSet", "Pod")


@dataclass(frozen=True)
class Orphan:
    dependent: ObjectRef
    owners: tuple[tuple[ObjectRef, str], ...]  # each owner's ref and the uid it must have had


def orphans(objects: Mapping[str, Iterable[dict[str, Any]]]) -> list[Orphan]:
    """Dependents (ReplicaSets, Pods) whose every owner is absent from the caches, where at
    least one owner is of a kind collected here; others' owners (a Service's slices) are left."""
    uids: dict[str, set[str]] = {
        kind: {(o.get("metadata") or {}).get("uid", "") for o in objects.get(kind, ())}
        for kind in OWNER_KINDS
    }
    found = []
    for kind in DEPENDENT_KINDS:
        for obj in objects.get(kind, ()):
            meta = obj.get("metadata") or {}
            refs = meta.get("ownerReferences") or ()
            if not refs or not any(r.get("kind") in OWNER_KINDS for r in refs):
                continue
            if any(
                r.get("kind") not in OWNER_KINDS or r.get("uid") in uids[r["kind"]] for r in refs
            ):
                continue
            ns = meta.get("namespace") or "default"
            owners = tuple(
                (ObjectRef(r["kind"], ns, r.get("name", "")), r.get("uid", "")) for r in refs
            )
            found.append(Orphan(ObjectRef.of(obj), owners))
    return sorted(found, key=lambda o: o.dependent)
