"""A BPF map seen from Python: an fd plus the ctypes types of its key and value.

Single-element operations for control-plane writes, and `dump()` for bulk reads: BPF batch
lookups straight into numpy structured arrays, so a 65536-entry map is read in a few calls and
decoded without a Python object per entry.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flowscope.errors import FlowscopeError
from probes import libbpf


class MapError(FlowscopeError):
    pass


class BpfMap:
    """Typed access to one map. For per-CPU maps `value_type` is one CPU's value."""

    def __init__(
        self,
        fd: int,
        key_type: type,
        value_type: type,
        *,
        name: str,
        percpu: bool = False,
        owns_fd: bool = False,
    ) -> None:
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.name = name
        self.percpu = percpu
        self._owns_fd = owns_fd
        self._slot_type = value_type * libbpf.possible_cpus() if percpu else value_type

    @classmethod
    def open_pinned(cls, path: Path, key_type: type, value_type: type) -> BpfMap:
        """Open a pinned map and check that its key and value sizes match the given types."""
        try:
            fd = libbpf.obj_get(path)
        except OSError as e:
            raise MapError(
                f"cannot open pinned map {path}: {e.strerror}",
                hint="is the program loaded? (the agent pins its maps when it starts)",
            ) from e
        info = libbpf.map_info(fd)
        percpu = info.map_type in libbpf.PERCPU_MAP_TYPES
        if (info.key_size, info.value_size) != (ct.sizeof(key_type), ct.sizeof(value_type)):
            os.close(fd)
            raise MapError(
                f"pinned map {path} has key/value sizes {info.key_size}/{info.value_size}, "
                f"expected {ct.sizeof(key_type)}/{ct.sizeof(value_type)}",
                hint="the pinned map is from another flowscope version; restart the agent",
            )
        return cls(fd, key_type, value_type, name=path.name, percpu=percpu, owns_fd=True)

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def lookup(self, key):
        value = self._slot_type()
        return value if libbpf.map_lookup(self.fd, key, value) else None

    def update(self, key, value, flags: int = libbpf.BPF_ANY) -> None:
        libbpf.map_update(self.fd, key, value, flags)

    def delete(self, key) -> bool:
        return libbpf.map_delete(self.fd, key)

    def keys(self) -> Iterator:
        """Keys one syscall each: for small maps; use dump() for big ones."""
        key = None
        while True:
            nxt = self.key_type()
            if not libbpf.map_next_key(self.fd, key, nxt):
                return
            yield nxt
            key = nxt

    def dump(self, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """All entries as (keys, values) numpy structured arrays, via BPF_MAP_LOOKUP_BATCH.

        The map may change while it is read (the kernel keeps writing); each entry is returned at
        most once with a value that was current when its batch was copied.
        """
        key_dt, value_dt = np.dtype(self.key_type), np.dtype(self._slot_type)
        keys = (self.key_type * chunk)()
        values = (self._slot_type * chunk)()
        token_in = (ct.c_uint8 * max(8, ct.sizeof(self.key_type)))()
        token_out = (ct.c_uint8 * max(8, ct.sizeof(self.key_type)))()
        out_k: list[np.ndarray] = []
        out_v: list[np.ndarray] = []
        first = True
        while True:
            try:
                n, done = libbpf.map_lookup_batch(
                    self.fd, None if first else token_in, token_out, keys, values, chunk
                )
            except OSError as e:
                if e.errno == errno.ENOSPC and chunk < (1 << 20):
                    return self.dump(chunk * 4)  # one hash bucket held more than a chunk
                raise
            out_k.append(np.frombuffer(keys, dtype=key_dt, count=n).copy())
            out_v.append(np.frombuffer(values, dtype=value_dt, count=n).copy())
            if done:
                break
            ct.memmove(token_in, token_out, ct.sizeof(token_out))
            first = False
        return np.concatenate(out_k), np.concatenate(out_v)

    def delete_many(self, keys: np.ndarray) -> int:
        """Delete these keys with BPF_MAP_DELETE_BATCH; keys already gone are skipped.

        Returns how many were deleted."""
        raw = np.ascontiguousarray(keys).tobytes()
        size = ct.sizeof(self.key_type)
        total = len(raw) // size
        buf = (ct.c_uint8 * len(raw)).from_buffer_copy(raw) if raw else None
        deleted = pos = 0
        while pos < total:
            view = (self.key_type * (total - pos)).from_buffer(buf, pos * size)
            n, err = libbpf.map_delete_batch(self.fd, view, total - pos)
            deleted += n
            pos += n
            if err == 0:
                break
            if err != errno.ENOENT:
                raise OSError(err, f"delete batch on {self.name}: {os.strerror(err)}")
            pos += 1  # the kernel (LRU, or its own half-pair repair) removed it first
        return deleted
