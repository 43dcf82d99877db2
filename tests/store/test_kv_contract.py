"""The KV contract, run against the real etcd (EtcdKV) and the in-memory MemoryKV alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from flowscope.store.kv import KV, Compare, Delete, Put, WatchEvent


async def next_events(it: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    return [await asyncio.wait_for(anext(it), 5) for _ in range(n)]


async def test_put_get_returns_revisions(kv: KV) -> None:
    assert await kv.get("/a") is None
    rev1 = await kv.put("/a", b"1")
    got = await kv.get("/a")
    assert got is not None
    assert (got.key, got.value, got.mod_revision, got.create_revision) == ("/a", b"1", rev1, rev1)
    rev2 = await kv.put("/a", b"2")
    assert rev2 > rev1
    got = await kv.get("/a")
    assert got is not None and (got.value, got.mod_revision, got.create_revision) == (
        b"2",
        rev2,
        rev1,
    )


async def test_range_is_sorted_prefix_scoped_with_revision(kv: KV) -> None:
    for key in ("/r/b", "/r/a", "/r/c/d", "/rx", "/q"):
        last = await kv.put(key, key.encode())
    items, rev = await kv.range("/r/")
    assert [i.key for i in items] == ["/r/a", "/r/b", "/r/c/d"]
    assert rev >= last


async def test_delete_reports_existence(kv: KV) -> None:
    await kv.put("/d", b"x")
    assert await kv.delete("/d") is True
    assert await kv.delete("/d") is False
    assert await kv.get("/d") is None


async def test_txn_create_only_when_absent(kv: KV) -> None:
    assert await kv.txn([Compare("/t", 0)], [Put("/t", b"first")]) is True
    assert await kv.txn([Compare("/t", 0)], [Put("/t", b"second")]) is False
    got = await kv.get("/t")
    assert got is not None and got.value == b"first"


async def test_txn_absent_again_after_delete(kv: KV) -> None:
    await kv.put("/t", b"x")
    await kv.delete("/t")
    assert await kv.txn([Compare("/t", 0)], [Put("/t", b"again")]) is True


async def test_txn_cas_on_mod_revision_all_or_nothing(kv: KV) -> None:
    await kv.put("/x", b"1")
    await kv.put("/y", b"1")
    x = await kv.get("/x")
    assert x is not None
    await kv.put("/y", b"2")  # someone else writes
    stale = await kv.txn(
        [Compare("/x", x.mod_revision), Compare("/y", x.mod_revision)],
        [Put("/x", b"mine"), Put("/z", b"mine"), Delete("/y")],
    )
    assert stale is False
    assert (await kv.get("/x")).value == b"1"  # type: ignore[union-attr]
    assert await kv.get("/z") is None
    assert (await kv.get("/y")).value == b"2"  # type: ignore[union-attr]
    y = await kv.get("/y")
    assert y is not None
    ok = await kv.txn(
        [Compare("/x", x.mod_revision), Compare("/y", y.mod_revision)],
        [Put("/x", b"mine"), Put("/z", b"mine"), Delete("/y")],
    )
    assert ok is True
    x2, z = await kv.get("/x"), await kv.get("/z")
    assert x2 is not None and z is not None
    assert x2.mod_revision == z.mod_revision  # one transaction, one revision
    assert await kv.get("/y") is None


async def test_watch_from_revision_in_order_with_deletes(kv: KV) -> None:
    start = await kv.put("/w/a", b"1")
    await kv.put("/other", b"x")
    await kv.put("/w/b", b"2")
    await kv.delete("/w/a")
    it = aiter(kv.watch("/w/", start))
    try:
        evs = await next_events(it, 3)
        assert [(e.kind, e.kv.key, e.kv.value) for e in evs] == [
            ("put", "/w/a", b"1"),
            ("put", "/w/b", b"2"),
            ("delete", "/w/a", b""),
        ]
        revs = [e.kv.mod_revision for e in evs]
        assert revs == sorted(revs) and revs[0] == start
        # and live changes after the history
        await kv.txn([], [Put("/w/c", b"3"), Put("/w/d", b"4")])
        live = await next_events(it, 2)
        assert [e.kv.key for e in live] == ["/w/c", "/w/d"]
        assert live[0].kv.mod_revision == live[1].kv.mod_revision > revs[-1]
    finally:
        await it.aclose()  # type: ignore[attr-defined]
