"""The audit and OTel exporters behind the export runner, on a real broker: every produced
record reaches the audit file once (keyed by node:run:seq) and the OTLP receiver, and the
offsets committed cover exactly what was written."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from exporters.audit import KEY_FIELD
from exporters.runner import Runner
from tests.conftest import free_port, unique
from tests.exporters.otel.flows import dns_response, http_request, http_response, lost, tcp_flow
from tests.exporters.test_runner import broker, committed, running, until, write  # noqa: F401
from tests.exporters.test_source import batch, produce


def _records(node: str, n: int) -> list:
    out: list = []
    for i in range(n):
        out += [tcp_flow(i, node), http_request(i, node), http_response(i, node, 200)]
    return [*out, dns_response(n, node), lost(node, 3)]


async def test_kafka_to_audit_and_otel(broker, tmp_path: Path) -> None:  # noqa: F811
    audit_group, otel_group = unique("fcA"), unique("fcO")
    port = free_port()
    audit_path = tmp_path / "audit" / "flows.jsonl"
    config = tmp_path / "export.yaml"
    write(
        config,
        {
            "source": {"kafka": {"bootstrap": broker.bootstrap}, "max_records": 50},
            "audit": {
                "group": audit_group,
                "path": str(audit_path),
                "rotate": {"max_mb": 0.02, "max_files": 50},
            },
            "otel": {
                "group": otel_group,
                "endpoint": f"http://127.0.0.1:{port}",
                "batch": {"schedule_delay_ms": 100},
                "metrics": {"interval_ms": 500},
            },
        },
    )
    values, expected = [], {}
    for node in ("n1", "n2", "n3"):
        seq = 1
        for _ in range(4):
            records = _records(node, 5)
            values.append((node.encode(), batch(node, seq, records, run_id=9)))
            for i, r in enumerate(records):
                expected[f"{node}:9:{seq + i}"] = r.to_json()
            seq += len(records)
    await produce(broker.bootstrap, values)
    settings = OtelTapHttpProtobufReceiverSettings(http_port=port)
    async with OtelTapHttpProtobufReceiver(settings) as receiver:
        bodies: list[str] = []

        async def take() -> None:
            async for lr in receiver.stream_logs():
                bodies.append(lr.body.string_value)

        collecting = asyncio.create_task(take())
        runner = Runner(config, reload_poll=0.5)
        task = await running(runner)
        try:
            await until(lambda: runner.pipelines["audit"].stats.records == len(expected), 40)
            await until(lambda: runner.pipelines["otel"].stats.records == len(expected), 40)
            assert await committed(broker.bootstrap, audit_group) == len(values)
            assert await committed(broker.bootstrap, otel_group) == len(values)
            await until(lambda: len(bodies) >= len(expected), 10)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 40)
            collecting.cancel()
    files = sorted(audit_path.parent.glob("flows.jsonl*"))
    assert len(files) > 1  # it rotated
    lines = []
    for f in files:
        data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        lines += [json.loads(line) for line in data.splitlines()]
    by_key = {line.pop(KEY_FIELD): line for line in lines}
    assert len(by_key) == len(lines) == len(expected)  # each once
    assert set(by_key) == set(expected)
    for key, line in by_key.items():
        want = json.loads(expected[key])
        if "l7" in want.get("flow", {}):
            assert "MY_TOKEN" not in json.dumps(line)  # redacted by default
        else:
            assert line == want
    assert sorted(bodies) == sorted(expected.values())
