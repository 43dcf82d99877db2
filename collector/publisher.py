"""A node's Kafka publisher: follows the node's FlowStream, packs its records into FlowBatch
records (flowscope/kafka/v1/kafka.proto), keeps every batch in the node's on-disk spool until
Kafka acknowledged it, and replays the spool in order after an outage.

    FlowStream --follow--> pack (seq per record) --append--> Spool --read--> aiokafka --ack--> Spool

- Each stream record (flow, lost event) gets the node's next sequence number; a batch holds a
  run of them (first_seq, then one more per record). Numbers continue across agent restarts (the
  spool keeps the last one), so consumers drop duplicates by seq and see a missing seq as loss.
- Key = node name: all of a node's batches land in one partition, in order. The producer sends
  one batch at a time per broker, so a retry never overtakes: order holds through errors.
- The spool is the only buffer: packing never waits for the broker. When the broker is down or
  slow the spool grows; at its bound it drops its oldest batches, and the publisher counts the
  records they held and reports them as a LostEvent (source PUBLISHER_SPOOL) in the stream, in
  the next batch and on the lost topic (with the lost seq range).
- A publisher that falls behind the stream (its follower queue overflows) loses records there:
  counted as PUBLISHER_QUEUE lost events, the same three ways.
- Every lost event the stream carries (kernel ring, observer queue, ...) also goes to the lost
  topic. An agent start over a spool from an earlier run puts an AGENT_RESTART lost event (a gap
  record: what happened while no agent ran is unknown) first in the stream, and a Gap on the
  lost and nodes topics.
- Node-status records (started, running every status_interval_s, stopped) go to the nodes topic.
- Delivery is at least once: a batch whose acknowledgement was lost is sent again (Tansu has no
  idempotent producer); consumers (flowscope.flow.kafkaread) drop the duplicate by its seq.

`flowscope status` reads the counters from the file the publisher rewrites every second
(`read_stats(stats_path(paths, node))` -> PublisherStats), since it runs in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from collector.batchencoder import COLUMNAR, BatchEncoder, merged_runs
from collector.columnbatch import ColumnBatch
from collector.flowencoder import ResponseEncoder, varint
from collector.flowstream import FlowStream, Follower
from collector.kafkaconfig import KafkaConfig
from collector.ring import RingEntry
from collector.spool import Dropped, Spool
from flowscope.flow.model import LostEvent, LostEventSource, Record
from flowscope.flow.protoconv import record_to_response
from flowscope.paths import ClusterPaths
from flowscope.proto import kafka_pb2

log = logging.getLogger(__name__)

# stream records the publisher may fall behind before it loses some: a columnar batch queues as
# one range (the events themselves are the batch's, ~64 bytes each), so a second or more of a
# busy node (~1.3 s at 200k events/s) costs little, and rides out the loop's busy moments
DEFAULT_QUEUE = 262144
SEND_WINDOW_BYTES = 8 * 1024 * 1024  # batches in flight to the broker at once
SEND_WINDOW_RECORDS = 64
RETRY_BACKOFF = (0.2, 0.5, 1.0, 2.0)  # seconds between attempts to reach the broker
PACK_CHUNK = 512  # stream records packed one by one between yields to the event loop
PACK_ROWS = 2048  # columnar rows encoded at once (then the loop yields)
PACK_WAIT = 0.01  # seconds a wakeup waits for more: the collector's drains, encoded together
SIDE_QUEUE = 1024  # lost-topic and nodes-topic records waiting for the broker
STATS_INTERVAL = 1.0
STATS_FILE = "publisher.json"
SPOOL_DIR = "spool"
_FLOW_BATCH_RESPONSES = 3  # FlowBatch.responses' field number


def spool_dir(paths: ClusterPaths, node: str) -> Path:
    """The node's spool: persistent state (the lib dir), not the run dir, so that it outlives a
    reboot of the agent (and of the machine)."""
    return paths.lib_dir / "nodes" / node / SPOOL_DIR


def stats_path(paths: ClusterPaths, node: str) -> Path:
    return paths.node_dir(node) / STATS_FILE


@dataclass(frozen=True)
class PublisherStats:
    """A node publisher's counters. Record counts are stream records (flows and lost events),
    since this agent run started; `spool_*` is what the spool holds now."""

    node: str
    run_id: int  # the agent run (its start, ns since the epoch)
    broker: str  # connecting | up | retrying | stopped
    last_error: str  # the broker's last error while not up ("" when none)
    packed: int  # records packed into batches (all of them go to the spool)
    batches: int  # batches appended to the spool
    published: int  # batches handed to the producer (retries included)
    acked: int  # records Kafka acknowledged
    acked_batches: int
    retries: int  # times the spool was replayed after a failure
    spooled: int  # records in the spool not yet acknowledged
    spool_bytes: int
    spool_max_bytes: int
    dropped: int  # records the spool's bound pushed out before Kafka had them
    overflowed: int  # records lost because the publisher fell behind the stream
    next_seq: int
    acked_seq: int  # the last seq Kafka acknowledged (the spool's, across runs)
    updated_ns: int  # when these were taken

    @property
    def lost(self) -> int:
        return self.dropped + self.overflowed

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PublisherStats:
        return cls(**json.loads(text))


def read_stats(path: Path) -> PublisherStats | None:
    """What a node's publisher last wrote (None: no publisher runs or ran there)."""
    try:
        return PublisherStats.from_json(path.read_text())
    except (FileNotFoundError, ValueError, TypeError):
        return None


class _Everything:
    def matches(self, record: Record) -> bool:
        return True


_RESPONSE_TAG = varint((_FLOW_BATCH_RESPONSES << 3) | 2)  # length-delimited


def encode_batch(node: str, first_seq: int, run_id: int, responses: list[bytes]) -> bytes:
    """A FlowBatch's bytes from already encoded GetFlowsResponses: protobuf concatenates, so the
    responses are not parsed again just to be copied into the batch message."""
    return _flow_batch(node, first_seq, run_id, [framed(r) for r in responses])


def framed(response: bytes) -> bytes:
    """A GetFlowsResponse as a FlowBatch.responses field."""
    return _RESPONSE_TAG + varint(len(response)) + response


def _flow_batch(node: str, first_seq: int, run_id: int, parts: list[bytes]) -> bytes:
    """A FlowBatch's bytes from its responses already framed (see framed())."""
    head = kafka_pb2.FlowBatch(node_name=node, first_seq=first_seq, run_id=run_id)
    return head.SerializeToString() + b"".join(parts)


class Publisher:
    """One node's publisher. `start()` (sync: opens the spool, follows the stream), then run
    `run()` as a task until cancelled, then `await close()`."""

    def __init__(
        self,
        stream: FlowStream,
        config: KafkaConfig,
        spool_directory: Path,
        *,
        node: str | None = None,
        queue_limit: int = DEFAULT_QUEUE,
        stats_file: Path | None = None,
    ) -> None:
        self.stream = stream
        self.config = config
        self.node = node or stream.node_name
        if not self.node:
            raise ValueError("a publisher needs the node's name (FlowStream.node_name)")
        self.spool_directory = Path(spool_directory)
        self.queue_limit = queue_limit
        self.stats_file = stats_file
        self.run_id = time.time_ns()
        self._key = self.node.encode()
        self.spool: Spool | None = None
        self._follower: Follower | None = None
        self._next_seq = 1
        self._accounted = 0  # the last seq acked or counted as dropped
        self._batch: list[bytes] = []  # framed responses, one or many records each
        self._batch_count = 0  # records in the batch
        self._batch_bytes = 0
        self._batch_first = 0
        self._batch_started = 0.0
        self._spooled = asyncio.Event()
        self._encoder = ResponseEncoder()
        self._rows = BatchEncoder(field=_FLOW_BATCH_RESPONSES)  # columnar batches, framed
        self._side: deque[tuple[str, bytes]] = deque(maxlen=SIDE_QUEUE)
        self._echo: deque[LostEvent] = deque(maxlen=64)  # ours, coming back through the stream
        self._spool_events: dict[int, int] = {}  # seq -> count of spool-drop events not acked
        self._producer = None
        self._broker = "connecting"
        self._last_error = ""
        self.packed = self.batches = self.published = self.acked = 0
        self.acked_batches = self.retries = self.dropped = self.overflowed = 0
        self.gap: kafka_pb2.Gap | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        max_bytes = self.config.spool_max_bytes
        # a segment holds at least one whole batch (the config keeps 4 batches within the bound)
        segment = max(max_bytes // 16, self.config.batch_bytes + 4096)
        self.spool = Spool(self.spool_directory, max_bytes=max_bytes, segment_bytes=segment)
        self._next_seq = self.spool.last_seq + 1
        self._accounted = self.spool.acked_seq
        self._follower = self.stream.follow(_Everything())
        self._follower.limit = self.queue_limit
        if self.spool.last_seq:
            # an earlier run published from this spool: what happened between its end and now
            # is not known. Say so, in the stream's order, before anything of this run.
            self.gap = kafka_pb2.Gap(
                previous_last_seq=self.spool.last_seq,
                first_seq=self._next_seq,
                reason="agent restarted",
            )
            event = self._announce(LostEventSource.AGENT_RESTART, 0)
            self._add(event, gap=self.gap)
        self._status(kafka_pb2.AGENT_STARTED)
        self._write_stats()

    async def run(self) -> None:
        """Pack, send and report until cancelled."""
        if self.spool is None:
            self.start()
        tasks = [
            asyncio.create_task(self._pack_loop(), name=f"publisher-pack-{self.node}"),
            asyncio.create_task(self._send_loop(), name=f"publisher-send-{self.node}"),
            asyncio.create_task(self._report_loop(), name=f"publisher-report-{self.node}"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a loop that failed takes the publisher down
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self, flush_timeout: float = 2.0) -> None:
        """Pack what the stream still holds for us, give the broker `flush_timeout` seconds to
        take the spool, then stop. What it did not take stays in the spool for the next run."""
        if self.spool is None:
            return
        if self._follower is not None:
            self._take_all(self._follower.take_runs())
            self.stream.unfollow(self._follower)
            self._follower = None
        self._seal()
        self._status(kafka_pb2.AGENT_STOPPED)
        try:
            await asyncio.wait_for(self._flush(), flush_timeout)
        except Exception as e:  # the broker is away: the spool keeps what is left
            log.info(
                "publisher %s: stopping with %d records spooled (%r)", self.node, self._held(), e
            )
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 2.0)
            self._producer = None
        self._broker = "stopped"
        self._write_stats()
        self.spool.close()
        self.spool = None

    # --- packing -----------------------------------------------------------------------------

    async def _pack_loop(self) -> None:
        assert self._follower is not None
        follower = self._follower
        linger = self.config.linger_ms / 1000
        while True:
            timeout = None
            if self._batch:
                timeout = max(0.0, self._batch_started + linger - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(follower.wakeup.wait(), timeout)
                # the collector publishes a batch per drain of the kernel's ring, every few
                # ms: take several at once, they encode together for about the price of one
                await asyncio.sleep(PACK_WAIT)
            work = 0
            for item in merged_runs(follower.take_runs(), PACK_ROWS):
                if not isinstance(item, tuple):
                    self._take_all([item])
                    work += 1
                    if work >= PACK_CHUNK:
                        work = 0
                        await asyncio.sleep(0)
                    continue
                # a run at most PACK_ROWS at a time: the collector shares this loop, and the
                # kernel's ring fills while it waits
                chunk, start, stop = item
                for at in range(start, stop, PACK_ROWS):
                    self._take_all([(chunk, at, min(at + PACK_ROWS, stop))])
                    work = 0
                    await asyncio.sleep(0)
            if self._batch and time.monotonic() - self._batch_started >= linger:
                self._seal()

    def _take_all(self, items: list) -> None:
        """Pack what the follower gave (take_runs()): entries, runs of chunks, missed counts."""
        for item in items:
            if isinstance(item, RingEntry):
                self._add_entry(item.record)
            elif isinstance(item, tuple):
                chunk, start, stop = item
                if isinstance(chunk, COLUMNAR):
                    self._add_rows(chunk, start, stop)
                else:
                    for i in range(start, stop):
                        self._add_entry(chunk.record(i))
            else:  # records the follower's queue had no room for
                self.overflowed += item.count
                self._add(self._announce(LostEventSource.PUBLISHER_QUEUE, item.count))

    def _add_entry(self, record: Record) -> None:
        if isinstance(record, LostEvent) and self._is_echo(record):
            return
        self._add(record)

    def _add_rows(self, batch: ColumnBatch, start: int, stop: int) -> None:
        """Pack rows of a columnar batch (the datapath's, the tracepoints' or the socket LB's),
        encoded from its columns (no Flow built but one per new template), split into
        Kafka batches as single records would be (batch_flows, batch_bytes)."""
        for at in range(start, stop, PACK_ROWS):
            rows = self._rows.encode(batch, at, min(at + PACK_ROWS, stop))
            offsets = rows.offsets
            i, n = 0, len(rows)
            while i < n:
                if self._batch and (
                    self._batch_count >= self.config.batch_flows
                    or self._batch_bytes + int(offsets[i + 1] - offsets[i])
                    > self.config.batch_bytes
                ):
                    self._seal()
                room = self.config.batch_bytes - self._batch_bytes
                fit = int(np.searchsorted(offsets, offsets[i] + room, side="right")) - 1 - i
                # a row larger than a whole batch goes alone, as a single record would
                take = min(max(fit, 1), n - i, self.config.batch_flows - self._batch_count)
                if not self._batch:
                    self._batch_first = self._next_seq
                    self._batch_started = time.monotonic()
                part = rows.data[int(offsets[i]) : int(offsets[i + take])]
                self._batch.append(part)
                self._batch_count += take
                self._batch_bytes += len(part)
                self._next_seq += take
                i += take

    def _is_echo(self, record: LostEvent) -> bool:
        for i, ours in enumerate(self._echo):
            if ours is record:
                del self._echo[i]
                return True
        return False

    def _announce(self, source: LostEventSource, count: int) -> LostEvent:
        """Put a lost event of ours in the node's stream (observers and status see it) and
        return it; the copy coming back through our own follower is skipped."""
        self.stream.publish_lost(source, count)
        entries = self.stream.ring.last(1)
        event = entries[0].record if entries else None
        if not isinstance(event, LostEvent) or event.source != source:
            event = LostEvent.now(source, count, node_name=self.node)
        else:
            self._echo.append(event)
        return event

    def _add(
        self,
        record: Record,
        *,
        gap: kafka_pb2.Gap | None = None,
        lost_range: tuple[int, int] | None = None,
        lost_topic_event: LostEvent | None = None,
    ) -> int:
        """Pack one record; its seq."""
        data = framed(self._encoder.encode(record))
        if self._batch and (
            self._batch_count >= self.config.batch_flows
            or self._batch_bytes + len(data) > self.config.batch_bytes
        ):
            self._seal()
        if not self._batch:
            self._batch_first = self._next_seq
            self._batch_started = time.monotonic()
        seq = self._next_seq
        self._next_seq += 1
        self._batch.append(data)
        self._batch_count += 1
        self._batch_bytes += len(data)
        if isinstance(record, LostEvent):
            self._lost_record(lost_topic_event or record, seq, gap, lost_range)
        return seq

    def _seal(self) -> None:
        """The current batch into the spool; account for what the spool's bound dropped."""
        if not self._batch or self.spool is None:
            return
        n = self._batch_count
        payload = _flow_batch(self.node, self._batch_first, self.run_id, self._batch)
        self._batch, self._batch_count, self._batch_bytes = [], 0, 0
        self.spool.append(payload, seq=self._batch_first + n - 1)
        self.packed += n
        self.batches += 1
        self._spooled.set()
        for drop in self.spool.take_drops():
            self._dropped(drop)

    def _dropped(self, drop: Dropped) -> None:
        assert self.spool is not None
        # the spool drops its oldest batches: the first of them starts right after the last
        # record acked or counted before (a spool record's seq is its batch's last record's)
        first = max(self._accounted, self.spool.acked_seq) + 1
        count = drop.last_seq - first + 1
        self._accounted = drop.last_seq
        self.dropped += count
        log.warning(
            "publisher %s: spool full (%d bytes): dropped %d records, seq %d..%d",
            self.node,
            self.spool.max_bytes,
            count,
            first,
            drop.last_seq,
        )
        event = self._announce(LostEventSource.PUBLISHER_SPOOL, count)
        # the dropped batches may have held earlier drops' lost events: their counts ride on
        # this one, so the PUBLISHER_SPOOL events that reach Kafka add up to every drop
        carried = 0
        for seq in [s for s in self._spool_events if first <= s <= drop.last_seq]:
            carried += self._spool_events.pop(seq)
        record = replace(event, num_events_lost=count + carried) if carried else event
        seq = self._add(record, lost_range=(first, drop.last_seq), lost_topic_event=event)
        self._spool_events[seq] = count + carried

    # --- side records: lost and nodes topics -------------------------------------------------

    def _lost_record(
        self,
        event: LostEvent,
        seq: int,
        gap: kafka_pb2.Gap | None,
        lost_range: tuple[int, int] | None,
    ) -> None:
        msg = kafka_pb2.LostRecord(node_name=self.node, run_id=self.run_id, seq=seq)
        msg.time.FromNanoseconds(event.time_ns or time.time_ns())
        if gap is not None:
            msg.gap.CopyFrom(gap)
        else:
            msg.lost_events.CopyFrom(record_to_response(event).lost_events)
        if lost_range is not None:
            msg.first_lost_seq, msg.last_lost_seq = lost_range
        self._side.append((self.config.topics.lost, msg.SerializeToString()))

    def _status(self, state: int) -> None:
        msg = self.status_message(state)
        # the nodes topic keeps the latest per node: an older status still waiting is moot
        nodes = self.config.topics.nodes
        self._side = deque((t, v) for t, v in self._side if t != nodes)
        self._side = deque(self._side, maxlen=SIDE_QUEUE)
        self._side.append((nodes, msg.SerializeToString()))

    def status_message(self, state: int) -> kafka_pb2.NodeStatus:
        s = self.stats()
        msg = kafka_pb2.NodeStatus(
            node_name=self.node,
            run_id=self.run_id,
            state=state,
            spool_acked_seq=s.acked_seq,
            spool_last_seq=self.spool.last_seq if self.spool else 0,
            spool_held_records=s.spooled,
            spool_held_bytes=s.spool_bytes,
            spool_max_bytes=s.spool_max_bytes,
            packed=s.packed,
            acked=s.acked,
            dropped=s.dropped,
            overflowed=s.overflowed,
        )
        msg.time.FromNanoseconds(s.updated_ns)
        if self.gap is not None and state == kafka_pb2.AGENT_STARTED:
            msg.gap.CopyFrom(self.gap)
        return msg

    # --- sending -----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        attempt = 0
        while True:
            try:
                producer = await self._connect()
                attempt = 0
                await self._pump(producer)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any broker failure: replay from the spool
                self._failed(e)
                await asyncio.sleep(RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)])
                attempt += 1

    async def _connect(self):
        if self._producer is not None:
            return self._producer
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(**self.config.producer_kwargs())
        try:
            await producer.start()
            if self.config.create_topics:
                await self._ensure_topics()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer
        return producer

    async def _ensure_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(**self.config.client_kwargs())
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in self.config.topics.all() if t not in existing]
            if missing:
                await admin.create_topics(
                    [NewTopic(t, self.config.partitions, self.config.replication) for t in missing]
                )
                log.info("publisher %s: created topics %s", self.node, ", ".join(missing))
        finally:
            await admin.close()

    def _failed(self, error: BaseException) -> None:
        assert self.spool is not None
        self._broker = "retrying"
        self._last_error = f"{type(error).__name__}: {error}"
        self.retries += 1
        self.spool.rewind()  # everything not acknowledged goes again, in order
        log.warning("publisher %s: broker failed (%s); replaying the spool", self.node, error)

    async def _pump(self, producer) -> None:
        """Send the spool's batches in order, a window at a time; ack each in the spool when
        Kafka acknowledged it. Raises on the first failure (the caller rewinds)."""
        assert self.spool is not None
        topic = self.config.topics.flows
        inflight: deque[tuple[int, int, asyncio.Future]] = deque()
        inflight_bytes = 0
        while True:
            await self._send_side(producer)
            while inflight_bytes < SEND_WINDOW_BYTES and len(inflight) < SEND_WINDOW_RECORDS:
                records = self.spool.read(
                    max_records=SEND_WINDOW_RECORDS - len(inflight),
                    max_bytes=SEND_WINDOW_BYTES - inflight_bytes,
                )
                if not records:
                    break
                for r in records:
                    fut = await producer.send(topic, r.payload, key=self._key)
                    fut.add_done_callback(_consume_exception)
                    inflight.append((r.seq, len(r.payload), fut))
                    inflight_bytes += len(r.payload)
                    self.published += 1
            if not inflight:
                self._spooled.clear()
                if self._broker != "up":
                    self._up()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spooled.wait(), 0.5)
                continue
            seq, size, fut = inflight[0]
            await fut  # raises: KafkaError, timeout
            inflight.popleft()
            inflight_bytes -= size
            # the batches behind it already acknowledged too: one spool ack (a file rewrite)
            # for all of them
            batches = 1
            while inflight and _succeeded(inflight[0][2]):
                seq, size, _ = inflight.popleft()
                inflight_bytes -= size
                batches += 1
            self._acked(seq, batches)

    def _up(self) -> None:
        self._broker = "up"
        self._last_error = ""

    def _acked(self, seq: int, batches: int = 1) -> None:
        assert self.spool is not None
        previous = self.spool.acked_seq
        if seq <= previous:
            return
        self.spool.ack(seq)
        for done in [s for s in self._spool_events if s <= seq]:
            del self._spool_events[done]
        # records between the last one accounted for and seq; those the spool dropped were
        # counted as dropped already
        start = max(previous, self._accounted)
        self.acked += max(0, seq - start)
        self._accounted = max(self._accounted, seq)
        self.acked_batches += batches
        if self._broker != "up":
            self._up()

    async def _send_side(self, producer) -> None:
        """The waiting lost-topic and nodes-topic records (kept until Kafka has them)."""
        while self._side:
            topic, value = self._side[0]
            fut = await producer.send(topic, value, key=self._key)
            await fut
            if self._side and self._side[0][1] is value:
                self._side.popleft()

    async def _flush(self) -> None:
        """Until the spool is empty and the side records are sent (close() bounds the wait)."""
        producer = await self._connect()
        assert self.spool is not None
        self.spool.rewind()
        while True:
            await self._send_side(producer)
            records = self.spool.read(max_records=SEND_WINDOW_RECORDS)
            if not records:
                return
            futs = []
            for r in records:
                fut = await producer.send(self.config.topics.flows, r.payload, key=self._key)
                fut.add_done_callback(_consume_exception)
                futs.append((r.seq, fut))
                self.published += 1
            for seq, fut in futs:
                await fut
                self._acked(seq)

    # --- reporting ---------------------------------------------------------------------------

    def _held(self) -> int:
        if self.spool is None:
            return 0
        return max(0, self.spool.last_seq - max(self.spool.acked_seq, self._accounted))

    def stats(self) -> PublisherStats:
        spool = self.spool
        return PublisherStats(
            node=self.node,
            run_id=self.run_id,
            broker=self._broker,
            last_error=self._last_error,
            packed=self.packed,
            batches=self.batches,
            published=self.published,
            acked=self.acked,
            acked_batches=self.acked_batches,
            retries=self.retries,
            spooled=self._held(),
            spool_bytes=spool.held_bytes if spool else 0,
            spool_max_bytes=self.config.spool_max_bytes,
            dropped=self.dropped,
            overflowed=self.overflowed,
            next_seq=self._next_seq,
            acked_seq=spool.acked_seq if spool else 0,
            updated_ns=time.time_ns(),
        )

    def _write_stats(self) -> None:
        if self.stats_file is None:
            return
        try:
            self.stats_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.stats_file.with_suffix(".tmp")
            tmp.write_text(self.stats().to_json())
            os.replace(tmp, self.stats_file)
        except OSError as e:
            log.debug("publisher %s: cannot write %s: %s", self.node, self.stats_file, e)

    async def _report_loop(self) -> None:
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self._write_stats()
            if time.monotonic() - last_status >= self.config.status_interval_s:
                self._status(kafka_pb2.AGENT_RUNNING)
                self._spooled.set()  # wake the sender for it
                last_status = time.monotonic()


def _succeeded(fut: asyncio.Future) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _consume_exception(fut: asyncio.Future) -> None:
    """A send future we stopped waiting for (after a failure) must not log 'never retrieved'."""
    if not fut.cancelled():
        fut.exception()
