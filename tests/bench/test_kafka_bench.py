"""bench.kafka's kernel -> Kafka runs at a tiny size, against a real Tansu broker: every event
made in the kernel is a flow in Kafka or counted lost where it was lost, the lines print the
figures and the verdict names the target. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import kafka as bench_kafka
from tests.collector.kafkabroker import running_broker

pytestmark = pytest.mark.privileged


async def test_kernel_to_kafka_counts_add_up_at_a_tiny_size(tmp_path: Path) -> None:
    lines: list[str] = []
    async with running_broker(tmp_path / "broker") as broker:
        runs = await bench_kafka.kernel_runs(
            broker.bootstrap, tmp_path, (20_000,), 0.2, log=lines.append
        )
    (run,) = runs
    assert run.produced == 20 * 200  # 20 events a 1 ms slice, 200 slices
    # what the kernel made is in Kafka, or counted where it was lost
    assert run.produced == run.in_kafka + run.kernel_lost + run.queue_lost + run.spool_lost
    assert run.wall_s > 0 and run.cpu_s > 0 and run.events_per_s > 0 and run.made_per_s > 0
    assert lines[0].startswith("kernel -> Kafka at 20,000/s asked: 4,000 events made (")
    assert f"{run.in_kafka:,} flows in Kafka" in lines[0]
    assert "lost: kernel ring " in lines[0] and "per 10k events/s (target <= 5%" in lines[0]
    assert lines[1].startswith("target >= 100,000 events/s per node kernel -> Kafka with 0 lost")
    assert "NOT met" in lines[1]  # 20,000 events/s is below the target whatever happened
    assert len(lines) == 2
