"""A local, always-current copy of everything under one key prefix of the store.

`await mirror.load()` reads the prefix at one revision; `mirror.run()` then follows the watch
from the next revision on, so no change is missed between the two. Each change bumps
`version` and calls `on_change` (the owner coalesces: it re-reads the mirrors, it does not
replay events). Values are decoded once, when they arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from flowscope.errors import FlowscopeError
from flowscope.store.kv import KV

log = logging.getLogger(__name__)
RETRY = 0.5  # seconds before reading a prefix again after its watch failed

T = TypeVar("T")


def json_value(key: str, value: bytes) -> Any | None:
    """A PrefixMirror decoder for JSON values; an unreadable one is logged and left out."""
    try:
        return json.loads(value)
    except ValueError:
        log.warning("ignoring an unreadable value at %s", key)
        return None


class PrefixMirror(Generic[T]):
    def __init__(
        self,
        kv: KV,
        prefix: str,
        decode: Callable[[str, bytes], T | None],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.kv = kv
        self.prefix = prefix
        self._decode = decode
        self._on_change = on_change
        self.items: dict[str, T] = {}  # key (without the prefix) -> decoded value
        self.revision = 0  # the store revision this copy reflects
        self.version = 0

    async def load(self) -> int:
        items, revision = await self.kv.range(self.prefix)
        self.items = {}
        for kv in items:
            self._put(kv.key, kv.value)
        self.revision = revision
        self.version += 1
        return revision

    async def run(self) -> None:
        """Follow changes forever (load() first). A watch that fails (the store compacted the
        history it needed, or went away and came back) is replaced by a fresh load and watch."""
        while True:
            try:
                async for event in self.kv.watch(self.prefix, self.revision + 1):
                    if event.kind == "put":
                        self._put(event.kv.key, event.kv.value)
                    else:
                        self.items.pop(event.kv.key[len(self.prefix) :], None)
                    self.revision = event.kv.mod_revision
                    self.version += 1
                    self._on_change()
                return
            except FlowscopeError as e:
                log.warning("watch of %s failed (%s): reading it again", self.prefix, e)
                await asyncio.sleep(RETRY)
                await self.load()
                self._on_change()

    def _put(self, key: str, value: bytes) -> None:
        name = key[len(self.prefix) :]
        decoded = self._decode(name, value)
        if decoded is None:
            self.items.pop(name, None)  # undecodable: treated as absent (decode logs why)
        else:
            self.items[name] = decoded
