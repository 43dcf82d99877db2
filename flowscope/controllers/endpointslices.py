"""The EndpointSlice controller's decisions, pure: the slices each Service should have.

As kube-controller-manager's controller: for every Service with a selector, the pods it selects
that have an IP become endpoints (ready/serving/terminating from the pod's Ready condition), with
ports resolved per pod (a named targetPort resolves against each pod's own containerPorts, so
pods resolving differently land in different slices), at most 100 endpoints a slice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowscope.apis import labels
from flowscope.apis.conditions import condition
from flowscope.apis.refs import ObjectRef
from flowscope.controllers.scheduler import TERMINAL_PHASES

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100

# The fields of a slice the controller owns; a slice differing in any of them is rewritten.
_OWNED = ("addressType", "endpoints", "ports")


@dataclass(frozen=True)
class Changes:
    apply: list[dict[str, Any]] = field(default_factory=list)  # slices to create or update
    delete: list[ObjectRef] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.apply or self.delete)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def resolve_ports(service: dict[str, Any], pod: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The service's ports as this pod serves them (a named targetPort the pod lacks: omitted)."""
    out = []
    containers = (pod.get("spec") or {}).get("containers") or ()
    for sp in (service.get("spec") or {}).get("ports") or ():
        protocol = sp.get("protocol") or "TCP"
        target = sp.get("targetPort", sp.get("port"))
        if isinstance(target, str):
            number = next(
                (
                    cp["containerPort"]
                    for c in containers
                    for cp in c.get("ports") or ()
                    if cp.get("name") == target and (cp.get("protocol") or "TCP") == protocol
                ),
                None,
            )
            if number is None:
                continue
        else:
            number = target
        port: dict[str, Any] = {"name": sp.get("name") or "", "port": number, "protocol": protocol}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        out.append(port)
    return tuple(out)


def endpoint(pod: dict[str, Any]) -> dict[str, Any]:
    meta = _meta(pod)
    ready_cond = condition(pod, "Ready")
    ready = ready_cond is not None and ready_cond.get("status") == "True"
    terminating = bool(meta.get("deletionTimestamp"))
    ep: dict[str, Any] = {
        "addresses": [(pod.get("status") or {})["podIP"]],
        "conditions": {
            "ready": ready and not terminating,
            "serving": ready,
            "terminating": terminating,
        },
        "targetRef": {
            "kind": "Pod",
            "namespace": meta.get("namespace") or "default",
            "name": meta["name"],
            "uid": meta.get("uid", ""),
        },
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        ep["nodeName"] = node
    return ep


def selects(service: dict[str, Any], pod: dict[str, Any]) -> bool:
    selector = (service.get("spec") or {}).get("selector")
    if not selector:
        return False
    if (_meta(pod).get("namespace") or "default") != (_meta(service).get("namespace") or "default"):
        return False
    return labels.from_match_labels(selector).matches(_meta(pod).get("labels"))


def _slice_name(service_name: str, ports: tuple[dict[str, Any], ...], chunk: int) -> str:
    digest = hashlib.sha1(
        json.dumps([ports, chunk], sort_keys=True).encode(), usedforsecurity=False
    ).hexdigest()
    return f"{service_name[:200]}-{digest[:5]}"


def desired_slices(service: dict[str, Any], pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slices `service` should have; [] for a Service without selector (not ours)."""
    meta = _meta(service)
    if not (service.get("spec") or {}).get("selector"):
        return []
    ns, name = meta.get("namespace") or "default", meta["name"]
    groups: dict[str, tuple[tuple[dict[str, Any], ...], list[dict[str, Any]]]] = {}
    for pod in sorted(pods, key=lambda p: _meta(p)["name"]):
        status = pod.get("status") or {}
        if not selects(service, pod) or not status.get("podIP"):
            continue
        if status.get("phase") in TERMINAL_PHASES:
            continue
        ports = resolve_ports(service, pod)
        key = json.dumps(ports, sort_keys=True)
        groups.setdefault(key, (ports, []))[1].append(endpoint(pod))
    if not groups:
        groups[""] = ((), [])  # a placeholder: the Service exists but has no endpoints
    slices = []
    for key in sorted(groups):
        ports, endpoints = groups[key]
        chunks = [
            endpoints[i : i + MAX_ENDPOINTS_PER_SLICE]
            for i in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE)
        ] or [[]]
        for i, chunk in enumerate(chunks):
            slices.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": _slice_name(name, ports, i),
                        "namespace": ns,
                        "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Service",
                                "name": name,
                                "uid": meta.get("uid", ""),
                                "controller": True,
                                "blockOwnerDeletion": True,
                            }
                        ],
                    },
                    "addressType": "IPv4",
                    "endpoints": chunk,
                    "ports": list(ports),
                }
            )
    return slices


def _owned(slice_: dict[str, Any]) -> bool:
    return (_meta(slice_).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if any(a.get(f) != b.get(f) for f in _OWNED):
        return False
    ma, mb = _meta(a), _meta(b)
    return ma.get("labels") == mb.get("labels") and ma.get("ownerReferences") == mb.get(
        "ownerReferences"
    )


def reconcile(
    services: Sequence[dict[str, Any]],
    pods: Sequence[dict[str, Any]],
    slices: Sequence[dict[str, Any]],
) -> Changes:
    """What to write so that the slices match the services and pods; empty when they do."""
    pods_by_ns: dict[str, list[dict[str, Any]]] = {}
    for p in pods:
        pods_by_ns.setdefault(_meta(p).get("namespace") or "default", []).append(p)
    existing = {ObjectRef.of(s): s for s in slices if _owned(s)}
    wanted: dict[ObjectRef, dict[str, Any]] = {}
    for svc in services:
        ns = _meta(svc).get("namespace") or "default"
        for s in desired_slices(svc, pods_by_ns.get(ns, ())):
            wanted[ObjectRef.of(s)] = s
    changes = Changes()
    for ref, s in sorted(wanted.items()):
        have = existing.get(ref)
        if have is None or not _same(have, s):
            changes.apply.append(s)
    changes.delete.extend(sorted(ref for ref in existing if ref not in wanted))
    return changes
