"""A node's flow stream: the last N flows in memory (collector.ring) and the readers following it.

Readers reach it through the Observer API (collector.observer, on the node's observer.sock),
the Kafka publisher (collector.publisher) and the relay; this module is what they share.

The producer is never slowed by readers: `publish` appends to the ring and to each follower's
bounded queue, both O(1); a follower whose queue is full loses records, and is told how many by a
LostEvent (source OBSERVER_EVENTS_QUEUE) in the place where they went missing.
`publish_batch` does the same for a whole columnar batch of the datapath's events
(collector.columns.FlowBatch) in O(1): followers queue the batch as a range and select from it
when they take it, in their reader's task, so no Flow is built unless a reader wants it; a
follower whose matcher has a columnar pre-filter (protofilter.FlowSelection.prefilter) builds
only the rows that pass it. `lost_counts` totals every loss reported through the stream, by
source (the Observer's ServerStatus reads it).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from collector.columns import FlowBatch
from collector.ring import DEFAULT_CAPACITY, Chunk, FlowRing, RingEntry
from collector.ringcolumns import batch_columns
from flowscope.flow.model import Flow, LostEvent, LostEventSource, Record

DEFAULT_CLIENT_QUEUE = 4096  # records a follower may fall behind before it loses some


class _Missed:
    """Stands in a follower's queue for records it lost there."""

    __slots__ = ("count",)

    def __init__(self, count: int = 1) -> None:
        self.count = count


class _Pending:
    """Stands in a follower's queue for entries start..stop of a chunk, not yet selected."""

    __slots__ = ("chunk", "start", "stop")

    def __init__(self, chunk: Chunk, start: int, stop: int) -> None:
        self.chunk = chunk
        self.start = start
        self.stop = stop


class Matcher(Protocol):
    """What a follower selects records with: observe's FlowFilter, the Observer API's
    FlowSelection (flowscope.flow.protofilter), or anything else that answers matches()."""

    def matches(self, record: Record) -> bool: ...


class Follower:
    """One following reader: a bounded queue of what it has yet to be sent.

    Records published one by one are selected when offered; a batch is queued as a range and
    selected in `take()`, so the bound counts the batch's records whether or not they would
    match, and a lost event for a batch the queue had no room for counts all its records."""

    def __init__(self, filter: Matcher, limit: int) -> None:
        self.filter = filter
        self.limit = limit
        self.queue: deque[RingEntry | _Missed | _Pending] = deque()
        self.size = 0  # records in the queue (entries and pending ranges)
        self.wakeup = asyncio.Event()
        self.closed = False

    def offer(self, entry: RingEntry) -> None:
        if not self.filter.matches(entry.record):
            return
        if self.size >= self.limit:
            self._miss(1)
        else:
            self.queue.append(entry)
            self.size += 1
        self.wakeup.set()

    def offer_chunk(self, chunk: Chunk) -> None:
        """A batch's records, selected later (in take())."""
        count = len(chunk)
        room = min(max(self.limit - self.size, 0), count)
        if room:
            self.queue.append(_Pending(chunk, 0, room))
            self.size += room
        if room < count:
            self._miss(count - room)
        self.wakeup.set()

    def _miss(self, count: int) -> None:
        tail = self.queue[-1] if self.queue else None
        if isinstance(tail, _Missed):
            tail.count += count
        else:
            self.queue.append(_Missed(count))  # over the limit, so the loss keeps its place

    def take(self) -> list[RingEntry | _Missed]:
        items: list[RingEntry | _Missed] = []
        matches = self.filter.matches
        prefilter = getattr(self.filter, "prefilter", None)
        for item in self.queue:
            if isinstance(item, _Pending):
                chunk = item.chunk
                rows: Iterable[int] = range(item.start, item.stop)
                if prefilter is not None and isinstance(chunk, FlowBatch):
                    mask = prefilter(batch_columns([chunk])[0])[item.start : item.stop]
                    rows = (np.flatnonzero(mask) + item.start).tolist()
                for i in rows:
                    entry = RingEntry(chunk, i)
                    if matches(entry.record):
                        items.append(entry)
            else:
                items.append(item)
        self.queue.clear()
        self.size = 0
        self.wakeup.clear()
        return items

    def take_runs(self) -> list[RingEntry | _Missed | tuple[Chunk, int, int]]:
        """As take(), but a batch's range comes whole, as (chunk, start, stop), unselected and
        unbuilt: for a follower of every record that encodes batches from their columns (the
        Kafka publisher, collector.publisher)."""
        items: list[RingEntry | _Missed | tuple[Chunk, int, int]] = [
            (item.chunk, item.start, item.stop) if isinstance(item, _Pending) else item
            for item in self.queue
        ]
        self.queue.clear()
        self.size = 0
        self.wakeup.clear()
        return items


class FlowStream:
    """The node's last `capacity` flows and its followers. Call publish* from the event loop's
    thread (the one its readers run on): it wakes followers with asyncio events."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        node_name: str = "",
        client_queue: int = DEFAULT_CLIENT_QUEUE,
    ) -> None:
        if client_queue < 1:
            raise ValueError(f"client_queue: {client_queue} is not a positive number of flows")
        self.ring = FlowRing(capacity)
        self.node_name = node_name
        self.client_queue = client_queue
        # every loss reported through the stream: publish_lost's, and a reader's with count_lost
        self.lost_counts: Counter[LostEventSource] = Counter()
        self._followers: set[Follower] = set()

    @property
    def seen(self) -> int:
        return self.ring.seen

    def publish(self, flows: Iterable[Flow]) -> None:
        """Add flows (oldest first); cheap: no encoding, no I/O, never waits for a reader."""
        entries = self.ring.extend(flows)
        for follower in self._followers:
            for entry in entries:
                follower.offer(entry)

    def publish_batch(self, batch: Chunk) -> None:
        """Add a batch of records built on demand (collector.columns.FlowBatch): O(1)."""
        if not len(batch):
            return
        self.ring.append_chunk(batch)
        for follower in self._followers:
            follower.offer_chunk(batch)

    def publish_lost(
        self,
        source: LostEventSource,
        num_events_lost: int,
        cpu: int | None = None,
    ) -> None:
        """Record that events were lost before they became flows (e.g. the BPF ring was full)."""
        event = LostEvent.now(source, num_events_lost, cpu, node_name=self.node_name)
        self.lost_counts[source] += num_events_lost
        entry = self.ring.append(event)
        for follower in self._followers:
            follower.offer(entry)

    def count_lost(self, source: LostEventSource, count: int) -> None:
        """Count a loss a reader met (a follower's full queue) that is not in the ring."""
        self.lost_counts[source] += count

    def follow(self, filter: Matcher) -> Follower:
        follower = Follower(filter, self.client_queue)
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)
        follower.closed = True
        follower.wakeup.set()

    @property
    def followers(self) -> int:
        return len(self._followers)


def remove_stale(path: Path) -> None:
    """Remove a socket left by a dead server; refuse to take over a live one."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"another flow stream already serves {path}")
