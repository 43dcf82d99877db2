"""PrefixMirror against MemoryKV and real etcd: a consistent copy that follows every change."""

from __future__ import annotations

import asyncio
import contextlib

from flowscope.store.kv import Delete, Put
from flowscope.store.mirror import PrefixMirror


async def test_mirror_loads_then_follows_puts_and_deletes(kv):
    await kv.put("/m/a", b"1")
    await kv.put("/m/b", b"2")
    await kv.put("/other/c", b"3")
    changed = asyncio.Event()
    mirror = PrefixMirror(kv, "/m/", lambda _k, v: int(v), changed.set)
    await mirror.load()
    assert mirror.items == {"a": 1, "b": 2}
    task = asyncio.create_task(mirror.run())
    try:
        await kv.txn([], [Put("/m/c", b"4"), Delete("/m/a")])
        await kv.put("/other/d", b"5")
        for _ in range(100):
            if mirror.items == {"b": 2, "c": 4}:
                break
            await asyncio.wait_for(changed.wait(), 5)
            changed.clear()
        assert mirror.items == {"b": 2, "c": 4}
        rev = await kv.put("/m/b", b"7")
        while mirror.revision < rev:
            await asyncio.wait_for(changed.wait(), 5)
            changed.clear()
        assert mirror.items["b"] == 7
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_undecodable_values_are_absent(kv):
    await kv.put("/n/good", b"1")
    await kv.put("/n/bad", b"x")

    def decode(_key: str, value: bytes) -> int | None:
        return int(value) if value.isdigit() else None

    mirror = PrefixMirror(kv, "/n/", decode)
    await mirror.load()
    assert mirror.items == {"good": 1}
