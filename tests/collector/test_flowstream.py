"""The flow ring and the node's flow stream over real Unix sockets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.flowstream import (
    HISTORY_END,
    FlowRequest,
    FlowStream,
    FlowStreamError,
    read_flows,
    serve_flows,
)
from collector.ring import FlowRing
from flowscope.flow import (
    IP,
    TCP,
    Endpoint,
    Flow,
    FlowFilter,
    LostEvent,
    LostEventSource,
    Verdict,
    record_from_json,
)

T0 = 1_764_366_771_000_000_000


def flow(i: int, ns: str = "x", verdict: Verdict = Verdict.FORWARDED) -> Flow:
    return Flow(
        T0 + i,
        verdict,
        ip=IP("10.0.0.1", "10.0.0.2"),
        l4=TCP(10000 + i, 80),
        source=Endpoint(identity=300, namespace=ns, pod_name="a"),
        destination=Endpoint(identity=301, namespace="y", pod_name="b"),
        node_name="node-1",
    )


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # short: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not
    path = Path(tempfile.mkdtemp(prefix="fsflows"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_ring_keeps_the_newest() -> None:
    ring = FlowRing(3)
    ring.extend(flow(i) for i in range(5))
    assert len(ring) == 3 and ring.seen == 5
    assert [e.record.time_ns - T0 for e in ring.last()] == [2, 3, 4]
    assert [e.record.time_ns - T0 for e in ring.last(2)] == [3, 4]
    assert ring.last(0) == []
    odd = ring.last(5, lambda r: (r.time_ns - T0) % 2 == 1)
    assert [e.record.time_ns - T0 for e in odd] == [3]
    entry = ring.last(1)[0]
    assert entry.line() is entry.line()  # encoded once
    assert record_from_json(entry.line()) == flow(4)
    with pytest.raises(ValueError, match="capacity"):
        FlowRing(0)


async def collect(path: Path, request: FlowRequest) -> list:
    return [r async for r in read_flows(path, request)]


async def test_last_n_with_filters_then_closes(sock_dir: Path) -> None:
    stream = FlowStream(capacity=100, node_name="node-1")
    stream.publish([flow(i, ns="x" if i % 2 else "z") for i in range(10)])
    stream.publish([flow(10, verdict=Verdict.DROPPED)])
    path = sock_dir / "flows.sock"
    async with await serve_flows(stream, path) as server:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        got = await collect(path, FlowRequest(last=3))
        assert [r.time_ns - T0 for r in got] == [8, 9, 10]
        got = await collect(path, FlowRequest(last=None, filter=FlowFilter(namespaces=("z",))))
        assert [r.time_ns - T0 for r in got] == [0, 2, 4, 6, 8]
        got = await collect(
            path, FlowRequest(last=5, filter=FlowFilter(verdicts=(Verdict.DROPPED,)))
        )
        assert got == [flow(10, verdict=Verdict.DROPPED)]
        assert server.path == path
    assert not path.exists()  # closing removes the socket


async def test_follow_gets_history_then_live_then_lost_events_in_place(sock_dir: Path) -> None:
    stream = FlowStream(capacity=100)
    stream.publish([flow(0), flow(1)])
    path = sock_dir / "flows.sock"
    async with await serve_flows(stream, path):
        got: list = []
        reader = read_flows(path, FlowRequest(last=1, follow=True))
        got.append(await anext(reader))
        assert got == [flow(1)]
        stream.publish([flow(2)])
        stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 7, cpu=1)
        got.append(await anext(reader))
        got.append(await anext(reader))
        assert got[1] == flow(2)
        assert isinstance(got[2], LostEvent) and got[2].num_events_lost == 7 and got[2].cpu == 1
        assert got[2].source is LostEventSource.PERF_EVENT_RING_BUFFER
        assert stream.followers == 1
        await reader.aclose()
        for _ in range(100):  # the server notices the hang-up without any flow to send
            if stream.followers == 0:
                break
            await asyncio.sleep(0.01)
        assert stream.followers == 0


async def test_slow_reader_never_blocks_the_producer_and_learns_what_it_missed(
    sock_dir: Path,
) -> None:
    stream = FlowStream(capacity=100_000, client_queue=50)
    path = sock_dir / "flows.sock"
    async with await serve_flows(stream, path):
        # a raw client that asks to follow, then does not read at all for a while
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(FlowRequest(last=0, follow=True).to_json().encode() + b"\n")
        await writer.drain()
        for _ in range(50):
            await asyncio.sleep(0.005)
            if stream.followers:
                break
        assert stream.followers == 1
        total = 20_000  # the reader reads nothing until all are published: were publish to
        # wait for readers, this would never finish
        for i in range(0, total, 1000):
            stream.publish([flow(j) for j in range(i, i + 1000)])  # sync, never waits
            await asyncio.sleep(0)  # let the server run: it writes until the socket is full
        stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 1)  # a marker: the end
        flows, lost = 0, 0
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            record = record_from_json(line)
            if isinstance(record, LostEvent):
                if record.source == LostEventSource.PERF_EVENT_RING_BUFFER:
                    break
                assert record.source == LostEventSource.OBSERVER_EVENTS_QUEUE
                lost += record.num_events_lost
            else:
                flows += 1
        writer.close()
        assert lost > 0, f"nothing lost: the reader kept up with {total} flows?"
        assert flows + lost == total, (flows, lost)
        assert len(stream.ring) == total + 1


async def test_history_end_is_marked_only_when_asked(sock_dir: Path) -> None:
    stream = FlowStream(capacity=10)
    stream.publish([flow(1), flow(2)])
    path = sock_dir / "flows.sock"
    async with await serve_flows(stream, path):
        reader, writer = await asyncio.open_unix_connection(str(path))
        request = FlowRequest(last=None, follow=True, mark_history_end=True)
        assert FlowRequest.from_json(request.to_json()) == request
        writer.write(request.to_json().encode() + b"\n")
        await writer.drain()
        lines = [await reader.readline() for _ in range(3)]
        assert [json.loads(line) for line in lines][2] == {"history_end": True}
        stream.publish([flow(3)])
        assert record_from_json(await reader.readline()) == flow(3)
        writer.close()
        got = await collect(path, FlowRequest(last=5))
        assert got == [flow(1), flow(2), flow(3)]  # unmarked: nothing but records
        got = await collect(path, FlowRequest(last=5, mark_history_end=True))
        assert got[:3] == [flow(1), flow(2), flow(3)] and got[3] is HISTORY_END


async def test_bad_requests_get_an_error_line(sock_dir: Path) -> None:
    stream = FlowStream(capacity=10)
    path = sock_dir / "flows.sock"
    async with await serve_flows(stream, path):
        for request, field in (
            (b"not json\n", "not JSON"),
            (b'{"last": -1}\n', "request.last"),
            (b'{"follow": "yes"}\n', "request.follow"),
            (b'{"filters": {"verdict": "SMASHED"}}\n', "filters.verdict"),
            (b'{"since": 5}\n', "request.since"),
        ):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(request)
            await writer.drain()
            answer = json.loads(await reader.readline())
            assert field in answer["error"], (request, answer)
            assert await reader.readline() == b""  # and closed
            writer.close()
        bad = FlowRequest(last=1)
        object.__setattr__(bad, "last", -5)  # a client that skips validation
        with pytest.raises(FlowStreamError, match=r"request\.last"):
            await collect(path, bad)


async def test_stale_socket_is_replaced_live_one_is_not(sock_dir: Path) -> None:
    path = sock_dir / "flows.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, no one listens: a dead agent's socket
    stream = FlowStream(capacity=10)
    stream.publish([flow(1)])
    async with await serve_flows(stream, path):
        assert await collect(path, FlowRequest()) == [flow(1)]
        with pytest.raises(OSError, match="already serves"):
            await serve_flows(FlowStream(capacity=10), path)
        assert await collect(path, FlowRequest()) == [flow(1)]  # the live one is untouched


async def test_nothing_serves_there(sock_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await collect(sock_dir / "nothing.sock", FlowRequest())
