"""One node's collector: drains the kernel's event rings in batches, names what it finds, and
publishes flow records to the node's flow stream (which `flowscope observe` reads).

Two sources, each with its own ring: the datapath (policy verdicts, drops, traces) and the
tracepoint probes (kernel drops with their reason, TCP state changes, retransmits). Events the
kernel could not queue (ring full) are counted there per CPU; the collector turns each increase
into a LostEvent record, so a gap in the stream is always visible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.datapath_flows import datapath_flow
from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.kernelflows import kernel_flow, monotonic_to_wall_offset, reportable
from dataplane.maps import flowevent
from flowscope.flow.model import Flow, LostEventSource
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
        self._wall_offset = monotonic_to_wall_offset()

    async def run_datapath(self, ring: RingBuffer, lost: Callable[[], int]) -> None:
        def to_flows(records: list[bytes]) -> list[Flow]:
            rows = flowevent.events(flowevent.decode(records))
            return [datapath_flow(ev, self.enricher, self.node, self._wall_offset) for ev in rows]

        await self._run("datapath", ring, to_flows, lost)

    async def run_tracepoints(self, probes) -> None:
        def to_flows(records: list[bytes]) -> list[Flow]:
            return [
                kernel_flow(ev, self.enricher, self.node, self._wall_offset)
                for ev in probes.decode(records)
                if reportable(ev, self.datapath_device)
            ]

        await self._run("tracepoints", probes.ring, to_flows, probes.lost_events)

    async def _run(
        self,
        name: str,
        ring: RingBuffer,
        to_flows: Callable[[list[bytes]], list[Flow]],
        lost: Callable[[], int],
    ) -> None:
        stats = self.stats.sources.setdefault(name, SourceStats(lost=lost()))
        while True:
            await ring.wait_readable(POLL)
            while records := ring.drain(BATCH):
                stats.records += len(records)
                try:
                    self.stream.publish(to_flows(records))
                except Exception:  # a record we cannot name must not stop the collector
                    log.exception("could not decode %d %s records", len(records), name)
                    self.stream.publish_lost(LostEventSource.OBSERVER_EVENTS_QUEUE, len(records))
                if len(records) < BATCH:
                    break
            now_lost = lost()
            if now_lost > stats.lost:
                self.stream.publish_lost(
                    LostEventSource.PERF_EVENT_RING_BUFFER, now_lost - stats.lost
                )
                stats.lost = now_lost
            await asyncio.sleep(0)
