"""`flowscope observe --kafka` as a user runs it (a subprocess of the real CLI) against a real
broker: filters, --last, outputs, malformed records reported on stderr, bad flags refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flowscope.flow.model import LostEvent, LostEventSource
from tests.collector.kafkabroker import Broker, running_broker
from tests.collector.test_kafkaread import T0, batch, flow, produce

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path / "broker") as b:
        yield b


def observe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowscope.cli.main", "observe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


async def test_observe_kafka_filters_and_prints(broker: Broker) -> None:
    n1 = [flow(2 * i, "n1", port=443 if i % 3 == 0 else 80) for i in range(30)]
    n2 = [flow(2 * i + 1, "n2", port=443, ns="other") for i in range(30)]
    lost = LostEvent(LostEventSource.PUBLISHER_SPOOL, 7, time_ns=T0 + 100, node_name="n2")
    await produce(
        broker,
        [
            (b"n1", batch("n1", 1, n1)),
            (b"n2", batch("n2", 1, [*n2, lost])),
            (b"n1", b"junk that is not a FlowBatch"),
        ],
    )
    done = await _run(
        observe, "--kafka", broker.bootstrap, "--all", "-o", "json", "--to-port", "443",
        "--namespace", "x",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    flows = [obj["flow"] for obj in lines if "flow" in obj]
    assert len(flows) == 10
    assert all(f["l4"]["TCP"]["destination_port"] == 443 for f in flows)
    assert {f["node_name"] for f in flows} == {"n1"}
    assert [obj["lost_events"]["num_events_lost"] for obj in lines if "lost_events" in obj] == ["7"]
    assert "skipped 1 malformed Kafka records" in done.stderr
    # the default: the newest 20 of every node, in time order, compact
    done = await _run(observe, "--kafka", broker.bootstrap, "--print-node-name")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert len(out) == 20 and "EVENTS LOST" in out[-1]
    # 19 flows: the newest of both nodes, merged, then the lost event (the newest record)
    nodes = [line.split("[", 1)[1].split("]", 1)[0] for line in out[:-1]]
    assert set(nodes) == {"n1", "n2"}
    ports = [int(re.search(r"/a:(\d+) ", line).group(1)) for line in out[:-1]]
    assert ports == [40000 + t for t in range(60 - 19, 60)]  # each flow's time is in its port


async def test_observe_kafka_bad_input_names_the_flag(broker: Broker) -> None:
    done = await _run(observe, "--kafka", "no-port-here")
    assert done.returncode == 2 and "--kafka: 'no-port-here' is not host:port" in done.stderr
    done = await _run(observe, "--kafka", broker.bootstrap, "--kafka-topic", "no.such.topic")
    assert done.returncode == 1 and "no topic 'no.such.topic'" in done.stderr
    done = await _run(observe, "--kafka", broker.bootstrap, "--follow", "--last", "5")
    assert done.returncode == 2 and "--last: not with --kafka --follow" in done.stderr


async def _run(fn, *args: str) -> subprocess.CompletedProcess:
    import asyncio

    return await asyncio.to_thread(fn, *args)
