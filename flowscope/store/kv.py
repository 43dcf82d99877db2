"""The key-value contract every store implements: etcd's model, reduced to what flowscope uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class Compare:
    """Holds when `key`'s mod_revision equals `mod_revision`; 0 means "the key does not exist"."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue  # for a delete: the key, an empty value and the revision of the delete


class KV(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under `prefix`, sorted, and the store revision they were read at."""
        ...

    async def put(self, key: str, value: bytes) -> int:
        """Returns the new revision."""
        ...

    async def delete(self, key: str) -> bool:
        """True when the key existed."""
        ...

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        """All of `ops` when every compare holds, else nothing; returns whether it applied."""
        ...

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Every change under `prefix` from `start_revision` on, in order, surviving reconnects."""
        ...

    async def close(self) -> None: ...
