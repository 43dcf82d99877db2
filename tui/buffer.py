"""The bounded hand-over between a flow source (an asyncio task) and the UI's drain timer.

The source appends as fast as records come; the UI takes everything at most ten times a
second. When the UI falls behind by more than `capacity` records the oldest are dropped and
counted, so memory stays bounded and the user is told how many the screen never showed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from flowscope.flow.model import Record

DEFAULT_CAPACITY = 50_000  # 5 s of 10k flows/s


class FlowBuffer:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity: {capacity} is not a positive count")
        self.capacity = capacity
        self._items: deque[Record] = deque()
        self.received = 0  # every record ever put
        self.overflowed = 0  # dropped because the UI did not drain in time

    def put(self, record: Record) -> None:
        self._items.append(record)
        self.received += 1
        if len(self._items) > self.capacity:
            self._items.popleft()
            self.overflowed += 1

    def extend(self, records: Iterable[Record]) -> None:
        for record in records:
            self.put(record)

    def drain(self) -> list[Record]:
        """Everything held, oldest first; the buffer is empty afterwards."""
        out = list(self._items)
        self._items.clear()
        return out

    def __len__(self) -> int:
        return len(self._items)
