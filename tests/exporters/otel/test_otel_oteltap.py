"""The OTel exporter against a real OTLP/HTTP receiver in the test process (oteltap)."""

from __future__ import annotations

import asyncio
import time

import pytest
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

import exporters.otel as otel
from exporters.exporter import ConfigError, ExportBatch
from flowscope.errors import FlowscopeError
from flowscope.flow.model import Flow, Verdict
from tests.conftest import free_port
from tests.exporters.otel.flows import dns_response, http_request, http_response, lost, tcp_flow


def _attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = tuple(x.string_value for x in v.array_value.values)
        else:
            out[kv.key] = getattr(v, kind)
    return out


def _config(port: int, **over) -> otel.OtelConfig:
    raw = {
        "endpoint": f"http://127.0.0.1:{port}",
        "timeout": 2,
        "batch": {"schedule_delay_ms": 50, "max_queue_size": 64, "max_export_batch_size": 32},
        "metrics": {"interval_ms": 60_000},  # only the flush exports them
        **over,
    }
    return otel.KIND.parse(raw, "otel")


@pytest.fixture
async def receiver():
    port = free_port()
    async with OtelTapHttpProtobufReceiver(
        OtelTapHttpProtobufReceiverSettings(http_port=port)
    ) as r:
        r.port = port
        yield r


async def _collect(stream, n: int, timeout: float = 10) -> list:
    got = []

    async def take():
        async for item in stream:
            got.append(item)
            if len(got) >= n:
                return

    await asyncio.wait_for(take(), timeout)
    return got


async def test_flows_arrive_as_logs_with_attributes(receiver) -> None:
    flows: list[Flow] = [tcp_flow(i, node=f"n{i % 2}") for i in range(150)]  # > the queue of 64
    flows += [
        tcp_flow(200, verdict=Verdict.DROPPED),
        http_request(),
        http_response(),
        dns_response(),
    ]
    records = [*flows, lost(n=7)]
    exp = otel.KIND.build(_config(receiver.port))
    stream = receiver.stream_logs()
    collecting = asyncio.create_task(_collect(stream, len(records)))
    await asyncio.sleep(0)
    await exp.start()
    try:
        await exp.export(ExportBatch(tuple(records)))
        await exp.flush()
        logs = await collecting
    finally:
        await exp.close()
    assert len(logs) == len(records)
    by_uuid = {}
    for lr in logs:
        a = _attrs(lr.attributes)
        by_uuid[lr.body.string_value] = a
    # every flow arrived once, its body the Hubble JSON line
    assert set(by_uuid) == {r.to_json() for r in records}
    a = by_uuid[tcp_flow(3, node="n1").to_json()]
    assert a["source.address"] == "10.0.1.5"
    assert a["destination.port"] == 5432
    assert a["network.transport"] == "tcp"
    assert a["k8s.pod.name"] == "web-1"
    assert a["k8s.node.name"] == "n1"
    drop = by_uuid[tcp_flow(200, verdict=Verdict.DROPPED).to_json()]
    assert drop["flowscope.drop_reason"] == "POLICY_DENIED"
    assert by_uuid[http_request().to_json()]["http.request.method"] == "GET"
    assert by_uuid[http_response().to_json()]["http.response.status_code"] == 200
    assert by_uuid[dns_response().to_json()]["dns.question.name"] == "db.prod.svc.cluster.local"
    assert by_uuid[lost(n=7).to_json()]["flowscope.lost.events"] == 7
    severities = {lr.severity_text for lr in logs}
    assert severities == {"INFO", "WARN"}
    assert logs[0].time_unix_nano >= tcp_flow(0).time_ns


async def test_metrics_arrive_with_counts(receiver) -> None:
    records = [tcp_flow(i) for i in range(10)]
    records += [tcp_flow(100 + i, verdict=Verdict.DROPPED) for i in range(3)]
    records += [http_request(), http_response(code=200), http_response(code=503), lost(n=4)]
    exp = otel.KIND.build(_config(receiver.port, logs={"enabled": False}))
    wanted = {
        "flowscope.flows",
        "flowscope.drops",
        "flowscope.lost_events",
        "flowscope.http.requests",
        "flowscope.http.responses",
        "flowscope.http.request.duration",
    }
    got: dict = {}

    async def take():
        async for m in receiver.stream_metrics():
            got[m.name] = m
            if wanted <= set(got):
                return

    collecting = asyncio.create_task(take())
    await asyncio.sleep(0)
    await exp.start()
    try:
        await exp.export(ExportBatch(tuple(records)))
        await exp.flush()
        await asyncio.wait_for(collecting, 10)
    finally:
        await exp.close()

    def sums(name: str, key: str) -> dict:
        out: dict = {}
        for p in got[name].sum.data_points:
            k = _attrs(p.attributes).get(key)
            out[k] = out.get(k, 0) + p.as_int
        return out

    assert sums("flowscope.flows", "flowscope.verdict") == {"FORWARDED": 13, "DROPPED": 3}
    assert sums("flowscope.drops", "flowscope.drop_reason") == {"POLICY_DENIED": 3}
    assert sums("flowscope.lost_events", "flowscope.lost.source") == {"PERF_EVENT_RING_BUFFER": 4}
    assert sums("flowscope.http.requests", "http.request.method") == {"GET": 1}
    assert sums("flowscope.http.responses", "http.response.status_code") == {200: 1, 503: 1}
    duration = got["flowscope.http.request.duration"]
    assert duration.unit == "s"
    points = {
        _attrs(p.attributes)["http.response.status_code"]: (p.count, p.sum)
        for p in duration.histogram.data_points
    }
    assert points == {200: (1, pytest.approx(0.025)), 503: (1, pytest.approx(0.025))}


async def test_unreachable_endpoint_is_reported_not_a_hang() -> None:
    port = free_port()  # nothing listens there
    exp = otel.KIND.build(_config(port, timeout=1))
    await exp.start()
    try:
        await exp.export(ExportBatch((tcp_flow(1),)))
        started = time.monotonic()
        with pytest.raises(FlowscopeError, match=f"127.0.0.1:{port}"):
            await exp.flush()
        assert time.monotonic() - started < 8
    finally:
        await asyncio.wait_for(exp.close(), 15)


async def test_records_of_a_failed_flush_are_sent_again(receiver) -> None:
    # first aimed at a port where nothing listens, then the receiver comes up there
    exp = otel.KIND.build(_config(receiver.port))
    await exp.start()
    records = (tcp_flow(1), tcp_flow(2))
    try:
        await receiver.stop()
        await exp.export(ExportBatch(records))
        with pytest.raises(FlowscopeError):
            await exp.flush()
        settings = OtelTapHttpProtobufReceiverSettings(http_port=receiver.port)
        async with OtelTapHttpProtobufReceiver(settings) as again:
            collecting = asyncio.create_task(_collect(again.stream_logs(), 2))
            await asyncio.sleep(0)
            await exp.flush()
            logs = await collecting
        assert sorted(lr.body.string_value for lr in logs) == sorted(r.to_json() for r in records)
    finally:
        await exp.close()


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ({"protocol": "http/json"}, "otel.protocol", "http/protobuf or grpc"),
        ({"endpoint": "localhost:4318"}, "otel.endpoint", "http://"),
        ({"batch": {"max_queue_sise": 3}}, "otel.batch.max_queue_sise", "unknown field"),
        ({"timeout": 0}, "otel.timeout", "greater than 0"),
        ({"logs": {"body": "xml"}}, "otel.logs.body", "json"),
        (
            {"batch": {"max_queue_size": 8, "max_export_batch_size": 16}},
            "otel.batch",
            "must not exceed",
        ),
        ("nope", "otel", "mapping"),
    ],
)
def test_bad_config_names_the_field(raw, field, message) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        otel.KIND.parse(raw, "otel")
    assert e.value.field == field


def test_defaults() -> None:
    c = otel.KIND.parse(None, "otel")
    assert c.signal_url("logs") == "http://localhost:4318/v1/logs"
    assert c.protocol == "http/protobuf"
    assert otel.KIND.group() == "flowscope-export-otel"
