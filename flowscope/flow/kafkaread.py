"""Reading the flows topic back: the consumer side of collector/publisher.py, for
`flowscope observe --kafka` and exporters.

Each Kafka record is a FlowBatch (flowscope/kafka/v1/kafka.proto): one node's stream records with
consecutive sequence numbers. The reader

- decodes batches into Records (Flow, LostEvent); a record that is not a FlowBatch, or holds
  something that is not a flow or lost event, is skipped and counted (`stats.malformed`);
- drops duplicates by seq (the publisher delivers at least once) and counts seqs that never came
  (`stats.missing`; a dropped batch the publisher knew of comes with its own lost event);
- merges the nodes in time order, each node's order kept: a record waits until every partition
  still being read has reached its time (reading history), or for `window` seconds (following);
- applies a Matcher (protofilter.FlowSelection, observe's FlowFilter) to what it yields.

    reader = KafkaFlowReader(KafkaConfig.from_dict({"bootstrap": "127.0.0.1:9092"}), follow=True)
    async for record in reader:
        ...
    reader.stats.malformed
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowscope.errors import FlowscopeError
from flowscope.flow.model import Record
from flowscope.flow.protoconv import record_from_response

DEFAULT_WINDOW = 0.5  # seconds a followed record waits for earlier ones of other partitions
FETCH_TIMEOUT_MS = 200


class Matcher(Protocol):
    def matches(self, record: Record) -> bool: ...


class MalformedRecord(ValueError):
    """A Kafka record that is not a FlowBatch of flows and lost events."""


@dataclass(frozen=True)
class Batch:
    node: str
    first_seq: int
    run_id: int
    records: tuple[Record, ...]


def decode_batch(value: bytes | None) -> Batch:
    """One flows-topic record; MalformedRecord when it is not a usable FlowBatch."""
    from google.protobuf.message import DecodeError

    from flowscope.proto import kafka_pb2

    if not value:
        raise MalformedRecord("empty record")
    try:
        msg = kafka_pb2.FlowBatch.FromString(value)
    except DecodeError as e:
        raise MalformedRecord(f"not a FlowBatch: {e}") from None
    if not msg.node_name:
        raise MalformedRecord("FlowBatch.node_name: empty")
    if msg.first_seq == 0 or not msg.responses:
        raise MalformedRecord("FlowBatch: no first_seq or no records")
    records = []
    for i, resp in enumerate(msg.responses):
        try:
            record = record_from_response(resp)
        except (ValueError, TypeError, OverflowError) as e:
            raise MalformedRecord(f"FlowBatch.responses[{i}]: {e}") from None
        if not record.node_name:
            record = _with_node(record, msg.node_name)
        records.append(record)
    return Batch(msg.node_name, msg.first_seq, msg.run_id, tuple(records))


def _with_node(record: Record, node: str) -> Record:
    from dataclasses import replace

    return replace(record, node_name=node)


@dataclass
class ReadStats:
    kafka_records: int = 0  # flows-topic records read
    records: int = 0  # stream records decoded (duplicates included)
    yielded: int = 0  # records that passed the filter and were handed out
    malformed: int = 0  # Kafka records skipped: not a FlowBatch of flows and lost events
    duplicates: int = 0  # stream records seen again (by node and seq)
    missing: int = 0  # seqs that never came
    by_node: dict[str, int] = field(default_factory=dict)  # records per node (no duplicates)


class SeqTracker:
    """Per node: which seqs were seen. Seqs continue across agent runs; a run that started its
    numbers over (its spool was lost) shows as a new run_id with a lower seq, and is accepted."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._runs: dict[str, set[int]] = {}

    def admit(self, batch: Batch, stats: ReadStats) -> list[Record]:
        last = self._last.get(batch.node, 0)
        runs = self._runs.setdefault(batch.node, set())
        n = len(batch.records)
        if batch.first_seq <= last and batch.run_id not in runs and batch.first_seq + n - 1 < last:
            last = batch.first_seq - 1  # numbering started over
        runs.add(batch.run_id)
        skip = max(0, last - batch.first_seq + 1)
        stats.duplicates += min(skip, n)
        if last and batch.first_seq > last + 1:
            stats.missing += batch.first_seq - last - 1
        kept = list(batch.records[skip:])
        if kept:
            self._last[batch.node] = batch.first_seq + n - 1
            stats.by_node[batch.node] = stats.by_node.get(batch.node, 0) + len(kept)
        return kept


class _Merge:
    """Each node's records in order; out in time order across nodes once safe."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[Record]] = {}

    def add(self, node: str, records: list[Record]) -> None:
        self.queues.setdefault(node, deque()).extend(records)

    def pop_until(self, time_ns: float) -> list[Record]:
        out = []
        while True:
            best = None
            for q in self.queues.values():
                if q and (best is None or q[0].time_ns < best[0].time_ns):
                    best = q
            if best is None or best[0].time_ns > time_ns:
                return out
            out.append(best.popleft())

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())


class KafkaFlowReader:
    """An async iterator of the Records on the flows topic.

    - `config`: a collector.kafkaconfig.KafkaConfig (brokers, TLS, SASL) or a bootstrap string;
    - `topic`: default the config's flows topic;
    - `group`: a consumer group id (partitions shared with the group's other members, offsets
      committed); None: no group, every partition, nothing committed;
    - `from_beginning`: start at the oldest record (else: only new ones);
    - `follow`: keep reading new records (else stop at the end offsets seen at the start);
    - `matcher`: yield only what it matches.
    """

    def __init__(
        self,
        config: Any,
        *,
        topic: str | None = None,
        group: str | None = None,
        from_beginning: bool = True,
        follow: bool = False,
        matcher: Matcher | None = None,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        from collector.kafkaconfig import KafkaConfig

        if isinstance(config, str):
            config = KafkaConfig.from_dict({"bootstrap": config}, "--kafka")
        self.config = config
        self.topic = topic or config.topics.flows
        self.group = group
        self.from_beginning = from_beginning
        self.follow = follow
        self.matcher = matcher
        self.window_ns = int(window * 1e9)
        self.stats = ReadStats()
        self._seqs = SeqTracker()
        self._merge = _Merge()
        self._consumer = None
        self._ends: dict = {}
        self._latest: dict = {}  # partition -> time of its latest record

    async def _start(self):
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        kwargs = self.config.client_kwargs()
        consumer = AIOKafkaConsumer(
            **kwargs,
            group_id=self.group,
            enable_auto_commit=self.group is not None,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
        )
        try:
            await consumer.start()
        except (KafkaError, OSError) as e:
            await consumer.stop()
            raise FlowscopeError(
                f"cannot reach the Kafka brokers at {self.config.bootstrap_servers}: {e}",
                hint="check --kafka (host:port) and that the broker runs (`lab status`)",
            ) from None
        self._consumer = consumer
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            raise FlowscopeError(
                f"no topic {self.topic!r} at {self.config.bootstrap_servers}",
                hint="is the agent publishing there? (--kafka-topic names another topic)",
            )
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if self.group is None:
            consumer.assign(tps)
            if self.from_beginning:
                await consumer.seek_to_beginning(*tps)
            else:
                await consumer.seek_to_end(*tps)
        else:
            consumer.subscribe([self.topic])
        if not self.follow:
            self._ends = await consumer.end_offsets(tps)
        return consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Record]:
        consumer = await self._start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
                for tp, records in batches.items():
                    for kafka_record in records:
                        self._take(tp, kafka_record)
                done = not self.follow and await self._at_end(consumer)
                for record in await self._ready(consumer, done):
                    yield record
                if done:
                    return
        finally:
            await self.close()

    def _take(self, tp, kafka_record) -> None:
        self.stats.kafka_records += 1
        try:
            batch = decode_batch(kafka_record.value)
        except MalformedRecord:
            self.stats.malformed += 1
            return
        self.stats.records += len(batch.records)
        kept = self._seqs.admit(batch, self.stats)
        if kept:
            self._merge.add(batch.node, kept)
            self._latest[tp] = max(self._latest.get(tp, 0), kept[-1].time_ns)

    async def _at_end(self, consumer) -> bool:
        for tp in consumer.assignment():
            end = self._ends.get(tp)
            if end is None:  # a group member's partition assigned after the start
                end = (await consumer.end_offsets([tp]))[tp]
                self._ends[tp] = end
            if await consumer.position(tp) < end:
                return False
        return bool(consumer.assignment()) or self.group is None

    async def _ready(self, consumer, done: bool) -> list[Record]:
        if done:
            out = self._merge.pop_until(float("inf"))
        else:
            out = self._merge.pop_until(await self._watermark(consumer))
        kept = []
        for record in out:
            if self.matcher is None or self.matcher.matches(record):
                kept.append(record)
        self.stats.yielded += len(kept)
        return kept

    async def _watermark(self, consumer) -> float:
        """The time up to which no earlier record can still come from any partition: the
        latest time of every partition with more to read; a partition read to its end holds
        nothing back (reading history) or up to `window` ago (following)."""
        mark = time.time_ns() - self.window_ns if self.follow else float("inf")
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                continue
            mark = min(mark, self._latest.get(tp, 0))
        return mark


async def read_records(config: Any, **kwargs: Any) -> AsyncIterator[Record]:
    """The records of KafkaFlowReader(config, **kwargs), as a plain async generator."""
    reader = KafkaFlowReader(config, **kwargs)
    async for record in reader:
        yield record
