"""The IPAM class on MemoryKV: persistence, idempotency, caps, blocks, and racing allocators."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.ipam import (
    IPAM,
    MAX_ATTEMPTS,
    PREFIXES_KEY_PREFIX,
    IPAMConfig,
    IPAMConfigError,
    IPAMConflict,
    IPAMExhausted,
    Lease,
    all_node_prefixes,
    prefix_from_key,
)
from dataplane.ipam.layout import IPS_KEY_PREFIX
from dataplane.ipam.pools import overlay_reserved
from flowscope.store.kv import Compare, Delete, Put
from flowscope.store.memory import MemoryKV

N = IPv4Network
A = IPv4Address
OVERLAY = IPAMConfig("overlay", N("10.224.0.0/16"))
VNET = IPAMConfig("vnet", N("10.224.0.0/16"))
VNET_POD_SUBNET = IPAMConfig("vnet", N("10.224.0.0/16"), pod_cidr=N("10.225.0.0/16"))


class YieldingKV(MemoryKV):
    """MemoryKV that lets other tasks run before every operation, as a networked store does, so
    that concurrent allocators really interleave between their reads and their transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.txns = 0
        self.failed_txns = 0

    async def get(self, key):
        await asyncio.sleep(0)
        return await super().get(key)

    async def range(self, prefix):
        await asyncio.sleep(0)
        return await super().range(prefix)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        await asyncio.sleep(0)
        ok = await super().txn(compares, ops)
        self.txns += 1
        self.failed_txns += not ok
        return ok


def node_ip(i: int) -> IPv4Address:
    return A(f"10.224.0.{10 + i}")


def ipam(kv, cfg: IPAMConfig = OVERLAY, i: int = 1) -> IPAM:
    return IPAM(kv, cfg, f"node-{i}", node_ip(i))


async def assert_store_consistent(kv: MemoryKV) -> list[Lease]:
    """Every address key matches one lease, no address twice, every lease in its node's pool."""
    ip_kvs, _ = await kv.range(IPS_KEY_PREFIX)
    leases = [Lease.decode(x.value) for x in ip_kvs]
    assert len({x.ip for x in leases}) == len(leases)
    owners = await all_node_prefixes(kv)
    for lease in leases:
        assert lease.ip in lease.pool
        assert lease.pool in owners[lease.node][1]
        assert (
            await IPAM(kv, await _cfg(kv), lease.node, owners[lease.node][0]).lease(lease.owner)
            == lease
        )
    prefixes = [p for _, ps in owners.values() for p in ps]
    assert not any(a.overlaps(b) for i, a in enumerate(prefixes) for b in prefixes[i + 1 :])
    return leases


async def _cfg(kv: MemoryKV) -> IPAMConfig:
    import json

    from dataplane.ipam.layout import CONFIG_KEY

    raw = json.loads((await kv.get(CONFIG_KEY)).value)
    kwargs = {k: v for k, v in raw.items() if v is not None}
    return IPAMConfig(**kwargs)


# --- overlay ------------------------------------------------------------------------------------


async def test_overlay_claims_node_cidrs_in_order_and_skips_reserved_addresses():
    kv = MemoryKV()
    a, b = ipam(kv, i=1), ipam(kv, i=2)
    await a.ensure_node()
    await b.ensure_node()
    assert await a.node_prefixes() == [N("10.244.0.0/24")]
    assert await b.node_prefixes() == [N("10.244.1.0/24")]
    lease = await b.allocate("c1/eth0")
    assert lease == Lease("c1/eth0", A("10.244.1.2"), N("10.244.1.0/24"), "node-2")
    assert await all_node_prefixes(kv) == {
        "node-1": (node_ip(1), [N("10.244.0.0/24")]),
        "node-2": (node_ip(2), [N("10.244.1.0/24")]),
    }


async def test_allocate_claims_the_node_cidr_on_first_use():
    kv = MemoryKV()
    lease = await ipam(kv).allocate("c1/eth0")
    assert lease.pool == N("10.244.0.0/24") and lease.ip == A("10.244.0.2")


async def test_allocate_is_idempotent_and_release_too():
    kv = MemoryKV()
    node = ipam(kv)
    first = await node.allocate("c1/eth0")
    assert await node.allocate("c1/eth0") == first
    other = await node.allocate("c1/eth1")  # same container, another interface: another lease
    assert other.ip != first.ip
    assert await node.lease("c1/eth0") == first
    assert await node.release("c1/eth0") == first
    assert await node.release("c1/eth0") is None
    assert await node.lease("c1/eth0") is None
    assert await node.leases() == [other]
    assert await node.release("never/eth0") is None


async def test_a_released_address_is_not_handed_out_again_at_once():
    kv = MemoryKV()
    node = ipam(kv)
    first = await node.allocate("c1/eth0")
    await node.release("c1/eth0")
    again = await node.allocate("c2/eth0")
    assert again.ip == first.ip + 1


async def test_a_new_ipam_object_sees_the_old_state():
    kv = MemoryKV()
    before = ipam(kv)
    leases = [await before.allocate(f"c{i}/eth0") for i in range(5)]
    await before.release("c2/eth0")
    after = ipam(kv)  # the agent restarted
    assert await after.node_prefixes() == await before.node_prefixes()
    assert await after.lease("c3/eth0") == leases[3]
    assert await after.leases() == [x for x in leases if x.owner != "c2/eth0"]
    assert await after.allocate("c0/eth0") == leases[0]
    new = await after.allocate("c9/eth0")
    assert new.ip not in {x.ip for x in leases}  # rotation survives the restart
    await assert_store_consistent(kv)


async def test_overlay_cap_of_250_pods_a_node():
    kv = MemoryKV()
    node = ipam(kv, i=2)
    ips = {(await node.allocate(f"c{i}/eth0")).ip for i in range(250)}
    assert len(ips) == 250
    assert not ips & overlay_reserved(N("10.244.0.0/24"))
    with pytest.raises(IPAMExhausted) as e:
        await node.allocate("c250/eth0")
    assert str(e.value).startswith(
        "node node-2's pod CIDR 10.244.0.0/24 has no free address (250 pods max)"
    )
    assert "raise max_pods" in e.value.hint and e.value.pool == "10.244.0.0/24"
    await node.release("c17/eth0")
    assert (await node.allocate("c250/eth0")).ip in N("10.244.0.0/24")


async def test_overlay_small_node_cidr_fills_before_max_pods():
    kv = MemoryKV()
    node = IPAM(kv, IPAMConfig("overlay", N("10.224.0.0/16"), node_mask=28), "node-1", node_ip(1))
    ips = [(await node.allocate(f"c{i}/eth0")).ip for i in range(13)]
    assert sorted(ips) == [A(f"10.244.0.{i}") for i in range(2, 15)]
    with pytest.raises(IPAMExhausted, match=r"all 13 usable addresses are in use"):
        await node.allocate("c13/eth0")


async def test_overlay_pod_cidr_runs_out_of_node_cidrs():
    kv = MemoryKV()
    cfg = IPAMConfig("overlay", N("10.224.0.0/16"), pod_cidr=N("10.244.0.0/23"))
    for i in range(2):
        await IPAM(kv, cfg, f"node-{i}", node_ip(i)).ensure_node()
    with pytest.raises(IPAMExhausted, match=r"pod CIDR 10.244.0.0/23 has no free /24 for node-?"):
        await IPAM(kv, cfg, "node-9", node_ip(9)).allocate("c1/eth0")


async def test_two_clusters_may_use_the_same_pod_cidr():
    one, two = MemoryKV(), MemoryKV()  # each cluster has its own store
    a = await ipam(one).allocate("c1/eth0")
    b = await ipam(two).allocate("c1/eth0")
    assert a.ip == b.ip == A("10.244.0.2")


async def test_a_node_that_comes_back_with_a_new_ip_moves_its_routes():
    kv = MemoryKV()
    await ipam(kv, i=1).allocate("c1/eth0")
    moved = IPAM(kv, OVERLAY, "node-1", A("10.224.0.99"))
    await moved.ensure_node()
    assert await all_node_prefixes(kv) == {"node-1": (A("10.224.0.99"), [N("10.244.0.0/24")])}
    assert (await moved.lease("c1/eth0")).ip == A("10.244.0.2")


# --- vnet ---------------------------------------------------------------------------------------


async def test_vnet_blocks_are_claimed_on_demand_and_given_back_when_empty():
    kv = MemoryKV()
    node = ipam(kv, VNET)
    await node.ensure_node()
    assert await node.node_prefixes() == []
    first = [await node.allocate(f"c{i}/eth0") for i in range(16)]
    assert [x.ip for x in first] == [A(f"10.224.1.{i}") for i in range(16)]  # all 16 usable
    assert {x.pool for x in first} == {N("10.224.1.0/28")}
    seventeenth = await node.allocate("c16/eth0")
    assert seventeenth.pool == N("10.224.1.16/28") and seventeenth.ip == A("10.224.1.16")
    assert await node.node_prefixes() == [N("10.224.1.0/28"), N("10.224.1.16/28")]
    for x in first[:-1]:
        await node.release(x.owner)
    assert N("10.224.1.0/28") in await node.node_prefixes()  # one pod still in it
    await node.release(first[-1].owner)
    assert await node.node_prefixes() == [N("10.224.1.16/28")]
    assert await all_node_prefixes(kv) == {"node-1": (node_ip(1), [N("10.224.1.16/28")])}
    # the block just given back is not the next one claimed (rotation, see pools.py)
    for i in range(15):
        await node.allocate(f"d{i}/eth0")
    assert (await node.allocate("d15/eth0")).pool == N("10.224.1.32/28")
    await assert_store_consistent(kv)


async def test_vnet_release_fills_holes_in_owned_blocks_before_claiming():
    kv = MemoryKV()
    node = ipam(kv, VNET)
    for i in range(16):
        await node.allocate(f"c{i}/eth0")
    await node.release("c3/eth0")
    assert (await node.allocate("x/eth0")).ip == A("10.224.1.3")
    assert await node.node_prefixes() == [N("10.224.1.0/28")]


async def test_vnet_separate_pod_subnet():
    kv = MemoryKV()
    a, b = ipam(kv, VNET_POD_SUBNET, 1), ipam(kv, VNET_POD_SUBNET, 2)
    la, lb = await a.allocate("c1/eth0"), await b.allocate("c1/eth0")
    # the first block of 10.225.0.0/16 holds its network address: skipped
    assert la == Lease("c1/eth0", A("10.225.0.16"), N("10.225.0.16/28"), "node-1")
    assert lb.pool == N("10.225.0.32/28")


async def test_vnet_custom_block_size_and_reserved_range():
    kv = MemoryKV()
    cfg = IPAMConfig("vnet", N("10.224.0.0/16"), block_size=4, reserved=(N("10.224.0.0/22"),))
    lease = await ipam(kv, cfg).allocate("c1/eth0")
    assert lease.pool == N("10.224.4.0/30")


async def test_vnet_subnet_exhaustion_is_immediate_and_says_which_pool():
    kv = MemoryKV()
    cfg = IPAMConfig("vnet", N("10.224.0.0/24"), reserved=(N("10.224.0.0/26"),))
    a, b = ipam(kv, cfg, 0), ipam(kv, cfg, 1)
    # 11 blocks: the /24 has 16, 4 lie in the reserved /26, 1 holds the broadcast address
    got = [await a.allocate(f"a{i}/eth0") for i in range(100)]  # 7 blocks, 12 addresses left
    got += [await b.allocate(f"b{i}/eth0") for i in range(64)]  # the last 4 blocks
    with pytest.raises(IPAMExhausted) as e:
        await b.allocate("one-more/eth0")
    assert "VNET 10.224.0.0/24 has no free block of 16 addresses for node node-1" in str(e.value)
    assert "(all 11 blocks are held by nodes)" in str(e.value)
    assert e.value.pool == "10.224.0.0/24"
    # node-0 still fills the rest of its own last block, then is out too
    got += [await a.allocate(f"a{i}/eth0") for i in range(100, 112)]
    with pytest.raises(IPAMExhausted, match="for node node-0"):
        await a.allocate("one-more/eth0")
    assert len({x.ip for x in got}) == 176 == 11 * 16
    await assert_store_consistent(kv)


async def test_vnet_max_pods():
    kv = MemoryKV()
    node = IPAM(kv, IPAMConfig("vnet", N("10.224.0.0/16"), max_pods=20), "node-1", node_ip(1))
    for i in range(20):
        await node.allocate(f"c{i}/eth0")
    with pytest.raises(IPAMExhausted, match=r"node node-1 has no free pod address \(20 pods max\)"):
        await node.allocate("c20/eth0")


# --- safety -------------------------------------------------------------------------------------


async def test_an_agent_with_another_layout_is_refused():
    kv = MemoryKV()
    await ipam(kv, OVERLAY).ensure_node()
    other = IPAM(kv, IPAMConfig("overlay", N("10.224.0.0/16"), node_mask=25), "node-2", node_ip(2))
    with pytest.raises(IPAMConfigError, match="differs from the cluster's"):
        await other.allocate("c1/eth0")
    # max_pods is a per-node setting and may differ
    await IPAM(kv, IPAMConfig("overlay", N("10.224.0.0/16"), max_pods=5), "node-3", node_ip(3)
               ).ensure_node()  # fmt: skip


@pytest.mark.parametrize("owner", ["", "a b", "tab\there"])
async def test_bad_owner_is_refused(owner):
    with pytest.raises(IPAMConfigError, match="lease owner"):
        await ipam(MemoryKV()).allocate(owner)


async def test_a_claim_lost_to_another_agent_is_retried_with_the_next_cidr():
    kv = MemoryKV()
    rival = ipam(kv, i=2)

    class RacedKV(MemoryKV):
        """Lets the rival claim a CIDR just before our first transaction."""

        raced = False

        async def get(self, key):
            return await kv.get(key)

        async def range(self, prefix):
            return await kv.range(prefix)

        async def txn(self, compares, ops):
            if not self.raced:
                self.raced = True
                await rival.ensure_node()
            return await kv.txn(compares, ops)

    mine = IPAM(RacedKV(), OVERLAY, "node-1", node_ip(1))
    await mine.ensure_node()
    assert await rival.node_prefixes() == [N("10.244.0.0/24")]
    assert await mine.node_prefixes() == [N("10.244.1.0/24")]


async def test_a_store_that_never_lets_a_claim_through_gives_a_clear_error(monkeypatch):
    class StuckKV(MemoryKV):
        async def txn(self, compares, ops):
            if any(c.key.endswith("/config") for c in compares):
                return await super().txn(compares, ops)
            return False

    async def no_sleep(_failures):
        return None

    monkeypatch.setattr("dataplane.ipam.allocator._backoff", no_sleep)
    with pytest.raises(IPAMConflict, match=f"every one of {MAX_ATTEMPTS} attempts"):
        await ipam(StuckKV()).allocate("c1/eth0")


async def test_an_address_held_elsewhere_is_skipped():
    kv = MemoryKV()
    # a stray address record (say, from a node whose CIDR was since taken over) holds .2
    stray = Lease("old/eth0", A("10.244.0.2"), N("10.244.0.0/24"), "gone")
    await kv.put(f"{IPS_KEY_PREFIX}10.244.0.2", stray.encode())
    lease = await ipam(kv).allocate("c1/eth0")
    assert lease.ip == A("10.244.0.3")


# --- concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [OVERLAY, VNET, VNET_POD_SUBNET], ids=["overlay", "vnet", "pods"])
async def test_200_concurrent_allocations_on_one_node(cfg):
    kv = YieldingKV()
    node = ipam(kv, cfg)
    owners = [f"c{i}/eth0" for i in range(200)]
    leases = await asyncio.gather(*(node.allocate(o) for o in owners))
    assert len({x.ip for x in leases}) == 200
    assert sorted(await node.leases(), key=lambda x: x.owner) == sorted(
        leases, key=lambda x: x.owner
    )
    # duplicates of the same owner in one burst still get one lease
    again = await asyncio.gather(*(node.allocate(o) for o in owners[:50] * 2))
    assert again == leases[:50] * 2
    await asyncio.gather(*(node.release(o) for o in owners))
    assert await node.leases() == []
    if cfg.mode == "vnet":
        assert await node.node_prefixes() == []  # every block given back
    assert (await kv.range(IPS_KEY_PREFIX))[0] == []


@pytest.mark.parametrize("cfg", [OVERLAY, VNET, VNET_POD_SUBNET], ids=["overlay", "vnet", "pods"])
async def test_three_nodes_racing_on_one_store(cfg):
    kv = YieldingKV()
    nodes = [ipam(kv, cfg, i) for i in range(3)]

    async def churn(node: IPAM) -> None:
        for round_ in range(3):
            owners = [f"r{round_}c{i}/eth0" for i in range(40)]
            await asyncio.gather(*(node.allocate(o) for o in owners))
            await asyncio.gather(*(node.release(o) for o in owners[::3]))

    await asyncio.gather(*(churn(n) for n in nodes))
    leases = await assert_store_consistent(kv)
    assert len(leases) == 3 * 3 * (40 - 14)
    assert kv.failed_txns > 0, "the nodes never collided: the race was not exercised"
    if cfg.mode == "overlay":
        cidrs = {p for n in nodes for p in await n.node_prefixes()}
        assert cidrs == {N(f"10.244.{i}.0/24") for i in range(3)}


async def test_two_agents_for_the_same_node_never_hand_out_one_address_twice():
    kv = YieldingKV()
    old, new = ipam(kv, VNET), ipam(kv, VNET)  # an agent restart overlapping the old one
    got = await asyncio.gather(
        *(old.allocate(f"a{i}/eth0") for i in range(60)),
        *(new.allocate(f"b{i}/eth0") for i in range(60)),
        *(new.release(f"a{i}/eth0") for i in range(0, 60, 4)),
    )
    assert kv.failed_txns > 0
    leases = await assert_store_consistent(kv)
    # a release may run before its allocation (then it returns None and the lease stays)
    released = {x.owner for x in got[120:] if x is not None}
    kept = [x for x in got[:120] if x.owner not in released]
    assert len({x.ip for x in kept}) == len(kept) == 120 - len(released)
    assert sorted(x.ip for x in kept) == sorted(x.ip for x in leases)
    assert {x.owner for x in leases} <= {f"a{i}/eth0" for i in range(60)} | {
        f"b{i}/eth0" for i in range(60)
    }


async def test_prefix_keys_are_what_routing_watches():
    kv = MemoryKV()
    node = ipam(kv, VNET)
    lease = await node.allocate("c1/eth0")
    await node.release("c1/eth0")
    events = []
    async for ev in kv.watch(PREFIXES_KEY_PREFIX, 0):
        events.append((ev.kind, prefix_from_key(ev.kv.key)))
        if ev.kind == "delete":
            break
    assert events == [("put", lease.pool), ("delete", lease.pool)]
