"""The sources against real servers: RelaySource on a real Observer (collector.observer over a
Unix socket, as the agents serve it) with the filter applied on the server, reconnecting after
the server was away; KafkaSource reporting a broker that cannot be reached."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from collector.flowstream import FlowStream
from collector.observer import serve_observer
from flowscope.flow.model import Verdict
from tests.conftest import free_port
from tests.tui.flows import flow
from tui.buffer import FlowBuffer
from tui.filtertext import parse_filters
from tui.source import KafkaSource, Link, RelaySource, SourceState, backoff


@pytest.fixture
def socket_path():
    root = Path(tempfile.mkdtemp(prefix="fstui"))
    try:
        yield root / "observer.sock"
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def until(check, what: str, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


def test_backoff_grows_to_a_bound() -> None:
    assert [backoff(i) for i in range(6)] == [1, 2, 4, 8, 10, 10]


async def test_relay_source_filters_on_the_server_history_then_live(socket_path: Path) -> None:
    stream = FlowStream(capacity=1000, node_name="node-1")
    stream.publish(
        [flow(i, verdict=Verdict.DROPPED if i % 2 else Verdict.FORWARDED) for i in range(10)]
    )
    server = await serve_observer(stream, socket_path)
    buffer, states = FlowBuffer(), []
    source = RelaySource(f"unix:{socket_path}", history=3)
    task = asyncio.create_task(
        source.run(buffer, parse_filters("--verdict DROPPED"), states.append)
    )
    try:
        await until(lambda: len(buffer) == 3, "the newest 3 drops of the history")
        assert states[-1] == SourceState(Link.CONNECTED, f"connected to relay unix:{socket_path}")
        got = buffer.drain()
        assert [f.time_ns % 100 for f in got] == [5, 7, 9]  # the server sent only drops
        stream.publish([flow(20), flow(21, verdict=Verdict.DROPPED)])
        await until(lambda: len(buffer) == 1, "the live drop")
        assert buffer.drain()[0].verdict == Verdict.DROPPED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close()


async def test_relay_source_says_unreachable_and_reconnects(socket_path: Path) -> None:
    buffer, states = FlowBuffer(), []
    source = RelaySource(f"unix:{socket_path}")
    task = asyncio.create_task(source.run(buffer, parse_filters(""), states.append))
    server = None
    try:
        await until(lambda: any(s.link is Link.UNREACHABLE for s in states), "unreachable")
        down = next(s for s in states if s.link is Link.UNREACHABLE)
        assert down.retry_in == 1 and "cannot reach relay unix:" in down.message
        assert "UNAVAILABLE" in down.message
        stream = FlowStream(capacity=100, node_name="node-1")
        stream.publish([flow(1)])
        server = await serve_observer(stream, socket_path)
        await until(lambda: len(buffer) == 1, "the flow after the relay came up", timeout=8)
        assert states[-1].link is Link.CONNECTED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if server is not None:
            await server.close()


async def test_kafka_source_says_the_broker_is_unreachable() -> None:
    from collector.kafkaconfig import KafkaConfig

    address = f"127.0.0.1:{free_port()}"
    source = KafkaSource(KafkaConfig.from_dict({"bootstrap": address}, "--kafka"))
    assert source.describe == f"Kafka {address}" and not source.server_side
    states: list[SourceState] = []
    task = asyncio.create_task(source.run(FlowBuffer(), parse_filters(""), states.append))
    try:
        await until(
            lambda: any(s.link is Link.UNREACHABLE for s in states), "unreachable", timeout=30
        )
        down = next(s for s in states if s.link is Link.UNREACHABLE)
        assert f"cannot read Kafka {address}" in down.message and down.retry_in == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_kafka_source_reads_new_flows_and_filters_them_here(tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer

    from collector.kafkaconfig import KafkaConfig
    from collector.publisher import encode_batch
    from flowscope.flow.protoconv import record_to_response
    from tests.collector.kafkabroker import running_broker

    async with running_broker(tmp_path / "broker") as broker:
        config = KafkaConfig.from_dict({"bootstrap": broker.bootstrap}, "--kafka")
        buffer, states = FlowBuffer(), []
        source = KafkaSource(config)
        task = asyncio.create_task(
            source.run(buffer, parse_filters("--verdict DROPPED"), states.append)
        )
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            await until(lambda: states and states[-1].link is Link.CONNECTED, "connected", 15)
            # the consumer starts at the end of the topic, which it resolves lazily: batches
            # are sent until some arrive (each a new seq, so none is a duplicate)
            for k in range(20):
                records = [
                    flow(k * 10 + i, verdict=Verdict.DROPPED if i % 2 else Verdict.FORWARDED)
                    for i in range(6)
                ]
                responses = [record_to_response(r).SerializeToString() for r in records]
                value = encode_batch("node-1", 1 + k * 6, 1, responses)
                await (await producer.send(config.topics.flows, value, key=b"node-1"))
                await asyncio.sleep(0.5)
                if len(buffer):
                    break
            await until(lambda: len(buffer) % 3 == 0 and len(buffer), "whole batches' drops", 5)
            assert all(f.verdict == Verdict.DROPPED for f in buffer.drain())
        finally:
            await producer.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
