"""/metrics over real HTTP: the exposition text Prometheus parses, a port in use as a clear
error, and the nodes topic of a real (Tansu) broker feeding the spool-depth gauges."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters.exporter import ExportBatch
from exporters.prometheus import KIND
from flowscope.errors import FlowscopeError
from flowscope.flow.model import Verdict
from tests.exporters.prometheus import flows as f


async def http_get(port: int, path: str = "/metrics") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def test_metrics_endpoint_serves_the_exposition_format():
    exp = KIND.build(
        KIND.parse(
            {"listen": "127.0.0.1:0", "metrics": ["drop", "http"], "cardinalityLimit": 1},
            "prometheus",
        )
    )
    await exp.start()
    try:
        await exp.export(
            ExportBatch(
                (
                    f.tcp(verdict=Verdict.DROPPED, drop_reason=133),
                    f.udp(dport=53),
                    f.http(response=True, latency_s=0.02),
                    f.tcp(verdict=Verdict.DROPPED, drop_reason=134),  # folded: limit 1
                )
            )
        )
        await exp.flush()
        status, text = await http_get(exp.server.port)
        assert status == 200
        got = samples(text)
        assert (
            got[
                (
                    "hubble_drop_total",
                    frozenset({"reason": "POLICY_DENIED", "protocol": "TCP"}.items()),
                )
            ]
            == 1
        )
        assert (
            got[("hubble_drop_total", frozenset({"reason": "other", "protocol": "other"}.items()))]
            == 1
        )
        assert (
            got[
                (
                    "flowscope_metrics_folded_total",
                    frozenset({"metric": "hubble_drop_total"}.items()),
                )
            ]
            == 1
        )
        le = frozenset({"method": "GET", "reporter": "client", "le": "0.025"}.items())
        assert got[("hubble_http_request_duration_seconds_bucket", le)] == 1
        assert got[("flowscope_export_records_total", frozenset({"type": "flow"}.items()))] == 4
        assert (await http_get(exp.server.port, "/nope"))[0] == 404
    finally:
        await exp.close()


async def test_port_in_use_is_a_clear_error_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exp = KIND.build(KIND.parse({"listen": f"127.0.0.1:{port}"}, "prometheus"))
        with pytest.raises(FlowscopeError) as e:
            await exp.start()
        assert f"127.0.0.1:{port}" in str(e.value) and "in use" in str(e.value)
        assert e.value.hint and "prometheus.listen" in e.value.hint
        await exp.close()


async def test_spool_depth_from_the_nodes_topic(tmp_path):
    from aiokafka import AIOKafkaProducer

    from collector.kafkaconfig import KafkaConfig
    from flowscope.proto import kafka_pb2
    from tests.collector.kafkabroker import running_broker

    async with running_broker(tmp_path / "broker") as broker:
        kafka = KafkaConfig.from_dict({"bootstrap": broker.bootstrap})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for node, held, state in (("n1", 10, 2), ("n2", 3, 2), ("n1", 7, 2), ("n2", 0, 3)):
                status = kafka_pb2.NodeStatus(
                    node_name=node,
                    state=state,
                    spool_held_records=held,
                    spool_held_bytes=held * 100,
                    spool_max_bytes=1 << 20,
                )
                status.time.FromSeconds(1_764_000_000)
                await producer.send_and_wait(
                    kafka.topics.nodes, status.SerializeToString(), key=node.encode()
                )
        finally:
            await producer.stop()
        exp = KIND.build(KIND.parse({"listen": "127.0.0.1:0", "metrics": []}, "prometheus"))
        await exp.start()
        try:
            exp.watch_nodes(kafka)
            gauge = exp.pipeline.spool_records.values
            for _ in range(100):
                if gauge.get(("n1",)) == 7 and gauge.get(("n2",)) == 0:
                    break
                await asyncio.sleep(0.1)
            assert gauge == {("n1",): 7, ("n2",): 0}
            assert exp.pipeline.spool_bytes.values == {("n1",): 700, ("n2",): 0}
            assert exp.pipeline.agent_up.values == {("n1",): 1, ("n2",): 0}
            assert exp.pipeline.status_time.values[("n1",)] == 1_764_000_000
        finally:
            await exp.close()
