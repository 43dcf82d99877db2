"""`flowscope status` as `hubble status`: against a cluster whose relay is recorded in
cluster.json, against one without (asked node by node), its outputs, and a server that is down."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.flowstream import FlowStream
from collector.observer import SOCKET_NAME, ObserverServer, serve_observer
from collector.publisher import STATS_FILE, PublisherStats
from collector.relay import Peer, RelayServer, with_address
from flowscope import clusterinfo
from flowscope.cli.status import duration, format_status
from flowscope.flow import IP, TCP, Flow, LostEventSource, Verdict
from flowscope.proto import flow_pb2, observer_pb2
from tests.conftest import free_port, unique
from tests.fakecluster import CLI, write_cluster

T0 = 1_764_366_771_000_000_000


@dataclass
class Cluster:
    name: str
    run_root: Path

    async def status(self, *args: str) -> tuple[int, str, str]:
        proc = await CLI(self.run_root, self.name).start("status", *args)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    run_root = Path(tempfile.mkdtemp(prefix="h2st"))
    name = unique("h2st")
    write_cluster(run_root, name, nodes=("node-1", "node-2"))
    stream = FlowStream(capacity=1000, node_name="node-1")
    stream.publish(
        [
            Flow(T0 + i, Verdict.FORWARDED, ip=IP("10.0.0.1", "10.0.0.2"), l4=TCP(1, 2))
            for i in range(5)
        ]
    )
    stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 3)
    server: ObserverServer | None = None
    try:
        path = run_root / name / "nodes" / "node-1" / SOCKET_NAME  # node-2's agent is down
        server = await serve_observer(stream, path)
        yield Cluster(name, run_root)
    finally:
        if server is not None:
            await server.close()
        shutil.rmtree(run_root, ignore_errors=True)


async def test_status_of_a_cluster_without_a_relay(cluster: Cluster) -> None:
    code, out, err = await cluster.status()
    assert code == 0, err
    assert out.splitlines() == [
        "Healthcheck (via the node sockets): Ok",
        "Current/Max Flows: 6/1,000 (0.60%)",
        out.splitlines()[2],
        "Connected Nodes: 1/2",
        "Unavailable Nodes: 1",
        "  - node-2",
        out.splitlines()[6],
        "Lost Events: 3",
        "  - PERF_EVENT_RING_BUFFER: 3",
    ]
    assert out.splitlines()[2].startswith("Flows/s: ")
    assert out.splitlines()[6].startswith("Seen Flows: 6 in ")


async def test_status_through_the_recorded_relay(cluster: Cluster) -> None:
    info = clusterinfo.ClusterInfo.from_json(
        (cluster.run_root / cluster.name / "cluster.json").read_text()
    )
    address = f"127.0.0.1:{free_port()}"
    # the node sockets under the test's run root
    nodes = cluster.run_root / cluster.name / "nodes"
    peers = [Peer(n, f"unix:{nodes / n / SOCKET_NAME}") for n in ("node-1", "node-2")]
    (cluster.run_root / cluster.name / "cluster.json").write_text(
        with_address(info, address).to_json()
    )
    async with RelayServer(lambda: peers, address):
        code, out, err = await cluster.status()
        assert code == 0, err
        assert out.startswith(f"Healthcheck (via {address}): Ok\nCurrent/Max Flows: 6/1,000")
        assert "Connected Nodes: 1/2\nUnavailable Nodes: 1\n  - node-2\n" in out
        code, out, _ = await cluster.status("-o", "json")
        got = json.loads(out)
        assert got["num_flows"] == "6" and got["unavailable_nodes"] == ["node-2"]
        assert got["lost_events"] == [{"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": "3"}]
        code, out, _ = await cluster.status("--node", "node-1", "-o", "dict")
        assert code == 0 and "          NUM FLOWS: 6\n" in out
        assert "NUM CONNECTED NODES: N/A" in out  # a node is no relay
    # the relay is gone: not healthy, non-zero
    code, out, err = await cluster.status()
    assert code == 1 and f"cannot reach the relay of cluster {cluster.name!r}" in err
    assert "hint" in err


def test_outputs() -> None:
    status = observer_pb2.ServerStatusResponse(
        num_flows=1234,
        max_flows=196605,
        seen_flows=5000,
        uptime_ns=100 * 10**9,
        version="0.1",
    )
    status.num_connected_nodes.value = 3
    status.num_unavailable_nodes.value = 0
    status.lost_events.add(source=flow_pb2.PUBLISHER_SPOOL, num_events_lost=2)
    assert format_status(status, "compact", "127.0.0.1:4245").splitlines() == [
        "Healthcheck (via 127.0.0.1:4245): Ok",
        "Current/Max Flows: 1,234/196,605 (0.63%)",
        "Flows/s: 50.00",
        "Connected Nodes: 3/3",
        "Seen Flows: 5,000 in 1m40s",
        "Lost Events: 2",
        "  - PUBLISHER_SPOOL: 2",
    ]
    table = format_status(status, "table", "x").splitlines()
    assert table[0].split("   ")[:3] == ["NUM FLOWS", "MAX FLOWS", "SEEN FLOWS"]
    assert table[1].split()[:5] == ["1,234", "196,605", "5,000", "50.00", "1m40s"]
    assert "    PUBLISHER_SPOOL: 2" in format_status(status, "dict", "x")
    assert duration(3_725 * 10**9) == "1h2m5s" and duration(4 * 10**9) == "4s"


def publisher_stats(node: str, **values) -> PublisherStats:
    """A node publisher's stats file contents: zero but for `values`."""
    base = {f.name: "" if f.type in ("str", str) else 0 for f in dataclasses.fields(PublisherStats)}
    return PublisherStats(**{**base, "node": node, **values})


def test_outputs_with_kafka_publishers() -> None:
    status = observer_pb2.ServerStatusResponse(num_flows=5, max_flows=10, uptime_ns=10**9)
    now = 1_000 * 10**9
    up = publisher_stats(
        "node-1",
        broker="up",
        published=12,
        acked=3_400,
        spool_bytes=1536,
        spool_max_bytes=64 << 20,
        retries=1,
        updated_ns=now,
    )
    down = publisher_stats(
        "node-2",
        broker="retrying",
        last_error="KafkaConnectionError: connect refused",
        spooled=20,
        dropped=4,
        overflowed=1,
        updated_ns=now - 30 * 10**9,
    )
    plain = format_status(status, "compact", "x")
    compact = format_status(status, "compact", "x", publishers=[down, up], now_ns=now)
    assert compact.startswith(plain + "\n")  # what there was, then the publishers
    assert compact.splitlines()[len(plain.splitlines()) :] == [
        "Kafka Publishers:",
        "  - node-1: broker up, published 12 batches, acked 3,400, spooled 0 "
        "(1.5 KiB of 64.0 MiB), dropped 0, retries 1, lost 0",
        "  - node-2: broker retrying (KafkaConnectionError: connect refused), published 0 "
        "batches, acked 0, spooled 20 (0 B of 0 B), dropped 4, retries 0, lost 5, "
        "as of 30s ago",
    ]
    table = format_status(status, "table", "x", publishers=[up, down], now_ns=now).splitlines()
    assert table[2] == "" and table[3].split()[:4] == ["NODE", "BROKER", "PUBLISHED", "ACKED"]
    assert table[4].split()[:7] == ["node-1", "up", "12", "3,400", "0", "1.5", "KiB"]
    assert table[5].endswith("KafkaConnectionError: connect refused")
    assert format_status(status, "table", "x").count("\n") == 1  # no Kafka: as before
    doc = json.loads(format_status(status, "json", "x", publishers=[up, down]))
    assert [(p["node"], p["broker"], p["lost"]) for p in doc["publishers"]] == [
        ("node-1", "up", 0),
        ("node-2", "retrying", 5),
    ]
    assert doc["publishers"][1]["last_error"].startswith("KafkaConnectionError")
    assert "publishers" not in json.loads(format_status(status, "json", "x"))
    block = format_status(status, "dict", "x", publishers=[down], now_ns=now)
    assert "    KAFKA PUBLISHER: node-2\n             BROKER: retrying\n" in block
    assert "            SPOOLED: 20\n" in block and "               LOST: 5" in block


async def test_status_shows_the_publishers_of_the_nodes_that_publish(cluster: Cluster) -> None:
    node_dir = cluster.run_root / cluster.name / "nodes" / "node-1"
    stats = publisher_stats("node-1", broker="up", acked=77, updated_ns=time.time_ns())
    (node_dir / STATS_FILE).write_text(stats.to_json())
    code, out, err = await cluster.status()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-2] == "Kafka Publishers:"  # node-2 publishes nothing: not listed
    assert lines[-1].startswith("  - node-1: broker up, published 0 batches, acked 77, ")
    code, out, _ = await cluster.status("-o", "json")
    assert [p["acked"] for p in json.loads(out)["publishers"]] == [77]
    (node_dir / STATS_FILE).unlink()
    code, out, _ = await cluster.status()
    assert code == 0 and "Kafka" not in out
