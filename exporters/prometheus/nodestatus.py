"""The nodes topic read for the pipeline metrics: each node's latest NodeStatus (publisher state
and spool depth). Read without a consumer group and without commits, from the beginning, then
followed: the topic is small (one record per node per status interval) and every exporter
process wants the whole picture, not a share of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from flowscope.proto import kafka_pb2

log = logging.getLogger(__name__)
RETRY_S = 2.0

OnStatus = Callable[[Any, float], None]  # (kafka_pb2.NodeStatus, record time in s)


async def follow_node_status(kafka: Any, on_status: OnStatus) -> None:
    """Hand every NodeStatus of `kafka.topics.nodes` (a collector.kafkaconfig.KafkaConfig) to
    on_status, oldest first, until cancelled; an unreachable broker is logged and retried."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    topic = kafka.topics.nodes
    while True:
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False, auto_offset_reset="earliest", **kafka.client_kwargs()
        )
        try:
            await consumer.start()
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                raise KafkaError(f"topic {topic!r} has no partitions yet")
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        _hand(record, on_status)
        except asyncio.CancelledError:
            raise
        except (KafkaError, OSError) as e:
            log.warning("nodes topic %s: %s; retrying in %.0f s", topic, e, RETRY_S)
        finally:
            await consumer.stop()
        await asyncio.sleep(RETRY_S)


def _hand(record: Any, on_status: OnStatus) -> None:
    status = kafka_pb2.NodeStatus()
    try:
        status.ParseFromString(record.value or b"")
    except DecodeError:  # a foreign record on the topic: skip it, do not stop the metrics
        log.warning("nodes topic: offset %s is not a NodeStatus; skipped", record.offset)
        return
    if status.node_name:
        on_status(status, record.timestamp / 1000 if record.timestamp else 0.0)
