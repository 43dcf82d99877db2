"""LoadBalancer addresses from the pool: assign() (pure) and the controller that writes them."""

from __future__ import annotations

import asyncio
import contextlib
from ipaddress import IPv4Address, IPv4Network

from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.controllers.loadbalancer import (
    Assignment,
    LoadBalancerIPAM,
    assign,
    ingress_ips,
    status_of,
)

POOL = IPv4Network("10.225.0.0/29")  # hosts .1 to .6


def svc(name: str, type_: str = "LoadBalancer", held: str | None = None, **spec) -> dict:
    obj: dict = {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": type_, **spec},
    }
    if held:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": held}]}}
    return obj


def ref(name: str) -> ObjectRef:
    return ObjectRef.of(svc(name))


def test_each_loadbalancer_gets_the_lowest_free_address_once() -> None:
    plan = assign([svc("b"), svc("a"), svc("c", "ClusterIP")], POOL)
    assert plan.changes == [
        Assignment(ref("a"), IPv4Address("10.225.0.1")),
        Assignment(ref("b"), IPv4Address("10.225.0.2")),
    ]
    assert plan.pending == []
    settled = [svc("a", held="10.225.0.1"), svc("b", held="10.225.0.2")]
    assert assign(settled, POOL).changes == []  # nothing to write once held


def test_held_addresses_stay_and_new_services_take_the_gaps() -> None:
    plan = assign([svc("a"), svc("z", held="10.225.0.1"), svc("y", held="10.225.0.3")], POOL)
    assert plan.changes == [Assignment(ref("a"), IPv4Address("10.225.0.2"))]


def test_a_requested_address_is_honoured_only_when_free_and_in_the_pool() -> None:
    plan = assign(
        [
            svc("a", loadBalancerIP="10.225.0.5"),
            svc("b", loadBalancerIP="10.225.0.5"),
            svc("c", loadBalancerIP="192.0.2.1"),
            svc("d", loadBalancerIP="10.225.0.0"),  # the pool's network address
        ],
        POOL,
    )
    assert plan.changes == [Assignment(ref("a"), IPv4Address("10.225.0.5"))]
    reasons = {p.service.name: p.reason for p in plan.pending}
    assert "taken by another Service" in reasons["b"]
    assert "192.0.2.1 is not in the pool" in reasons["c"]
    assert "10.225.0.0 is not in the pool" in reasons["d"]


def test_an_exhausted_pool_leaves_services_pending() -> None:
    plan = assign([svc(f"s{i}") for i in range(8)], POOL)
    assert len(plan.changes) == 6
    assert [p.service.name for p in plan.pending] == ["s6", "s7"]
    assert "no free address left in the pool 10.225.0.0/29" in plan.pending[0].reason


def test_addresses_are_released_when_the_service_stops_being_ours() -> None:
    plan = assign(
        [
            svc("was-lb", "ClusterIP", held="10.225.0.1"),
            svc("other-class", held="10.225.0.2", loadBalancerClass="example.com/lb"),
            svc("foreign", "ClusterIP", held="198.51.100.7"),  # never ours: left alone
        ],
        POOL,
    )
    assert plan.changes == [Assignment(ref("other-class"), None), Assignment(ref("was-lb"), None)]
    assert status_of(plan.changes[0]) == {"loadBalancer": {}}


def test_a_duplicate_written_by_hand_moves_the_second_holder() -> None:
    plan = assign([svc("a", held="10.225.0.1"), svc("b", held="10.225.0.1")], POOL)
    assert plan.changes == [Assignment(ref("b"), IPv4Address("10.225.0.2"))]
    assert status_of(plan.changes[0]) == {
        "loadBalancer": {"ingress": [{"ip": "10.225.0.2", "ipMode": "VIP"}]}
    }


def lb(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
    }


async def test_the_controller_writes_and_releases_addresses_in_the_store(kv, caplog) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")

    async def held() -> dict[str, list[str]]:
        return {s["metadata"]["name"]: ingress_ips(s) for s in await store.list("Service")}

    async def eventually(want: dict[str, list[str]]) -> None:
        for _ in range(200):
            if await held() == want:
                return
            await asyncio.sleep(0.02)
        assert await held() == want

    await store.apply([lb("web")])
    ipam = LoadBalancerIPAM(kv, IPv4Network("10.225.0.0/30"))  # two addresses: .1 and .2
    task = asyncio.create_task(ipam.run())
    try:
        await eventually({"web": ["10.225.0.1"]})
        await store.apply([lb("api"), lb("db")])
        await eventually({"api": ["10.225.0.2"], "db": [], "web": ["10.225.0.1"]})
        assert "service default/db: no LoadBalancer address: no free address" in caplog.text
        # web stops being a LoadBalancer: its address goes to the Service that waits
        web = lb("web")
        web["spec"]["type"] = "ClusterIP"
        await store.apply([web])
        await eventually({"api": ["10.225.0.2"], "db": ["10.225.0.1"], "web": []})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
