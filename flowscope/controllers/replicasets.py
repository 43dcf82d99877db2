"""The ReplicaSet controller's decisions, pure: which pods to create or delete, and the status.

As kube-controller-manager's: a ReplicaSet owns the active pods of its namespace that name it as
their controller (ownerReferences, by uid) and match its selector. Fewer than spec.replicas: new
pods from the template, named <replicaset>-<5 random characters>, labelled as the template and
owned by the ReplicaSet. More: the least valuable go first (unscheduled before scheduled,
pending before running, not ready before ready, ready for less time, more restarts, newest).
Pods are never adopted: a pod without a controller stays the user's.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowscope.apis import labels
from flowscope.apis.conditions import condition
from flowscope.apis.owners import controlled_by, controller_reference
from flowscope.apis.refs import ObjectRef
from flowscope.controllers.scheduler import TERMINAL_PHASES

# k8s.io/apimachinery's rand.String alphabet: no vowels (no words), no 0/1/3 (no look-alikes)
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SUFFIX_LENGTH = 5
MAX_NAME_PREFIX = 58  # generated names stay within 63 characters
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


@dataclass(frozen=True)
class Changes:
    create: list[dict[str, Any]] = field(default_factory=list)  # pods
    delete: list[ObjectRef] = field(default_factory=list)  # pods
    status: dict[ObjectRef, dict[str, Any]] = field(default_factory=dict)  # ReplicaSet -> status
    # owner (a ReplicaSet) -> the pods it is about to create/delete, for the manager's expectations
    creating: dict[ObjectRef, list[ObjectRef]] = field(default_factory=dict)
    deleting: dict[ObjectRef, list[ObjectRef]] = field(default_factory=dict)
    wake_in: float | None = None  # seconds until a pod becomes available (minReadySeconds)

    def __bool__(self) -> bool:
        return bool(self.create or self.delete or self.status)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _ns(obj: dict[str, Any]) -> str:
    return _meta(obj).get("namespace") or "default"


def _parse_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def is_active(pod: dict[str, Any]) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase not in TERMINAL_PHASES and not _meta(pod).get("deletionTimestamp")


def is_ready(pod: dict[str, Any]) -> bool:
    c = condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def ready_since(pod: dict[str, Any]) -> datetime | None:
    c = condition(pod, "Ready")
    return _parse_time(c.get("lastTransitionTime")) if c else None


def available_in(pod: dict[str, Any], min_ready_seconds: int, now: datetime) -> float | None:
    """Seconds until the pod counts as available (0: it is); None: not ready at all."""
    if not is_ready(pod):
        return None
    if min_ready_seconds <= 0:
        return 0.0
    since = ready_since(pod)
    if since is None:
        return 0.0
    return max(0.0, min_ready_seconds - (now - since).total_seconds())


def owned_pods(rs: dict[str, Any], pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The active pods the ReplicaSet controls: its namespace, its uid, its selector."""
    selector = labels.from_label_selector((rs.get("spec") or {}).get("selector"))
    ns = _ns(rs)
    return [
        p
        for p in pods
        if _ns(p) == ns
        and is_active(p)
        and controlled_by(p, rs)
        and selector.matches(_meta(p).get("labels"))
    ]


def deletion_order(pods: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods, those to delete first first (the controller's ActivePods ranking)."""

    def rank(p: dict[str, Any]) -> tuple:
        spec, status = p.get("spec") or {}, p.get("status") or {}
        since = ready_since(p) if is_ready(p) else None
        restarts = sum(
            int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or ()
        )
        created = _parse_time(_meta(p).get("creationTimestamp"))
        return (
            bool(spec.get("nodeName")),
            _PHASE_RANK.get(status.get("phase") or "Pending", 0),
            is_ready(p),
            # ready for less time first: later transition first
            -(since.timestamp() if since else 0.0),
            -restarts,
            -(created.timestamp() if created else 0.0),  # newest first
            _meta(p)["name"],
        )

    return sorted(pods, key=rank)


def pod_name(rs_name: str, rand: random.Random, taken: set[str]) -> str:
    while True:
        suffix = "".join(rand.choice(SUFFIX_ALPHABET) for _ in range(SUFFIX_LENGTH))
        name = f"{rs_name[:MAX_NAME_PREFIX]}-{suffix}"
        if name not in taken:
            taken.add(name)
            return name


def new_pod(rs: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod of the ReplicaSet's template, controlled by the ReplicaSet."""
    template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    meta: dict[str, Any] = {
        "name": name,
        "generateName": f"{_meta(rs)['name'][:MAX_NAME_PREFIX]}-",
        "namespace": _ns(rs),
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [controller_reference(rs)],
    }
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec") or {}}


def desired_status(
    rs: dict[str, Any], owned: Sequence[dict[str, Any]], now: datetime
) -> dict[str, Any]:
    spec = rs.get("spec") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    return {
        "replicas": len(owned),
        "fullyLabeledReplicas": sum(
            1 for p in owned if template_labels.items() <= (_meta(p).get("labels") or {}).items()
        ),
        "readyReplicas": sum(1 for p in owned if is_ready(p)),
        "availableReplicas": sum(1 for p in owned if available_in(p, min_ready, now) == 0.0),
        "observedGeneration": int(_meta(rs).get("generation") or 1),
    }


def _status_differs(rs: dict[str, Any], wanted: dict[str, Any]) -> bool:
    have = rs.get("status") or {}
    return any(have.get(k, 0) != v for k, v in wanted.items())


def reconcile(
    replicasets: Sequence[dict[str, Any]],
    pods: Sequence[dict[str, Any]],
    now: datetime,
    rand: random.Random,
    *,
    skip: set[ObjectRef] | frozenset[ObjectRef] = frozenset(),
) -> Changes:
    """What to write so every ReplicaSet has its replicas; `skip`: ReplicaSets whose earlier
    writes the caches have not shown yet (their pod counts would be stale)."""
    changes = Changes()
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for p in pods:
        by_ns.setdefault(_ns(p), []).append(p)
    wake: list[float] = []
    for rs in sorted(replicasets, key=lambda r: (_ns(r), _meta(r)["name"])):
        ref = ObjectRef.of(rs)
        if ref in skip:
            continue
        spec = rs.get("spec") or {}
        in_ns = by_ns.get(_ns(rs), [])
        owned = owned_pods(rs, in_ns)
        want = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
        if len(owned) < want:
            taken = {_meta(p)["name"] for p in in_ns}
            made = [
                new_pod(rs, pod_name(_meta(rs)["name"], rand, taken))
                for _ in range(want - len(owned))
            ]
            changes.create.extend(made)
            changes.creating[ref] = [ObjectRef.of(p) for p in made]
        elif len(owned) > want:
            going = [ObjectRef.of(p) for p in deletion_order(owned)[: len(owned) - want]]
            changes.delete.extend(going)
            changes.deleting[ref] = going
        status = desired_status(rs, owned, now)
        if _status_differs(rs, status):
            changes.status[ref] = status
        min_ready = int(spec.get("minReadySeconds") or 0)
        wake += [w for p in owned if (w := available_in(p, min_ready, now))]
    return Changes(
        changes.create,
        changes.delete,
        changes.status,
        changes.creating,
        changes.deleting,
        min(wake) if wake else None,
    )
