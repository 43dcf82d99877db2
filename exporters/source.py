"""Where an exporter's records come from: its own Kafka consumer group on the flows topic, or
the cluster's relay when there is no Kafka.

Kafka (KafkaSource): every exporter is a consumer group of its own, so it scales out by starting
more `flowscope export` processes with the same config (the group shares the partitions). Offsets
are never committed automatically: `next_batch` hands out a Pending (the records and the offsets
just past them), and the runner calls `commit(pending)` only after the exporter flushed them. A
consumer killed mid-batch therefore starts again at the last commit: records are exported at
least once, none is lost. Records the publisher delivered twice are dropped by node and seq
(kafkaread.SeqTracker); records that are not FlowBatches are skipped and counted. A broker that
cannot be reached is reported and tried again with backoff.

Relay (RelaySource): GetFlows with follow, the filters sent to the relay; a broken stream is
reconnected with backoff from the time of the last record. Nothing to commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.abc import ConsumerRebalanceListener

from exporters.config import SourceConfig
from exporters.exporter import ExportBatch, record_key
from flowscope.flow.kafkaread import MalformedRecord, ReadStats, SeqTracker, decode_batch
from flowscope.flow.model import Record

log = logging.getLogger(__name__)

POLL_MS = 500  # how long next_batch waits for records before handing out an empty batch
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class Pending:
    """A batch handed out and not yet committed. `offsets`: per (topic, partition), the offset
    after the last Kafka record the batch came from (empty for the relay)."""

    batch: ExportBatch
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class Source(Protocol):
    stats: ReadStats
    handing: asyncio.Lock  # held by the runner from a batch's hand-out to its commit

    async def start(self) -> None: ...

    async def next_batch(self) -> Pending:
        """The next records (maybe none, after POLL_MS), or raises when the source is closed."""
        ...

    async def commit(self, pending: Pending) -> None: ...

    async def close(self) -> None: ...


class Backoff:
    """Doubling waits between retries, reset by a success."""

    def __init__(self, start: float = BACKOFF_START, limit: float = BACKOFF_MAX) -> None:
        self.start, self.limit, self.next = start, limit, start

    def take(self) -> float:
        wait, self.next = self.next, min(self.next * 2, self.limit)
        return wait

    def reset(self) -> None:
        self.next = self.start


class KafkaSource:
    """One exporter's consumer group on the flows topic."""

    def __init__(
        self,
        config: SourceConfig,
        group: str,
        *,
        client_id: str = "flowscope-export",
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.kafka = config.kafka
        self.topic = config.kafka.topics.flows
        self.group = group
        self.client_id = client_id
        self.matcher = config.selection()
        self.stopping = stopping
        self.stats = ReadStats()
        self.commits = 0
        self.refused_commits = 0
        self._seqs = SeqTracker()
        self._consumer: Any = None
        # held while a batch is between hand-out and commit: a rebalance waits for it, so the
        # partitions it came from are committed before another member takes them
        self.handing = asyncio.Lock()

    async def start(self) -> None:
        """Join the group; an unreachable broker is logged and retried until it answers (or
        `stopping()` says to give up)."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        backoff = Backoff()
        while True:
            consumer = AIOKafkaConsumer(
                **self.kafka.client_kwargs(),
                group_id=self.group,
                client_id=self.client_id,
                enable_auto_commit=False,
                auto_offset_reset=self.config.start,
                max_poll_records=self.config.max_records,
            )
            try:
                await consumer.start()
                break
            except (KafkaError, OSError) as e:
                await consumer.stop()
                if self.stopping():
                    raise
                wait = backoff.take()
                log.warning(
                    "%s: cannot reach the Kafka brokers at %s (%s); retrying in %.1fs",
                    self.group,
                    self.kafka.bootstrap_servers,
                    e,
                    wait,
                )
                await asyncio.sleep(wait)
        consumer.subscribe([self.topic], listener=_Revoked(self))
        self._consumer = consumer
        log.info("%s: consuming %s at %s", self.group, self.topic, self.kafka.bootstrap_servers)

    async def next_batch(self) -> Pending:
        from aiokafka.errors import KafkaError

        consumer = self._consumer
        try:
            fetched = await consumer.getmany(
                timeout_ms=POLL_MS, max_records=self.config.max_records
            )
        except KafkaError as e:  # the client reconnects by itself; say so and go on
            log.warning("%s: fetching from %s failed: %s", self.group, self.topic, e)
            await asyncio.sleep(BACKOFF_START)
            return Pending(ExportBatch(()))
        records: list[Record] = []
        keys: list[str] = []
        offsets: dict[tuple[str, int], int] = {}
        for tp, kafka_records in fetched.items():
            for kafka_record in kafka_records:
                self._take(kafka_record.value, records, keys)
                offsets[(tp.topic, tp.partition)] = kafka_record.offset + 1
        lag = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            read = offsets.get((tp.topic, tp.partition))
            if read is None:
                read = await consumer.position(tp)
            lag[(tp.topic, tp.partition)] = max(0, high - read)
        self.stats.yielded += len(records)
        return Pending(ExportBatch(tuple(records), lag, tuple(keys)), offsets)

    def _take(self, value: bytes | None, records: list[Record], keys: list[str]) -> None:
        self.stats.kafka_records += 1
        try:
            batch = decode_batch(value)
        except MalformedRecord as e:
            self.stats.malformed += 1
            log.debug("%s: skipped a record: %s", self.group, e)
            return
        self.stats.records += len(batch.records)
        kept = self._seqs.admit(batch, self.stats)
        first = batch.first_seq + len(batch.records) - len(kept)
        for i, record in enumerate(kept):
            if self.matcher is None or self.matcher.matches(record):
                records.append(record)
                keys.append(record_key(batch.node, batch.run_id, first + i))

    async def commit(self, pending: Pending) -> None:
        """Commit the offsets after the batch (only what was handed over). While the broker is
        away the client retries by itself. A commit refused (the group rebalanced and the
        partition has a new owner) is logged: that owner reads those records again."""
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        if not pending.offsets:
            return
        offsets = {TopicPartition(t, p): o for (t, p), o in pending.offsets.items()}
        try:
            await self._consumer.commit(offsets)
            self.commits += 1
        except KafkaError as e:
            self.refused_commits += 1
            log.warning(
                "%s: commit of %s refused (%s); those records will be read again",
                self.group, _describe_offsets(pending.offsets), e,
            )  # fmt: skip

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            _leave_at_generation_zero(consumer)
            await consumer.stop()


def _leave_at_generation_zero(consumer: Any) -> None:
    """Tansu numbers a group's first generation 0, and aiokafka leaves a group on close only
    when its generation is above 0: without this, a member that stops cleanly holds its
    partitions until its session times out (~10 s), and a restarted or scaled-down exporter
    waits that long. Called at close, after the coordination task ended (no heartbeat races)."""
    from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return
    own = coordinator._maybe_leave_group

    async def leave() -> None:
        if coordinator.member_id != JoinGroupRequest.UNKNOWN_MEMBER_ID:
            try:
                await coordinator._send_req(
                    LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
                )
            except Exception as e:  # a minimal effort, as aiokafka's own
                log.debug("LeaveGroup failed: %s", e)
            coordinator.reset_generation()
        else:
            await own()

    coordinator._maybe_leave_group = leave


def _describe_offsets(offsets: dict[tuple[str, int], int]) -> str:
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))


class _Revoked(ConsumerRebalanceListener):
    """aiokafka's ConsumerRebalanceListener: a revocation waits until the batch in hand is
    committed."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.source.handing:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "%s: assigned partitions %s",
            self.source.group,
            sorted(tp.partition for tp in assigned),
        )


class RelaySource:
    """GetFlows(follow) from the relay (or any Observer API), filters applied there."""

    def __init__(
        self, config: SourceConfig, name: str, *, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        self.config = config
        self.relay = config.relay
        self.name = name
        self.stopping = stopping
        self.stats = ReadStats()
        self.commits = 0
        self.handing = asyncio.Lock()
        self.reconnects = 0
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=4 * config.max_records)
        self._task: asyncio.Task | None = None
        self._last_ns = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"relay-source-{self.name}")

    def _request(self) -> Any:
        from flowscope.proto import observer_pb2

        white, black = self.config.filters()
        req = observer_pb2.GetFlowsRequest(follow=True, whitelist=white, blacklist=black)
        if self._last_ns:  # after a reconnect: from just after the last record seen
            req.since.FromNanoseconds(self._last_ns + 1)
        return req

    async def _pump(self) -> None:
        import grpc

        from flowscope.cli.observe import open_channel
        from flowscope.flow.protoconv import record_from_response
        from flowscope.proto import observer_pb2_grpc

        backoff = Backoff()
        while True:
            try:
                async with open_channel(self.relay.address, self.relay.tls) as channel:
                    stub = observer_pb2_grpc.ObserverStub(channel)
                    async for resp in stub.GetFlows(self._request()):
                        backoff.reset()
                        try:
                            record = record_from_response(resp)
                        except ValueError:  # node status: not a record
                            continue
                        self.stats.records += 1
                        self._last_ns = max(self._last_ns, record.time_ns)
                        await self._queue.put(record)
                reason = "the stream ended"
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
            except Exception as e:  # a TLS file that went away, ...: report and retry
                reason = str(e)
            wait = backoff.take()
            self.reconnects += 1
            log.warning(
                "%s: relay %s: %s; reconnecting in %.1fs", self.name, self.relay.address, reason,
                wait,
            )  # fmt: skip
            await asyncio.sleep(wait)

    async def next_batch(self) -> Pending:
        records: list[Record] = []
        deadline = time.monotonic() + POLL_MS / 1000
        while len(records) < self.config.max_records:
            try:
                if not records:
                    left = deadline - time.monotonic()
                    records.append(await asyncio.wait_for(self._queue.get(), max(left, 0.001)))
                else:
                    records.append(self._queue.get_nowait())
            except (TimeoutError, asyncio.QueueEmpty):
                break
        self.stats.yielded += len(records)
        return Pending(ExportBatch(tuple(records)))  # no seqs here: no keys

    async def commit(self, pending: Pending) -> None:
        self.commits += 1  # nothing to commit: the relay keeps no position

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def make_source(
    config: SourceConfig, name: str, group: str, stopping: Callable[[], bool] = lambda: False
) -> KafkaSource | RelaySource:
    if config.kafka is not None:
        return KafkaSource(config, group, client_id=f"flowscope-export-{name}", stopping=stopping)
    return RelaySource(config, name, stopping=stopping)
