"""run_controllers with Deployments on a store (MemoryKV and real etcd): pods made, scaled,
rolled, collected. A stand-in kubelet marks bound pods Running and Ready, as the lab's does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import yaml

from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.controllers import run_controllers
from flowscope.store.kv import KV


def manifest(replicas: int, image: str = "agnhost:1") -> dict:
    return yaml.safe_load(
        f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: "{image}", ports: [{{containerPort: 80}}]}}]
"""
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def kubelet(store: ObjectStore, seen_together: list[int]) -> None:
    """Every bound pod becomes Running and Ready (one at a time, so rollouts take steps);
    records how many pods existed at once."""
    while True:
        pods = await store.list("Pod", "default")
        seen_together.append(len(pods))
        for p in pods:
            status = p.get("status") or {}
            if p["spec"].get("nodeName") and status.get("phase") != "Running":
                await store.update_status(
                    "Pod",
                    "default",
                    p["metadata"]["name"],
                    {
                        "phase": "Running",
                        "podIP": "10.244.0.9",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                )
                break
        await asyncio.sleep(0.03)


@contextlib.asynccontextmanager
async def controllers(kv: KV) -> AsyncIterator[ObjectStore]:
    store = ObjectStore(kv)
    await store.register_node("node-a", "10.224.0.4")
    stop = asyncio.Event()
    task = asyncio.create_task(run_controllers(kv, stop))
    try:
        yield store
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_deployment_scale_roll_and_delete(kv: KV) -> None:
    counts: list[int] = []
    async with controllers(kv) as store:
        fake_kubelet = asyncio.create_task(kubelet(store, counts))
        try:
            await store.apply([manifest(3)])

            def available(n: int, image: str) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    d = await store.get("Deployment", "default", "web")
                    pods = await store.list("Pod", "default")
                    status = (d or {}).get("status") or {}
                    return (
                        status.get("availableReplicas") == n
                        and status.get("updatedReplicas") == n
                        and status.get("replicas") == n
                        and len(pods) == n
                        and all(p["spec"]["containers"][0]["image"] == image for p in pods)
                    )

                return check

            await eventually(available(3, "agnhost:1"), "3 available replicas")
            (rs,) = await store.list("ReplicaSet", "default")
            pods = await store.list("Pod", "default")
            assert all(p["metadata"]["name"].startswith(rs["metadata"]["name"] + "-") for p in pods)
            assert all(p["spec"]["nodeName"] == "node-a" for p in pods)

            await store.apply([manifest(1)])
            await eventually(available(1, "agnhost:1"), "scaled to 1")

            counts.clear()
            await store.apply([manifest(2, "agnhost:2")])
            await eventually(available(2, "agnhost:2"), "rolled to agnhost:2")
            # maxSurge 1: never more than 3 pods at once while rolling
            assert max(counts) <= 3
            names = sorted(r["metadata"]["name"] for r in await store.list("ReplicaSet", "default"))
            assert len(names) == 2
            d = await store.get("Deployment", "default", "web")
            assert (
                d is not None and d["status"]["observedGeneration"] == d["metadata"]["generation"]
            )
            conditions = {c["type"]: c["reason"] for c in d["status"]["conditions"]}
            assert conditions == {
                "Available": "MinimumReplicasAvailable",
                "Progressing": "NewReplicaSetAvailable",
            }

            await store.delete([ObjectRef("Deployment", "default", "web")])

            async def collected() -> bool:
                return (
                    await store.list("ReplicaSet", "default") == []
                    and await store.list("Pod", "default") == []
                )

            await eventually(collected, "ReplicaSets and pods collected")
        finally:
            fake_kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fake_kubelet


async def test_a_pod_deleted_by_hand_is_replaced_and_a_bare_pod_is_left_alone(kv: KV) -> None:
    counts: list[int] = []
    async with controllers(kv) as store:
        fake_kubelet = asyncio.create_task(kubelet(store, counts))
        try:
            bare = yaml.safe_load(
                """
apiVersion: v1
kind: Pod
metadata: {name: bare, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
"""
            )
            await store.apply([manifest(2), bare])

            async def two_owned() -> bool:
                pods = await store.list("Pod", "default")
                return sum(1 for p in pods if p["metadata"].get("ownerReferences")) == 2

            await eventually(two_owned, "two pods of the deployment")
            victim = next(
                p for p in await store.list("Pod", "default") if p["metadata"]["name"] != "bare"
            )
            await store.delete([ObjectRef.of(victim)])

            async def replaced() -> bool:
                pods = {p["metadata"]["name"] for p in await store.list("Pod", "default")}
                return len(pods) == 3 and victim["metadata"]["name"] not in pods

            await eventually(replaced, "the deleted pod replaced")
            await asyncio.sleep(0.3)  # a few more rounds: still exactly two owned, bare kept
            pods = await store.list("Pod", "default")
            assert len(pods) == 3 and "bare" in {p["metadata"]["name"] for p in pods}
        finally:
            fake_kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fake_kubelet


async def test_a_deployment_whose_replicaset_cannot_be_written_holds_up_nothing_else(
    kv: KV,
) -> None:
    counts: list[int] = []
    # a valid name (<= 253) whose ReplicaSet's, with "-<hash>", is not
    long = manifest(1)
    long["metadata"]["name"] = "w" * 250
    async with controllers(kv) as store:
        fake_kubelet = asyncio.create_task(kubelet(store, counts))
        try:
            await store.apply([long, manifest(2)])

            async def others_ran() -> bool:
                pods = await store.list("Pod", "default")
                return len(pods) == 2 and all(p["spec"].get("nodeName") for p in pods)

            await eventually(others_ran, "the other Deployment's pods made and bound")
            sets = await store.list("ReplicaSet", "default")
            assert [r["metadata"]["name"].rsplit("-", 1)[0] for r in sets] == ["web"]
        finally:
            fake_kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fake_kubelet
