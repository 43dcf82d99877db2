"""Service allocation in ObjectStore.apply (MemoryKV and real etcd): ClusterIPs and NodePorts
allocated without collision, honoured when requested, kept on re-apply, released on delete and
on a type change, all or nothing; 10,000 services in one apply."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from flowscope.apis import validation
from flowscope.apis.documents import Document, InvalidManifest
from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.store.kv import KV

NODE_PORTS = "/registry/servicenodeports/"
SERVICE_IPS = "/registry/serviceips/"


@pytest.fixture
def store(kv: KV) -> ObjectStore:
    return ObjectStore(kv, service_cidr="10.96.0.0/16")


def svc(name: str, *ports: dict[str, Any], type_: str = "NodePort", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": type_, "selector": {"app": name}, "ports": list(ports), **spec},
    }


def port(number: int, node_port: int | None = None, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"name": f"p{number}-{extra.get('protocol', 'tcp').lower()}"}
    p["port"] = number
    if node_port is not None:
        p["nodePort"] = node_port
    return {**p, **extra}


async def node_ports(store: ObjectStore, name: str) -> list[int]:
    obj = await store.get("Service", "default", name)
    assert obj is not None
    return [p.get("nodePort") for p in obj["spec"]["ports"]]


async def markers(kv: KV, prefix: str) -> dict[str, str]:
    items, _ = await kv.range(prefix)
    out: dict[str, str] = {}
    for item in items:
        out.update(json.loads(item.value))
    return out


async def test_node_ports_allocated_per_port_and_kept_on_reapply(
    store: ObjectStore, kv: KV
) -> None:
    a = svc("a", port(80), port(443))
    await store.apply([a])
    first = await node_ports(store, "a")
    assert len(set(first)) == 2 and all(30000 <= n <= 32767 for n in first)
    assert await markers(kv, NODE_PORTS) == {str(n): "default/a" for n in first}
    # kubectl apply of the same manifest (no nodePort in it) keeps what was allocated
    assert [r.action for r in await store.apply([svc("a", port(80), port(443))])] == ["unchanged"]
    assert await node_ports(store, "a") == first
    # a port added gets a new nodePort; the existing ones stay
    await store.apply([svc("a", port(80), port(443), port(8080))])
    third = await node_ports(store, "a")
    assert third[:2] == first and third[2] not in first


async def test_requested_node_port_is_honoured_and_collisions_name_the_field(
    store: ObjectStore,
) -> None:
    await store.apply([svc("a", port(80, 30080))])
    assert await node_ports(store, "a") == [30080]
    with pytest.raises(InvalidManifest) as e:
        await store.apply([svc("b", port(80), port(81, 30080))])
    assert "spec.ports[1].nodePort: Invalid value: 30080: provided port is already allocated" in (
        str(e.value)
    )
    assert await store.get("Service", "default", "b") is None
    # another protocol does not help: the apiserver allocates numbers, not number+protocol
    with pytest.raises(InvalidManifest, match="provided port is already allocated"):
        await store.apply([svc("c", port(80, 30080, protocol="UDP"))])
    # automatic allocation never hands out a requested port
    await store.apply([svc("d", port(80))])
    assert await node_ports(store, "d") != [30080]


async def test_two_ports_of_one_service_same_node_port(store: ObjectStore) -> None:
    with pytest.raises(
        InvalidManifest, match=re.escape("spec.ports[1].nodePort: Duplicate value: 30090")
    ):
        await store.apply([svc("a", port(80, 30090), port(81, 30090))])
    # the same number for TCP and UDP of one port (DNS-like) is legal, and shared when automatic
    await store.apply([svc("dns", port(53, 30053), port(53, 30053, protocol="UDP"))])
    assert await node_ports(store, "dns") == [30053, 30053]
    await store.apply([svc("dns2", port(53), port(53, protocol="UDP"))])
    shared = await node_ports(store, "dns2")
    assert shared[0] == shared[1]


async def test_out_of_range_and_clusterip_type_are_field_errors(store: ObjectStore) -> None:
    with pytest.raises(InvalidManifest, match=re.escape("spec.ports[0].nodePort: Invalid value")):
        await store.apply([svc("a", port(80, 29999))])
    with pytest.raises(InvalidManifest, match="may not be used when `type` is 'ClusterIP'"):
        await store.apply([svc("a", port(80, 30080), type_="ClusterIP")])


async def test_all_or_nothing_within_one_apply(store: ObjectStore, kv: KV) -> None:
    await store.apply([svc("taken", port(80, 30100))])
    before = await markers(kv, NODE_PORTS), await markers(kv, SERVICE_IPS)
    with pytest.raises(InvalidManifest):
        await store.apply([svc("x", port(80)), svc("y", port(80, 30100))])
    assert (await markers(kv, NODE_PORTS), await markers(kv, SERVICE_IPS)) == before
    assert await store.get("Service", "default", "x") is None


async def test_released_on_delete_and_on_type_change(store: ObjectStore, kv: KV) -> None:
    await store.apply([svc("a", port(80, 30200)), svc("b", port(80, 30201))])
    await store.delete([ObjectRef("Service", "default", "a")])
    assert "30200" not in await markers(kv, NODE_PORTS)
    await store.apply([svc("c", port(80, 30200))])  # free again
    # back to ClusterIP: nodePorts gone from the object and the allocator
    await store.apply([svc("b", port(80), type_="ClusterIP")])
    b = await store.get("Service", "default", "b")
    assert b is not None and "nodePort" not in b["spec"]["ports"][0]
    assert "externalTrafficPolicy" not in b["spec"]
    assert await markers(kv, NODE_PORTS) == {"30200": "default/c"}
    await store.apply([svc("d", port(80, 30201))])
    # a namespace's deletion releases its services' addresses and ports
    await store.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}},
            {**svc("e", port(80, 30300)), "metadata": {"name": "e", "namespace": "gone"}},
        ]
    )
    await store.delete([ObjectRef("Namespace", None, "gone")])
    assert "30300" not in await markers(kv, NODE_PORTS)
    assert "default/e" not in (await markers(kv, SERVICE_IPS)).values()


async def test_load_balancer_gets_node_ports_unless_told_not_to(store: ObjectStore) -> None:
    await store.apply([svc("lb", port(80), type_="LoadBalancer")])
    assert (await node_ports(store, "lb"))[0] is not None
    await store.apply(
        [svc("lb2", port(80), type_="LoadBalancer", allocateLoadBalancerNodePorts=False)]
    )
    assert await node_ports(store, "lb2") == [None]


async def test_defaults_for_affinity_and_traffic_policies(store: ObjectStore) -> None:
    await store.apply([svc("a", port(80), sessionAffinity="ClientIP")])
    a = await store.get("Service", "default", "a")
    assert a is not None
    assert a["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert a["spec"]["externalTrafficPolicy"] == "Cluster"
    assert a["spec"]["internalTrafficPolicy"] == "Cluster"


def _problems(obj: dict[str, Any]) -> list[str]:
    _, problems = validation.check_document(Document("x.yaml", 1, obj), "default")
    return [p.message for p in problems]


def test_affinity_and_traffic_policy_checks() -> None:
    bad_timeout = svc(
        "a",
        port(80),
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}},
    )
    assert _problems(bad_timeout) == [
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: "
        "must be greater than 0 and less than 86400"
    ]
    config_without_affinity = svc(
        "a", port(80), sessionAffinityConfig={"clientIP": {"timeoutSeconds": 5}}
    )
    assert _problems(config_without_affinity) == [
        "spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"
    ]
    assert _problems(svc("a", port(80), internalTrafficPolicy="Nearby")) == [
        'spec.internalTrafficPolicy: Unsupported value: "Nearby": supported values: '
        '"Cluster", "Local"'
    ]
    assert _problems(svc("a", port(80), type_="ClusterIP", externalTrafficPolicy="Local")) == [
        'spec.externalTrafficPolicy: Invalid value: "Local": may only be set for '
        "externally-accessible services"
    ]


async def test_ten_thousand_services_in_one_apply(store: ObjectStore, kv: KV) -> None:
    await store.ensure_default_namespace()  # its compare counts against etcd's max-txn-ops too
    services = [
        svc(f"s{i}", port(80), type_="NodePort" if i < 2000 else "ClusterIP") for i in range(10_000)
    ]
    started = time.monotonic()
    results = await store.apply(services)
    elapsed = time.monotonic() - started
    assert [r.action for r in results] == ["created"] * 10_000
    ips = await markers(kv, SERVICE_IPS)
    ports = await markers(kv, NODE_PORTS)
    assert len(ips) == 10_000 and len(set(ips.values())) == 10_000
    assert len(ports) == 2000 and all(30000 <= int(p) <= 32767 for p in ports)
    s9999 = await store.get("Service", "default", "s9999")
    assert s9999 is not None and ips[s9999["spec"]["clusterIP"]] == "default/s9999"
    print(f"10,000 services applied in {elapsed:.1f} s")


async def test_concurrent_applies_never_share_a_node_port(store: ObjectStore, kv: KV) -> None:
    await asyncio.gather(*(store.apply([svc(f"c{i}", port(80))]) for i in range(8)))
    got = [(await node_ports(store, f"c{i}"))[0] for i in range(8)]
    assert len(set(got)) == 8
    assert await markers(kv, NODE_PORTS) == {str(n): f"default/c{i}" for i, n in enumerate(got)}
