"""EtcdKV with answers bigger than gRPC's default 4 MiB limit: 10,000 services applied in one
transaction reach watchers as one ~5 MB watch response, and a later range returns them all."""

from __future__ import annotations

import asyncio

import pytest

from flowscope.store.etcd import EtcdKV
from flowscope.store.kv import Put

pytestmark = pytest.mark.etcd

VALUE = b"x" * 2048
KEYS = 3000  # ~6 MB in one transaction: over the 4 MiB default, under etcd's request cap


async def test_one_big_transaction_reaches_a_watcher_and_a_range(
    etcd_url: str, etcd_prefix: str
) -> None:
    kv = EtcdKV(etcd_url, etcd_prefix)
    try:
        _, revision = await kv.range("/big/")
        seen: list[str] = []

        async def watch() -> None:
            async for event in kv.watch("/big/", revision + 1):
                seen.append(event.kv.key)
                if len(seen) == KEYS:
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.1)  # subscribed before the write
        assert await kv.txn([], [Put(f"/big/{i:05d}", VALUE) for i in range(KEYS)])
        await asyncio.wait_for(watcher, 20)
        assert seen == [f"/big/{i:05d}" for i in range(KEYS)]
        items, _ = await kv.range("/big/")
        assert len(items) == KEYS and all(item.value == VALUE for item in items)
    finally:
        await kv.close()
