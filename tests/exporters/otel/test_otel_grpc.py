"""The OTel exporter over OTLP/gRPC, against a gRPC OTLP receiver in the test process (the
collector's own service definitions from opentelemetry-proto): logs, metrics and metadata."""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

import exporters.otel as otel
from exporters.exporter import ExportBatch
from tests.conftest import free_port
from tests.exporters.otel.flows import dns_response, lost, tcp_flow


class Receiver:
    """What both services received, and the metadata of each call."""

    def __init__(self) -> None:
        self.logs: list = []
        self.metrics: dict = {}
        self.metadata: list[dict] = []

    async def Export(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            for rl in request.resource_logs:
                for sl in rl.scope_logs:
                    self.logs += list(sl.log_records)
            return logs_service_pb2.ExportLogsServiceResponse()
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    self.metrics[m.name] = m
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.Export = receiver.Export


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.Export = receiver.Export


async def test_logs_and_metrics_over_grpc_with_metadata() -> None:
    port = free_port()
    receiver = Receiver()
    server = grpc.aio.server()
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(receiver), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(receiver), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    config = otel.KIND.parse(
        {
            "endpoint": f"http://127.0.0.1:{port}",
            "protocol": "grpc",
            "headers": {"X-Api-Key": "s3cret"},
            "timeout": 5,
            "metrics": {"interval_ms": 60_000},  # only the flush exports them
        },
        "otel",
    )
    records = [tcp_flow(i) for i in range(20)] + [dns_response(), lost(n=3)]
    exp = otel.KIND.build(config)
    await exp.start()
    try:
        await exp.export(ExportBatch(tuple(records)))
        await exp.flush()
        for _ in range(50):
            if len(receiver.logs) >= len(records) and "flowscope.flows" in receiver.metrics:
                break
            await asyncio.sleep(0.1)
    finally:
        await exp.close()
        await server.stop(None)
    assert sorted(r.body.string_value for r in receiver.logs) == sorted(
        x.to_json() for x in records
    )
    flows = receiver.metrics["flowscope.flows"]
    assert sum(p.as_int for p in flows.sum.data_points) == 21  # the 20 flows and the DNS one
    assert all(m.get("x-api-key") == "s3cret" for m in receiver.metadata)
