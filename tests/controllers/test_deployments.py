"""The Deployment and ReplicaSet controllers' pure decisions, and the garbage collector's.

A small simulated cluster (world.py-like, all in memory) runs the decision functions round after
round, the way the manager does, with pods becoming ready only when the test says so: that is
what lets a rollout's surge/unavailable bounds be checked at every step.
"""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flowscope.apis import validation
from flowscope.apis.documents import Document
from flowscope.apis.owners import workload_of
from flowscope.apis.refs import ObjectRef
from flowscope.controllers import deployments as dc
from flowscope.controllers import garbage
from flowscope.controllers import replicasets as rsc
from flowscope.flow.model import Workload

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STAMP = "2026-01-01T00:00:00Z"


def deployment(
    name: str = "web",
    replicas: int = 3,
    image: str = "agnhost:1",
    strategy: dict | None = None,
    uid: str = "d-uid",
    **spec: Any,
) -> dict:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "app", "uid": uid, "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
            **({"strategy": strategy} if strategy else {}),
            **spec,
        },
    }
    # stored objects carry the apiserver's defaults: the same path as an apply
    checked, problems = validation.check_document(Document("<t>", 1, obj))
    assert checked is not None, problems
    out = checked.obj
    out["metadata"].update(uid=uid, generation=1, creationTimestamp=STAMP)
    return out


class World:
    """Deployments, ReplicaSets and pods in dicts; one `step` is one manager round."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[ObjectRef, dict]] = {
            "Deployment": {},
            "ReplicaSet": {},
            "Pod": {},
        }
        self.rand = random.Random(7)
        self.uids = 0
        self.clock = 0

    def add(self, obj: dict) -> None:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        if "uid" not in meta:
            self.uids += 1
            meta["uid"] = f"uid-{self.uids}"
        self.clock += 1
        meta.setdefault(
            "creationTimestamp",
            (NOW + timedelta(seconds=self.clock)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        meta.setdefault("generation", 1)
        self.objects[obj["kind"]][ObjectRef.of(obj)] = obj

    def list(self, kind: str) -> list[dict]:
        return list(self.objects[kind].values())

    def step(self) -> None:
        d = dc.reconcile(self.list("Deployment"), self.list("ReplicaSet"), STAMP)
        for rs in d.create:
            (c, _) = validation.check_document(Document("<rs>", 1, rs), internal=True)
            assert c is not None, _
            self.add(c.obj)
        for s in d.scale:
            rs = self.objects["ReplicaSet"][s.ref]
            rs["spec"]["replicas"] = s.replicas
            if s.revision is not None:
                rs["metadata"]["annotations"][dc.REVISION_ANNOTATION] = s.revision
            rs["metadata"]["generation"] += 1
        for ref in d.delete:
            del self.objects["ReplicaSet"][ref]
        for ref, status in d.status.items():
            self.objects["Deployment"][ref]["status"] = status
        r = rsc.reconcile(self.list("ReplicaSet"), self.list("Pod"), NOW, self.rand)
        for pod in r.create:
            self.add(pod)
        for ref in r.delete:
            del self.objects["Pod"][ref]
        for ref, status in r.status.items():
            self.objects["ReplicaSet"][ref]["status"] = status

    def settle(self, ready: bool = True, rounds: int = 50) -> None:
        """Rounds until nothing changes (pods turning ready as they appear, when `ready`)."""
        for _ in range(rounds):
            before = copy.deepcopy(self.objects)
            if ready:
                self.make_ready()
            self.step()
            if self.objects == before:
                return
        pytest.fail("the controllers did not settle")

    def make_ready(self, limit: int | None = None) -> int:
        n = 0
        for p in self.list("Pod"):
            if limit is not None and n >= limit:
                break
            if not rsc.is_ready(p):
                p["status"] = {
                    "phase": "Running",
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": STAMP}
                    ],
                }
                p["spec"]["nodeName"] = "node-1"
                n += 1
        return n

    def pods(self, image: str | None = None) -> list[dict]:
        return [
            p
            for p in self.list("Pod")
            if image is None or p["spec"]["containers"][0]["image"] == image
        ]


def test_a_deployment_makes_one_replicaset_and_its_pods() -> None:
    w = World()
    w.add(deployment(replicas=3))
    w.settle()
    (rs,) = w.list("ReplicaSet")
    pod_hash = dc.template_hash(w.list("Deployment")[0]["spec"]["template"])
    assert rs["metadata"]["name"] == f"web-{pod_hash}"
    assert rs["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "uid": "d-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": pod_hash}
    assert rs["metadata"]["annotations"][dc.REVISION_ANNOTATION] == "1"
    pods = w.pods()
    assert len(pods) == 3
    for p in pods:
        meta = p["metadata"]
        assert meta["name"].startswith(f"web-{pod_hash}-")
        suffix = meta["name"].rsplit("-", 1)[1]
        assert len(suffix) == 5 and set(suffix) <= set(rsc.SUFFIX_ALPHABET)
        assert meta["labels"] == {"app": "web", "pod-template-hash": pod_hash}
        assert meta["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert meta["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        assert workload_of(p) == Workload("web", "Deployment")
    status = w.list("Deployment")[0]["status"]
    assert {k: status[k] for k in ("replicas", "updatedReplicas", "readyReplicas")} == {
        "replicas": 3,
        "updatedReplicas": 3,
        "readyReplicas": 3,
    }
    assert status["availableReplicas"] == 3 and status["observedGeneration"] == 1
    conds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conds == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }
    rs_status = w.list("ReplicaSet")[0]["status"]
    assert (
        rs_status["replicas"] == rs_status["readyReplicas"] == rs_status["availableReplicas"] == 3
    )


def test_template_hash_is_stable_and_changes_with_the_template() -> None:
    d = deployment()
    template = d["spec"]["template"]
    assert dc.template_hash(template) == dc.template_hash(copy.deepcopy(template))
    # the same template written in another key order is the same template
    reordered = dict(reversed(list(template.items())))
    assert dc.template_hash(reordered) == dc.template_hash(template)
    other = copy.deepcopy(template)
    other["spec"]["containers"][0]["image"] = "agnhost:2"
    assert dc.template_hash(other) != dc.template_hash(template)
    assert dc.template_hash(template, 1) != dc.template_hash(template)
    assert set(dc.template_hash(template)) <= set(dc.SUFFIX_ALPHABET)


def test_scale_up_and_down_deletes_unready_and_newest_first() -> None:
    w = World()
    w.add(deployment(replicas=2))
    w.settle()
    w.objects["Deployment"][ObjectRef("Deployment", "app", "web")]["spec"]["replicas"] = 5
    w.settle(ready=False)
    assert len(w.pods()) == 5
    ready_before = {p["metadata"]["name"] for p in w.pods() if rsc.is_ready(p)}
    assert len(ready_before) == 2
    w.objects["Deployment"][ObjectRef("Deployment", "app", "web")]["spec"]["replicas"] = 2
    w.settle(ready=False)
    # the three never-ready pods went; the two ready ones stayed
    assert {p["metadata"]["name"] for p in w.pods()} == ready_before


def test_deletion_order_ranks_as_the_controller_does() -> None:
    def pod(name: str, node: str | None, phase: str, ready: bool, created: int) -> dict:
        return {
            "metadata": {
                "name": name,
                "creationTimestamp": (NOW + timedelta(seconds=created)).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            },
            "spec": {"nodeName": node} if node else {},
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    pods = [
        pod("running-ready-old", "n", "Running", True, 1),
        pod("running-ready-new", "n", "Running", True, 5),
        pod("running-unready", "n", "Running", False, 0),
        pod("pending", "n", "Pending", False, 0),
        pod("unscheduled", None, "Pending", False, 0),
    ]
    order = [p["metadata"]["name"] for p in rsc.deletion_order(pods)]
    assert order == [
        "unscheduled",
        "pending",
        "running-unready",
        "running-ready-new",
        "running-ready-old",
    ]


def test_a_deleted_pod_is_replaced() -> None:
    w = World()
    w.add(deployment(replicas=3))
    w.settle()
    victim = w.pods()[0]
    del w.objects["Pod"][ObjectRef.of(victim)]
    w.settle()
    names = {p["metadata"]["name"] for p in w.pods()}
    assert len(names) == 3 and victim["metadata"]["name"] not in names


def rollout(w: World, image: str, replicas: int, surge: int, unavailable: int) -> int:
    """Roll the template to `image`, a few pods turning ready each round; check the bounds at
    every step; return how many rounds it took."""
    d = w.objects["Deployment"][ObjectRef("Deployment", "app", "web")]
    d["spec"]["template"]["spec"]["containers"][0]["image"] = image
    d["metadata"]["generation"] += 1
    for rounds in range(1, 200):
        w.step()
        pods = w.pods()
        ready = [p for p in pods if rsc.is_ready(p)]
        assert len(pods) <= replicas + surge, f"round {rounds}: {len(pods)} pods"
        assert len(ready) >= replicas - unavailable, f"round {rounds}: {len(ready)} ready"
        total_spec = sum(r["spec"]["replicas"] for r in w.list("ReplicaSet"))
        assert total_spec <= replicas + surge
        if len(w.pods(image)) == replicas and len(pods) == replicas and len(ready) == replicas:
            return rounds
        w.make_ready(limit=1)  # one pod at a time becomes ready: the rollout must wait for it
    pytest.fail("the rollout did not finish")


@pytest.mark.parametrize(
    ("replicas", "strategy", "surge", "unavailable"),
    [
        (4, None, 1, 1),  # the defaults: 25%/25% of 4
        (3, {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, 1, 0),
        (3, {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}, 0, 1),
        (
            5,
            {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "40%", "maxUnavailable": "20%"},
            },
            2,
            1,
        ),
        (1, None, 1, 0),  # 25% of 1: surge rounds up to 1, unavailable down to 0
    ],
)
def test_rolling_update_stays_within_surge_and_unavailable(
    replicas: int, strategy: dict | None, surge: int, unavailable: int
) -> None:
    w = World()
    w.add(deployment(replicas=replicas, strategy=strategy))
    w.settle()
    assert dc.fenceposts(w.list("Deployment")[0]) == (surge, unavailable)
    old_rs = w.list("ReplicaSet")[0]["metadata"]["name"]
    rounds = rollout(w, "agnhost:2", replicas, surge, unavailable)
    assert rounds > 1  # it waited for readiness, it did not swap everything at once
    w.settle()
    by_name = {r["metadata"]["name"]: r for r in w.list("ReplicaSet")}
    assert by_name[old_rs]["spec"]["replicas"] == 0  # kept as history, at zero
    (new_name,) = [n for n in by_name if n != old_rs]
    assert by_name[new_name]["metadata"]["annotations"][dc.REVISION_ANNOTATION] == "2"
    status = w.list("Deployment")[0]["status"]
    assert status["updatedReplicas"] == status["availableReplicas"] == replicas
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Progressing"] == (
        "NewReplicaSetAvailable"
    )


def test_rollback_reuses_the_old_replicaset_and_makes_it_the_newest_revision() -> None:
    w = World()
    w.add(deployment(replicas=2))
    w.settle()
    first = w.list("ReplicaSet")[0]["metadata"]["name"]
    rollout(w, "agnhost:2", 2, 1, 0)
    w.settle()
    rollout(w, "agnhost:1", 2, 1, 0)
    w.settle()
    by_name = {r["metadata"]["name"]: r for r in w.list("ReplicaSet")}
    assert len(by_name) == 2
    assert by_name[first]["spec"]["replicas"] == 2
    assert by_name[first]["metadata"]["annotations"][dc.REVISION_ANNOTATION] == "3"


def test_recreate_scales_the_old_to_zero_before_the_new() -> None:
    w = World()
    w.add(deployment(replicas=2, strategy={"type": "Recreate"}))
    w.settle()
    d = w.objects["Deployment"][ObjectRef("Deployment", "app", "web")]
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "agnhost:2"
    for _ in range(20):
        w.step()
        assert not (w.pods("agnhost:1") and w.pods("agnhost:2")), "old and new pods together"
        w.make_ready()
    assert len(w.pods("agnhost:2")) == 2 and not w.pods("agnhost:1")


def test_revision_history_limit_deletes_the_oldest_idle_replicasets() -> None:
    w = World()
    w.add(deployment(replicas=1, revisionHistoryLimit=1))
    w.settle()
    for i in range(2, 5):
        rollout(w, f"agnhost:{i}", 1, 1, 0)
        w.settle()
    revisions = sorted(
        int(r["metadata"]["annotations"][dc.REVISION_ANNOTATION]) for r in w.list("ReplicaSet")
    )
    assert revisions == [3, 4]  # the current one, and one of history


def test_min_ready_seconds_delays_availability_and_says_when_to_look_again() -> None:
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "r", "namespace": "app", "uid": "rs-uid", "generation": 1},
        "spec": {
            "replicas": 1,
            "minReadySeconds": 30,
            "selector": {"matchLabels": {"app": "r"}},
            "template": {"metadata": {"labels": {"app": "r"}}, "spec": {"containers": []}},
        },
    }
    pod = rsc.new_pod(rs, "r-abcde")
    since = NOW - timedelta(seconds=10)
    pod["status"] = {
        "phase": "Running",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ],
    }
    changes = rsc.reconcile([rs], [pod], NOW, random.Random(1))
    assert changes.status[ObjectRef.of(rs)]["readyReplicas"] == 1
    assert changes.status[ObjectRef.of(rs)]["availableReplicas"] == 0
    assert changes.wake_in == pytest.approx(20.0)
    later = rsc.reconcile([rs], [pod], NOW + timedelta(seconds=25), random.Random(1))
    assert later.status[ObjectRef.of(rs)]["availableReplicas"] == 1


def test_pods_of_others_are_neither_counted_nor_deleted() -> None:
    w = World()
    w.add(deployment(replicas=2))
    w.settle()
    pod_hash = w.list("ReplicaSet")[0]["metadata"]["labels"]["pod-template-hash"]
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bare",
            "namespace": "app",
            "labels": {"app": "web", "pod-template-hash": pod_hash},
        },
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    w.add(bare)
    w.settle()
    assert len(w.pods()) == 3 and ObjectRef("Pod", "app", "bare") in w.objects["Pod"]
    assert workload_of(w.objects["Pod"][ObjectRef("Pod", "app", "bare")]) is None


def test_garbage_collection_follows_owner_references() -> None:
    w = World()
    w.add(deployment(replicas=2))
    w.settle()
    w.add(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bare", "namespace": "app"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
    )
    assert garbage.orphans({k: w.list(k) for k in w.objects}) == []
    del w.objects["Deployment"][ObjectRef("Deployment", "app", "web")]
    caches = {k: w.list(k) for k in w.objects}
    (rs_orphan,) = garbage.orphans(caches)
    rs = w.list("ReplicaSet")[0]
    assert rs_orphan.dependent == ObjectRef.of(rs)
    assert rs_orphan.owners == ((ObjectRef("Deployment", "app", "web"), "d-uid"),)
    del w.objects["ReplicaSet"][ObjectRef.of(rs)]
    pods = garbage.orphans({k: w.list(k) for k in w.objects})
    assert sorted(o.dependent.name for o in pods) == sorted(
        p["metadata"]["name"] for p in w.pods() if p["metadata"]["name"] != "bare"
    )
    # a Deployment of the same name but another uid does not own them
    w.add(deployment(replicas=2, uid="other-uid"))
    assert len(garbage.orphans({k: w.list(k) for k in w.objects})) == 2


def test_workload_as_cilium_derives_it() -> None:
    def pod(owner: dict | None, labels: dict | None = None) -> dict:
        meta: dict = {"name": "p", "labels": labels or {}}
        if owner:
            meta["ownerReferences"] = [owner]
        return {"metadata": meta}

    rs = {"kind": "ReplicaSet", "name": "web-5d4f8", "uid": "u", "controller": True}
    assert workload_of(pod(rs, {"pod-template-hash": "5d4f8"})) == Workload("web", "Deployment")
    assert workload_of(pod(rs)) == Workload("web-5d4f8", "ReplicaSet")
    assert workload_of(pod(rs, {"pod-template-hash": "zzzzz"})) == Workload(
        "web-5d4f8", "ReplicaSet"
    )
    assert workload_of(pod({**rs, "controller": False})) is None
    assert workload_of(pod({"kind": "StatefulSet", "name": "db", "controller": True})) == Workload(
        "db", "StatefulSet"
    )
    assert workload_of(pod(None)) is None
