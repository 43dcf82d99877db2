"""`flowscope observe` against flow streams served by the test, as the node agents serve them."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.flowstream import FlowStream
from collector.observer import SOCKET_NAME, ObserverServer, serve_observer
from flowscope.flow import (
    IP,
    TCP,
    Endpoint,
    EventType,
    Flow,
    LostEventSource,
    TCPFlags,
    TraceObservationPoint,
    Verdict,
    record_from_json,
)
from flowscope.flow.timestamp import now_ns
from tests.conftest import unique
from tests.fakecluster import CLI, write_cluster

NODES = ("node-1", "node-2", "node-3")


@dataclass
class FakeCluster:
    """A cluster.json and flow streams for node-1 and node-2 (node-3 serves none)."""

    name: str
    run_root: Path
    streams: dict[str, FlowStream]

    async def observe(self, *args: str) -> tuple[int, str, str]:
        proc = await self.start(*args)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode, out.decode(), err.decode()

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await CLI(self.run_root, self.name).start("observe", *args)


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    run_root = Path(tempfile.mkdtemp(prefix="fsobs"))
    name = unique("obs")
    write_cluster(run_root, name, nodes=NODES)
    servers: list[ObserverServer] = []
    streams = {}
    try:
        for node in NODES[:2]:
            streams[node] = FlowStream(capacity=1000, node_name=node)
            path = run_root / name / "nodes" / node / SOCKET_NAME
            servers.append(await serve_observer(streams[node], path))
        yield FakeCluster(name, run_root, streams)
    finally:
        for server in servers:
            await server.close()
        shutil.rmtree(run_root, ignore_errors=True)


def flow(t: int, node: str, src: str, verdict: Verdict = Verdict.FORWARDED) -> Flow:
    ns, pod = src.split("/")
    dropped = verdict == Verdict.DROPPED
    return Flow(
        t,
        verdict,
        drop_reason=133 if dropped else 0,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(40000 + (t // 10**6) % 1000, 80, TCPFlags(SYN=True)),
        source=Endpoint(identity=300, namespace=ns, pod_name=pod),
        destination=Endpoint(identity=301, namespace="y", pod_name="b"),
        node_name=node,
        event_type=(
            EventType.drop(133) if dropped else EventType.trace(TraceObservationPoint.TO_ENDPOINT)
        ),
        is_reply=False,
    )


T0 = 1_764_366_771_000_000_000


async def test_last_flows_of_all_nodes_in_time_order(cluster: FakeCluster) -> None:
    # interleaved in time across the two nodes
    cluster.streams["node-1"].publish([flow(T0 + i * 10**6, "node-1", "x/a") for i in (0, 2, 4)])
    cluster.streams["node-2"].publish(
        [flow(T0 + i * 10**6, "node-2", "z/c", Verdict.DROPPED) for i in (1, 3, 5)]
    )
    code, out, err = await cluster.observe("--last", "4")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert [line[:19] for line in lines] == [
        "Nov 28 21:52:51.002",
        "Nov 28 21:52:51.003",
        "Nov 28 21:52:51.004",
        "Nov 28 21:52:51.005",
    ]
    assert lines[0].endswith(
        "x/a:40002 (ID:300) -> y/b:80 (ID:301) to-endpoint FORWARDED (TCP Flags: SYN)"
    )
    assert "z/c:40003 (ID:300) -> y/b:80 (ID:301) Policy denied DROPPED" in lines[1]
    # reported (as hubble reports a relay's unavailable nodes), the others still print
    assert "1 nodes are unavailable: node-3" in err and "is its agent running" in err
    assert "Traceback" not in err

    code, out, err = await cluster.observe(
        "-o", "json", "--verdict", "dropped", "--print-node-name"
    )
    assert code == 0, err
    records = [record_from_json(line) for line in out.splitlines()]
    assert [r.time_ns - T0 for r in records] == [10**6, 3 * 10**6, 5 * 10**6]
    assert all(json.loads(line)["node_name"] == "node-2" for line in out.splitlines())

    code, out, _ = await cluster.observe("--namespace", "x", "--pod", "x/a", "--last", "1")
    assert code == 0 and out.count("\n") == 1 and "x/a:40004" in out

    code, out, err = await cluster.observe("--node", "node-1")
    assert code == 0 and out.count("\n") == 3 and err == ""


async def test_errors(cluster: FakeCluster) -> None:
    code, _, err = await cluster.observe("--node", "node-3")
    assert code == 1 and "cannot reach node node-3's agent" in err and "hint" in err
    code, _, err = await cluster.observe("--node", "node-9")
    assert code == 1 and "node-9" in err and "lab status" in err
    code, _, err = await cluster.observe("--verdict", "SMASHED")
    assert code == 2 and "--verdict" in err and "FORWARDED" in err
    code, _, err = await cluster.observe("--last", "-1")
    assert code == 2 and "--last" in err


async def test_follow_prints_history_then_new_flows_and_lost_events_then_quits_quietly(
    cluster: FakeCluster,
) -> None:
    cluster.streams["node-2"].publish([flow(T0 - 1, "node-2", "z/older")])
    cluster.streams["node-1"].publish([flow(T0, "node-1", "x/old")])
    proc = await cluster.start("--follow", "--last", "1", "-o", "json")
    try:
        got = [record_from_json(await asyncio.wait_for(proc.stdout.readline(), 10))]
        assert got[0].source.pod_name == "old"  # the newest held flow of both nodes together
        assert all(s.followers for s in cluster.streams.values())
        # published out of time order; recent, so observe holds them a moment to sort them
        t = now_ns()
        cluster.streams["node-2"].publish([flow(t - 1_000_000, "node-2", "z/c")])
        cluster.streams["node-1"].publish([flow(t - 2_000_000, "node-1", "x/a")])
        cluster.streams["node-1"].publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 9, cpu=0)
        while len(got) < 4:
            got.append(record_from_json(await asyncio.wait_for(proc.stdout.readline(), 10)))
        # in time order, although node-2's flow was published first
        assert [r.source.pod_name for r in got[1:3]] == ["a", "c"]
        assert got[3].num_events_lost == 9
        # a new flow whose event time is older than the request is new all the same
        cluster.streams["node-2"].publish([flow(T0 + 5, "node-2", "x/late")])
        late = record_from_json(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert late.source.pod_name == "late"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode in (0, 130)
    assert b"older" not in out


async def test_type_and_service_filters_pick_translations(cluster: FakeCluster) -> None:
    from flowscope.flow import Service, ServiceTranslation, SocketTranslationPoint

    point = SocketTranslationPoint.SOCK_XLATE_POINT_POST_DIRECTION_FWD
    translated = Flow(
        T0,
        Verdict.TRANSLATED,
        ip=IP("10.244.1.5", "10.0.0.10"),
        l4=TCP(0, 8000),
        source=Endpoint(identity=300, namespace="x", pod_name="a"),
        destination=Endpoint(identity=301, namespace="y", pod_name="web-1"),
        node_name="node-1",
        event_type=EventType.trace_sock(point),
        destination_service=Service("web", "y"),
        is_reply=False,
        sock_xlate_point=point,
        socket_cookie=42,
        service_translation=ServiceTranslation("10.0.0.10", 8000, "10.244.2.7", 80),
        summary="TCP",
    )
    cluster.streams["node-1"].publish([translated, flow(T0 + 10**6, "node-1", "x/a")])
    code, out, err = await cluster.observe("--type", "trace-sock", "--node", "node-1")
    assert code == 0, err
    assert out.splitlines() == [
        "Nov 28 21:52:51.000: x/a (ID:300) -> y/web:8000 -> y/web-1:80 (ID:301)"
        " post-xlate-fwd TRANSLATED (TCP)"
    ]
    code, out, _ = await cluster.observe(
        "--service", "y/web", "--verdict", "translated", "-o", "json"
    )
    assert code == 0 and [record_from_json(line) for line in out.splitlines()] == [translated]
    code, out, _ = await cluster.observe("--service", "z/web", "--node", "node-1")
    assert code == 0 and out == ""
    code, _, err = await cluster.observe("--type", "trace-socket")
    assert code == 2 and "--type" in err and "trace-sock" in err
    # "y/" is every service in y (hubble's reading); an empty namespace is no name
    code, out, _ = await cluster.observe("--service", "y/", "--node", "node-1", "-o", "json")
    assert code == 0 and [record_from_json(line) for line in out.splitlines()] == [translated]
    code, _, err = await cluster.observe("--service", "/web")
    assert code == 2 and "--service" in err and "namespace" in err
