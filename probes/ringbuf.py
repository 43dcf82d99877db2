"""Read a BPF ring buffer map (BPF_MAP_TYPE_RINGBUF) from Python through mmap, in batches.

The kernel's layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write it);
from page 1 the producer position's page, then the data area mapped twice in a row so a record
that wraps reads as one contiguous slice. Each record: an 8-byte header (u32 length with the
BUSY and DISCARD bits, u32 page offset) and the payload, padded to 8 bytes.

`drain()` copies every committed record out in one pass and moves the consumer position once,
so the per-event cost is a slice, not a syscall. The map fd is pollable: `wait_readable()`
sleeps in asyncio until the kernel has data (programs that submit with BPF_RB_NO_WAKEUP rely on
the reader's poll timeout instead).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct

from probes import libbpf

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("<Q")
_HDR_LEN = struct.Struct("<I")


class RingBuffer:
    def __init__(self, map_fd: int) -> None:
        info = libbpf.map_info(map_fd)
        if info.map_type != libbpf.BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"map {info.name} is not a ring buffer (type {info.map_type})")
        self.fd = os.dup(map_fd)  # ours to close, whatever the caller does with theirs
        self.size = info.max_entries  # data area, a power of two of pages
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(
            self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._producer)[page:]

    def pending_bytes(self) -> int:
        return _U64.unpack_from(self._producer, 0)[0] - _U64.unpack_from(self._consumer, 0)[0]

    def drain(self, max_records: int = 1 << 16) -> list[bytes]:
        """Every committed record (up to max_records), oldest first; frees their space."""
        cons = _U64.unpack_from(self._consumer, 0)[0]
        prod = _U64.unpack_from(self._producer, 0)[0]
        out: list[bytes] = []
        data, mask = self._data, self._mask
        while cons < prod and len(out) < max_records:
            off = cons & mask
            header = _HDR_LEN.unpack_from(data, off)[0]
            if header & _BUSY:
                break  # reserved but not yet committed: everything after it waits too
            length = header & ~_DISCARD
            if not header & _DISCARD:
                out.append(bytes(data[off + _HDR : off + _HDR + length]))
            cons += (length + _HDR + 7) & ~7
        _U64.pack_into(self._consumer, 0, cons)
        return out

    async def wait_readable(self, timeout: float | None = None) -> bool:
        """Sleep until the kernel signals data (or the timeout passes); True when signalled."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(self.fd, lambda: ready.done() or ready.set_result(True))
        try:
            return await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(self.fd)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._data.release()
        self._producer.close()
        self._consumer.close()
        os.close(self.fd)
        self.fd = -1
