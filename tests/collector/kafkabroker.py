"""A real Tansu broker for the Kafka tests: started as dataplane/lab/kafka.py starts the lab's,
on a free loopback port, topics created up front, ended by its PID (continued first, in case a
test left it stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from dataplane.lab import kafka
from tests.conftest import free_port


@dataclass
class Broker:
    info: kafka.KafkaInfo
    proc: subprocess.Popen

    @property
    def bootstrap(self) -> str:
        return self.info.bootstrap

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def running_broker(workdir: Path, partitions: int = 3) -> AsyncIterator[Broker]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "tansu.log", "wb") as log:
        proc = subprocess.Popen(
            kafka.broker_command(kafka.tansu_binary(), port),
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    broker = Broker(kafka.KafkaInfo(f"127.0.0.1:{port}", partitions), proc)
    try:
        await kafka.wait_ready(broker.bootstrap, 15)
        await kafka.ensure_topics(broker.info)
        yield broker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def consume_all(
    bootstrap: str, topic: str, expect: int | None = None, timeout: float = 10.0
) -> list:
    """Every record of `topic` (all partitions, from the beginning) as ConsumerRecords; with
    `expect`, until that many came (or the timeout), else until the end offsets at the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if (
                expect is None
                and [tp for tp in tps if await consumer.position(tp) < ends[tp]] == []
            ):
                break
            if expect is not None and len(out) >= expect:
                break
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()
