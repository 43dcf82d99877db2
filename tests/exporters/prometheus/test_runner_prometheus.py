"""The Prometheus exporter as `flowscope export` runs it: FlowBatches on a real (Tansu) broker's
flows topic, the export runner's consumer group, the prometheus section of a config file, and
/metrics answering the counts of what was produced, offsets committed after."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from exporters.runner import Runner
from flowscope.flow.model import LostEvent, LostEventSource, Verdict
from tests.collector.kafkabroker import running_broker
from tests.conftest import free_port, unique
from tests.exporters.kafkaflows import batch, committed, produce
from tests.exporters.prometheus import flows as f
from tests.exporters.prometheus.test_server import http_get, samples


def L(**labels: str) -> frozenset:
    return frozenset(labels.items())


async def test_flows_from_kafka_reach_metrics_through_the_runner(tmp_path: Path):
    node_records = {
        "n1": [f.tcp(), f.tcp(verdict=Verdict.DROPPED, drop_reason=133), f.http(response=False)],
        "n2": [
            f.dns(reply=True, ips=("10.0.2.7",), rrtypes=("A",)),
            f.http(response=True, code=503, latency_s=0.05),
            LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 9, node_name="n2"),
        ],
    }
    port = free_port()
    group = unique("fsprom")
    async with running_broker(tmp_path / "broker") as broker:
        await produce(
            broker.bootstrap,
            [(n.encode(), batch(n, 1, records)) for n, records in node_records.items()],
        )
        config = {
            "source": {"kafka": {"bootstrap": broker.bootstrap}},
            "prometheus": {
                "group": group,
                "listen": f"127.0.0.1:{port}",
                "metrics": ["flow", "drop", "dns", "http:sourceContext=workload-name"],
            },
        }
        path = tmp_path / "export.yaml"
        path.write_text(yaml.safe_dump(config))
        runner = Runner(path, reload_poll=0.1)
        await runner.start()
        task = asyncio.create_task(runner.run())
        try:
            want = L(type="flow")
            got: dict = {}
            for _ in range(300):
                got = samples((await http_get(port))[1])
                if got.get(("flowscope_export_records_total", want)) == 5:
                    break
                await asyncio.sleep(0.1)
            assert got[("flowscope_export_records_total", want)] == 5
            assert got[("flowscope_export_records_total", L(type="lost_events"))] == 1
            assert got[("hubble_drop_total", L(reason="POLICY_DENIED", protocol="TCP"))] == 1
            assert got[("hubble_dns_responses_total",
                        L(rcode="No Error", qtypes="A", ips_returned="1"))] == 1  # fmt: skip
            assert got[("hubble_http_responses_total", L(source="web", method="GET",
                        protocol="HTTP/1.1", status="503", reporter="client"))] == 1  # fmt: skip
            assert got[("flowscope_lost_events_total",
                        L(source="PERF_EVENT_RING_BUFFER", node="n2"))] == 9  # fmt: skip
            lag = [v for (name, _), v in got.items() if name == "flowscope_consumer_lag_records"]
            assert lag and all(v == 0 for v in lag)  # everything produced was read
            for _ in range(100):
                if await committed(broker.bootstrap, group) == 2:
                    break
                await asyncio.sleep(0.1)
            assert await committed(broker.bootstrap, group) == 2  # one Kafka record per node
        finally:
            runner.stop()
            await asyncio.wait_for(task, 30)
