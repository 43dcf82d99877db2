"""ObjectStore semantics on the real etcd and on MemoryKV: apply, delete, update, watch."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest

from flowscope.apis import documents
from flowscope.apis.documents import InvalidManifest
from flowscope.apis.objectstore import ObjectEvent, ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.errors import FlowscopeError, NotFound
from flowscope.store.kv import KV

MANIFEST = """apiVersion: v1
kind: Namespace
metadata: {name: frontend}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: frontend, labels: {app: web}}
spec:
  containers: [{name: main, image: agnhost, ports: [{containerPort: 80, name: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: frontend}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"""


@pytest.fixture
def store(kv: KV) -> ObjectStore:
    return ObjectStore(kv, service_cidr="10.96.0.0/24")


def docs(text: str, source: str = "app.yaml") -> list[documents.Document]:
    out, problems = documents.parse_text(source, text)
    assert problems == []
    return out


async def test_apply_creates_then_reports_unchanged_and_configured(store: ObjectStore) -> None:
    first = await store.apply(docs(MANIFEST))
    assert [str(r) for r in first] == [
        "namespace/frontend created",
        "pod/web created",
        "service/web created",
    ]
    again = await store.apply(docs(MANIFEST))
    assert [r.action for r in again] == ["unchanged"] * 3
    changed = MANIFEST.replace("labels: {app: web}", "labels: {app: web, tier: front}")
    third = await store.apply(docs(changed))
    assert [r.action for r in third] == ["unchanged", "configured", "unchanged"]


async def test_server_fields_and_resource_version(store: ObjectStore, kv: KV) -> None:
    await store.apply(docs(MANIFEST))
    pod = await store.get("Pod", "frontend", "web")
    assert pod is not None
    meta = pod["metadata"]
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    raw = await kv.get("/registry/pods/frontend/web")
    assert raw is not None
    assert meta["resourceVersion"] == str(raw.mod_revision)
    stored = json.loads(raw.value)  # JSON, without the resourceVersion
    assert "resourceVersion" not in stored["metadata"] and stored["metadata"]["uid"] == meta["uid"]
    assert pod["status"] == {"phase": "Pending"}
    svc = await store.get("svc", "frontend", "web")
    assert svc is not None and svc["spec"]["clusterIP"] == "10.96.0.2"


async def test_bad_third_document_writes_nothing(store: ObjectStore, kv: KV) -> None:
    bad = MANIFEST.replace("ports: [{port: 80, targetPort: http}]", "ports: [{port: 0}]")
    with pytest.raises(InvalidManifest) as err:
        await store.apply(docs(bad))
    assert "app.yaml document 3 (Service frontend/web): spec.ports[0].port: Invalid value: 0" in (
        str(err.value)
    )
    items, _ = await kv.range("/")
    assert items == []


async def test_missing_namespace_is_not_found_and_nothing_written(
    store: ObjectStore, kv: KV
) -> None:
    text = MANIFEST.split("---\n", 1)[1]  # without the Namespace
    with pytest.raises(InvalidManifest) as err:
        await store.apply(docs(text))
    assert [str(p) for p in err.value.problems] == [
        'app.yaml document 1 (Pod frontend/web): namespaces "frontend" not found',
        'app.yaml document 2 (Service frontend/web): namespaces "frontend" not found',
    ]
    assert (await kv.range("/"))[0] == []


async def test_namespace_must_come_before_its_objects(store: ObjectStore) -> None:
    ns, pod, _svc = MANIFEST.split("---\n")
    with pytest.raises(InvalidManifest, match='namespaces "frontend" not found'):
        await store.apply(docs(pod + "---\n" + ns))
    assert [r.action for r in await store.apply(docs(ns + "---\n" + pod))] == ["created"] * 2


async def test_default_namespace_always_exists(store: ObjectStore) -> None:
    text = MANIFEST.split("---\n")[1].replace("namespace: frontend, ", "")
    assert [str(r) for r in await store.apply(docs(text))] == ["pod/web created"]
    await store.ensure_default_namespace()
    await store.ensure_default_namespace()
    assert [n["metadata"]["name"] for n in await store.list("Namespace")] == ["default"]


async def test_pod_spec_is_immutable_but_labels_and_image_may_change(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    changed = MANIFEST.replace("containerPort: 80", "containerPort: 8080")
    with pytest.raises(InvalidManifest) as err:
        await store.apply(docs(changed))
    msg = str(err.value)
    assert (
        "app.yaml document 2 (Pod frontend/web): spec: Forbidden: pod updates may not change"
        in (msg)
    )
    assert "(changed: spec.containers[0].ports[0].containerPort)" in msg
    newer = MANIFEST.replace("image: agnhost", "image: agnhost:2.0")
    assert [r.action for r in await store.apply(docs(newer))][1] == "configured"
    pod = await store.get("Pod", "frontend", "web")
    assert pod is not None and pod["metadata"]["generation"] == 2


async def test_scheduler_binding_survives_reapply(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    await store.update(
        "Pod", "frontend", "web", lambda p: {**p, "spec": {**p["spec"], "nodeName": "n1"}}
    )
    assert [r.action for r in await store.apply(docs(MANIFEST))] == ["unchanged"] * 3
    pod = await store.get("Pod", "frontend", "web")
    assert pod is not None and pod["spec"]["nodeName"] == "n1"


async def test_cluster_ip_is_immutable_and_kept(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    pinned = MANIFEST.replace(
        "selector: {app: web}", "selector: {app: web}\n  clusterIP: 10.96.0.9"
    )
    with pytest.raises(
        InvalidManifest,
        match=re.escape('spec.clusterIP: Invalid value: "10.96.0.9": field is immutable'),
    ):
        await store.apply(docs(pinned))


async def test_cluster_ips_are_unique_and_freed_on_delete(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    other = MANIFEST.split("---\n")[2].replace("name: web, namespace", "name: api, namespace")
    await store.apply(docs(other))
    api = await store.get("Service", "frontend", "api")
    assert api is not None and api["spec"]["clusterIP"] == "10.96.0.3"
    taken = other.replace("name: api,", "name: db,").replace(
        "selector: {app: web}", "selector: {app: web}\n  clusterIP: 10.96.0.3"
    )
    with pytest.raises(InvalidManifest, match="provided IP is already allocated"):
        await store.apply(docs(taken))
    await store.delete([ObjectRef("Service", "frontend", "api")])
    assert [r.action for r in await store.apply(docs(taken))] == ["created"]


async def test_delete_namespace_deletes_everything_in_it(store: ObjectStore, kv: KV) -> None:
    await store.apply(docs(MANIFEST))
    results = await store.delete([ObjectRef("Namespace", None, "frontend")])
    assert [str(r) for r in results] == ['namespace "frontend" deleted']
    items, _ = await kv.range("/")
    assert items == []


async def test_delete_absent_is_not_found_and_deletes_nothing(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    refs = [ObjectRef("Pod", "frontend", "web"), ObjectRef("Pod", "frontend", "nope")]
    with pytest.raises(NotFound) as err:
        await store.delete(refs)
    assert str(err.value).startswith('pods "nope" not found')
    assert await store.get("Pod", "frontend", "web") is not None
    results = await store.delete(refs, ignore_not_found=True)
    assert [str(r) for r in results] == ['pod "web" deleted']
    assert await store.get("Pod", "frontend", "web") is None


async def test_stale_resource_version_is_a_conflict(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    pod = await store.get("Pod", "frontend", "web")
    assert pod is not None
    await store.update_status("Pod", "frontend", "web", {"phase": "Running"})
    pod["metadata"]["labels"]["x"] = "y"
    with pytest.raises(InvalidManifest, match="the object has been modified"):
        await store.apply([pod])


async def test_concurrent_updates_all_land(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))

    def add(i: int):
        def mutate(p: dict) -> dict:
            p["metadata"].setdefault("annotations", {})[f"k{i}"] = "v"
            return p

        return mutate

    await asyncio.gather(*(store.update("Pod", "frontend", "web", add(i)) for i in range(8)))
    pod = await store.get("Pod", "frontend", "web")
    assert pod is not None and sorted(pod["metadata"]["annotations"]) == [f"k{i}" for i in range(8)]


async def test_update_status_merges_conditions_by_type(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    await store.update_status(
        "Pod", "frontend", "web", {"conditions": [{"type": "PodScheduled", "status": "True"}]}
    )
    await store.update_status(
        "Pod",
        "frontend",
        "web",
        {
            "phase": "Running",
            "podIP": "10.244.1.5",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    )
    pod = await store.get("Pod", "frontend", "web")
    assert pod is not None
    assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"] == "10.244.1.5"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]} == {
        "PodScheduled": "True",
        "Ready": "True",
    }
    with pytest.raises(NotFound, match='pods "gone" not found'):
        await store.update_status("Pod", "frontend", "gone", {"phase": "Running"})


async def test_update_refuses_an_invalid_result(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    with pytest.raises(
        FlowscopeError, match=re.escape("status.podIP: Invalid value: 5: must be of type string")
    ):
        await store.update_status("Pod", "frontend", "web", {"podIP": 5})


async def test_list_by_namespace_and_selector(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    await store.apply(
        docs(
            MANIFEST.split("---\n")[1]
            .replace("namespace: frontend, ", "")
            .replace("app: web", "app: db")
        )
    )
    assert [p["metadata"]["namespace"] for p in await store.list("pods")] == ["default", "frontend"]
    assert [p["metadata"]["namespace"] for p in await store.list("po", "frontend")] == ["frontend"]
    assert [p["metadata"]["namespace"] for p in await store.list("Pod", None, "app=db")] == [
        "default"
    ]
    assert await store.list("Pod", None, "app notin (db,web)") == []


async def test_register_node_sets_ready_status(store: ObjectStore) -> None:
    node = await store.register_node("node-1", "10.224.0.4", pod_cidr="10.244.1.0/24")
    assert node["spec"]["podCIDR"] == "10.244.1.0/24"
    stored = await store.get("Node", None, "node-1")
    assert stored is not None
    assert {c["type"]: c["status"] for c in stored["status"]["conditions"]} == {"Ready": "True"}
    assert {"type": "InternalIP", "address": "10.224.0.4"} in stored["status"]["addresses"]


async def _take(it: AsyncIterator[ObjectEvent], n: int) -> list[ObjectEvent]:
    return [await asyncio.wait_for(anext(it), 5) for _ in range(n)]


async def test_watch_lists_then_follows_without_gap(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    it = aiter(store.watch("Pod"))
    try:
        (initial,) = await _take(it, 1)
        assert (initial.type, initial.object["metadata"]["name"]) == ("ADDED", "web")
        second = MANIFEST.split("---\n")[1].replace("name: web,", "name: api,")
        await store.apply(docs(second))
        await store.update_status("Pod", "frontend", "web", {"phase": "Running"})
        await store.delete([ObjectRef("Pod", "frontend", "api")])
        evs = await _take(it, 3)
        assert [(e.type, e.object["metadata"]["name"]) for e in evs] == [
            ("ADDED", "api"),
            ("MODIFIED", "web"),
            ("DELETED", "api"),
        ]
        assert evs[1].object["status"]["phase"] == "Running"
        assert evs[2].object["metadata"]["uid"]  # the last state seen, not just a name
        assert [e.revision for e in evs] == sorted(e.revision for e in evs)
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_watch_from_a_listed_revision(store: ObjectStore) -> None:
    await store.apply(docs(MANIFEST))
    pods, rev = await store.list_with_revision("Pod", "frontend")
    await store.update_status("Pod", "frontend", "web", {"phase": "Running"})
    it = aiter(store.watch("Pod", "frontend", start_revision=rev + 1, known=pods))
    try:
        (ev,) = await _take(it, 1)
        assert ev.type == "MODIFIED" and ev.object["status"]["phase"] == "Running"
    finally:
        await it.aclose()  # type: ignore[attr-defined]
