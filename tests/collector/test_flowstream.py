"""The flow ring and the node's flow stream: followers, their bounds and lost events."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.flowstream import FlowStream, remove_stale
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


def test_the_ring_numbers_its_records() -> None:
    ring = FlowRing(4)
    first = ring.extend(flow(i) for i in range(3))[0].chunk  # sequence numbers 0..2
    second = ring.append(flow(3)).chunk  # 3
    third = ring.extend([flow(4), flow(5)])[0].chunk  # 4, 5: 0 and 1 pushed out
    assert (ring.first_seq, ring.seen) == (2, 6)
    assert ring.chunks_from(0) == [(0, first), (3, second), (4, third)]
    assert ring.chunks_from(4) == [(4, third)] and ring.chunks_from(6) == []
    chunks, starts = ring.held_chunks()
    assert chunks == [first, second, third] and starts.tolist() == [0, 3, 4]
    ring.append(flow(6))  # the first chunk leaves
    assert ring.first_seq == 3 and ring.chunks_from(0)[0] == (3, second)


def taken(follower) -> list:
    """What a follower's reader would send: records, and (source, count) for its losses."""
    return [
        item.record if hasattr(item, "record") else ("missed", item.count)
        for item in follower.take()
    ]


async def test_a_follower_gets_live_records_and_lost_events_in_place() -> None:
    stream = FlowStream(capacity=100)
    stream.publish([flow(0), flow(1)])
    follower = stream.follow(FlowFilter())
    assert not follower.wakeup.is_set() and taken(follower) == []  # only what comes next
    stream.publish([flow(2)])
    stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 7, cpu=1)
    stream.publish([flow(3, ns="z")])
    assert follower.wakeup.is_set()
    got = taken(follower)
    assert got[0] == flow(2) and got[2] == flow(3, ns="z")
    assert isinstance(got[1], LostEvent) and got[1].num_events_lost == 7 and got[1].cpu == 1
    assert stream.lost_counts == {LostEventSource.PERF_EVENT_RING_BUFFER: 7}
    only_x = stream.follow(FlowFilter(namespaces=("x",)))
    stream.publish([flow(4, ns="z"), flow(5)])
    assert [r.time_ns - T0 for r in taken(only_x)] == [5]
    assert stream.followers == 2
    stream.unfollow(follower)
    assert follower.closed and follower.wakeup.is_set() and stream.followers == 1


def test_a_slow_follower_never_blocks_the_producer_and_learns_what_it_missed() -> None:
    stream = FlowStream(capacity=100_000, client_queue=50)
    follower = stream.follow(FlowFilter())
    total = 20_000
    for i in range(0, total, 1000):  # never waits: the follower takes nothing meanwhile
        stream.publish([flow(j) for j in range(i, i + 1000)])
    stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 1)
    got = taken(follower)
    assert [r.time_ns - T0 for r in got[:50]] == list(range(50))
    assert got[50] == ("missed", total + 1 - 50)  # the loss keeps its place: after the 50
    assert len(got) == 51 and len(stream.ring) == total + 1
    stream.count_lost(LostEventSource.OBSERVER_EVENTS_QUEUE, total + 1 - 50)
    assert stream.lost_counts[LostEventSource.OBSERVER_EVENTS_QUEUE] == total - 49
    stream.publish([flow(total)])
    assert [r.time_ns - T0 for r in taken(follower)] == [total]  # room again


def test_a_stale_socket_is_removed_a_live_one_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "observer.sock"
    remove_stale(path)  # nothing there: nothing to do
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, no one listens: a dead agent's socket
    remove_stale(path)
    assert not path.exists()
    live = socket.socket(socket.AF_UNIX)
    try:
        live.bind(str(path))
        live.listen()
        with pytest.raises(OSError, match="already serves"):
            remove_stale(path)
        assert path.exists()
    finally:
        live.close()
