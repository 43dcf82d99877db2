"""The exporters' sources: a Kafka consumer group on the flows topic of a real (Tansu) broker,
committed by hand, and the relay's GetFlows stream over real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporters.config import parse_source
from exporters.exporter import record_key
from exporters.source import KafkaSource, Pending, RelaySource
from flowscope.flow.model import LostEvent, LostEventSource
from tests.collector.kafkabroker import Broker, running_broker
from tests.conftest import free_port, unique
from tests.exporters.kafkaflows import T0, batch, committed, flow, members, produce
from tests.exporters.relayserver import Observer, serving


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path / "broker") as b:
        yield b


async def drain(source: KafkaSource, want: int, timeout: float = 20.0) -> list[Pending]:
    """Batches until `want` records came (each committed right away)."""
    out: list[Pending] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum(len(p.batch.records) for p in out) < want and loop.time() < deadline:
        pending = await source.next_batch()
        await source.commit(pending)
        if pending.offsets:
            out.append(pending)
    return out


async def test_batches_carry_keys_and_lag_drop_duplicates_and_commit_what_was_handed(
    broker: Broker,
) -> None:
    config = parse_source({"kafka": {"bootstrap": broker.bootstrap}, "max_records": 2})
    group = unique("fsA")
    n1 = [flow(i, "n1") for i in range(4)]
    await produce(
        broker.bootstrap,
        [
            (b"n1", batch("n1", 1, n1[:2])),
            (b"n1", b"garbage, not a FlowBatch"),
            (b"n1", batch("n1", 1, n1[:2])),  # the publisher's at-least-once: a duplicate
            (b"n1", batch("n1", 3, n1[2:])),
        ],
    )
    source = KafkaSource(config, group)
    await source.start()
    try:
        # max_records=2 Kafka records per batch: the first FlowBatch and the garbage; lag says
        # two more records wait on the partition
        pending = await source.next_batch()
        while not pending.offsets:
            pending = await source.next_batch()
        assert [r.time_ns - T0 for r in pending.batch.records] == [0, 1]
        assert pending.batch.keys == (record_key("n1", 7, 1), record_key("n1", 7, 2))
        assert sum(pending.batch.lag.values()) == 2
        assert source.stats.malformed == 1
        assert sum(pending.offsets.values()) == 2
        # not committed yet: the group has nothing
        assert await committed(broker.bootstrap, group) == 0
        await source.commit(pending)
        assert await committed(broker.bootstrap, group) == 2
        # the duplicate is dropped by seq, its offset committed with the next batch's
        rest = await drain(source, 2)
        assert [r.time_ns - T0 for p in rest for r in p.batch.records] == [2, 3]
        assert [k for p in rest for k in p.batch.keys] == [
            record_key("n1", 7, 3),
            record_key("n1", 7, 4),
        ]
        assert source.stats.duplicates == 2
        assert sum(rest[-1].batch.lag.values()) == 0
        assert await committed(broker.bootstrap, group) == 4
        assert len(await members(broker.bootstrap, group)) == 1
    finally:
        await source.close()
    # a clean close leaves the group at once (Tansu's generation 0 included), so a restarted
    # or remaining member need not wait for this one's session to time out
    assert await members(broker.bootstrap, group) == []


async def test_filters_apply_and_lost_events_pass(broker: Broker) -> None:
    config = parse_source(
        {
            "kafka": {"bootstrap": broker.bootstrap},
            "filters": {"allow": ["--from-namespace shop"]},
        }
    )
    lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 5, time_ns=T0 + 3, node_name="n2")
    await produce(
        broker.bootstrap,
        [(b"n2", batch("n2", 1, [flow(1, "n2"), flow(2, "n2", ns="other"), lost]))],
    )
    source = KafkaSource(config, unique("fsB"))
    await source.start()
    try:
        got = await drain(source, 2)
    finally:
        await source.close()
    records = [r for p in got for r in p.batch.records]
    assert [type(r).__name__ for r in records] == ["Flow", "LostEvent"]
    assert records[0].source.namespace == "shop"
    assert [k for p in got for k in p.batch.keys] == [
        record_key("n2", 7, 1),
        record_key("n2", 7, 3),
    ]


async def test_an_unreachable_broker_is_reported_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens here
    config = parse_source({"kafka": {"bootstrap": f"127.0.0.1:{port}"}})
    attempts = []

    def stopping() -> bool:
        attempts.append(1)
        return len(attempts) >= 3

    source = KafkaSource(config, unique("fsC"), stopping=stopping)
    caplog.set_level("WARNING", logger="exporters.source")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(source.start(), 30)
    warnings = [r.getMessage() for r in caplog.records if r.name == "exporters.source"]
    assert len(warnings) == 2
    assert f"cannot reach the Kafka brokers at 127.0.0.1:{port}" in warnings[0]
    assert "retrying in 0.5s" in warnings[0] and "retrying in 1.0s" in warnings[1]


async def test_the_relay_source_reconnects_from_the_last_time_seen() -> None:
    servicer = Observer([flow(1, "n1"), flow(2, "n1")], [flow(3, "n1")])
    async with serving(servicer) as address:
        await read_relay(servicer, address)


async def read_relay(servicer: Observer, address: str) -> None:
    config = parse_source(
        {"relay": {"address": address}, "filters": {"deny": ["--verdict DROPPED"]}}
    )
    source = RelaySource(config, "t")
    await source.start()
    try:
        records: list = []
        for _ in range(20):
            records.extend((await source.next_batch()).batch.records)
            if len(records) >= 3:
                break
        assert [r.time_ns - T0 for r in records] == [1, 2, 3]
        assert source.reconnects >= 1
        first, second = servicer.requests[:2]
        assert first.follow and len(first.blacklist) == 1 and not first.HasField("since")
        assert second.since.ToNanoseconds() == T0 + 2 + 1
    finally:
        await source.close()


async def test_two_members_of_a_group_share_the_partitions(broker: Broker) -> None:
    """Scaling out: a second process with the same group takes some partitions; together they
    read every record."""
    nodes = [f"n{i}" for i in range(8)]  # keys spread over the topic's partitions
    await produce(broker.bootstrap, [(n.encode(), batch(n, 1, [flow(i, n)])) for i, n in
                                     enumerate(nodes)])  # fmt: skip
    config = parse_source({"kafka": {"bootstrap": broker.bootstrap}, "max_records": 1})
    group = unique("fsD")
    sources = [KafkaSource(config, group), KafkaSource(config, group)]
    await asyncio.gather(*(m.start() for m in sources))
    seen: list[set[str]] = [set(), set()]

    async def read(i: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline and set().union(*seen) != set(nodes):
            pending = await sources[i].next_batch()
            seen[i].update(r.node_name for r in pending.batch.records)
            await sources[i].commit(pending)

    try:
        await asyncio.gather(read(0), read(1))
        assigned = [m._consumer.assignment() for m in sources]
    finally:
        await asyncio.gather(*(m.close() for m in sources))
    assert set().union(*seen) == set(nodes)
    assert assigned[0] and assigned[1] and not (assigned[0] & assigned[1])
