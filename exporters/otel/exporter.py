"""The OpenTelemetry exporter: each flow (and lost event) an OTLP log record, and counters of
flows, drops, lost events and L7 traffic through the OTel SDK's metrics, sent over OTLP/HTTP.

Resources: one LoggerProvider per node the flows came from, so each log's resource carries
service.name=flowscope and k8s.node.name (OTel resources belong to the provider). Metrics go
through one MeterProvider (service.name=flowscope) with k8s.node.name as a point attribute.

Delivery: the SDK's batch processor sends logs from its own thread and only logs an export that
failed. Here each provider's exporter is wrapped to remember failures, and `flush` (the SDK's
force_flush, in a thread) raises FlowscopeError when any export since the last flush failed, so
the runner does not commit those offsets; the records since the last good flush are kept and
sent again at the next flush (a receiver may see some twice, never none). The processor drops
records when its queue is full: export() flushes before the queue could fill.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exporters.exporter import ExportBatch
from exporters.otel.attributes import Attributes, enum_name, record_attributes
from exporters.otel.config import OtelConfig
from flowscope.errors import FlowscopeError
from flowscope.flow.compact import format_compact
from flowscope.flow.model import DNS, HTTP, Flow, LostEvent, Record, Verdict
from flowscope.flow.timestamp import now_ns

log = logging.getLogger(__name__)
SCOPE = "flowscope.exporters.otel"
_WARN_VERDICTS = (Verdict.DROPPED, Verdict.ERROR)


@dataclass(frozen=True)
class LogEntry:
    """One log record to send, kept until a flush saw it accepted."""

    node: str
    time_ns: int
    body: str
    attributes: Attributes
    warn: bool
    event_name: str


def log_entry(record: Record, body: str) -> LogEntry:
    """The log record for one flow or lost event; `body` is "json" or "summary"."""
    text = record.to_json() if body == "json" else format_compact(record, node_name=True)
    is_flow = isinstance(record, Flow)
    return LogEntry(
        node=record.node_name,
        time_ns=record.time_ns or now_ns(),
        body=text,
        attributes=record_attributes(record),
        warn=not is_flow or record.verdict in _WARN_VERDICTS,
        event_name="flowscope.flow" if is_flow else "flowscope.lost_events",
    )


class _Outcome:
    """Failures of the exports one SDK exporter made since they were last taken (thread-safe:
    the SDK exports from its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[str] = []

    def failed(self, what: str) -> None:
        with self._lock:
            self._failures.append(what)

    def take(self) -> list[str]:
        with self._lock:
            out, self._failures = self._failures, []
            return out


def _log_exporter_class() -> type:
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

    class RecordingLogExporter(LogRecordExporter):
        def __init__(self, inner: Any, outcome: _Outcome, url: str) -> None:
            self._inner, self._outcome, self._url = inner, outcome, url

        def export(self, batch: Sequence[Any]) -> Any:
            try:
                result = self._inner.export(batch)
            except Exception as e:  # the SDK would only log it; the flush must learn of it
                self._outcome.failed(f"{self._url}: {e}")
                raise
            if result != LogRecordExportResult.SUCCESS:
                self._outcome.failed(f"{self._url}: {len(batch)} log records not accepted")
            return result

        def shutdown(self) -> None:
            self._inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self._inner.force_flush(timeout_millis)

    return RecordingLogExporter


def _metric_exporter_class() -> type:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class RecordingMetricExporter(MetricExporter):
        def __init__(self, inner: Any, outcome: _Outcome, url: str) -> None:
            super().__init__(inner._preferred_temporality, inner._preferred_aggregation)
            self._inner, self._outcome, self._url = inner, outcome, url

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
            try:
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kw)
            except Exception as e:
                self._outcome.failed(f"{self._url}: {e}")
                raise
            if result != MetricExportResult.SUCCESS:
                self._outcome.failed(f"{self._url}: metrics not accepted")
            return result

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return self._inner.force_flush(timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
            self._inner.shutdown(timeout_millis=timeout_millis, **kw)

    return RecordingMetricExporter


def _resource(config: OtelConfig, node: str | None) -> Any:
    from opentelemetry.sdk.resources import Resource

    attrs: dict[str, str] = {
        "service.name": "flowscope",
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        **config.resource,
    }
    if node:
        attrs["k8s.node.name"] = node
    return Resource.create(attrs)


class _Metrics:
    """The instruments: Hubble's main counters in OTel's naming."""

    def __init__(self, provider: Any) -> None:
        meter = provider.get_meter(SCOPE)
        self.flows = meter.create_counter("flowscope.flows", "{flow}", "flows by verdict and type")
        self.drops = meter.create_counter("flowscope.drops", "{flow}", "dropped flows by reason")
        self.lost = meter.create_counter(
            "flowscope.lost_events", "{event}", "events lost before export, by where"
        )
        self.http_requests = meter.create_counter("flowscope.http.requests", "{request}")
        self.http_responses = meter.create_counter("flowscope.http.responses", "{response}")
        self.http_duration = meter.create_histogram(
            "flowscope.http.request.duration", "s", "HTTP request to response, seen by the proxy"
        )
        self.dns_queries = meter.create_counter("flowscope.dns.queries", "{query}")
        self.dns_responses = meter.create_counter("flowscope.dns.responses", "{response}")
        # a batch's increments, summed per (counter, attributes) before they reach the SDK:
        # one add() per distinct series instead of one per flow (the SDK's add costs ~80 us)
        self._tally: dict[tuple[Any, tuple], int] = {}

    def count_batch(self, records: Sequence[Record]) -> None:
        for record in records:
            self.count(record)
        tally, self._tally = self._tally, {}
        for (counter, attrs), amount in tally.items():
            counter.add(amount, dict(attrs))

    def _add(self, counter: Any, amount: int, attrs: dict) -> None:
        key = (counter, tuple(attrs.items()))
        self._tally[key] = self._tally.get(key, 0) + amount

    def count(self, record: Record) -> None:
        if isinstance(record, LostEvent):
            self._add(
                self.lost,
                record.num_events_lost,
                {
                    "flowscope.lost.source": enum_name(record.source),
                    "k8s.node.name": record.node_name,
                },
            )
            return
        node = {"k8s.node.name": record.node_name}
        self._add(
            self.flows,
            1,
            {
                "flowscope.verdict": enum_name(record.verdict),
                "flowscope.type": enum_name(record.type),
                **node,
            },
        )
        if record.verdict == Verdict.DROPPED:
            reason = {"flowscope.drop_reason": enum_name(record.drop_reason_desc), **node}
            self._add(self.drops, 1, reason)
        l7 = record.l7
        if l7 is not None and l7.http is not None:
            self._http(l7.http, l7.latency_ns)
        if l7 is not None and l7.dns is not None:
            self._dns(l7.dns, l7.type)

    def _http(self, http: HTTP, latency_ns: int) -> None:
        method = {"http.request.method": http.method or "_OTHER"}
        if not http.code:
            self._add(self.http_requests, 1, method)
            return
        attrs = {**method, "http.response.status_code": http.code}
        self._add(self.http_responses, 1, attrs)
        if latency_ns:
            self.http_duration.record(latency_ns / 1e9, attrs)

    def _dns(self, dns: DNS, l7_type: object) -> None:
        qtypes = ",".join(dns.qtypes)
        if enum_name(l7_type) == "REQUEST":
            self._add(self.dns_queries, 1, {"flowscope.dns.qtypes": qtypes})
        else:
            attrs = {"flowscope.dns.qtypes": qtypes, "flowscope.dns.rcode": dns.rcode}
            self._add(self.dns_responses, 1, attrs)


def _otlp_exporter(config: OtelConfig, signal: str) -> Any:
    """The SDK's OTLP exporter of one signal ("logs", "metrics") for the configured protocol."""
    gzip = config.compression == "gzip"
    if config.protocol == "grpc":
        import grpc

        if signal == "logs":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as cls
        else:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as cls,
            )
        return cls(
            endpoint=config.endpoint,
            insecure=config.endpoint.startswith("http://"),
            headers={k.lower(): v for k, v in config.headers.items()},  # gRPC metadata keys
            timeout=config.timeout,
            compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression

    if signal == "logs":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as cls
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as cls
    return cls(
        endpoint=config.signal_url(signal),
        headers=dict(config.headers),
        timeout=config.timeout,
        compression=Compression.Gzip if gzip else Compression.NoCompression,
    )


class _NodeLogs:
    """One node's LoggerProvider, its batch processor and the outcome of its exports."""

    def __init__(self, config: OtelConfig, node: str) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        url = config.signal_url("logs")
        self.outcome = _Outcome()
        inner = _otlp_exporter(config, "logs")
        self.provider = LoggerProvider(resource=_resource(config, node))
        self.provider.add_log_record_processor(
            BatchLogRecordProcessor(
                _log_exporter_class()(inner, self.outcome, url),
                max_queue_size=config.batch.max_queue_size,
                max_export_batch_size=config.batch.max_export_batch_size,
                schedule_delay_millis=config.batch.schedule_delay_ms,
            )
        )
        self.logger = self.provider.get_logger(SCOPE)

    def emit(self, entry: LogEntry) -> None:
        from opentelemetry._logs import SeverityNumber

        self.logger.emit(
            timestamp=entry.time_ns,
            observed_timestamp=now_ns(),
            severity_number=SeverityNumber.WARN if entry.warn else SeverityNumber.INFO,
            severity_text="WARN" if entry.warn else "INFO",
            body=entry.body,
            attributes=entry.attributes,
            event_name=entry.event_name,
        )


class OtelExporter:
    """The `otel` exporter (see the module's docstring)."""

    def __init__(self, config: OtelConfig, name: str = "otel") -> None:
        self.name = name
        self.config = config
        self._nodes: dict[str, _NodeLogs] = {}
        self._meter_provider: Any = None
        self._metrics: _Metrics | None = None
        self._metrics_outcome = _Outcome()
        self._unacked: list[LogEntry] = []  # sent since the last good flush (re-sent on failure)
        self._queued = 0  # emitted since the last force_flush: the batch queue's most
        self._failed = False  # logs failed at the last flush: re-send _unacked at the next

    async def start(self) -> None:
        if self.config.metrics.enabled:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            url = self.config.signal_url("metrics")
            inner = _otlp_exporter(self.config, "metrics")
            reader = PeriodicExportingMetricReader(
                _metric_exporter_class()(inner, self._metrics_outcome, url),
                export_interval_millis=self.config.metrics.interval_ms,
                export_timeout_millis=self.config.timeout * 1000,
            )
            self._meter_provider = MeterProvider(
                resource=_resource(self.config, None), metric_readers=[reader]
            )
            self._metrics = _Metrics(self._meter_provider)
        log.info(
            "otel: sending %s to %s",
            " and ".join(
                s
                for s, on in (
                    ("logs", self.config.logs.enabled),
                    ("metrics", self.config.metrics.enabled),
                )
                if on
            ),
            self.config.endpoint,
        )

    def _logs_of(self, node: str) -> _NodeLogs:
        logs = self._nodes.get(node)
        if logs is None:
            logs = self._nodes[node] = _NodeLogs(self.config, node)
        return logs

    async def export(self, batch: ExportBatch) -> None:
        if self._metrics is not None:
            self._metrics.count_batch(batch.records)
        for record in batch.records:
            if self.config.logs.enabled:
                entry = log_entry(record, self.config.logs.body)
                self._unacked.append(entry)
                await self._emit(entry)

    async def _emit(self, entry: LogEntry) -> None:
        if self._queued >= self.config.batch.max_queue_size:
            await self._force_flush()  # the processor would drop what overflows its queue
        self._logs_of(entry.node).emit(entry)
        self._queued += 1

    async def _force_flush(self) -> None:
        timeout_ms = int(self.config.timeout * 1000) * 2 + 1000
        providers = [n.provider for n in self._nodes.values()]
        if self._meter_provider is not None:
            providers.append(self._meter_provider)

        def flush_all() -> None:
            for p in providers:
                p.force_flush(timeout_ms)

        await asyncio.to_thread(flush_all)
        self._queued = 0

    async def flush(self) -> None:
        if self._failed:  # the SDK gave those records up: send them again
            self._failed = False
            self._queued = 0
            for entry in self._unacked:
                await self._emit(entry)
        await self._force_flush()
        failures = [f for n in self._nodes.values() for f in n.outcome.take()]
        self._failed = bool(failures)  # logs given up: re-send them (metrics are cumulative)
        failures += self._metrics_outcome.take()
        if failures:
            raise FlowscopeError(
                f"otel: the OTLP endpoint did not accept the export ({failures[0]}; "
                f"{len(failures)} failed exports); offsets are not committed",
                hint=f"check that an OTLP/HTTP receiver listens at {self.config.endpoint}; "
                "the records are sent again at the next flush",
            )
        self._unacked.clear()

    async def close(self) -> None:
        providers = [n.provider for n in self._nodes.values()]
        if self._meter_provider is not None:
            providers.append(self._meter_provider)
        self._nodes.clear()
        self._meter_provider = self._metrics = None
        await asyncio.to_thread(lambda: [p.shutdown() for p in providers])

    async def reconfigure(self, config: Any) -> bool:
        return config == self.config  # anything changed: providers are built anew
