"""The node's Kafka publisher (collector/publisher.py) against a real Tansu broker on loopback:

1. kernel -> Kafka (the issue's benchmark): events made in the kernel (bench.collector's flood:
   the datapath's own event into its own ring, paced in 1 ms slices) at rising rates, drained
   by the real collector into a FlowStream, published (the datapath's columnar batches encoded
   from their columns: collector.batchencoder), all on one event loop as in the agent. Per
   rate: events/s end to end (flows in Kafka over the time from the first event made to the
   last acknowledged), lost by where (kernel ring, collector, publisher queue, spool), the
   agent thread's CPU per 10k events/s and the loop's longest stall; then a verdict against
   the targets (>= 100k events/s per node with 0 lost, <= 5% of a core per 10k/s).
2. records path: a FlowStream fed Flow objects one by one (the path of records that are not
   columnar: lost events, kernel and socket-LB events) as fast as the publisher keeps up (the
   feeder waits whenever the publisher's queue is half full), read back to show lost = 0.
3. outage: steady traffic, the broker stopped (SIGSTOP) for --outage seconds (the issue: 60),
   continued, the spool replayed; then every flow fed in must be in Kafka exactly once (the
   reader drops duplicates by seq), in order. Prints the spool's peak and the time to drain.

    python -m bench.kafka [--kernel-rates R,..] [--kernel-seconds S] [--flows N]
                          [--outage SECONDS] [--rate FLOWS_PER_S]

The agent's CPU is the main thread's (collector, publisher, aiokafka); the flood's producer
thread and the broker are not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from collector.flowstream import FlowStream
from collector.kafkaconfig import KafkaConfig
from collector.publisher import Publisher
from dataplane.lab import kafka
from flowscope.flow.kafkaread import KafkaFlowReader
from flowscope.flow.model import (
    IP,
    TCP,
    Endpoint,
    Flow,
    LostEventSource,
    TCPFlags,
    Verdict,
    Workload,
)

POOL = 4096  # distinct flows, fed round and round
CHUNK = 1000  # flows per publish() call, as the collector publishes a drained batch


def flow_pool(node: str) -> list[Flow]:
    src = Endpoint(
        1201,
        48213,
        "frontend",
        ("k8s:app=web", "k8s:io.kubernetes.pod.namespace=frontend"),
        "web-7d9f8-abcde",
        (Workload("web", "Deployment"),),
        cluster_name="lab",
    )
    dst = Endpoint(
        88, 51002, "backend", ("k8s:app=api",), "api-0", (Workload("api", "StatefulSet"),)
    )
    now = time.time_ns()
    return [
        Flow(
            now + i,
            Verdict.FORWARDED,
            ip=IP("10.244.1.5", "10.244.2.7"),
            l4=TCP(30000 + i, 8080, TCPFlags(ACK=True)),
            source=src,
            destination=dst,
            node_name=node,
            summary="TCP Flags: ACK",
        )
        for i in range(POOL)
    ]


@contextlib.asynccontextmanager
async def broker(workdir: Path):
    """(KafkaInfo, the broker's Popen) of a broker of the benchmark's own."""
    async with kafka.running_broker(workdir) as running:
        yield running.info, running.proc


async def settle(pub: Publisher, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        s = pub.stats()
        if not pub._batch and s.spooled == 0 and s.acked >= s.packed > 0:
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    raise RuntimeError(f"the publisher did not drain in {timeout} s: {pub.stats()}")


async def read_back(bootstrap: str, node: str) -> tuple[int, KafkaFlowReader]:
    """How many of `node`'s records the topic holds (each once: the reader drops duplicates)."""
    reader = KafkaFlowReader(bootstrap)
    async for _ in reader:
        pass
    return reader.stats.by_node.get(node, 0), reader


async def throughput(bootstrap: str, spool: Path, flows: int) -> None:
    cfg = KafkaConfig.from_dict({"bootstrap": bootstrap, "linger_ms": 20})
    stream = FlowStream(node_name="node-t")
    pub = Publisher(stream, cfg, spool, queue_limit=65536)
    pub.start()
    task = asyncio.create_task(pub.run())
    pool = flow_pool("node-t")
    follower = pub._follower
    assert follower is not None
    start, cpu0 = time.monotonic(), time.process_time()
    fed = 0
    while fed < flows:
        n = min(CHUNK, flows - fed)
        stream.publish(pool[(fed + i) % POOL] for i in range(n))
        fed += n
        while len(follower.queue) > pub.queue_limit // 2:
            await asyncio.sleep(0.001)  # never overflow: lost must stay 0
        await asyncio.sleep(0)
    await settle(pub, 120)
    wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    stats = pub.stats()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pub.close()
    got, reader = await read_back(bootstrap, "node-t")
    rate = flows / wall
    print(
        f"records path (Flows one by one): {flows} flows in {wall:.2f} s = {rate:,.0f} "
        f"flows/s into Kafka, "
        f"{stats.batches} Kafka records ({flows / max(stats.batches, 1):.0f} flows each), "
        f"{cfg.compression}"
    )
    print(
        f"  CPU: {cpu / wall:.0%} of a core = {cpu / wall / (rate / 10_000):.1%} of a core per "
        f"10k flows/s (the target applies kernel -> Kafka, above)"
    )
    print(
        f"  read back: {got} records, missing {reader.stats.missing}, duplicates "
        f"{reader.stats.duplicates}, lost {stats.lost} (dropped {stats.dropped}, "
        f"overflowed {stats.overflowed})"
    )


async def outage(info, proc, spool: Path, seconds: float, rate: int) -> None:
    # the default request timeout (30 s) is shorter than a 60 s outage: sends fail, retry, and
    # the spool is replayed, as in production
    cfg = KafkaConfig.from_dict({"bootstrap": info.bootstrap, "linger_ms": 50})
    stream = FlowStream(node_name="node-o")
    pub = Publisher(stream, cfg, spool)
    pub.start()
    task = asyncio.create_task(pub.run())
    pool = flow_pool("node-o")
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    fed = 0
    peak = pub.stats()

    async def feed(duration: float) -> None:
        nonlocal fed, peak
        end = time.monotonic() + duration
        while time.monotonic() < end:
            stream.publish(pool[(fed + i) % POOL] for i in range(per_tick))
            fed += per_tick
            s = pub.stats()
            if s.spooled > peak.spooled:
                peak = s
            await asyncio.sleep(tick)

    await feed(3)
    os.kill(proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        await feed(seconds)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    down = time.monotonic() - stopped
    resumed = time.monotonic()
    await feed(3)
    await settle(pub, 300)
    drained = time.monotonic() - resumed
    stats = pub.stats()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pub.close()
    got, reader = await read_back(info.bootstrap, "node-o")
    ok = got == fed and reader.stats.missing == 0 and stats.lost == 0
    print(
        f"outage: broker stopped {down:.1f} s under {rate} flows/s; {fed} flows fed, "
        f"{got} in Kafka once each ({'OK' if ok else 'MISMATCH'}), missing "
        f"{reader.stats.missing}, duplicates dropped by the reader {reader.stats.duplicates}"
    )
    print(
        f"  spool peak {peak.spooled} flows / {peak.spool_bytes / 1e6:.1f} MB, publisher "
        f"retries {stats.retries}, lost {stats.lost}; spool empty {drained:.1f} s after the "
        f"broker came back"
    )


async def in_kafka(bootstrap: str, node: str) -> tuple[int, int]:
    """(flows, distinct seqs) of `node` on the flows topic, counted off the FlowBatch records
    without building a Flow (the reader's decoding would take longer than the run)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from flowscope.proto import kafka_pb2

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    flows, seqs = 0, set()
    try:
        tps = [TopicPartition("flowscope.flows", p) for p in consumer.partitions_for_topic(
            "flowscope.flows") or ()]  # fmt: skip
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    batch = kafka_pb2.FlowBatch.FromString(rec.value)
                    if batch.node_name != node:
                        continue
                    for i, resp in enumerate(batch.responses):
                        if batch.first_seq + i not in seqs:
                            seqs.add(batch.first_seq + i)
                            flows += resp.WhichOneof("response_types") == "flow"
    finally:
        await consumer.stop()
    return flows, len(seqs)


TARGET_RATE = 100_000  # events/s per node, kernel to Kafka, 0 lost
TARGET_CPU_PER_10K = 5.0  # % of a core per 10k events/s


@dataclass(frozen=True)
class KernelRun:
    """One paced run kernel -> collector -> publisher -> Kafka, counted at both ends."""

    rate_asked: int
    produced: int  # events made in the kernel
    producing_s: float  # the time they were made in (paced in 1 ms slices)
    in_kafka: int  # flows of the run's node on the topic (each seq once)
    kernel_lost: int  # the datapath ring refused them (the flood's lost counter)
    collector_lost: int  # lost events the collector put in the stream (undecodable batches)
    queue_lost: int  # the publisher fell behind the stream (PUBLISHER_QUEUE)
    spool_lost: int  # the spool's bound dropped them before Kafka had them
    wall_s: float  # from the first event made to the last acknowledged by Kafka
    cpu_s: float  # the agent's thread: collector, publisher, producer (one event loop)
    stall_ms: float  # the longest the event loop did not answer a 1 ms timer

    @property
    def lost(self) -> int:
        return self.kernel_lost + self.collector_lost + self.queue_lost + self.spool_lost

    @property
    def ok(self) -> bool:
        """0 lost anywhere, and every event made is a flow in Kafka."""
        return self.lost == 0 and self.in_kafka == self.produced

    @property
    def events_per_s(self) -> float:
        """Delivered: flows in Kafka over the time from the first made to the last acked."""
        return self.in_kafka / self.wall_s

    @property
    def made_per_s(self) -> float:
        """Sustained: the rate the kernel made them at (all delivered when `ok`)."""
        return self.produced / self.producing_s

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.wall_s

    @property
    def cpu_per_10k(self) -> float:
        """% of a core per 10k events/s."""
        return self.cpu_percent / max(self.events_per_s / 10_000, 1e-9)

    def line(self) -> str:
        verdict = "0 lost" if self.ok else "LOSS"
        return (
            f"kernel -> Kafka at {self.rate_asked:,}/s asked: {self.produced:,} events made "
            f"({self.made_per_s:,.0f}/s sustained), {self.in_kafka:,} flows in Kafka "
            f"({self.events_per_s:,.0f}/s end to end, the last one acked included); lost: "
            f"kernel ring {self.kernel_lost}, collector {self.collector_lost}, publisher queue "
            f"{self.queue_lost}, spool {self.spool_lost} -> {verdict}; agent CPU "
            f"{self.cpu_percent:.0f}% of a core = {self.cpu_per_10k:.1f}% per 10k events/s "
            f"(target <= {TARGET_CPU_PER_10K:g}%: "
            f"{'met' if self.cpu_per_10k <= TARGET_CPU_PER_10K else 'NOT met'}); "
            f"event loop stalls up to {self.stall_ms:.0f} ms"
        )


def kernel_verdict(runs: list[KernelRun]) -> str:
    """The issue's target over the runs: some run made >= TARGET_RATE events/s in the kernel
    (sustained, allowing 1% for the pacing's slices), every one of them in Kafka, the CPU
    target met."""
    good = [r for r in runs if r.ok and r.cpu_per_10k <= TARGET_CPU_PER_10K]
    best = max(good, key=lambda r: r.made_per_s, default=None)
    met = best is not None and best.made_per_s >= 0.99 * TARGET_RATE
    head = (
        f"target >= {TARGET_RATE:,} events/s per node kernel -> Kafka with 0 lost at "
        f"<= {TARGET_CPU_PER_10K:g}% of a core per 10k/s: "
    )
    if best is None:
        return head + "NOT met (no run without loss within the CPU target)"
    return head + (
        f"{'met' if met else 'NOT met'} (best: {best.made_per_s:,.0f}/s, 0 lost, "
        f"{best.cpu_per_10k:.1f}% per 10k/s)"
    )


async def kernel_to_kafka(
    bootstrap: str, spool: Path, flood, rate: int, seconds: float
) -> KernelRun:
    """Events made in the kernel (bench.collector's flood: the datapath's own event into its
    own ring) -> the real collector -> FlowStream -> publisher -> Kafka, on one event loop as
    in the agent; counted where made, where lost and in Kafka."""
    import threading

    from bench.collector import SLICE, collector_of

    node = f"node-k{rate}"
    stream = FlowStream(node_name=node)
    collector = collector_of(stream)
    pub = Publisher(stream, KafkaConfig.from_dict({"bootstrap": bootstrap}), spool)
    pub.start()
    ring = flood.ring()
    lost_before = flood.lost()
    produced = 0
    producing = 0.0
    done = threading.Event()
    stall = 0.0

    def producer() -> None:
        nonlocal produced, producing
        per_slice = max(1, int(rate * SLICE))
        start = time.monotonic()
        for i in range(max(1, round(seconds / SLICE))):
            flood.produce(per_slice)
            produced += per_slice
            pause = start + (i + 1) * SLICE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        producing = time.monotonic() - start
        done.set()

    async def watch_loop() -> None:
        nonlocal stall
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.001)
            stall = max(stall, time.monotonic() - before - 0.001)

    tasks = [
        asyncio.create_task(pub.run()),
        asyncio.create_task(collector.run_datapath(ring, lambda: flood.lost() - lost_before)),
        asyncio.create_task(watch_loop()),
    ]
    wall0, cpu0 = time.monotonic(), time.thread_time()
    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        while not done.is_set():
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = pub.stats()
            collected = collector.stats.sources["datapath"]
            if (
                collected.records + collected.lost >= produced
                and s.packed + s.overflowed >= collected.records
                and s.acked + s.dropped >= s.packed
                and not pub._batch
            ):
                break
            await asyncio.sleep(0.01)
        wall, cpu = time.monotonic() - wall0, time.thread_time() - cpu0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        thread.join()
        ring.close()
    await pub.close()
    stats = pub.stats()
    kernel_lost = flood.lost() - lost_before
    publisher_sources = {
        LostEventSource.PUBLISHER_QUEUE,
        LostEventSource.PUBLISHER_SPOOL,
        LostEventSource.PERF_EVENT_RING_BUFFER,  # the kernel ring's, counted above
    }
    collector_lost = sum(n for k, n in stream.lost_counts.items() if k not in publisher_sources)
    flows, _ = await in_kafka(bootstrap, node)
    return KernelRun(
        rate_asked=rate,
        produced=produced,
        producing_s=producing,
        in_kafka=flows,
        kernel_lost=kernel_lost,
        collector_lost=collector_lost,
        queue_lost=stats.overflowed,
        spool_lost=stats.dropped,
        wall_s=wall,
        cpu_s=cpu,
        stall_ms=stall * 1000,
    )


async def kernel_runs(
    bootstrap: str, workdir: Path, rates: tuple[int, ...], seconds: float, log=print
) -> list[KernelRun]:
    """A run per rate (the flood's program loaded once); prints each line and the verdict."""
    from bench.collector import Flood

    runs = []
    flood = Flood()
    try:
        for r in rates:
            run = await kernel_to_kafka(bootstrap, workdir / f"spool-k{r}", flood, r, seconds)
            runs.append(run)
            log(run.line())
    finally:
        flood.close()
    log(kernel_verdict(runs))
    return runs


async def run(
    flows: int, seconds: float, rate: int, kernel_rates: tuple[int, ...], kernel_seconds: float
) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-kafka") as tmp:
        async with broker(Path(tmp)) as (info, proc):
            if kernel_rates:
                await kernel_runs(info.bootstrap, Path(tmp), kernel_rates, kernel_seconds)
            if flows:
                await throughput(info.bootstrap, Path(tmp) / "spool-t", flows)
            if seconds > 0:
                await outage(info, proc, Path(tmp) / "spool-o", seconds, rate)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds (0: skip)")
    parser.add_argument("--rate", type=int, default=5000, help="flows/s during the outage run")
    parser.add_argument(
        "--kernel-rates",
        default="50000,100000,150000,200000",
        help="events/s made in the kernel for the kernel -> Kafka runs (comma-separated; '': skip)",
    )
    parser.add_argument("--kernel-seconds", type=float, default=5.0, help="each kernel run")
    args = parser.parse_args([] if argv is None else argv)  # `make bench`: the defaults
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the outage's connect errors
    rates = tuple(int(r) for r in args.kernel_rates.split(",") if r)
    asyncio.run(run(args.flows, args.outage, args.rate, rates, args.kernel_seconds))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
