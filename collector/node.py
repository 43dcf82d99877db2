"""One node's collector: drains the kernel's event rings in batches, names what it finds, and
publishes flow records to the node's flow stream (which `flowscope observe` reads).

Three sources, each with its own ring: the datapath (policy verdicts, drops, traces), the
tracepoint probes (kernel drops with their reason, TCP state changes, retransmits) and the socket
LB (one TRANSLATED event per service translation). Events the kernel could not queue (ring full)
are counted there per CPU; the collector turns each increase into a LostEvent record, so a gap in
the stream is always visible.

Every ring holds fixed-size records: each drain comes out as one numpy array
(RingBuffer.drain_array), is named per distinct key and appended to the flow ring as one
columnar batch whose Flow objects are built when read (collector.columns for the datapath,
collector.kernelcolumns for the tracepoints, collector.translationcolumns for the socket LB),
with no Python work per event: a connection flood makes a datapath event or two, four TCP state
changes and a translation per connection. While events keep coming a ring is polled on a short
timer (5 ms, doubling up to 20 ms while a ring would not fill a tenth meanwhile) rather than woken
by the kernel at every record; an idle ring is waited on (epoll) so that an idle node costs
nothing.

The socket LB's ring is drained by the datapath's task, just before each datapath batch: a
connect() is translated before its first packet leaves, so the translation is known (in
`translations`) by the time that packet's flow is named with its service.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from collector.columns import DatapathNamer
from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.kernelcolumns import KernelNamer
from collector.kernelflows import monotonic_to_wall_offset
from collector.ring import Chunk
from collector.translationcolumns import TranslationNamer
from collector.translations import RecentTranslations
from dataplane.maps import flowevent, kernelevent
from flowscope.flow.model import LostEventSource
from probes import socklb
from probes.ringbuf import RingBuffer

if TYPE_CHECKING:
    from probes.tracepoints import TracepointProbes

log = logging.getLogger(__name__)

BATCH = 4096  # records per drain: bounds the time the event loop spends per wake-up
ARRAY_BATCH = 16384  # the same for the datapath's columnar drains (~100 ns an event)
POLL = 0.1  # seconds: also the longest a record waits when the kernel skips the wake-up
# seconds between drains while events keep coming: as long as the rings allow. Each drain has a
# fixed cost (~50-150 us a ring: numpy calls, the lost counters' syscalls) that at a few
# thousand connections/s outweighed the events' own (bench.collector, 1M events/s: 2 ms cost
# ~11% of a core, 5 ms ~7.5%). The interval is shortened so that at the rate of the last drain
# a ring fills to RING_FILL at most, leaving the rest for a loop held up by a loaded machine:
# the datapath's 4 MiB ring (~58k events) at 1M events/s -> ~6 ms.
BUSY_POLL = 0.02
BUSY_POLL_FIRST = 0.005  # after an idle wait; then doubling up to BUSY_POLL
BUSY_POLL_MIN = 0.002
RING_FILL = 0.1
# seconds between reads of a ring's lost-event counter (a per-CPU map lookup, ~20-40 us: it was
# a tenth of a busy collector's time when read at every drain); a loss shows in the stream at
# most this late
LOST_CHECK = 0.1


@dataclass
class SourceStats:
    records: int = 0
    lost: int = 0  # as last read from the kernel's counters


@dataclass
class CollectorStats:
    sources: dict[str, SourceStats] = field(default_factory=dict)


class _Source(NamedTuple):
    name: str
    ring: RingBuffer
    drain: Callable[[SourceStats], int]  # ring -> stream; the records it took
    lost: Callable[[], int]
    record_size: int  # bytes of one record in the ring (its 8-byte header included)

    @property
    def capacity(self) -> int:
        """Records the ring holds."""
        return self.ring.size // self.record_size


def _ring_bytes(dtype: np.dtype) -> int:
    return (np.dtype(dtype).itemsize + 8 + 7) & ~7  # BPF ring records: header, 8-byte aligned


class NodeCollector:
    def __init__(
        self,
        node: str,
        enricher: Enricher,
        stream: FlowStream,
        datapath_device: Callable[[int, int], bool] = lambda _netns, _ifindex: False,
    ) -> None:
        self.node = node
        self.datapath_device = datapath_device  # (netns inode, ifindex) carries our programs
        self.enricher = enricher
        self.stream = stream
        self.stats = CollectorStats()
        self.translations = RecentTranslations()
        self._wall_offset = monotonic_to_wall_offset()
        self.namer = DatapathNamer(enricher, node, self._wall_offset, self.translations)
        self._lost_due: dict[str, float] = {}  # source -> when to read its lost counter next

    async def run_datapath(
        self,
        ring: RingBuffer,
        lost: Callable[[], int],
        socket_lb: tuple[RingBuffer, Callable[[], int]] | None = None,
    ) -> None:
        """Drain the datapath's ring; with `socket_lb` (its ring and lost-event counter, as
        SocketLB.ring() and SocketLB.lost_events give them) the socket LB's ring first."""
        first = [self._socket_lb_source(*socket_lb)] if socket_lb is not None else []
        source = _Source(
            "datapath",
            ring,
            lambda stats: self.drain_datapath(ring, stats),
            lost,
            _ring_bytes(flowevent.EVENT_DTYPE),
        )
        await self._run(source, first)

    def drain_datapath(self, ring: RingBuffer, stats: SourceStats | None = None) -> int:
        """Move every committed datapath event into the stream, a columnar batch per drain;
        the events taken (the collector's loop calls this; so does the benchmark)."""
        read = functools.partial(ring.drain_array, flowevent.EVENT_DTYPE, copy=True)
        return self._drain_batches("datapath", read, ARRAY_BATCH, self.namer.batch, stats)

    async def run_socket_lb(self, ring: RingBuffer, lost: Callable[[], int]) -> None:
        """Drain the socket LB's ring alone (when there is no datapath ring to pair it with)."""
        await self._run(self._socket_lb_source(ring, lost))

    def _socket_lb_source(self, ring: RingBuffer, lost: Callable[[], int]) -> _Source:
        namer = TranslationNamer(self.enricher, self.node, self._wall_offset, self.translations)
        read = functools.partial(socklb.read_events, ring)

        def drain(stats: SourceStats) -> int:
            return self._drain_batches("socket-lb", read, BATCH, namer.batch, stats)

        return _Source("socket-lb", ring, drain, lost, _ring_bytes(socklb.EVENT_DTYPE))

    async def run_tracepoints(self, probes: TracepointProbes) -> None:
        """Drain the tracepoint probes' ring (probes.ring, probes.reason_names and
        probes.lost_events are all this uses)."""
        namer = KernelNamer(
            self.enricher, self.node, self._wall_offset, probes.reason_names, self.datapath_device
        )
        read = functools.partial(probes.ring.drain_array, kernelevent.EVENT_DTYPE, copy=True)

        def drain(stats: SourceStats) -> int:
            return self._drain_batches("tracepoints", read, BATCH, namer.batch, stats)

        size = _ring_bytes(kernelevent.EVENT_DTYPE)
        await self._run(_Source("tracepoints", probes.ring, drain, probes.lost_events, size))

    async def _run(self, source: _Source, first: list[_Source] | None = None) -> None:
        """Wait for `source`'s ring; at each wake-up drain the `first` sources, then it. While
        records keep coming, poll on a timer (BUSY_POLL, shorter when the last drains say a
        ring would fill faster) instead of waiting for the kernel's wake-up."""
        loop = asyncio.get_running_loop()
        sources = [*(first or ()), source]
        for s in sources:
            self.stats.sources.setdefault(s.name, SourceStats(lost=s.lost()))
        busy = False
        interval = BUSY_POLL_FIRST
        last = loop.time()
        while True:
            if busy:
                await asyncio.sleep(interval)
            else:
                await source.ring.wait_readable(POLL)
            now = loop.time()
            elapsed, last = now - last, now
            # from idle, the first interval is short: the rate is not known yet
            longest = min(2 * interval, BUSY_POLL) if busy else BUSY_POLL_FIRST
            busy = False
            interval = longest
            for s in sources:
                taken = self._drain(s)
                if taken:
                    busy = True
                    # at this rate, the ring would be RING_FILL full after `interval`
                    interval = min(interval, RING_FILL * s.capacity * elapsed / taken)
            interval = max(interval, BUSY_POLL_MIN)
            await asyncio.sleep(0)

    def _drain_batches(
        self,
        name: str,
        read: Callable[[int], np.ndarray],
        limit: int,
        batch: Callable[[np.ndarray], Chunk],
        stats: SourceStats | None,
    ) -> int:
        """Move every committed record of a ring into the stream: `read(limit)` drains up to
        `limit` records as one array, `batch` names it. Returns the records taken."""
        taken = 0
        while True:
            events = read(limit)
            count = len(events)
            if not count:
                break
            taken += count
            try:
                self.stream.publish_batch(batch(events))
            except Exception:  # a record we cannot name must not stop the collector
                log.exception("could not decode %d %s records", count, name)
                self.stream.publish_lost(LostEventSource.COLLECTOR_DECODE, count)
            if count < limit:
                break
        if stats is not None:
            stats.records += taken
        return taken

    def _drain(self, source: _Source) -> int:
        stats = self.stats.sources[source.name]
        taken = source.drain(stats)
        now = time.monotonic()
        if now < self._lost_due.get(source.name, 0.0):
            return taken
        self._lost_due[source.name] = now + LOST_CHECK
        now_lost = source.lost()
        if now_lost > stats.lost:
            self.stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, now_lost - stats.lost)
            stats.lost = now_lost
        return taken
