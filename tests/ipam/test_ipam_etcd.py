"""IPAM on the real store: etcd transactions between separate clients, as separate agents use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.ipam import (
    IPAM,
    PREFIXES_KEY_PREFIX,
    IPAMConfig,
    IPAMExhausted,
    Lease,
    all_node_prefixes,
    prefix_from_key,
)
from dataplane.ipam.layout import IPS_KEY_PREFIX
from flowscope.store.etcd import EtcdKV

pytestmark = pytest.mark.etcd

N = IPv4Network
A = IPv4Address
OVERLAY = IPAMConfig("overlay", N("10.224.0.0/16"))
VNET = IPAMConfig("vnet", N("10.224.0.0/16"))


@pytest.fixture
async def clients(etcd_url: str, etcd_prefix: str) -> AsyncIterator[list[EtcdKV]]:
    """Four separate connections to one cluster store, as four agents hold them."""
    kvs = [EtcdKV(etcd_url, prefix=etcd_prefix) for _ in range(4)]
    try:
        yield kvs
    finally:
        for kv in kvs:
            await kv.close()


def node_ip(i: int) -> IPv4Address:
    return A(f"10.224.0.{10 + i}")


async def stored_leases(kv: EtcdKV) -> list[Lease]:
    kvs, _ = await kv.range(IPS_KEY_PREFIX)
    return [Lease.decode(x.value) for x in kvs]


async def test_overlay_leases_survive_a_restart_on_a_new_connection(clients):
    before = IPAM(clients[0], OVERLAY, "node-1", node_ip(1))
    leases = [await before.allocate(f"c{i}/eth0") for i in range(4)]
    assert [x.ip for x in leases] == [A(f"10.244.0.{i}") for i in range(2, 6)]
    assert await before.allocate("c0/eth0") == leases[0]
    assert await before.release("c1/eth0") == leases[1]
    assert await before.release("c1/eth0") is None

    after = IPAM(clients[1], OVERLAY, "node-1", node_ip(1))  # the agent restarted
    assert await after.node_prefixes() == [N("10.244.0.0/24")]
    assert await after.leases() == [leases[0], leases[2], leases[3]]
    assert (await after.allocate("c9/eth0")).ip == A("10.244.0.6")
    assert await all_node_prefixes(clients[2]) == {"node-1": (node_ip(1), [N("10.244.0.0/24")])}


@pytest.mark.parametrize("cfg", [OVERLAY, VNET], ids=["overlay", "vnet"])
async def test_three_agents_racing_never_share_an_address(clients, cfg):
    nodes = [IPAM(clients[i], cfg, f"node-{i}", node_ip(i)) for i in range(3)]

    async def churn(node: IPAM) -> None:
        owners = [f"c{i}/eth0" for i in range(40)]
        await asyncio.gather(*(node.allocate(o) for o in owners))
        # one agent serialises its calls in order: c0..c15 fill the first vnet block
        await asyncio.gather(*(node.release(o) for o in owners[:16]))
        await asyncio.gather(*(node.allocate(f"d{i}/eth0") for i in range(6)))

    await asyncio.gather(*(churn(n) for n in nodes))
    leases = await stored_leases(clients[3])
    assert len(leases) == 3 * 30
    assert len({x.ip for x in leases}) == len(leases)
    owners = await all_node_prefixes(clients[3])
    prefixes = [p for _, ps in owners.values() for p in ps]
    assert not any(a.overlaps(b) for i, a in enumerate(prefixes) for b in prefixes[i + 1 :])
    for lease in leases:
        assert lease.ip in lease.pool and lease.pool in owners[lease.node][1]
    if cfg.mode == "vnet":  # the emptied first block went back; 30 pods fill two blocks
        assert all(len(ps) == 2 for _, ps in owners.values())
        for node, (_, ps) in owners.items():
            assert set(ps) == {x.pool for x in leases if x.node == node}  # no empty block kept


async def test_two_agents_for_one_node_never_share_an_address(clients):
    old = IPAM(clients[0], VNET, "node-1", node_ip(1))
    new = IPAM(clients[1], VNET, "node-1", node_ip(1))
    got = await asyncio.gather(
        *(old.allocate(f"a{i}/eth0") for i in range(30)),
        *(new.allocate(f"b{i}/eth0") for i in range(30)),
    )
    assert len({x.ip for x in got}) == 60
    assert sorted(x.ip for x in await stored_leases(clients[2])) == sorted(x.ip for x in got)


async def test_exhaustion_is_immediate(clients):
    cfg = IPAMConfig("overlay", N("10.224.0.0/16"), node_mask=29)
    node = IPAM(clients[0], cfg, "node-1", node_ip(1))
    for i in range(5):  # a /29 holds 8, minus network, gateway and broadcast
        await node.allocate(f"c{i}/eth0")
    started = time.monotonic()
    with pytest.raises(IPAMExhausted, match=r"pod CIDR 10.244.0.0/29 has no free address"):
        await node.allocate("c5/eth0")
    assert time.monotonic() - started < 1.0


async def test_routing_sees_blocks_come_and_go_by_watching_prefixes(clients):
    node = IPAM(clients[0], VNET, "node-1", node_ip(1))
    _, revision = await clients[1].range(PREFIXES_KEY_PREFIX)
    lease = await node.allocate("c1/eth0")
    await node.release("c1/eth0")
    events = []

    async def collect() -> None:
        async for ev in clients[1].watch(PREFIXES_KEY_PREFIX, revision + 1):
            events.append((ev.kind, prefix_from_key(ev.kv.key)))
            if ev.kind == "delete":
                return

    await asyncio.wait_for(collect(), timeout=5)
    assert events == [("put", lease.pool), ("delete", lease.pool)]
