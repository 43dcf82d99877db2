"""In-process KV with etcd's semantics, for unit tests only (the cluster always runs on etcd)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from flowscope.store.kv import Compare, Delete, KeyValue, Put, WatchEvent


class MemoryKV:
    def __init__(self) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 1
        self._history: list[WatchEvent] = []
        self._changed = asyncio.Condition()

    @property
    def revision(self) -> int:
        return self._revision

    async def get(self, key: str) -> KeyValue | None:
        return self._data.get(key)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        items = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
        return items, self._revision

    async def put(self, key: str, value: bytes) -> int:
        await self.txn((), (Put(key, value),))
        return self._revision

    async def delete(self, key: str) -> bool:
        existed = key in self._data
        if existed:
            await self.txn((), (Delete(key),))
        return existed

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        for c in compares:
            current = self._data.get(c.key)
            if (current.mod_revision if current else 0) != c.mod_revision:
                return False
        if not ops:
            return True
        self._revision += 1  # one revision per transaction, as etcd does
        rev = self._revision
        for op in ops:
            if isinstance(op, Put):
                old = self._data.get(op.key)
                kv = KeyValue(op.key, op.value, rev, old.create_revision if old else rev)
                self._data[op.key] = kv
                self._history.append(WatchEvent("put", kv))
            elif op.key in self._data:
                del self._data[op.key]
                self._history.append(WatchEvent("delete", KeyValue(op.key, b"", rev, 0)))
        async with self._changed:
            self._changed.notify_all()
        return True

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        seen = 0
        while True:
            events = self._history[seen:]
            seen = len(self._history)
            for ev in events:
                if ev.kv.key.startswith(prefix) and ev.kv.mod_revision >= start_revision:
                    yield ev
            async with self._changed:
                if seen == len(self._history):
                    await self._changed.wait()

    async def close(self) -> None:
        pass
