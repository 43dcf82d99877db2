"""Endpoints: names, their JSON form, and the per-node registry in the store."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from dataplane.endpoint.endpoint import Endpoint, endpoint_key, host_ifname
from dataplane.endpoint.registry import EndpointRegistry
from flowscope.store.memory import MemoryKV

EP = Endpoint(
    node="n1",
    container_id="c1",
    ifname="eth0",
    netns="/run/netns/p",
    ip=IPv4Address("10.244.1.5"),
    pod_mac="02:00:00:00:00:02",
    host_ifname=host_ifname("c1", "eth0"),
    host_mac="02:00:00:00:00:01",
    host_ifindex=7,
    mtu=1500,
    pod_namespace="default",
    pod_name="a",
    pod_uid="u1",
    created="2026-01-01T00:00:00.000+00:00",
)


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=15))
def test_host_ifname_is_short_stable_and_ours(cid: str, ifname: str) -> None:
    name = host_ifname(cid, ifname)
    assert len(name.encode()) <= 15 and name == host_ifname(cid, ifname)
    assert name.startswith("lxc") and all(c in "0123456789abcdef" for c in name[3:])


def test_host_ifname_differs_per_attachment() -> None:
    names = {host_ifname(c, i) for c in ("c1", "c2") for i in ("eth0", "net1")}
    assert len(names) == 4


def test_json_round_trip() -> None:
    data = EP.to_json()
    doc = json.loads(data)
    assert doc["ip"] == "10.244.1.5" and doc["pod_namespace"] == "default"
    assert Endpoint.from_json(data) == EP
    assert EP.key == "/flowscope/endpoints/n1/c1/eth0" == endpoint_key("n1", "c1", "eth0")
    assert EP.owner == "c1/eth0"


async def test_registry() -> None:
    kv = MemoryKV()
    reg, other = EndpointRegistry(kv, "n1"), EndpointRegistry(kv, "n2")
    assert await reg.get("c1", "eth0") is None
    await reg.put(EP)
    second = replace(EP, container_id="c2", ip=IPv4Address("10.244.1.6"))
    await reg.put(second)
    assert await reg.get("c1", "eth0") == EP
    assert await reg.list() == [EP, second]
    assert await other.list() == []  # one node's endpoints only
    assert await reg.delete("c1", "eth0") and not await reg.delete("c1", "eth0")
    assert await reg.list() == [second]
