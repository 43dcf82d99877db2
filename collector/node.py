"""One node's collector: drains the kernel's event rings in batches, names what it finds, and
publishes flow records to the node's flow stream (which `flowscope observe` reads).

Three sources, each with its own ring: the datapath (policy verdicts, drops, traces), the
tracepoint probes (kernel drops with their reason, TCP state changes, retransmits) and the socket
LB (one TRANSLATED event per service translation). Events the kernel could not queue (ring full)
are counted there per CPU; the collector turns each increase into a LostEvent record, so a gap in
the stream is always visible.

The datapath's ring is the hot one: its fixed-size records come out as one numpy array per
drain (RingBuffer.drain_array), are named per distinct key and appended to the flow ring as one
columnar batch (collector.columns), with no Python work per event. While events keep coming the
ring is polled on a short timer (BUSY_POLL) rather than woken by the kernel at every record; an
idle ring is waited on (epoll) so that an idle node costs nothing. The two other rings are low
volume and are read record by record.

The socket LB's ring is drained by the datapath's task, just before each datapath batch: a
connect() is translated before its first packet leaves, so the translation is known (in
`translations`) by the time that packet's flow is named with its service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from collector.columns import DatapathNamer
from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.kernelflows import (
    kernel_ends,
    monotonic_to_wall_offset,
    named_kernel_flow,
    reportable,
)
from collector.ring import DeferredChunk
from collector.socklb_flows import translation_flow
from collector.translations import RecentTranslations
from dataplane.maps import flowevent
from flowscope.flow.model import Flow, LostEventSource
from probes import socklb
from probes.ringbuf import RingBuffer

log = logging.getLogger(__name__)

BATCH = 4096  # records per drain: bounds the time the event loop spends per wake-up
ARRAY_BATCH = 16384  # the same for the datapath's columnar drains (~100 ns an event)
POLL = 0.1  # seconds: also the longest a record waits when the kernel skips the wake-up
# seconds between drains while events keep coming. Measured (bench.collector, 1M events/s):
# 2 ms costs ~11% of a core, 5 ms ~7.5% (fewer, larger batches); the datapath's 4 MiB ring
# holds ~58k events, 5 ms of 11M events/s.
BUSY_POLL = 0.005


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

    async def run_datapath(
        self,
        ring: RingBuffer,
        lost: Callable[[], int],
        socket_lb: tuple[RingBuffer, Callable[[], int]] | None = None,
    ) -> None:
        """Drain the datapath's ring; with `socket_lb` (its ring and lost-event counter, as
        SocketLB.ring() and SocketLB.lost_events give them) the socket LB's ring first."""
        first = [self._socket_lb_source(*socket_lb)] if socket_lb is not None else []
        source = _Source("datapath", ring, lambda stats: self.drain_datapath(ring, stats), lost)
        await self._run(source, first)

    def drain_datapath(self, ring: RingBuffer, stats: SourceStats | None = None) -> int:
        """Move every committed datapath event into the stream, a columnar batch per drain;
        the events taken (the collector's loop calls this; so does the benchmark)."""
        taken = 0
        while True:
            events = ring.drain_array(flowevent.EVENT_DTYPE, ARRAY_BATCH, copy=True)
            count = len(events)
            if not count:
                break
            taken += count
            try:
                self.stream.publish_batch(self.namer.batch(events))
            except Exception:  # a record we cannot name must not stop the collector
                log.exception("could not decode %d datapath records", count)
                self.stream.publish_lost(LostEventSource.OBSERVER_EVENTS_QUEUE, count)
            if count < ARRAY_BATCH:
                break
        if stats is not None:
            stats.records += taken
        return taken

    async def run_socket_lb(self, ring: RingBuffer, lost: Callable[[], int]) -> None:
        """Drain the socket LB's ring alone (when there is no datapath ring to pair it with)."""
        await self._run(self._socket_lb_source(ring, lost))

    def _socket_lb_source(self, ring: RingBuffer, lost: Callable[[], int]) -> _Source:
        def to_flows(records: list[bytes]) -> list[Flow]:
            args = (self.enricher, self.node, self._wall_offset, self.translations)
            return [translation_flow(t, *args) for t in socklb.decode_events(records)]

        return _Source("socket-lb", ring, self._record_drain("socket-lb", ring, to_flows), lost)

    async def run_tracepoints(self, probes) -> None:
        node, offset = self.node, self._wall_offset

        def to_flows(records: list[bytes]) -> DeferredChunk:
            # named now, built when read: a TCP state change per connection end adds up
            named = [
                (ev, kernel_ends(ev, self.enricher))
                for ev in probes.decode(records)
                if reportable(ev, self.datapath_device)
            ]
            return DeferredChunk(named, lambda item: named_kernel_flow(*item, node, offset))

        drain = self._record_drain("tracepoints", probes.ring, to_flows)
        await self._run(_Source("tracepoints", probes.ring, drain, probes.lost_events))

    async def _run(self, source: _Source, first: list[_Source] | None = None) -> None:
        """Wait for `source`'s ring; at each wake-up drain the `first` sources, then it. While
        records keep coming, poll every BUSY_POLL instead of waiting for the kernel's wake-up."""
        sources = [*(first or ()), source]
        for s in sources:
            self.stats.sources.setdefault(s.name, SourceStats(lost=s.lost()))
        busy = False
        while True:
            if busy:
                await asyncio.sleep(BUSY_POLL)
            else:
                await source.ring.wait_readable(POLL)
            busy = False
            for s in sources:
                busy = self._drain(s) > 0 or busy
            await asyncio.sleep(0)

    def _record_drain(
        self,
        name: str,
        ring: RingBuffer,
        to_flows: Callable[[list[bytes]], list[Flow] | DeferredChunk],
    ) -> Callable[[SourceStats], int]:
        """A drain of a ring of variable-size records, record by record."""

        def drain(stats: SourceStats) -> int:
            taken = 0
            while records := ring.drain(BATCH):
                taken += len(records)
                try:
                    flows = to_flows(records)
                    if isinstance(flows, DeferredChunk):
                        self.stream.publish_batch(flows)
                    else:
                        self.stream.publish(flows)
                except Exception:  # a record we cannot name must not stop the collector
                    log.exception("could not decode %d %s records", len(records), name)
                    self.stream.publish_lost(LostEventSource.OBSERVER_EVENTS_QUEUE, len(records))
                if len(records) < BATCH:
                    break
            stats.records += taken
            return taken

        return drain

    def _drain(self, source: _Source) -> int:
        stats = self.stats.sources[source.name]
        taken = source.drain(stats)
        now_lost = source.lost()
        if now_lost > stats.lost:
            self.stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, now_lost - stats.lost)
            stats.lost = now_lost
        return taken
