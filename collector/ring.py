"""The flow ring: the last N records a node saw, oldest first, each built and encoded at most once.

The ring holds chunks, not entries: a chunk is either a list of records already built (the
low-volume sources, lost events) or a columnar batch of the datapath's events
(collector.columns.FlowBatch) whose Flow objects are only built when a reader asks for them.
Appending a chunk is O(1) whatever its size, so the collector's hot path never pays per event;
a RingEntry is a (chunk, index) view made when a reader walks the ring.

Every record appended gets a sequence number (0 for the first ever, `seen` for the next); the
held ones are first_seq .. seen - 1. Readers that keep their own view of the ring (the
Observer's columnar index, collector.ringcolumns) follow it by these numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np

from flowscope.errors import UsageError
from flowscope.flow.model import Record

DEFAULT_CAPACITY = 65535  # Hubble's default ring size
CAPACITY_KEY = "flow_ring_capacity"  # ClusterInfo.extra: the agents' ring size


class Chunk(Protocol):
    """Records appended together, each readable by its index."""

    def __len__(self) -> int: ...
    def record(self, index: int) -> Record: ...
    def line(self, index: int) -> bytes: ...


class RecordChunk:
    """Records already built, their JSON lines made on first demand."""

    __slots__ = ("_lines", "records")

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self._lines: list[bytes | None] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def record(self, index: int) -> Record:
        return self.records[index]

    def line(self, index: int) -> bytes:
        if self._lines is None:
            self._lines = [None] * len(self.records)
        found = self._lines[index]
        if found is None:
            found = self._lines[index] = self.records[index].to_json().encode() + b"\n"
        return found


class RingEntry:
    """One record in the ring: built, and encoded to its GetFlowsResponse line, on demand."""

    __slots__ = ("chunk", "index")

    def __init__(self, chunk: Chunk, index: int) -> None:
        self.chunk = chunk
        self.index = index

    @classmethod
    def of(cls, record: Record) -> RingEntry:
        """An entry of a record alone (outside any ring)."""
        return cls(RecordChunk([record]), 0)

    @property
    def record(self) -> Record:
        return self.chunk.record(self.index)

    def line(self) -> bytes:
        return self.chunk.line(self.index)


class FlowRing:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: {capacity!r} is not a positive number of flows")
        self.capacity = capacity
        self._chunks: deque[Chunk] = deque()
        self._starts: deque[int] = deque()  # each chunk's first sequence number
        self._head = 0  # entries of the oldest chunk already pushed out
        self._len = 0
        self.seen = 0  # records ever appended, including those since overwritten

    def __len__(self) -> int:
        return self._len

    def append(self, record: Record) -> RingEntry:
        chunk = RecordChunk([record])
        self.append_chunk(chunk)
        return RingEntry(chunk, 0)

    def extend(self, records: Iterable[Record]) -> list[RingEntry]:
        chunk = RecordChunk(list(records))
        self.append_chunk(chunk)
        return [RingEntry(chunk, i) for i in range(len(chunk))]

    def append_chunk(self, chunk: Chunk) -> None:
        """Add a chunk's records (oldest first); the oldest held records make room. O(1)."""
        size = len(chunk)
        if not size:
            return
        self._chunks.append(chunk)
        self._starts.append(self.seen)
        self._len += size
        self.seen += size
        over = self._len - self.capacity
        while over > 0:
            oldest = self._chunks[0]
            left = len(oldest) - self._head
            if left <= over:
                self._chunks.popleft()
                self._starts.popleft()
                self._head = 0
                self._len -= left
                over -= left
            else:
                self._head += over
                self._len -= over
                over = 0

    @property
    def first_seq(self) -> int:
        """The sequence number of the oldest held record."""
        return self.seen - self._len

    def chunks_from(self, seq: int) -> list[tuple[int, Chunk]]:
        """The held chunks that start at `seq` or later, oldest first, with their first
        sequence numbers (the oldest may be partly pushed out: see first_seq)."""
        out: list[tuple[int, Chunk]] = []
        for start, chunk in zip(reversed(self._starts), reversed(self._chunks), strict=True):
            if start < seq:
                break
            out.append((start, chunk))
        out.reverse()
        return out

    def held_chunks(self) -> tuple[list[Chunk], np.ndarray]:
        """The held chunks, oldest first, and their first sequence numbers (int64)."""
        return list(self._chunks), np.fromiter(self._starts, np.int64, len(self._starts))

    def _newest_first(self) -> Iterator[RingEntry]:
        oldest = self._chunks[0] if self._chunks else None
        for chunk in reversed(self._chunks):
            stop = self._head if chunk is oldest else 0
            for i in range(len(chunk) - 1, stop - 1, -1):
                yield RingEntry(chunk, i)

    def entries(self) -> list[RingEntry]:
        """Every held entry, oldest first."""
        out: list[RingEntry] = []
        head = self._head
        for chunk in self._chunks:
            out.extend(RingEntry(chunk, i) for i in range(head, len(chunk)))
            head = 0
        return out

    def last(
        self, n: int | None = None, match: Callable[[Record], bool] | None = None
    ) -> list[RingEntry]:
        """The newest `n` entries (all when None) that `match`, oldest first."""
        if n is not None and n <= 0:
            return []
        if match is None and n is None:
            return self.entries()
        picked: list[RingEntry] = []
        for entry in self._newest_first():
            if match is None or match(entry.record):
                picked.append(entry)
                if n is not None and len(picked) >= n:
                    break
        picked.reverse()
        return picked


def capacity_of(extra: dict) -> int:
    """The ring size a cluster's agents use (ClusterInfo.extra[CAPACITY_KEY], else the
    default); UsageError naming the key when it is not a positive whole number."""
    raw = extra.get(CAPACITY_KEY)
    if raw is None:
        return DEFAULT_CAPACITY
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise UsageError(
            f"{CAPACITY_KEY}: {raw!r} is not a positive number of flows",
            hint=f"set {CAPACITY_KEY} in the cluster's extra settings to a whole number "
            f"of flows each node keeps (default {DEFAULT_CAPACITY}), or remove it",
        )
    return raw
