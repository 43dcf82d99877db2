"""The flows topic read back (flowscope.flow.kafkaread) from a real broker: malformed records
skipped and counted, duplicates dropped by seq, nodes merged in time order with each node's order
kept, filters, following new records, consumer groups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from collector.publisher import encode_batch
from flowscope.flow.kafkaread import KafkaFlowReader, MalformedRecord, decode_batch
from flowscope.flow.model import IP, TCP, Endpoint, Flow, LostEvent, LostEventSource, Verdict
from flowscope.flow.protoconv import record_to_response
from flowscope.flow.protofilter import compile_selection
from flowscope.proto import flow_pb2, kafka_pb2, observer_pb2
from tests.collector.kafkabroker import Broker, running_broker

T0 = 1_800_000_000_000_000_000
TOPIC = "flowscope.flows"


def flow(t: int, node: str, port: int = 80, ns: str = "x") -> Flow:
    return Flow(
        T0 + t,
        Verdict.FORWARDED,
        ip=IP("10.0.0.1", "10.0.0.2"),
        l4=TCP(40000 + t % 20000, port),
        source=Endpoint(identity=300, namespace=ns, pod_name="a"),
        destination=Endpoint(identity=301, namespace="y", pod_name="b"),
        node_name=node,
    )


def batch(node: str, first_seq: int, records: list, run_id: int = 1) -> bytes:
    return encode_batch(
        node, first_seq, run_id, [record_to_response(r).SerializeToString() for r in records]
    )


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path / "broker") as b:
        yield b


async def produce(broker: Broker, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in values:
            await (await producer.send(TOPIC, value, key=key))
    finally:
        await producer.stop()


async def read(broker: Broker, **kwargs) -> tuple[list, KafkaFlowReader]:
    reader = KafkaFlowReader(broker.bootstrap, **kwargs)
    return [r async for r in reader], reader


def status_batch() -> bytes:
    resp = observer_pb2.GetFlowsResponse(node_name="n1")
    resp.node_status.message = "not a flow"
    msg = kafka_pb2.FlowBatch(node_name="n1", first_seq=9, run_id=1)
    msg.responses.append(resp)
    return msg.SerializeToString()


async def test_malformed_records_are_skipped_and_counted(broker: Broker) -> None:
    good = [flow(1, "n1"), flow(2, "n1")]
    await produce(
        broker,
        [
            (b"n1", b"\xff\xfe garbage, not protobuf"),
            (b"n1", batch("n1", 1, good)),
            (b"n1", b""),
            (b"n1", kafka_pb2.FlowBatch(first_seq=3).SerializeToString()),  # no node
            (b"n1", status_batch()),  # holds something that is not a flow or lost event
            (b"n1", batch("n1", 3, [flow(3, "n1")])),
        ],
    )
    records, reader = await read(broker)
    assert records == [*good, flow(3, "n1")]
    assert reader.stats.malformed == 4
    assert reader.stats.kafka_records == 6


def test_decode_names_what_is_wrong() -> None:
    with pytest.raises(MalformedRecord, match="responses\\[0\\]"):
        decode_batch(status_batch())
    with pytest.raises(MalformedRecord, match="node_name"):
        decode_batch(kafka_pb2.FlowBatch(first_seq=1).SerializeToString())
    # a response without a node name gets its batch's
    resp = record_to_response(flow(1, ""))
    msg = kafka_pb2.FlowBatch(node_name="n9", first_seq=1, run_id=1)
    msg.responses.append(resp)
    assert decode_batch(msg.SerializeToString()).records[0].node_name == "n9"


async def test_duplicates_are_dropped_by_seq_and_gaps_counted(broker: Broker) -> None:
    f = [flow(i, "n1") for i in range(10)]
    await produce(
        broker,
        [
            (b"n1", batch("n1", 1, f[0:4])),
            (b"n1", batch("n1", 1, f[0:4])),  # sent again after a lost acknowledgement
            (b"n1", batch("n1", 3, f[2:6])),  # overlapping
            (b"n1", batch("n1", 9, f[8:10])),  # seqs 7 and 8 never came
        ],
    )
    records, reader = await read(broker)
    assert records == f[0:6] + f[8:10]
    assert reader.stats.duplicates == 6
    assert reader.stats.missing == 2
    assert reader.stats.by_node == {"n1": 8}


async def test_a_run_that_numbers_from_one_again_is_not_a_duplicate(broker: Broker) -> None:
    old = [flow(i, "n1") for i in range(3)]
    new = [flow(10 + i, "n1") for i in range(2)]
    await produce(
        broker, [(b"n1", batch("n1", 1, old, run_id=1)), (b"n1", batch("n1", 1, new, run_id=2))]
    )
    records, reader = await read(broker)
    assert records == old + new and reader.stats.duplicates == 0


async def test_nodes_merge_in_time_order_and_filters_apply(broker: Broker) -> None:
    # three nodes on (likely) different partitions, times interleaved across them
    values = []
    for node, offset in (("n1", 0), ("n2", 1), ("n3", 2)):
        recs = [flow(3 * i + offset, node, port=80 if i % 2 else 443) for i in range(20)]
        key = node.encode()
        values += [(key, batch(node, 1, recs[:10])), (key, batch(node, 11, recs[10:]))]
    lost = LostEvent(LostEventSource.PUBLISHER_QUEUE, 5, time_ns=T0 + 100, node_name="n2")
    values.append((b"n2", batch("n2", 21, [lost])))
    await produce(broker, values)
    records, _ = await read(broker)
    assert [r.time_ns - T0 for r in records] == sorted(r.time_ns - T0 for r in records)
    assert len(records) == 61
    f = flow_pb2.FlowFilter(destination_port=["443"])
    selection = compile_selection([f])
    selected, reader = await read(broker, matcher=selection)
    assert selected and all(
        isinstance(r, LostEvent) or r.l4.destination_port == 443 for r in selected
    )
    assert len([r for r in selected if isinstance(r, Flow)]) == 30
    assert lost in selected  # lost events pass every filter
    assert reader.stats.yielded == 31 and reader.stats.records == 61


async def test_following_yields_new_records_in_time_order(broker: Broker) -> None:
    await produce(broker, [(b"n1", batch("n1", 1, [flow(0, "n1")]))])  # history: skipped
    reader = KafkaFlowReader(broker.bootstrap, follow=True, from_beginning=False, window=0.2)
    got: list = []

    async def consume() -> None:
        async for record in reader:
            got.append(record)
            if len(got) == 4:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(1.0)  # the reader is at the end
    base = time.time_ns() - T0  # times of now: the reader holds them for its window only
    ms = 1_000_000
    await produce(
        broker,
        [
            (b"n2", batch("n2", 1, [flow(base + 2 * ms, "n2"), flow(base + 4 * ms, "n2")])),
            (b"n1", batch("n1", 2, [flow(base + 1 * ms, "n1"), flow(base + 3 * ms, "n1")])),
        ],
    )
    await asyncio.wait_for(task, 15)
    assert [(r.time_ns - T0 - base) // ms for r in got] == [1, 2, 3, 4]


async def test_a_consumer_group_reads_every_partition(broker: Broker) -> None:
    values = [(n.encode(), batch(n, 1, [flow(i, n)])) for i, n in enumerate(("n1", "n2", "n3"))]
    await produce(broker, values)
    records, _ = await read(broker, group="h3-readers")
    assert sorted(r.node_name for r in records) == ["n1", "n2", "n3"]
