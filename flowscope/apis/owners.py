"""Who owns an object (metadata.ownerReferences), and the workload a pod belongs to.

The controller of an object is its ownerReference with `controller: true` (at most one). A pod's
workload is what Cilium reports in Hubble's `workloads`: derived from the pod alone, with the
same heuristic (pkg/k8s/utils GetWorkloadMetaFromPod): a pod controlled by a ReplicaSet whose
name ends in the pod's `pod-template-hash` label belongs to the Deployment of that name; one
controlled by any other ReplicaSet belongs to the ReplicaSet; a pod with no controller has none.
"""

from __future__ import annotations

from typing import Any

from flowscope.flow.model import Workload

POD_TEMPLATE_HASH_LABEL = "pod-template-hash"


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference of the object's controller, or None."""
    for ref in _meta(obj).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Whether `owner` (by kind and uid) is the object's controller."""
    ref = controller_of(obj)
    return (
        ref is not None
        and ref.get("kind") == owner.get("kind")
        and bool(ref.get("uid"))
        and ref.get("uid") == _meta(owner).get("uid")
    )


def controller_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """The ownerReference a controller puts on what it creates."""
    meta = _meta(owner)
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def workload_of(pod: dict[str, Any]) -> Workload | None:
    """The pod's workload as Cilium derives it (see the module's docstring)."""
    ref = controller_of(pod)
    if ref is None or not ref.get("name") or not ref.get("kind"):
        return None
    name, kind = ref["name"], ref["kind"]
    if kind == "ReplicaSet":
        pod_hash = (_meta(pod).get("labels") or {}).get(POD_TEMPLATE_HASH_LABEL)
        if pod_hash and name.endswith("-" + pod_hash):
            return Workload(name.removesuffix("-" + pod_hash), "Deployment")
    return Workload(name, kind)
