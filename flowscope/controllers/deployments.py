"""The Deployment controller's decisions, pure: ReplicaSets to create, scale and delete; status.

As kube-controller-manager's: a Deployment's pod template, hashed, names its ReplicaSet
(<deployment>-<pod-template-hash>, the hash also a label of the ReplicaSet's selector and pods, so
two templates never share pods). A template change is a rollout: with RollingUpdate the new
ReplicaSet grows while the old ones shrink, never more than replicas+maxSurge pods in all and,
once available pods allow it, never fewer than replicas-maxUnavailable available; with Recreate
the old ones go to zero first. Old ReplicaSets at zero beyond revisionHistoryLimit are deleted.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flowscope.apis.owners import POD_TEMPLATE_HASH_LABEL, controlled_by, controller_reference
from flowscope.apis.refs import ObjectRef

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s rand.SafeEncodeString's


@dataclass(frozen=True)
class Scale:
    """Set a ReplicaSet's spec.replicas (and its revision annotation, when given)."""

    ref: ObjectRef
    replicas: int
    revision: str | None = None


@dataclass
class Changes:
    create: list[dict[str, Any]] = field(default_factory=list)  # ReplicaSets
    scale: list[Scale] = field(default_factory=list)
    delete: list[ObjectRef] = field(default_factory=list)  # ReplicaSets
    status: dict[ObjectRef, dict[str, Any]] = field(default_factory=dict)  # Deployment -> status

    def __bool__(self) -> bool:
        return bool(self.create or self.scale or self.delete or self.status)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _ns(obj: dict[str, Any]) -> str:
    return _meta(obj).get("namespace") or "default"


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def template_hash(template: dict[str, Any], collision_count: int | None = None) -> str:
    """The pod-template-hash: FNV-32a of the template (canonical JSON here, where Kubernetes
    hashes its Go printout) and the collision count, its decimal digits spelled in the safe
    alphabet. Stable for one template; another template (or count) gives another hash."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += struct.pack("<I", collision_count & 0xFFFFFFFF)
    return "".join(SUFFIX_ALPHABET[ord(d) % len(SUFFIX_ALPHABET)] for d in str(_fnv32a(data)))


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(template or {})
    tlabels = (out.get("metadata") or {}).get("labels")
    if tlabels:
        tlabels.pop(POD_TEMPLATE_HASH_LABEL, None)
    return out


def _resolve(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        scaled = int(value[:-1]) * total / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(value or 0)


def fenceposts(deployment: dict[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as counts: percentages of replicas, surge rounded up and
    unavailable down; both 0 (e.g. 25% of 1 rounds down) means 1 unavailable, to make progress."""
    spec = deployment.get("spec") or {}
    replicas = _replicas(deployment)
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return 0, replicas
    rolling = strategy.get("rollingUpdate") or {}
    surge = _resolve(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _resolve(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def _replicas(obj: dict[str, Any]) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def _status(obj: dict[str, Any], key: str) -> int:
    return int((obj.get("status") or {}).get(key) or 0)


def _revision(rs: dict[str, Any]) -> int:
    value = (_meta(rs).get("annotations") or {}).get(REVISION_ANNOTATION, "0")
    return int(value) if str(value).isdigit() else 0


def new_replica_set(
    deployment: dict[str, Any], pod_hash: str, replicas: int, revision: int
) -> dict:
    """The ReplicaSet of the Deployment's current template."""
    spec = deployment.get("spec") or {}
    template = copy.deepcopy(spec.get("template") or {})
    tmeta = template.setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), POD_TEMPLATE_HASH_LABEL: pod_hash}
    selector = copy.deepcopy(spec.get("selector") or {})
    selector["matchLabels"] = {
        **(selector.get("matchLabels") or {}),
        POD_TEMPLATE_HASH_LABEL: pod_hash,
    }
    rs_spec: dict[str, Any] = {"replicas": replicas, "selector": selector, "template": template}
    if spec.get("minReadySeconds"):
        rs_spec["minReadySeconds"] = spec["minReadySeconds"]
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{_meta(deployment)['name']}-{pod_hash}",
            "namespace": _ns(deployment),
            "labels": dict(tmeta["labels"]),
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "ownerReferences": [controller_reference(deployment)],
        },
        "spec": rs_spec,
    }


def _oldest_first(replicasets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        replicasets,
        key=lambda r: (_meta(r).get("creationTimestamp") or "", _meta(r)["name"]),
    )


def _rolling(
    deployment: dict[str, Any],
    new: dict[str, Any],
    new_replicas: int,
    old: list[dict[str, Any]],
    scale: dict[ObjectRef, int],
) -> None:
    """One step of a rolling update (the controller's rolloutRolling): grow the new ReplicaSet
    within maxSurge; if it did not grow, shrink the old ones within maxUnavailable."""
    replicas = _replicas(deployment)
    surge, unavailable = fenceposts(deployment)
    current = {ObjectRef.of(r): _replicas(r) for r in [new, *old]}
    current[ObjectRef.of(new)] = new_replicas

    new_ref = ObjectRef.of(new)
    have = current[new_ref]
    if have > replicas:
        scale[new_ref] = replicas
        return
    if have < replicas:
        room = replicas + surge - sum(current.values())
        if room > 0:
            scale[new_ref] = min(replicas, have + room)
            return

    old = [r for r in _oldest_first(old) if current[ObjectRef.of(r)] > 0]
    if not old:
        return
    min_available = replicas - unavailable
    new_unavailable = have - _status(new, "availableReplicas")
    budget = sum(current.values()) - min_available - max(0, new_unavailable)
    if budget <= 0:
        return
    # first the old pods that are not available anyway: removing them costs no availability
    for r in old:
        ref = ObjectRef.of(r)
        unhealthy = current[ref] - _status(r, "availableReplicas")
        if budget <= 0:
            break
        if unhealthy <= 0:
            continue
        down = min(budget, unhealthy)
        current[ref] -= down
        scale[ref] = current[ref]
        budget -= down
    # then available ones, as far as replicas-maxUnavailable stay available
    available = sum(min(_status(r, "availableReplicas"), current[ObjectRef.of(r)]) for r in old)
    available += _status(new, "availableReplicas")
    excess = available - min_available
    for r in old:
        ref = ObjectRef.of(r)
        if excess <= 0:
            break
        down = min(current[ref], excess)
        if down <= 0:
            continue
        current[ref] -= down
        scale[ref] = current[ref]
        excess -= down


def _condition(
    existing: dict[str, Any], type_: str, status: str, reason: str, message: str, now: str
) -> dict[str, Any]:
    for c in (existing.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_ and (c.get("status"), c.get("reason")) == (status, reason):
            if c.get("message") == message:
                return c
            return {**c, "message": message, "lastUpdateTime": now}
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    }


def desired_status(
    deployment: dict[str, Any],
    owned: Sequence[dict[str, Any]],
    new: dict[str, Any] | None,
    now: str,
    *,
    created: bool = False,
) -> dict[str, Any]:
    replicas = _replicas(deployment)
    _, unavailable = fenceposts(deployment)
    total = sum(_status(r, "replicas") for r in owned)
    available = sum(_status(r, "availableReplicas") for r in owned)
    updated = _status(new, "replicas") if new else 0
    generation = int(_meta(deployment).get("generation") or 1)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": sum(_status(r, "readyReplicas") for r in owned),
        "availableReplicas": available,
        "unavailableReplicas": max(0, sum(_replicas(r) for r in owned) - available),
    }
    collisions = (deployment.get("status") or {}).get("collisionCount")
    if collisions:
        status["collisionCount"] = collisions
    if available >= replicas - unavailable:
        avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    else:
        avail = (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    new_name = _meta(new)["name"] if new else ""
    complete = updated == replicas and total == replicas and available == replicas and new
    if complete:
        prog = (
            "True",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{new_name}" has successfully progressed.',
        )
    elif created:
        prog = ("True", "NewReplicaSetCreated", f'Created new replica set "{new_name}"')
    else:
        prog = ("True", "ReplicaSetUpdated", f'ReplicaSet "{new_name}" is progressing.')
    status["conditions"] = [
        _condition(deployment, "Available", *avail, now),
        _condition(deployment, "Progressing", *prog, now),
    ]
    return status


def _status_differs(deployment: dict[str, Any], wanted: dict[str, Any]) -> bool:
    have = deployment.get("status") or {}
    for key, value in wanted.items():
        if key == "conditions":
            by_type = {c.get("type"): c for c in have.get("conditions") or ()}
            if any(by_type.get(c["type"]) != c for c in value):
                return True
        elif have.get(key, 0) != value:
            return True
    return False


def plan(
    deployment: dict[str, Any],
    replicasets: Sequence[dict[str, Any]],
    now: str,
    changes: Changes,
) -> None:
    """Add what one Deployment needs to `changes` (replicasets: all of its namespace)."""
    ref = ObjectRef.of(deployment)
    spec = deployment.get("spec") or {}
    template = spec.get("template") or {}
    owned = [r for r in replicasets if controlled_by(r, deployment)]
    collisions = int((deployment.get("status") or {}).get("collisionCount") or 0)
    pod_hash = template_hash(template, collisions)
    new = next(
        (r for r in owned if _without_hash((r.get("spec") or {}).get("template")) == template), None
    )
    old = [r for r in owned if r is not new]
    max_revision = max((_revision(r) for r in old), default=0)
    replicas = _replicas(deployment)
    scale: dict[ObjectRef, int] = {}
    created = False
    revision: str | None = None

    if new is None:
        name = f"{_meta(deployment)['name']}-{pod_hash}"
        if any(_meta(r)["name"] == name for r in replicasets):
            # another template already has this name: hash again with one more collision
            wanted = desired_status(deployment, owned, None, now)
            wanted["collisionCount"] = collisions + 1
            changes.status[ref] = wanted
            return
        if spec.get("paused"):
            start = 0
        elif (spec.get("strategy") or {}).get("type") == "Recreate":
            start = 0 if any(_replicas(r) or _status(r, "replicas") for r in old) else replicas
        else:
            surge, _ = fenceposts(deployment)
            start = max(0, min(replicas, replicas + surge - sum(_replicas(r) for r in old)))
        new = new_replica_set(deployment, pod_hash, start, max_revision + 1)
        changes.create.append(new)
        created = True
        new_replicas = start
    else:
        new_replicas = _replicas(new)
        if _revision(new) <= max_revision:  # a rollback to an older template: it is newest now
            revision = str(max_revision + 1)

    if not spec.get("paused"):
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            for r in old:
                if _replicas(r):
                    scale[ObjectRef.of(r)] = 0
            old_gone = not any(_replicas(r) or _status(r, "replicas") for r in old)
            if old_gone and new_replicas != replicas:
                scale[ObjectRef.of(new)] = replicas
        else:
            _rolling(deployment, new, new_replicas, old, scale)
    new_ref = ObjectRef.of(new)
    if created:
        if new_ref in scale:  # not yet written: create it at that size
            new["spec"]["replicas"] = scale.pop(new_ref)
    elif revision is not None and new_ref not in scale:
        scale[new_ref] = new_replicas
    for r_ref, n in sorted(scale.items()):
        changes.scale.append(Scale(r_ref, n, revision if r_ref == new_ref else None))

    # history: old ReplicaSets at zero, oldest revisions first, beyond the limit
    limit = spec.get("revisionHistoryLimit")
    limit = 10 if limit is None else int(limit)
    idle = [
        r
        for r in old
        if scale.get(ObjectRef.of(r), _replicas(r)) == 0 and _status(r, "replicas") == 0
    ]
    idle.sort(key=lambda r: (_revision(r), _meta(r).get("creationTimestamp") or ""))
    changes.delete.extend(ObjectRef.of(r) for r in idle[: max(0, len(idle) - limit)])

    status = desired_status(deployment, owned, None if created else new, now, created=created)
    if created:
        status["conditions"][1] = _condition(
            deployment,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            f'Created new replica set "{_meta(new)["name"]}"',
            now,
        )
    if _status_differs(deployment, status):
        changes.status[ref] = status


def reconcile(
    deployments: Sequence[dict[str, Any]],
    replicasets: Sequence[dict[str, Any]],
    now: str,
    *,
    skip: set[ObjectRef] | frozenset[ObjectRef] = frozenset(),
) -> Changes:
    """What to write for every Deployment; `skip`: Deployments whose earlier writes the caches
    have not shown yet."""
    changes = Changes()
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for r in replicasets:
        by_ns.setdefault(_ns(r), []).append(r)
    for d in sorted(deployments, key=lambda d: (_ns(d), _meta(d)["name"])):
        if ObjectRef.of(d) in skip:
            continue
        plan(d, by_ns.get(_ns(d), []), now, changes)
    return changes
