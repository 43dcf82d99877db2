"""The flow ring: the last N records a node saw, oldest first, each encoded to JSON at most once.

Appending is O(1) and never allocates more than one small entry, so the producer (the node agent's
event loop) can call it for every decoded flow; encoding waits until a reader asks for the record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from flowscope.flow.model import Record


class RingEntry:
    """One record in the ring, with its GetFlowsResponse line once someone needed it."""

    __slots__ = ("_line", "record")

    def __init__(self, record: Record) -> None:
        self.record = record
        self._line: bytes | None = None

    def line(self) -> bytes:
        if self._line is None:
            self._line = self.record.to_json().encode() + b"\n"
        return self._line


class FlowRing:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: {capacity} is not a positive number of flows")
        self._entries: deque[RingEntry] = deque(maxlen=capacity)
        self.seen = 0  # records ever appended, including those since overwritten

    @property
    def capacity(self) -> int:
        return self._entries.maxlen or 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, record: Record) -> RingEntry:
        entry = RingEntry(record)
        self._entries.append(entry)
        self.seen += 1
        return entry

    def extend(self, records: Iterable[Record]) -> list[RingEntry]:
        return [self.append(r) for r in records]

    def last(
        self, n: int | None = None, match: Callable[[Record], bool] | None = None
    ) -> list[RingEntry]:
        """The newest `n` entries (all when None) that `match`, oldest first."""
        if n is not None and n <= 0:
            return []
        if match is None:
            entries = list(self._entries)
            return entries if n is None else entries[-n:]
        picked: list[RingEntry] = []
        for entry in reversed(self._entries):
            if match(entry.record):
                picked.append(entry)
                if n is not None and len(picked) >= n:
                    break
        picked.reverse()
        return picked
