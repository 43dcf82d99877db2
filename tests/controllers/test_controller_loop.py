"""run_controllers end to end on a store: pods get bound, Services get EndpointSlices."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from flowscope.apis import documents
from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.controllers import run_controllers
from flowscope.store.kv import KV

APP = """apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
""" + "".join(
    f"""---
apiVersion: v1
kind: Pod
metadata: {{name: web-{i}, namespace: shop, labels: {{app: web}}}}
spec:
  containers: [{{name: c, image: agnhost, ports: [{{name: http, containerPort: 8080}}]}}]
"""
    for i in range(3)
)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_controllers_bind_pods_and_derive_endpointslices(kv: KV) -> None:
    store = ObjectStore(kv)
    await store.register_node("node-a", "10.224.0.4")
    await store.register_node("node-b", "10.224.0.5")
    stop = asyncio.Event()
    task = asyncio.create_task(run_controllers(kv, stop))
    try:
        docs, _ = documents.parse_text("app.yaml", APP)
        await store.apply(docs)

        async def all_bound() -> bool:
            pods = await store.list("Pod", "shop")
            return len(pods) == 3 and all(p["spec"].get("nodeName") for p in pods)

        await eventually(all_bound, "pods bound")
        pods = await store.list("Pod", "shop")
        placed = sorted(p["spec"]["nodeName"] for p in pods)
        assert placed == ["node-a", "node-a", "node-b"]
        assert all(
            {"type": "PodScheduled", "status": "True"}.items() <= c.items()
            for p in pods
            for c in p["status"]["conditions"]
        )

        async def placeholder() -> bool:
            slices = await store.list("EndpointSlice", "shop")
            return len(slices) == 1 and slices[0]["endpoints"] == []

        await eventually(placeholder, "a placeholder slice")

        # the node agent reports the pods running; two become ready
        for i, p in enumerate(pods):
            await store.update_status(
                "Pod",
                "shop",
                p["metadata"]["name"],
                {
                    "phase": "Running",
                    "podIP": f"10.244.0.{i + 10}",
                    "conditions": [{"type": "Ready", "status": "True" if i < 2 else "False"}],
                },
            )

        async def filled() -> bool:
            slices = await store.list("EndpointSlice", "shop", "kubernetes.io/service-name=web")
            return len(slices) == 1 and len(slices[0]["endpoints"]) == 3

        await eventually(filled, "endpoints for every pod")
        (s,) = await store.list("EndpointSlice", "shop")
        assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
        ready = {e["addresses"][0]: e["conditions"]["ready"] for e in s["endpoints"]}
        assert ready == {"10.244.0.10": True, "10.244.0.11": True, "10.244.0.12": False}

        await store.delete([ObjectRef("Service", "shop", "web")])

        async def gone() -> bool:
            return await store.list("EndpointSlice", "shop") == []

        await eventually(gone, "slices deleted with their service")

        bad = docs[2].obj | {"metadata": {"name": "lost", "namespace": "shop"}}
        bad["spec"] = {**bad["spec"], "nodeName": "ghost"}
        await store.apply([bad])

        async def pending() -> bool:
            p = await store.get("Pod", "shop", "lost")
            conds = (p or {}).get("status", {}).get("conditions", [])
            return any(c.get("reason") == "NodeNotFound" for c in conds)

        await eventually(pending, "a NodeNotFound condition")
        lost = await store.get("Pod", "shop", "lost")
        assert lost is not None and lost["status"]["phase"] == "Pending"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_identity_gc_deletes_only_identities_unused_long_enough(kv: KV) -> None:
    from dataplane.identity.allocator import IdentityAllocator
    from flowscope.controllers.manager import collect_identities

    agent = IdentityAllocator(kv, "node-1")
    kept = await agent.allocate(frozenset({"k8s:app=kept"}))
    gone = await agent.allocate(frozenset({"k8s:app=gone"}))
    await agent.release(gone.id)
    gc = asyncio.create_task(collect_identities(kv, every=0.01, unused_for=0.0))
    try:
        reader = IdentityAllocator(kv, "reader")
        for _ in range(500):
            if await reader.lookup(gone.id) is None:
                break
            await asyncio.sleep(0.01)
        assert await reader.lookup(gone.id) is None
        assert await reader.lookup(kept.id) == kept
    finally:
        gc.cancel()
