"""What the flow ring's columnar chunks share (the datapath's FlowBatch, the tracepoints'
KernelBatch, the socket LB's TranslationBatch): the kernel's records as one numpy structured
array, read back a block of rows at a time, and each Flow and JSON line built once, when a reader
first asks for it."""

from __future__ import annotations

import numpy as np

from flowscope.flow.model import Flow

ROW_BLOCK = 256  # rows turned into Python values together (one tolist() per block, not per row)


class ColumnBatch:
    """A chunk of the flow ring (collector.ring) holding `events`; subclasses name them and
    build a row's Flow in `_build`."""

    __slots__ = ("_lines", "_records", "_rows", "events", "node", "wall_offset")

    ROW_FIELDS: tuple[str, ...] | None = None  # the columns `_row` gives (None: all of them)

    def __init__(self, events: np.ndarray, node: str, wall_offset: int) -> None:
        self.events = events  # owned by the batch
        self.node = node
        self.wall_offset = wall_offset  # added to the kernel's monotonic times
        self._records: list[Flow | None] | None = None
        self._rows: dict[int, list[tuple]] | None = None
        self._lines: list[bytes | None] | None = None

    def __len__(self) -> int:
        return len(self.events)

    @property
    def time_ns(self) -> np.ndarray:
        """Each event's time, nanoseconds since the epoch."""
        return self.events["ktime_ns"].astype(np.int64) + self.wall_offset

    def _row(self, index: int) -> tuple:
        # readers mostly walk the ring in order: a block's tolist() costs far less than a row's
        block, at = divmod(index, ROW_BLOCK)
        if self._rows is None:
            self._rows = {}
        rows = self._rows.get(block)
        if rows is None:
            part = self.events[block * ROW_BLOCK : (block + 1) * ROW_BLOCK]
            if self.ROW_FIELDS is not None:
                part = part[list(self.ROW_FIELDS)]
            rows = self._rows[block] = part.tolist()
        return rows[at]

    def _build(self, index: int) -> Flow:
        raise NotImplementedError

    def record(self, index: int) -> Flow:
        if self._records is None:
            self._records = [None] * len(self.events)
        flow = self._records[index]
        if flow is None:
            flow = self._records[index] = self._build(index)
        return flow

    def line(self, index: int) -> bytes:
        if self._lines is None:
            self._lines = [None] * len(self.events)
        line = self._lines[index]
        if line is None:
            line = self._lines[index] = self.record(index).to_json().encode() + b"\n"
        return line
