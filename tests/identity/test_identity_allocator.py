"""IdentityAllocator on MemoryKV and on the real etcd: numbering, races between nodes, release,
garbage collection, watch and restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Network

import pytest

from dataplane.identity.allocator import (
    IdentityAllocator,
    IdentityEvent,
    IdentityExhausted,
    InvalidLabels,
)
from dataplane.identity.model import (
    CIDR_ID_BASE,
    MAX_CIDR_ID,
    MAX_CLUSTER_ID,
    MIN_CLUSTER_ID,
    RESERVED_IDENTITIES,
    Identity,
    Reserved,
    cidr_labels,
    pod_labels,
)
from flowscope.store.kv import KV, Compare, Delete, KeyValue, Put, WatchEvent

WEB = pod_labels("shop", {"app": "web"}, {"team": "a"})
DB = pod_labels("shop", {"app": "db"}, {"team": "a"})


class Interleaving:
    """Any KV, letting other tasks run before each operation as a networked store does, so that
    racing allocators really interleave between their reads and their transactions; counts the
    operations that reach the store."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv
        self.ops = 0

    async def _turn(self) -> None:
        self.ops += 1
        await asyncio.sleep(0)

    async def get(self, key: str) -> KeyValue | None:
        await self._turn()
        return await self.kv.get(key)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        await self._turn()
        return await self.kv.range(prefix)

    async def put(self, key: str, value: bytes) -> int:
        await self._turn()
        return await self.kv.put(key, value)

    async def delete(self, key: str) -> bool:
        await self._turn()
        return await self.kv.delete(key)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        await self._turn()
        return await self.kv.txn(compares, ops)

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        return self.kv.watch(prefix, start_revision)

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def app(i: int) -> frozenset[str]:
    return pod_labels("ns", {"app": f"a{i}"}, {})


async def test_allocate_new_number_in_cluster_range(kv: KV) -> None:
    alloc = IdentityAllocator(kv, "n1")
    web = await alloc.allocate(WEB)
    db = await alloc.allocate(DB)
    assert web.labels == WEB and db.labels == DB
    assert MIN_CLUSTER_ID <= web.id <= MAX_CLUSTER_ID
    assert MIN_CLUSTER_ID <= db.id <= MAX_CLUSTER_ID
    assert web.id != db.id
    assert not web.is_reserved and not web.is_cidr
    assert await alloc.lookup(web.id) == web
    assert await alloc.lookup_labels(DB) == db
    assert await alloc.lookup(MAX_CLUSTER_ID) is None
    assert await alloc.lookup_labels(app(9)) is None
    everything = await alloc.all()
    assert everything[web.id] == web and everything[db.id] == db
    assert {n: i for n, i in everything.items() if i.is_reserved} == RESERVED_IDENTITIES


async def test_allocate_is_idempotent_and_cached(kv: KV) -> None:
    counted = Interleaving(kv)
    alloc = IdentityAllocator(counted, "n1")
    first = await alloc.allocate(WEB)
    before = counted.ops
    t0 = time.perf_counter()
    for _ in range(100):
        assert await alloc.allocate(set(WEB)) == first  # any iterable of labels
    elapsed = time.perf_counter() - t0
    assert counted.ops == before, "allocate of held labels must not reach the store"
    assert elapsed < 0.05
    # another node finds the same number
    assert await IdentityAllocator(counted, "n2").allocate(WEB) == first


async def test_reserved_identities(kv: KV) -> None:
    alloc = IdentityAllocator(kv, "n1")
    for r in Reserved:
        if r is Reserved.UNKNOWN:
            assert await alloc.lookup(0) is None
            continue
        ident = await alloc.lookup(r.value)
        assert ident == Identity(r.value, frozenset({r.label}))
        assert ident.is_reserved
        assert await alloc.lookup_labels(ident.labels) == ident
        assert await alloc.allocate(ident.labels) == ident
    assert (await alloc.lookup(1)).labels == {"reserved:host"}
    assert (await alloc.lookup(6)).labels == {"reserved:remote-node"}
    assert (await alloc.lookup(7)).labels == {"reserved:kube-apiserver"}
    keys, _ = await kv.range("/flowscope/identities/")
    assert keys == [], "reserved identities are never stored"


async def test_cidr_identities_have_their_own_range(kv: KV) -> None:
    alloc = IdentityAllocator(kv, "n1")
    ten = await alloc.allocate_cidr(IPv4Network("10.0.0.0/8"))
    host = await alloc.allocate_cidr(IPv4Network("192.0.2.7/32"))
    web = await alloc.allocate(WEB)
    assert CIDR_ID_BASE <= ten.id <= MAX_CIDR_ID and CIDR_ID_BASE <= host.id <= MAX_CIDR_ID
    assert ten.is_cidr and not web.is_cidr and ten.id != host.id
    assert ten.labels == cidr_labels(IPv4Network("10.0.0.0/8"))
    assert await alloc.allocate_cidr(IPv4Network("10.0.0.0/8")) == ten
    assert await IdentityAllocator(kv, "n2").lookup_labels(ten.labels) == ten


async def test_bad_labels_are_refused(kv: KV) -> None:
    alloc = IdentityAllocator(kv, "n1")
    with pytest.raises(InvalidLabels, match="at least one label"):
        await alloc.allocate(frozenset())
    with pytest.raises(InvalidLabels, match="'nosource'"):
        await alloc.allocate(frozenset({"nosource"}))
    with pytest.raises(InvalidLabels, match="k8s:a=b;c"):
        await alloc.allocate(frozenset({"k8s:a=b;c"}))
    with pytest.raises(InvalidLabels, match="allocate_cidr"):
        await alloc.allocate(cidr_labels(IPv4Network("10.0.0.0/8")))
    with pytest.raises(InvalidLabels, match="reserved:host"):
        await alloc.allocate(frozenset({"reserved:host", "k8s:app=x"}))
    with pytest.raises(InvalidLabels, match="reserved:bogus"):
        await alloc.allocate(frozenset({"reserved:bogus"}))
    with pytest.raises(InvalidLabels, match="IPv4Network"):
        await alloc.allocate_cidr("10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(InvalidLabels, match="not a set"):
        await alloc.allocate("k8s:app=web")  # type: ignore[arg-type]
    keys, _ = await kv.range("/flowscope/identities/")
    assert keys == [], "refused labels write nothing"


async def test_nodes_racing_on_same_and_different_labels_converge(kv: KV) -> None:
    racing = Interleaving(kv)
    nodes = [IdentityAllocator(racing, f"n{i}") for i in range(5)]
    label_sets = [app(i) for i in range(6)]
    jobs = [a.allocate(labels) for labels in label_sets for a in nodes]
    got = await asyncio.gather(*jobs)
    by_labels: dict[frozenset[str], set[int]] = {}
    for ident in got:
        by_labels.setdefault(ident.labels, set()).add(ident.id)
    assert all(len(ids) == 1 for ids in by_labels.values()), by_labels
    numbers = [ids.pop() for ids in by_labels.values()]
    assert len(set(numbers)) == len(label_sets), "different labels never share a number"
    stored = await nodes[0].all()
    assert {stored[n].labels for n in numbers} == set(label_sets)
    assert len([i for i in stored.values() if not i.is_reserved]) == len(label_sets)
    # every node holds a reference to every identity
    refs, _ = await kv.range("/flowscope/identities/refs/")
    assert len(refs) == len(label_sets) * len(nodes)


async def test_racers_choosing_different_numbers_for_one_label_set_converge(kv: KV) -> None:
    """Nodes that pick different free numbers for the same labels (here: disjoint ranges) still
    end with one identity: the label index makes the second creation fail."""
    racing = Interleaving(kv)
    nodes = [
        IdentityAllocator(racing, f"n{i}", min_id=1000 + 100 * i, max_id=1099 + 100 * i)
        for i in range(4)
    ]
    for _ in range(5):
        labels = app(racing.ops)
        got = await asyncio.gather(*(a.allocate(labels) for a in nodes))
        assert len({g.id for g in got}) == 1, got
    masters, _ = await kv.range("/flowscope/identities/id/")
    assert len(masters) == 5


async def test_one_node_racing_with_itself(kv: KV) -> None:
    alloc = IdentityAllocator(Interleaving(kv), "n1")
    got = await asyncio.gather(*(alloc.allocate(app(i % 3)) for i in range(12)))
    assert len({(g.id, g.labels) for g in got}) == 3
    web = got[0]
    for _ in range(3):  # four users of app(0): three releases keep the reference
        await alloc.release(web.id)
    refs, _ = await kv.range(f"/flowscope/identities/refs/{web.id}/")
    assert [r.key.rsplit("/", 1)[1] for r in refs] == ["n1"]
    await alloc.release(web.id)
    refs, _ = await kv.range(f"/flowscope/identities/refs/{web.id}/")
    assert refs == []


async def test_exhaustion_is_a_clear_error(kv: KV) -> None:
    alloc = IdentityAllocator(kv, "n1", min_id=300, max_id=302)
    got = [await alloc.allocate(app(i)) for i in range(3)]
    assert sorted(g.id for g in got) == [300, 301, 302]
    with pytest.raises(IdentityExhausted, match=r"all 3 of 300\.\.302") as err:
        await alloc.allocate(app(3))
    assert err.value.hint and "garbage collection" in err.value.hint
    assert await alloc.allocate(app(1)) == got[1], "known labels still work when full"
    cidr = IdentityAllocator(kv, "n1", min_cidr_id=CIDR_ID_BASE, max_cidr_id=CIDR_ID_BASE)
    await cidr.allocate_cidr(IPv4Network("10.0.0.0/8"))
    with pytest.raises(IdentityExhausted, match="CIDR identities"):
        await cidr.allocate_cidr(IPv4Network("10.0.0.0/9"))


async def test_exhaustion_under_a_race_hands_out_each_number_once(kv: KV) -> None:
    racing = Interleaving(kv)
    nodes = [IdentityAllocator(racing, f"n{i}", min_id=400, max_id=403) for i in range(3)]
    results = await asyncio.gather(
        *(nodes[i % 3].allocate(app(i)) for i in range(6)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, Identity)]
    lost = [r for r in results if not isinstance(r, Identity)]
    assert sorted(w.id for w in won) == [400, 401, 402, 403]
    assert len(lost) == 2 and all(isinstance(e, IdentityExhausted) for e in lost)


async def test_bad_constructor_arguments(kv: KV) -> None:
    with pytest.raises(Exception, match="node name"):
        IdentityAllocator(kv, "a/b")
    with pytest.raises(Exception, match="is empty"):
        IdentityAllocator(kv, "n1", min_id=500, max_id=400)
    with pytest.raises(Exception, match="overlap"):
        IdentityAllocator(kv, "n1", min_id=5, max_id=400)


async def test_restart_finds_existing_numbers(kv: KV) -> None:
    first = IdentityAllocator(kv, "n1")
    web = await first.allocate(WEB)
    cidr = await first.allocate_cidr(IPv4Network("10.1.0.0/16"))
    again = IdentityAllocator(kv, "n1")  # the agent restarted: a new object, an empty cache
    assert await again.lookup(web.id) == web
    assert await again.allocate(WEB) == web
    assert await again.allocate_cidr(IPv4Network("10.1.0.0/16")) == cidr
    db = await again.allocate(DB)
    assert db.id not in (web.id, cidr.id)


async def test_release_then_gc_after_unused_for(kv: KV) -> None:
    clock = Clock()
    n1 = IdentityAllocator(kv, "n1", clock=clock)
    n2 = IdentityAllocator(kv, "n2", clock=clock)
    web = await n1.allocate(WEB)
    assert await n2.allocate(WEB) == web
    db = await n1.allocate(DB)
    await n1.release(web.id)
    clock.t += 100
    assert await n1.gc(unused_for=10) == [], "n2 still uses web"
    await n2.release(web.id)  # the last reference: unused from now
    clock.t += 5
    assert await n1.gc(unused_for=10) == []
    assert await n1.lookup(web.id) == web
    clock.t += 5
    assert await n1.gc(unused_for=10) == [web.id]
    assert await n1.lookup(web.id) is None
    assert await n2.lookup_labels(WEB) is None
    assert await n1.lookup(db.id) == db, "db is still referenced"
    # the labels come back: a number again (any free one), and it is stored consistently
    web2 = await n2.allocate(WEB)
    assert await n1.lookup_labels(WEB) == web2
    # gc with an explicit now
    await n2.release(web2.id)
    assert await n1.gc(unused_for=60, now=clock.t + 59) == []
    assert await n1.gc(unused_for=60, now=clock.t + 60) == [web2.id]


async def test_reallocation_before_gc_keeps_the_number(kv: KV) -> None:
    clock = Clock()
    alloc = IdentityAllocator(kv, "n1", clock=clock)
    web = await alloc.allocate(WEB)
    await alloc.release(web.id)
    clock.t += 1000
    assert await alloc.allocate(WEB) == web  # referenced again: no longer unused
    assert await alloc.gc(unused_for=10) == []
    clock.t += 1000
    assert await alloc.gc(unused_for=10) == []
    assert await alloc.lookup(web.id) == web


async def test_gc_never_deletes_an_identity_referenced_meanwhile(kv: KV) -> None:
    """A node takes a reference between gc's read and its transaction: the identity survives."""
    clock = Clock()
    gc_side = IdentityAllocator(kv, "n1", clock=clock)
    web = await gc_side.allocate(WEB)
    await gc_side.release(web.id)
    clock.t += 100
    user = IdentityAllocator(kv, "n2", clock=clock)

    class RaceAtTxn(Interleaving):
        async def txn(self, compares, ops):
            if any(isinstance(op, Delete) for op in ops):
                await user.allocate(WEB)  # sneaks in after gc has listed
            return await super().txn(compares, ops)

    racer = IdentityAllocator(RaceAtTxn(kv), "n1", clock=clock)
    assert await racer.gc(unused_for=10) == []
    assert await user.lookup(web.id) == web
    assert await IdentityAllocator(kv, "n3").allocate(WEB) == web


async def test_identity_of_a_vanished_node_is_marked_then_collected(kv: KV) -> None:
    clock = Clock()
    gone = IdentityAllocator(kv, "gone", clock=clock)
    alive = IdentityAllocator(kv, "alive", clock=clock)
    web = await gone.allocate(WEB)
    db = await gone.allocate(DB)
    await alive.allocate(DB)
    assert await alive.release_node("gone") == sorted([web.id, db.id])
    refs, _ = await kv.range("/flowscope/identities/refs/")
    assert [r.key.rsplit("/", 1)[1] for r in refs] == ["alive"]
    clock.t += 30
    assert await alive.gc(unused_for=30) == [web.id]
    assert await alive.lookup(db.id) == db
    # a master without references and without a record of since when: marked, later deleted
    assert await kv.delete(f"/flowscope/identities/refs/{db.id}/alive")
    clock.t += 1000
    assert await alive.gc(unused_for=30) == [], "first seen unused now"
    clock.t += 29
    assert await alive.gc(unused_for=30) == []
    clock.t += 1
    assert await alive.gc(unused_for=30) == [db.id]


async def test_watch_reports_added_and_removed(kv: KV) -> None:
    clock = Clock()
    n1 = IdentityAllocator(kv, "n1", clock=clock)
    n2 = IdentityAllocator(kv, "n2", clock=clock)
    web = await n1.allocate(WEB)
    events: asyncio.Queue[IdentityEvent] = asyncio.Queue()

    async def pump() -> None:
        async for ev in n2.watch():
            await events.put(ev)

    task = asyncio.create_task(pump())
    try:
        first = await asyncio.wait_for(events.get(), 5)
        assert (first.kind, first.identity) == ("added", web)
        db = await n1.allocate(DB)
        ev = await asyncio.wait_for(events.get(), 5)
        assert (ev.kind, ev.identity) == ("added", db)
        # references coming and going are not news
        await n2.allocate(DB)
        await n1.release(web.id)
        clock.t += 100
        assert await n2.gc(unused_for=10) == [web.id]
        ev = await asyncio.wait_for(events.get(), 5)
        assert (ev.kind, ev.identity) == ("removed", web)
        assert events.empty()
        # resume from a revision: only what came after
        cidr = await n1.allocate_cidr(IPv4Network("10.9.0.0/16"))
        ev = await asyncio.wait_for(events.get(), 5)
        assert (ev.kind, ev.identity) == ("added", cidr)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    resumed = n2.watch(start_revision=ev.revision)
    again = await asyncio.wait_for(anext(resumed), 5)
    assert (again.kind, again.identity) == ("added", cidr)
    await resumed.aclose()
