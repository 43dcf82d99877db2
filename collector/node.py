"""One node's collector: drains the kernel's event rings in batches, names what it finds, and
publishes flow records to the node's flow stream (which `flowscope observe` reads).

Three sources, each with its own ring: the datapath (policy verdicts, drops, traces), the
tracepoint probes (kernel drops with their reason, TCP state changes, retransmits) and the socket
LB (one TRANSLATED event per service translation). Events the kernel could not queue (ring full)
are counted there per CPU; the collector turns each increase into a LostEvent record, so a gap in
the stream is always visible.

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

from collector.datapath_flows import datapath_flow
from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.kernelflows import kernel_flow, monotonic_to_wall_offset, reportable
from collector.socklb_flows import translation_flow
from collector.translations import RecentTranslations
from dataplane.maps import flowevent
from flowscope.flow.model import Flow, LostEventSource
from probes import socklb
from probes.ringbuf import RingBuffer

log = logging.getLogger(__name__)

BATCH = 4096  # records per drain: bounds the time the event loop spends per wake-up
POLL = 0.1  # seconds: also the longest a record waits when the kernel skips the wake-up


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
    to_flows: Callable[[list[bytes]], list[Flow]]
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

    async def run_datapath(
        self,
        ring: RingBuffer,
        lost: Callable[[], int],
        socket_lb: tuple[RingBuffer, Callable[[], int]] | None = None,
    ) -> None:
        """Drain the datapath's ring; with `socket_lb` (its ring and lost-event counter, as
        SocketLB.ring() and SocketLB.lost_events give them) the socket LB's ring first."""

        def to_flows(records: list[bytes]) -> list[Flow]:
            rows = flowevent.events(flowevent.decode(records))
            args = (self.enricher, self.node, self._wall_offset, self.translations)
            return [datapath_flow(ev, *args) for ev in rows]

        first = [self._socket_lb_source(*socket_lb)] if socket_lb is not None else []
        await self._run(_Source("datapath", ring, to_flows, lost), first)

    async def run_socket_lb(self, ring: RingBuffer, lost: Callable[[], int]) -> None:
        """Drain the socket LB's ring alone (when there is no datapath ring to pair it with)."""
        await self._run(self._socket_lb_source(ring, lost))

    def _socket_lb_source(self, ring: RingBuffer, lost: Callable[[], int]) -> _Source:
        def to_flows(records: list[bytes]) -> list[Flow]:
            args = (self.enricher, self.node, self._wall_offset, self.translations)
            return [translation_flow(t, *args) for t in socklb.decode_events(records)]

        return _Source("socket-lb", ring, to_flows, lost)

    async def run_tracepoints(self, probes) -> None:
        def to_flows(records: list[bytes]) -> list[Flow]:
            return [
                kernel_flow(ev, self.enricher, self.node, self._wall_offset)
                for ev in probes.decode(records)
                if reportable(ev, self.datapath_device)
            ]

        await self._run(_Source("tracepoints", probes.ring, to_flows, probes.lost_events))

    async def _run(self, source: _Source, first: list[_Source] | None = None) -> None:
        """Wait for `source`'s ring; at each wake-up drain the `first` sources, then it."""
        sources = [*(first or ()), source]
        for s in sources:
            self.stats.sources.setdefault(s.name, SourceStats(lost=s.lost()))
        while True:
            await source.ring.wait_readable(POLL)
            for s in sources:
                self._drain(s)
            await asyncio.sleep(0)

    def _drain(self, source: _Source) -> None:
        stats = self.stats.sources[source.name]
        while records := source.ring.drain(BATCH):
            stats.records += len(records)
            try:
                self.stream.publish(source.to_flows(records))
            except Exception:  # a record we cannot name must not stop the collector
                log.exception("could not decode %d %s records", len(records), source.name)
                self.stream.publish_lost(LostEventSource.OBSERVER_EVENTS_QUEUE, len(records))
            if len(records) < BATCH:
                break
        now_lost = source.lost()
        if now_lost > stats.lost:
            self.stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, now_lost - stats.lost)
            stats.lost = now_lost
