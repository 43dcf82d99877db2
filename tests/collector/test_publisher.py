"""The node's Kafka publisher against a real broker (Tansu): packing, order and keys; a broker
outage (SIGSTOP) under steady traffic replayed from the spool, every record once in per-node
order; the spool's bound dropping the oldest, counted; a publisher that falls behind the stream;
an agent restart as a gap record; the datapath's, the tracepoints' and the socket LB's columnar
batches packed from their columns."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from collector.columns import Ends, FlowBatch
from collector.flowstream import FlowStream
from collector.kafkaconfig import KafkaConfig
from collector.kernelcolumns import AddressName, KernelBatch
from collector.publisher import Publisher, encode_batch, read_stats
from collector.socklb_flows import TranslationNames
from collector.translationcolumns import TranslationBatch
from collector.translations import Link
from dataplane.maps import kernelevent
from dataplane.maps.flowevent import EVENT_DTYPE, VERSION
from flowscope.flow.kafkaread import KafkaFlowReader, decode_batch
from flowscope.flow.model import (
    IP,
    TCP,
    Endpoint,
    Flow,
    IPVersion,
    LostEvent,
    LostEventSource,
    Policy,
    Service,
    ServiceTranslation,
    Verdict,
)
from flowscope.flow.protoconv import record_to_response
from flowscope.proto import kafka_pb2
from probes import socklb
from tests.collector.kafkabroker import Broker, consume_all, running_broker


def flow(i: int, node: str) -> Flow:
    """Flow number i of a node: its number is in the ports, so order can be checked."""
    return Flow(
        time.time_ns(),
        Verdict.FORWARDED,
        ip=IP("10.0.0.1", "10.0.0.2"),
        l4=TCP(1024 + i // 60000, 1 + i % 60000),
        source=Endpoint(identity=300, namespace="x", pod_name="a"),
        destination=Endpoint(identity=301, namespace="y", pod_name="b"),
        node_name=node,
    )


def number(f: Flow) -> int:
    return (f.l4.source_port - 1024) * 60000 + f.l4.destination_port - 1


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path / "broker") as b:
        yield b


def config(broker: Broker, **overrides) -> KafkaConfig:
    return KafkaConfig.from_dict({"bootstrap": broker.bootstrap, "linger_ms": 20, **overrides})


class Node:
    """A node's stream with its publisher running."""

    def __init__(self, name: str, cfg: KafkaConfig, spool: Path, **kwargs) -> None:
        self.stream = FlowStream(node_name=name)
        self.publisher = Publisher(
            self.stream, cfg, spool, stats_file=spool.parent / f"{name}.json", **kwargs
        )
        self.publisher.start()
        self.task = asyncio.create_task(self.publisher.run())
        self.sent = 0

    def send(self, n: int) -> None:
        name = self.stream.node_name
        self.stream.publish(flow(i, name) for i in range(self.sent, self.sent + n))
        self.sent += n

    async def settle(self, timeout: float = 20.0) -> None:
        """Until Kafka acknowledged everything packed so far."""
        deadline = time.monotonic() + timeout
        pub = self.publisher
        while time.monotonic() < deadline:
            s = pub.stats()
            if not pub._batch and s.spooled == 0 and s.packed > 0 and not pub._side:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"publisher did not settle: {pub.stats()}")

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.publisher.close(flush_timeout=5)


async def read_back(broker: Broker, **kwargs) -> tuple[list, KafkaFlowReader]:
    reader = KafkaFlowReader(broker.bootstrap, **kwargs)
    return [r async for r in reader], reader


async def test_batches_pack_flows_in_order_one_partition_per_node(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = config(broker, batch_flows=100)
    nodes = [Node(name, cfg, tmp_path / name / "spool") for name in ("node-a", "node-b")]
    for _ in range(5):
        for node in nodes:
            node.send(130)
        await asyncio.sleep(0.03)
    for node in nodes:
        await node.settle()
        await node.stop()
    raw = await consume_all(broker.bootstrap, cfg.topics.flows)
    partitions: dict[str, set[int]] = defaultdict(set)
    batches: dict[str, list] = defaultdict(list)
    for rec in sorted(raw, key=lambda r: (r.partition, r.offset)):
        batch = decode_batch(rec.value)
        assert rec.key == batch.node.encode()  # key = node name
        partitions[batch.node].add(rec.partition)
        batches[batch.node].append(batch)
    for node in nodes:
        name = node.stream.node_name
        assert len(partitions[name]) == 1, "a node's records share one partition"
        got = batches[name]
        assert all(len(b.records) <= 100 for b in got)  # many flows per record, at most 100
        assert len(got) >= 650 // 100
        seqs = [b.first_seq + i for b in got for i in range(len(b.records))]
        assert seqs == list(range(1, 651))  # consecutive, no gap, no duplicate
        assert [number(r) for b in got for r in b.records] == list(range(650))
        assert {b.run_id for b in got} == {node.publisher.run_id}
    # the reader merges both nodes by time and keeps each node's order
    records, reader = await read_back(broker)
    assert reader.stats.malformed == reader.stats.duplicates == reader.stats.missing == 0
    assert [r.time_ns for r in records] == sorted(r.time_ns for r in records)
    for name in ("node-a", "node-b"):
        assert [number(r) for r in records if r.node_name == name] == list(range(650))
    # node-status records: one started and one stopped per node
    status = [kafka_pb2.NodeStatus.FromString(r.value) for r in await consume_all(
        broker.bootstrap, cfg.topics.nodes)]  # fmt: skip
    states = {(s.node_name, s.state) for s in status}
    assert {("node-a", kafka_pb2.AGENT_STARTED), ("node-a", kafka_pb2.AGENT_STOPPED)} <= states
    stopped = [s for s in status if s.node_name == "node-b" and s.state == kafka_pb2.AGENT_STOPPED]
    assert stopped and stopped[-1].acked == 650 and stopped[-1].spool_held_records == 0


async def test_outage_under_steady_traffic_replays_everything_once_in_order(
    broker: Broker, tmp_path: Path
) -> None:
    # a short request timeout: sends during the outage fail, and the spool is replayed
    cfg = config(broker, batch_flows=200, request_timeout_ms=2000)
    node = Node("node-o", cfg, tmp_path / "spool")
    rate, tick = 2000, 0.05  # flows per second, steady
    per_tick = int(rate * tick)

    async def traffic(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            node.send(per_tick)
            await asyncio.sleep(tick)

    await traffic(1.5)
    broker.pause()
    outage_start = time.monotonic()
    try:
        await traffic(10)
        during = node.publisher.stats()
    finally:
        broker.resume()
    outage = time.monotonic() - outage_start
    await traffic(1.5)
    await node.settle(timeout=60)
    stats = node.publisher.stats()
    await node.stop()
    assert during.spooled >= rate * 5, f"the spool held the outage's flows: {during}"
    assert during.broker == "retrying" and stats.retries >= 1
    assert stats.dropped == stats.overflowed == 0
    assert stats.acked == stats.packed == node.sent
    records, reader = await read_back(broker)
    assert [number(r) for r in records] == list(range(node.sent))  # all, once, in order
    assert reader.stats.missing == 0
    print(
        f"\noutage {outage:.1f}s at {rate} flows/s: {node.sent} flows, spool peak >= "
        f"{during.spooled} records / {during.spool_bytes} bytes, retries {stats.retries}, "
        f"duplicates dropped by the reader {reader.stats.duplicates}"
    )
    persisted = read_stats(tmp_path / "node-o.json")
    assert persisted is not None and persisted.broker == "stopped"
    assert persisted.acked == node.sent


async def test_spool_bound_drops_the_oldest_and_counts_them(broker: Broker, tmp_path: Path) -> None:
    cfg = config(
        broker, batch_flows=50, batch_bytes=16 * 1024, spool_max_bytes=64 * 1024,
        request_timeout_ms=1000,
    )  # fmt: skip
    broker.pause()
    try:
        node = Node("node-d", cfg, tmp_path / "spool")
        for _ in range(40):
            node.send(50)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        during = node.publisher.stats()
    finally:
        broker.resume()
    assert during.dropped > 0, during
    assert during.spool_bytes <= 64 * 1024
    await node.settle(timeout=60)
    stats = node.publisher.stats()
    await node.stop()
    # the node's stream says what the spool lost, as lost events of its own source
    in_stream = [
        e.record
        for e in node.stream.ring.last()
        if isinstance(e.record, LostEvent) and e.record.source == LostEventSource.PUBLISHER_SPOOL
    ]
    assert sum(e.num_events_lost for e in in_stream) == stats.dropped
    records, reader = await read_back(broker)
    flows = [r for r in records if isinstance(r, Flow)]
    lost = [r for r in records if isinstance(r, LostEvent)]
    assert sum(e.num_events_lost for e in lost if e.source == LostEventSource.PUBLISHER_SPOOL) == (
        stats.dropped
    )
    numbers = [number(f) for f in flows]
    assert numbers == sorted(numbers)  # what is left keeps its order
    assert numbers[-1] == node.sent - 1  # the newest survive, the oldest were dropped
    assert node.sent - len(flows) <= stats.dropped  # every flow arrived or was counted
    # every record the node numbered arrived, or was counted as dropped: the oldest seqs
    raw = await consume_all(broker.bootstrap, cfg.topics.flows)
    batches = sorted((decode_batch(r.value) for r in raw), key=lambda b: b.first_seq)
    seqs = [b.first_seq + i for b in batches for i in range(len(b.records))]
    assert seqs == list(range(stats.dropped + 1, stats.next_seq))
    assert reader.stats.missing == 0 and len(flows) + len(lost) == len(seqs)
    # the lost topic names the dropped range
    lost_topic = [kafka_pb2.LostRecord.FromString(r.value) for r in await consume_all(
        broker.bootstrap, cfg.topics.lost)]  # fmt: skip
    ranges = [(r.first_lost_seq, r.last_lost_seq) for r in lost_topic if r.last_lost_seq]
    assert sum(b - a + 1 for a, b in ranges) == stats.dropped
    assert ranges[0][0] == 1  # the oldest went first


async def test_a_publisher_behind_the_stream_counts_what_it_missed(
    broker: Broker, tmp_path: Path
) -> None:
    node = Node("node-q", config(broker), tmp_path / "spool", queue_limit=100)
    node.send(1000)  # at once: the publisher's queue holds 100 of them
    await asyncio.sleep(0.3)
    node.send(10)
    await node.settle()
    stats = node.publisher.stats()
    await node.stop()
    assert stats.overflowed == 900
    records, _ = await read_back(broker)
    flows = [r for r in records if isinstance(r, Flow)]
    lost = [r for r in records if isinstance(r, LostEvent)]
    assert [number(f) for f in flows] == [*range(100), *range(1000, 1010)]
    assert [(e.source, e.num_events_lost) for e in lost] == [(LostEventSource.PUBLISHER_QUEUE, 900)]
    # in the stream too (observers and status see it), and it keeps its place in Kafka
    assert [number(r) if isinstance(r, Flow) else "lost" for r in records][99:102] == [
        99,
        "lost",
        1000,
    ]
    in_stream = [e.record for e in node.stream.ring.last() if isinstance(e.record, LostEvent)]
    assert [(e.source, e.num_events_lost) for e in in_stream] == [
        (LostEventSource.PUBLISHER_QUEUE, 900)
    ]


async def test_an_agent_restart_is_a_gap_record_and_the_spool_carries_over(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = config(broker, request_timeout_ms=1000)
    spool = tmp_path / "spool"
    first = Node("node-r", cfg, spool)
    first.send(100)
    await first.settle()
    broker.pause()
    try:
        first.send(40)  # the broker is away: these stay in the spool when the agent stops
        await asyncio.sleep(0.2)
        first.task.cancel()
        await asyncio.gather(first.task, return_exceptions=True)
        await first.publisher.close(flush_timeout=0.5)
    finally:
        broker.resume()
    second = Node("node-r", cfg, spool)
    second.sent = 140
    second.send(60)
    await second.settle()
    await second.stop()
    records, reader = await read_back(broker)
    kinds = [number(r) if isinstance(r, Flow) else r.source for r in records]
    # the first run's 140 (40 replayed by the second), the gap, then the second run's own
    assert kinds == [*range(140), LostEventSource.AGENT_RESTART, *range(140, 200)]
    assert reader.stats.missing == 0
    lost = [kafka_pb2.LostRecord.FromString(r.value) for r in await consume_all(
        broker.bootstrap, cfg.topics.lost)]  # fmt: skip
    gaps = [r for r in lost if r.WhichOneof("kind") == "gap"]
    assert len(gaps) == 1
    assert gaps[0].gap.previous_last_seq == 140 and gaps[0].gap.first_seq == 141
    assert gaps[0].seq == 141 and gaps[0].run_id == second.publisher.run_id
    status = [kafka_pb2.NodeStatus.FromString(r.value) for r in await consume_all(
        broker.bootstrap, cfg.topics.nodes)]  # fmt: skip
    started = [s for s in status if s.state == kafka_pb2.AGENT_STARTED]
    assert [s.HasField("gap") for s in started] == [False, True]
    assert started[1].spool_acked_seq == 100 and started[1].spool_last_seq == 140


def test_a_batch_is_a_flowbatch_message() -> None:
    records = [flow(i, "n") for i in range(3)]
    data = encode_batch("n", 7, 42, [record_to_response(r).SerializeToString() for r in records])
    msg = kafka_pb2.FlowBatch.FromString(data)
    assert (msg.node_name, msg.first_seq, msg.run_id, len(msg.responses)) == ("n", 7, 42, 3)
    assert decode_batch(data).records == tuple(records)


def columnar(node: str, first: int, n: int) -> FlowBatch:
    """A drain of the datapath's ring: n TCP/UDP events numbered first.. in their ports."""
    numbers = np.arange(first, first + n)
    events = np.zeros(n, EVENT_DTYPE)
    events["version"] = VERSION
    events["ktime_ns"] = numbers * 1000
    events["proto"] = np.where(numbers % 7 == 3, 17, 6)
    events["sport"], events["dport"] = 1024 + numbers // 60000, 1 + numbers % 60000
    events["tcp_flags"] = numbers % 4 * 8
    events["verdict"], events["event_type"] = 1, 4
    events["saddr"], events["daddr"] = 0x0100000A, 0x0200000A
    return FlowBatch(
        events,
        node=node,
        wall_offset=time.time_ns(),
        endpoints=COLUMNAR_ENDS,
        ends=(numbers % 2).astype(np.int32),
        allowed_names=COLUMNAR_POLICIES,
        allowed=np.where(numbers % 5 == 0, 0, -1).astype(np.int32),
        link_names=[Link(Service("web", "y"), ServiceTranslation("10.96.0.1", 80, "10.0.0.2", 1))],
        links=np.where(numbers % 3 == 0, 0, -1).astype(np.int32),
    )


_A = Endpoint(identity=300, namespace="x", pod_name="a", labels=("k8s:app=a",))
_B = Endpoint(identity=301, namespace="y", pod_name="b")
COLUMNAR_ENDS = [Ends(_A, _B), Ends(_B, _A, (), ("b.example.com.",))]
COLUMNAR_POLICIES = [(Policy("allow-a", "y", ("k8s:io.cilium.k8s.policy.name=allow-a",)),)]


async def test_columnar_batches_are_packed_from_their_columns_in_order(
    broker: Broker, tmp_path: Path
) -> None:
    # small Kafka batches: a drain is split across several, and shares them with other records
    cfg = config(broker, batch_flows=70, batch_bytes=4096)
    node = Node("node-c", cfg, tmp_path / "spool")
    want: list = []
    drains: list[FlowBatch] = []
    for size in (1, 300, 2, 57, 1000, 64):
        batch = columnar("node-c", node.sent, size)
        drains.append(batch)
        node.stream.publish_batch(batch)
        want.extend(batch.record(i) for i in range(size))
        node.sent += size
        if size == 57:  # a flow and a lost event between two drains
            node.send(1)
            want.append(node.stream.ring.last(1)[0].record)
            node.stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 5)
            want.append(node.stream.ring.last(1)[0].record)
        await asyncio.sleep(0.002)
    await node.settle()
    stats = node.publisher.stats()
    await node.stop()
    assert stats.acked == stats.packed == len(want) and stats.lost == 0
    raw = await consume_all(broker.bootstrap, cfg.topics.flows)
    batches = sorted((decode_batch(r.value) for r in raw), key=lambda b: b.first_seq)
    assert all(len(b.records) <= 70 for b in batches)
    assert all(len(r.value) <= 4096 + 64 for r in raw)
    seqs = [b.first_seq + i for b in batches for i in range(len(b.records))]
    assert seqs == list(range(1, len(want) + 1))
    got = [r for b in batches for r in b.records]
    assert got == want  # exactly the flows the stream's readers build, in the stream's order
    # the drains' Flows were built by the test's `want` only: the publisher built one per
    # template, not one per row
    templates = node.publisher._rows.misses
    assert templates < 40, templates


def kernel_drain(node: str, first: int, n: int) -> KernelBatch:
    """A drain of the tracepoints' ring: a connection's four state changes per four events,
    numbered first.. in their source ports, and now and then a drop."""
    numbers = np.arange(first, first + n)
    events = np.zeros(n, kernelevent.EVENT_DTYPE)
    events["ktime_ns"] = numbers * 1000
    events["kind"] = np.where(numbers % 50 == 7, 1, 2)
    events["protocol"] = np.where(numbers % 50 == 7, 17, 6)
    events["drop_reason"] = 3
    events["old_state"] = np.array([2, 3, 1, 1])[numbers % 4]
    events["new_state"] = np.array([1, 1, 7, 7])[numbers % 4]
    events["sport"], events["dport"] = 1024 + numbers // 4 % 60000, 80
    return KernelBatch(
        events,
        node=node,
        wall_offset=time.time_ns(),
        reason_names={3: "NO_SOCKET"},
        addresses=KERNEL_ADDRESSES,
        sources=(numbers % 2).astype(np.int32),
        destinations=(1 - numbers % 2).astype(np.int32),
    )


def translation_drain(node: str, first: int, n: int) -> TranslationBatch:
    """A drain of the socket LB's ring: a connect() per event, its cookie numbered first.."""
    numbers = np.arange(first, first + n)
    events = np.zeros(n, socklb.EVENT_DTYPE)
    events["ktime_ns"] = numbers * 1000 + 1
    events["sock_cookie"] = 2**40 + numbers
    events["cgroup_id"] = 4242
    return TranslationBatch(
        events,
        node=node,
        wall_offset=time.time_ns(),
        names=TRANSLATION_NAMES,
        keys=(numbers % 3 == 0).astype(np.intp),
    )


KERNEL_ADDRESSES = [
    AddressName("10.244.1.2", IPVersion.IPv4, _A),
    AddressName("10.244.2.3", IPVersion.IPv4, _B),
]
TRANSLATION_NAMES = [
    TranslationNames(
        "10.244.1.2",
        Service("web", "y"),
        ServiceTranslation("10.96.0.1", 80, "10.0.0.2", 8080),
        6,
        _A,
        _B,
    ),
    TranslationNames(None, None, ServiceTranslation("10.96.0.10", 53, "10.0.0.3", 53), 17, _A, _B),
]


def built(batch) -> int:
    return sum(r is not None for r in batch._records or [])


async def test_kernel_and_translation_batches_are_packed_from_their_columns_in_order(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = config(broker, batch_flows=100, batch_bytes=8192)
    node = Node("node-k", cfg, tmp_path / "spool")
    want: list = []
    drains: list = []
    makers = (kernel_drain, translation_drain, columnar)
    for i, size in enumerate((3, 400, 1, 64, 900, 17, 250, 2, 5)):
        batch = makers[i % 3]("node-k", node.sent, size)
        drains.append(batch)
        node.stream.publish_batch(batch)
        node.sent += size
        if size == 64:  # a flow and a lost event between two drains
            node.send(1)
            node.stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 5)
        await asyncio.sleep(0.002)
    await node.settle()
    stats = node.publisher.stats()
    await node.stop()
    # the publisher built a Flow per template, not one per row
    columns = [b for b in drains if not isinstance(b, FlowBatch)]
    assert sum(built(b) for b in columns) <= 12 < sum(map(len, columns))
    for entry in node.stream.ring.last():
        want.append(entry.record)
    assert stats.acked == stats.packed == len(want) and stats.lost == 0
    raw = await consume_all(broker.bootstrap, cfg.topics.flows)
    batches = sorted((decode_batch(r.value) for r in raw), key=lambda b: b.first_seq)
    assert all(len(b.records) <= 100 for b in batches)
    seqs = [b.first_seq + i for b in batches for i in range(len(b.records))]
    assert seqs == list(range(1, len(want) + 1))
    got = [r for b in batches for r in b.records]
    assert got == want  # exactly the flows the stream's readers build, in the stream's order
    assert {type(b) for b in drains} == {KernelBatch, TranslationBatch, FlowBatch}
    assert any(f.socket_cookie == 2**40 + 5 for f in got)
    assert any(f.kernel_drop_reason == "NO_SOCKET" for f in got if isinstance(f, Flow))
