"""The exporters' tests' Kafka side: flows packed in FlowBatches the publisher's way, produced
to a real broker's flows topic, and a group's committed offsets read back."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from collector.publisher import encode_batch
from flowscope.flow.model import IP, TCP, Endpoint, Flow, Verdict
from flowscope.flow.protoconv import record_to_response

T0 = 1_800_000_000_000_000_000
TOPIC = "flowscope.flows"


def flow(t: int, node: str, ns: str = "shop") -> Flow:
    return Flow(
        T0 + t,
        Verdict.FORWARDED,
        ip=IP("10.0.0.1", "10.0.0.2"),
        l4=TCP(40000 + t % 20000, 80),
        source=Endpoint(identity=300, namespace=ns, pod_name="a"),
        destination=Endpoint(identity=301, namespace="db", pod_name="b"),
        node_name=node,
    )


def batch(node: str, first_seq: int, records: list, run_id: int = 7) -> bytes:
    return encode_batch(
        node, first_seq, run_id, [record_to_response(r).SerializeToString() for r in records]
    )


async def produce(bootstrap: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in values:
            await (await producer.send(TOPIC, value, key=key))
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str) -> int:
    """The sum of the group's committed offsets over the flows topic's partitions."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(TOPIC)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(TOPIC)
        total = 0
        for p in parts:
            total += await consumer.committed(TopicPartition(TOPIC, p)) or 0
        return total
    finally:
        await consumer.stop()


async def members(bootstrap: str, group: str) -> list[str]:
    """The member ids the broker holds in a consumer group."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        (described,) = response.groups
        return [m[0] for m in described[5]]  # (error, group, state, type, protocol, members)
    finally:
        await admin.close()
