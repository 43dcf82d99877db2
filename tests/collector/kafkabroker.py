"""The Kafka tests' helpers: a real Tansu broker of the test's own (dataplane.lab.kafka's
running_broker: a free loopback port, topics created up front, ended by its PID) and reading a
topic back."""

from __future__ import annotations

import asyncio

from dataplane.lab import kafka

Broker = kafka.Broker
running_broker = kafka.running_broker


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
