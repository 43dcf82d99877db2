"""The Prometheus exporter: Hubble's flow metrics and flowscope's pipeline metrics on /metrics.

Counting happens in `export` (on the event loop), serving in the same loop; `flush` has nothing
to make durable (a restarted exporter starts its counters over, as Prometheus expects of a
process restart), so offsets commit as soon as a batch was counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from exporters.exporter import ExportBatch
from exporters.prometheus.config import PrometheusConfig
from exporters.prometheus.handlers import Handler, build_handlers
from exporters.prometheus.nodestatus import follow_node_status
from exporters.prometheus.pipeline import PipelineMetrics
from exporters.prometheus.series import MetricSet
from exporters.prometheus.server import MetricsServer
from flowscope.flow.model import Flow

log = logging.getLogger(__name__)


class PrometheusExporter:
    def __init__(self, config: PrometheusConfig, name: str = "prometheus") -> None:
        self.name = name
        self.config = config
        self.metrics = MetricSet()
        self.handlers: list[Handler] = build_handlers(self.metrics, config.metrics)
        self.pipeline = PipelineMetrics(self.metrics) if config.pipeline else None
        host, port = config.host_port()
        self.server = MetricsServer(self.metrics, host, port)
        self._nodes_task: asyncio.Task | None = None

    @property
    def address(self) -> str:
        """Where /metrics is served (the real port once started, when the config said 0)."""
        return self.server.address

    async def start(self) -> None:
        await self.server.start()

    def count(self, batch: ExportBatch) -> None:
        """The synchronous part of export (benchmarks call it directly)."""
        handlers = self.handlers
        for record in batch.records:
            if isinstance(record, Flow):
                for handler in handlers:
                    handler.process(record)
        if self.pipeline is not None:
            self.pipeline.observe(batch.records, batch.lag)

    async def export(self, batch: ExportBatch) -> None:
        self.count(batch)

    async def flush(self) -> None:
        return None

    def watch_nodes(self, kafka: Any) -> None:
        """Follow the nodes topic of `kafka` (a KafkaConfig) for the spool-depth metrics; the
        runner calls this when its source is Kafka. Ends with close()."""
        if self.pipeline is None or self._nodes_task is not None:
            return
        self._nodes_task = asyncio.get_running_loop().create_task(
            follow_node_status(kafka, self.pipeline.node_status), name="prometheus-nodes"
        )

    async def close(self) -> None:
        if self._nodes_task is not None:
            self._nodes_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nodes_task
            self._nodes_task = None
        await self.server.close()

    async def reconfigure(self, config: Any) -> bool:
        """Counters cannot change their labels in place: any change but none is a rebuild
        (the runner closes this exporter, freeing the port, and builds a new one)."""
        return config == self.config
