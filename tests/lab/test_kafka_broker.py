"""The lab's Kafka-protocol broker (real Tansu): started through the lab's own code, records go
through it compressed with lz4 and zstd, and `lab down` leaves neither process nor data."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from dataplane.lab import cluster, daemons
from dataplane.lab import kafka as lab_kafka
from flowscope import clusterinfo
from flowscope.errors import FlowscopeError
from flowscope.paths import ClusterPaths
from tests.conftest import unique
from tests.e2e.lab import Lab
from tests.e2e.test_lab import assert_no_trace

pytestmark = pytest.mark.privileged  # the lab's run and state dirs are root's


@pytest.fixture
def broker():
    """A broker started by dataplane.lab.kafka.start for a cluster of its own, ended by down."""
    paths = ClusterPaths(unique("h8k"))
    pid = None
    try:
        kafka = lab_kafka.start(paths, partitions=2)
        pid = daemons.pid_of(paths.run_dir / "kafka.pid")
        yield paths, kafka, pid
    finally:
        cluster.down(paths.cluster, lambda _msg: None)
        if pid is not None and daemons.pid_of(paths.run_dir / "kafka.pid") is not None:
            os.kill(pid, 9)  # only if down failed to: the test then fails below


async def _roundtrip(kafka: lab_kafka.KafkaInfo, codec: str, count: int) -> list[tuple]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, compression_type=codec)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(
                kafka.flows_topic, f"{codec}-{i}".encode(), key=f"node-{i % 2}".encode()
            )
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(kafka.flows_topic, p) for p in range(kafka.partitions)])
        got: list[tuple] = []
        async with asyncio.timeout(10):
            while len(got) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    got += [(tp.partition, r.key, r.value) for r in records]
        return got
    finally:
        await consumer.stop()


async def test_broker_topics_and_compressed_roundtrip(broker) -> None:
    paths, kafka, pid = broker
    assert pid is not None
    assert kafka.bootstrap.startswith("127.0.0.1:")
    assert lab_kafka.data_dir(paths).is_dir()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(kafka.topics))
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == {
        "flowscope.flows": 2,
        "flowscope.lost": 2,
        "flowscope.nodes": 2,
    }
    for codec in ("lz4", "zstd"):
        got = await _roundtrip(kafka, codec, 20)
        mine = [g for g in got if g[2].startswith(codec.encode())]
        assert len(mine) == 20
        # one key, one partition, and the order sent within it
        for node in (b"node-0", b"node-1"):
            of_node = [g for g in mine if g[1] == node]
            assert len({p for p, _, _ in of_node}) == 1
            sent = [f"{codec}-{i}".encode() for i in range(20) if f"node-{i % 2}".encode() == node]
            assert [v for _, _, v in of_node] == sent


def test_start_again_keeps_the_running_broker(broker) -> None:
    paths, kafka, pid = broker
    again = lab_kafka.start(paths, partitions=2, recorded=kafka)
    assert again == kafka
    assert daemons.pid_of(paths.run_dir / "kafka.pid") == pid


def test_down_leaves_no_process_or_data(tmp_path) -> None:
    paths = ClusterPaths(unique("h8k"))
    record = tmp_path / "kafka.pid"  # a copy: down removes the run dir with the pid file
    try:
        lab_kafka.start(paths)
        record.write_text((paths.run_dir / "kafka.pid").read_text())
        assert daemons.pid_of(record) is not None
    finally:
        assert cluster.down(paths.cluster, lambda _msg: None)
    assert daemons.pid_of(record) is None  # that very process (pid and start time) is gone
    assert not paths.run_dir.exists()
    assert not paths.lib_dir.exists()


def test_a_missing_binary_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv(lab_kafka.BINARY_ENV, "/nonexistent/tansu")
    with pytest.raises(FlowscopeError) as err:
        lab_kafka.tansu_binary()
    assert lab_kafka.BINARY_ENV in str(err.value)
    assert "setup.sh" in (err.value.hint or "")


def test_bad_partitions_name_the_option() -> None:
    with pytest.raises(FlowscopeError, match="--kafka-partitions"):
        lab_kafka.start(ClusterPaths(unique("h8k")), partitions=0)


def test_recorded_in_cluster_info_round_trips() -> None:
    kafka = lab_kafka.KafkaInfo("127.0.0.1:1234", partitions=5)
    assert lab_kafka.KafkaInfo.from_extra(json.loads(json.dumps(kafka.to_extra()))) == kafka


@pytest.mark.lab
def test_lab_up_kafka_records_and_serves_the_bootstrap() -> None:
    lab = Lab(unique("h8kl"))
    try:
        lab.run("lab", "up", "--nodes", "1", "--kafka", "--kafka-partitions", "2", timeout=180)
        info = clusterinfo.load(lab.name)
        kafka = lab_kafka.of(info)
        assert kafka is not None and kafka.partitions == 2
        status = lab.run("lab", "status").stdout
        assert f"kafka {kafka.bootstrap} (pid " in status
        got = asyncio.run(_roundtrip(kafka, "zstd", 4))
        assert sorted(v for _, _, v in got) == [f"zstd-{i}".encode() for i in range(4)]
        # up again (a repair) keeps the same broker and address
        pid = daemons.pid_of(info.paths.run_dir / "kafka.pid")
        lab.run("lab", "up", "--nodes", "1", timeout=180)
        assert lab_kafka.of(clusterinfo.load(lab.name)) == kafka
        assert daemons.pid_of(info.paths.run_dir / "kafka.pid") == pid
    finally:
        lab.run("lab", "down", check=False, timeout=120)
    assert_no_trace(lab.name)
