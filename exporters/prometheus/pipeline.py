"""flowscope's own metrics about the pipeline the flows came through (not about the flows):

flowscope_export_records_total{type}           records the exporter was handed (flow,
                                                lost_events)
flowscope_lost_events_total{source,node}       events lost before anyone saw them, from the
                                                LostEvent records (Hubble's source names)
flowscope_consumer_lag_records{topic,partition} records on the broker this consumer group
                                                has not read yet (ExportBatch.lag)
flowscope_spool_depth_records{node}            records a node's publisher holds for the
flowscope_spool_depth_bytes{node}              broker, and their bytes (NodeStatus, latest)
flowscope_spool_max_bytes{node}                the spool's bound
flowscope_node_status_timestamp_seconds{node}  when that node last reported
flowscope_node_agent_up{node}                  1 while its last status is started/running
"""

from __future__ import annotations

from collections.abc import Mapping

from exporters.prometheus.series import MetricSet
from flowscope.flow.model import Flow, LostEvent, LostEventSource, Record

_RUNNING = (1, 2)  # kafka.v1.AgentState AGENT_STARTED, AGENT_RUNNING


class PipelineMetrics:
    def __init__(self, metrics: MetricSet) -> None:
        self.records = metrics.counter(
            "flowscope_export_records_total", "Stream records handed to the exporter", ("type",)
        )
        self.lost = metrics.counter(
            "flowscope_lost_events_total",
            "Events lost before any reader saw them, by where they were lost",
            ("source", "node"),
        )
        self.hubble_lost = metrics.counter(
            "hubble_lost_events_total", "Number of lost events", ("source",)
        )
        self.lag = metrics.gauge(
            "flowscope_consumer_lag_records",
            "Records on the broker this exporter's consumer group has not read yet",
            ("topic", "partition"),
        )
        self.spool_records = metrics.gauge(
            "flowscope_spool_depth_records",
            "Records a node's publisher holds for the broker (its spool)",
            ("node",),
        )
        self.spool_bytes = metrics.gauge(
            "flowscope_spool_depth_bytes", "Bytes of a node's publisher spool", ("node",)
        )
        self.spool_max = metrics.gauge(
            "flowscope_spool_max_bytes", "The bound of a node's publisher spool", ("node",)
        )
        self.status_time = metrics.gauge(
            "flowscope_node_status_timestamp_seconds",
            "When a node's publisher last reported its status",
            ("node",),
        )
        self.agent_up = metrics.gauge(
            "flowscope_node_agent_up",
            "1 while a node's last status says its agent runs, 0 after it stopped",
            ("node",),
        )

    def observe(self, records: tuple[Record, ...], lag: Mapping[tuple[str, int], int]) -> None:
        flows = 0
        for r in records:
            if isinstance(r, Flow):
                flows += 1
            elif isinstance(r, LostEvent):
                self.records.inc(("lost_events",))
                source = _source_name(r.source)
                self.lost.inc((source, r.node_name), r.num_events_lost)
                self.hubble_lost.inc((source.lower(),), r.num_events_lost)
        if flows:
            self.records.inc(("flow",), flows)
        for (topic, partition), behind in lag.items():
            self.lag.set((topic, str(partition)), behind)

    def node_status(self, status, received_s: float = 0.0) -> None:
        """A kafka_pb2.NodeStatus; `received_s`: the Kafka record's time, used when the status
        carries none."""
        node = (status.node_name,)
        self.spool_records.set(node, status.spool_held_records)
        self.spool_bytes.set(node, status.spool_held_bytes)
        self.spool_max.set(node, status.spool_max_bytes)
        sent = status.time.seconds + status.time.nanos / 1e9 if status.HasField("time") else 0.0
        self.status_time.set(node, sent or received_s)
        self.agent_up.set(node, 1.0 if status.state in _RUNNING else 0.0)


def _source_name(source: LostEventSource | int) -> str:
    return source.name if isinstance(source, LostEventSource) else str(source)
