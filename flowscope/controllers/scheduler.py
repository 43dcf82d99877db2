"""The scheduler's decisions, pure: which node each unbound pod goes to, and which cannot go.

Pods without spec.nodeName go to the Ready node with the fewest pods (ties by name), counting the
pods placed in this round, so a batch spreads evenly. A pod naming a node that does not exist
stays Pending with a PodScheduled=False condition saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flowscope.apis.conditions import condition, is_ready

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Binding:
    """Put pod namespace/name on `node` (or confirm it there): spec.nodeName + PodScheduled."""

    namespace: str
    name: str
    node: str


@dataclass(frozen=True)
class Unschedulable:
    namespace: str
    name: str
    reason: str  # NodeNotFound | Unschedulable
    message: str


Decision = Binding | Unschedulable


def _active(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return phase not in TERMINAL_PHASES and not meta.get("deletionTimestamp")


def _sort_key(pod: dict[str, Any]) -> tuple[str, str, str]:
    meta = pod["metadata"]
    return (meta.get("creationTimestamp") or "", meta.get("namespace") or "", meta["name"])


def _scheduled_condition_is(pod: dict[str, Any], status: str, reason: str | None) -> bool:
    c = condition(pod, "PodScheduled")
    if c is None or c.get("status") != status:
        return False
    return reason is None or c.get("reason") == reason


def schedule(pods: Iterable[dict[str, Any]], nodes: Sequence[dict[str, Any]]) -> list[Decision]:
    """The decisions to write now; [] when everything is where it should be."""
    names = {n["metadata"]["name"] for n in nodes}
    ready = sorted(n["metadata"]["name"] for n in nodes if is_ready(n))
    load = dict.fromkeys(ready, 0)
    active = sorted((p for p in pods if _active(p)), key=_sort_key)
    for p in active:
        node = (p.get("spec") or {}).get("nodeName")
        if node in load:
            load[node] += 1
    decisions: list[Decision] = []
    for p in active:
        meta = p["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        node = (p.get("spec") or {}).get("nodeName")
        if node:
            if node not in names:
                msg = f'node "{node}" not found'
                if not _scheduled_condition_is(p, "False", "NodeNotFound"):
                    decisions.append(Unschedulable(ns, name, "NodeNotFound", msg))
            elif not _scheduled_condition_is(p, "True", None):
                decisions.append(Binding(ns, name, node))
            continue
        if not load:
            msg = f"0/{len(nodes)} nodes are available: " + (
                f"{len(nodes)} node(s) were not ready." if nodes else "no nodes registered."
            )
            c = condition(p, "PodScheduled")
            if not (c and c.get("status") == "False" and c.get("message") == msg):
                decisions.append(Unschedulable(ns, name, "Unschedulable", msg))
            continue
        target = min(load, key=lambda n: (load[n], n))
        load[target] += 1
        decisions.append(Binding(ns, name, target))
    return decisions


def scheduled_condition(decision: Decision, when: str) -> dict[str, Any]:
    """The PodScheduled condition a decision writes into the pod's status."""
    if isinstance(decision, Binding):
        return {"type": "PodScheduled", "status": "True", "lastTransitionTime": when}
    return {
        "type": "PodScheduled",
        "status": "False",
        "reason": decision.reason,
        "message": decision.message,
        "lastTransitionTime": when,
    }
