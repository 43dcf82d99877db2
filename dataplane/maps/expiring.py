"""A BPF table whose entries carry `expires_ns` and whose garbage user space collects.

The connection tracker (ctmap), the masquerade NAT table (natmap) and the NodePort connection
table (npctmap) are the same thing to the agent: dump the whole table, decode it, delete what is
past its lifetime. Like Cilium's pkg/maps/ctmap GC, this is written once: `ExpiringMap` holds the
operations, `KernelBacked` and `DictBacked` are the two places an entry can live (the pinned
BPF map, or a dict with the kernel map's semantics for tests that need no kernel). Each table
subclasses `ExpiringMap` with its key and value dtypes and decoder.
"""

from __future__ import annotations

import ctypes as ct
import time
from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

import numpy as np

from dataplane.maps.bpfmap import BpfMap

E = TypeVar("E")


def expires_before(values: np.ndarray, now_ns: int) -> np.ndarray:
    """Which entries' `expires_ns` lies before `now_ns` (CLOCK_MONOTONIC ns)."""
    return values["expires_ns"] < np.uint64(now_ns)


class ExpiringMap(ABC, Generic[E]):
    """The operations the agent needs on an expiring table, whatever holds it."""

    key_dtype: ClassVar[np.dtype]
    entry_dtype: ClassVar[np.dtype]

    @staticmethod
    @abstractmethod
    def decode(keys: np.ndarray, values: np.ndarray) -> list[E]:
        """Decoded entries from structured arrays of key_dtype and entry_dtype."""

    @abstractmethod
    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys, values) as structured arrays of key_dtype and entry_dtype."""

    @abstractmethod
    def delete_keys(self, keys: np.ndarray) -> int:
        """Delete these keys (missing ones are skipped); returns how many were deleted."""

    @abstractmethod
    def put(self, key: ct.Structure, entry: ct.Structure) -> None:
        """Write one entry (tests, migrations)."""

    def expired(self, values: np.ndarray, now_ns: int) -> np.ndarray:
        """Which entries are past their lifetime at `now_ns`, as the kernel program judges it."""
        return expires_before(values, now_ns)

    def entries(self) -> list[E]:
        return self.decode(*self.dump())

    def count(self) -> int:
        return len(self.dump()[0])

    def gc(self, now_ns: int | None = None) -> int:
        """Delete every entry past its lifetime; returns how many. Call it every few seconds:
        the kernel already ignores expired entries, this only frees their slots early."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        keys, values = self.dump()
        dead = keys[self.expired(values, now)]
        return self.delete_keys(dead) if len(dead) else 0

    def flush(self) -> int:
        keys, _ = self.dump()
        return self.delete_keys(keys) if len(keys) else 0


class KernelBacked:
    """Entries in a pinned or owned BPF map (mix in before the table's ExpiringMap subclass)."""

    def __init__(self, bpfmap: BpfMap) -> None:
        self.map = bpfmap

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        return self.map.dump()

    def delete_keys(self, keys: np.ndarray) -> int:
        return self.map.delete_many(keys)

    def put(self, key: ct.Structure, entry: ct.Structure) -> None:
        self.map.update(key, entry)


class DictBacked:
    """Entries in a dict keyed by the key's bytes, as a hash map holds them (mix in before the
    table's ExpiringMap subclass, which supplies key_dtype and entry_dtype)."""

    key_dtype: ClassVar[np.dtype]
    entry_dtype: ClassVar[np.dtype]

    def __init__(self) -> None:
        self._entries: dict[bytes, bytes] = {}

    def put(self, key: ct.Structure, entry: ct.Structure) -> None:
        self._entries[bytes(key)] = bytes(entry)

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.frombuffer(b"".join(self._entries), dtype=self.key_dtype).copy()
        values = np.frombuffer(b"".join(self._entries.values()), dtype=self.entry_dtype).copy()
        return keys, values

    def delete_keys(self, keys: np.ndarray) -> int:
        return sum(self._entries.pop(k.tobytes(), None) is not None for k in keys)
