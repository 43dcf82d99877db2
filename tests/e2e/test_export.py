"""Issue 7's "done when", on a real lab: its traffic (allowed and denied connections, DNS lookups
seen as L7 flows) goes through Kafka to all four exporters at once, run as `flowscope export`:
- a real Prometheus scrapes the exporter and answers with the numbers the topic holds;
- an OTLP receiver (oteltap, in this process) gets every record as a log, and the metrics;
- the audit files hold every record of the topic (counted by their dedup keys);
- the exporter SIGKILLed while traffic goes on, then restarted, loses nothing.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from dataplane.lab import kafka
from flowscope import clusterinfo
from tests.conftest import free_port, unique
from tests.e2e.lab import FLOWSCOPE, Lab, kafka_lab
from tests.exporters.grafana.test_panel_queries import instant, start_prometheus

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

NS = "fsex"
SECTION = Path(__file__).resolve().parents[2] / "exporters" / "grafana" / "prometheus-section.yaml"


@pytest.fixture(scope="module")
def lab():
    with kafka_lab(unique("fsex"), NS) as lab:
        yield lab


def topic(lab: Lab, bootstrap: str) -> list[dict]:
    """Every record on the flows topic, once each (observe --kafka drops duplicates by seq)."""
    out = lab.run("observe", "--kafka", bootstrap, "-o", "json", "--all").stdout
    return [json.loads(line) for line in out.splitlines()]


def audit_lines(directory: Path) -> list[dict]:
    lines = []
    for path in sorted(directory.iterdir()):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            lines += [json.loads(line) for line in f if line.strip()]
    return lines


def traffic(lab: Lab, server: str) -> None:
    for _ in range(3):
        assert lab.probe(f"{NS}/client", f"{server}:80")["connected"]
    for _ in range(2):
        assert not lab.probe(f"{NS}/client", f"{server}:81", "TCP", 1.0)["connected"]
    assert lab.probe(f"{NS}/client", "api.example.com:80")["connected"]  # a lookup: L7 flows


def exporter(lab: Lab, config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*FLOWSCOPE, "--cluster", lab.name, "export", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def until_stable(lab: Lab, bootstrap: str, have, timeout: float = 90) -> list[dict]:
    """The topic's records once `have(records)` holds for a snapshot the topic keeps."""
    deadline = time.monotonic() + timeout
    records: list[dict] = []
    while time.monotonic() < deadline:
        records = await asyncio.to_thread(topic, lab, bootstrap)
        if await have(records):
            again = await asyncio.to_thread(topic, lab, bootstrap)
            if len(again) == len(records):
                return records
        await asyncio.sleep(1)
    pytest.fail(f"exporters never caught up with the topic ({len(records)} records)")


async def test_lab_traffic_reaches_all_four_exporters_and_a_crash_loses_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    pods = {p["metadata"]["name"]: p for p in lab.pods(NS)}
    server = pods["server"]["status"]["podIP"]
    await asyncio.to_thread(traffic, lab, server)
    bootstrap = kafka.of(clusterinfo.load(lab.name)).bootstrap

    prom_port, otlp_port = free_port(), free_port()
    section = yaml.safe_load(SECTION.read_text())
    section.update(listen=f"127.0.0.1:{prom_port}", group=unique("fsexp"))
    audit_dir = tmp_path / "audit"
    config = tmp_path / "export.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"kafka": {"bootstrap": bootstrap}},
                "prometheus": section,
                "otel": {
                    "group": unique("fsexo"),
                    "endpoint": f"http://127.0.0.1:{otlp_port}",
                    "batch": {"schedule_delay_ms": 100},
                    "metrics": {"interval_ms": 1000},
                },
                "audit": {
                    "group": unique("fsexa"),
                    "path": str(audit_dir / "audit.jsonl"),
                    "rotate": {"max_mb": 1, "max_files": 50},
                },
            }
        )
    )
    log = tmp_path / "export.log"
    logs: list = []
    metrics: dict = {}

    async with OtelTapHttpProtobufReceiver(
        OtelTapHttpProtobufReceiverSettings(http_port=otlp_port)
    ) as receiver:

        async def collect_logs() -> None:
            async for item in receiver.stream_logs():
                logs.append(item)

        async def collect_metrics() -> None:
            async for m in receiver.stream_metrics():
                metrics[m.name] = m

        collectors = [asyncio.create_task(collect_logs()), asyncio.create_task(collect_metrics())]
        proc = exporter(lab, config, log)
        prom = None
        try:
            prom, base = await start_prometheus(tmp_path, f"127.0.0.1:{prom_port}")

            async def everyone_has(records: list[dict]) -> bool:
                flows = sum(1 for r in records if "flow" in r)
                keys = (
                    {line["flowscope_key"] for line in audit_lines(audit_dir)}
                    if (audit_dir.exists())
                    else set()
                )
                seen = await instant(base, 'flowscope_export_records_total{type="flow"}')
                return (
                    len(keys) == len(records)
                    and list(seen.values()) == [flows]
                    and sum(1 for x in logs if '"flow"' in x.body.string_value) >= flows
                )

            records = await until_stable(lab, bootstrap, everyone_has)
            flows = [r["flow"] for r in records if "flow" in r]
            dns_queries = [
                f for f in flows if f.get("l7", {}).get("type") == "REQUEST" and "dns" in f["l7"]
            ]
            denied = [f for f in flows if f.get("drop_reason_desc") == "POLICY_DENIED"]
            assert len(denied) >= 2 and dns_queries, Counter(f.get("Type") for f in flows)

            # Prometheus answers with the topic's numbers
            total = await instant(base, "sum(hubble_flows_processed_total)")
            assert list(total.values()) == [len(flows)]
            drops = await instant(base, 'sum(hubble_drop_total{reason="POLICY_DENIED"})')
            assert list(drops.values()) == [len(denied)]
            queries = await instant(base, "sum(hubble_dns_queries_total)")
            assert list(queries.values()) == [len(dns_queries)]
            by_pod = await instant(
                base, 'sum by (source) (hubble_drop_total{reason="POLICY_DENIED"})'
            )
            assert by_pod == {frozenset({("source", f"{NS}/client")}): len(denied)}

            # the OTLP receiver: every flow as a log record, and the SDK's metrics
            bodies = {x.body.string_value for x in logs}
            assert len(bodies) >= len(flows)
            deadline = time.monotonic() + 20
            while "flowscope.flows" not in metrics and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert "flowscope.flows" in metrics
            counted = sum(p.as_int for p in metrics["flowscope.flows"].sum.data_points)
            assert counted == len(flows)

            # a crash under traffic: SIGKILL, more traffic, restart; the audit misses nothing
            traffic_task = asyncio.create_task(asyncio.to_thread(traffic, lab, server))
            await asyncio.sleep(1.0)
            proc.kill()
            proc.wait(10)
            await traffic_task
            proc = exporter(lab, config, log)

            async def audit_has_all(records: list[dict]) -> bool:
                keys = {line["flowscope_key"] for line in audit_lines(audit_dir)}
                return len(keys) == len(records)

            after = await until_stable(lab, bootstrap, audit_has_all, timeout=120)
            assert len(after) > len(records)
            lines = audit_lines(audit_dir)
            assert len({x["flowscope_key"] for x in lines}) == len(after)
            assert len(lines) - len(after) <= len(lines) // 2  # duplicates: the killed batch
        finally:
            if prom is not None:
                prom.terminate()
                await asyncio.to_thread(prom.wait, 10)
            stop(proc)
            for task in collectors:
                task.cancel()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
