"""The node's Observer gRPC service: a real grpc.aio server on a Unix socket over a FlowStream fed
with datapath flows (named through the fake directory of test_flows), read with the generated
client."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from collector.datapath_flows import datapath_flow
from collector.flowstream import FlowStream
from collector.observer import ObserverServer, serve_observer
from dataplane.maps.flowevent import DropReason, Verdict
from flowscope.flow.model import Flow, LostEvent, LostEventSource
from flowscope.flow.protoconv import record_from_response
from flowscope.proto import flow_pb2, observer_pb2, observer_pb2_grpc
from tests.collector.test_flows import ENRICHER, event

T0 = 1_764_366_771_000_000_000
NODE = "node-2"


def flows(n: int, start: int = 0) -> list[Flow]:
    """n flows a.x -> b.y, a second apart: even ones forwarded to port 80, odd ones dropped by
    policy on port 443 (time T0 + i s)."""
    out = []
    for i in range(start, start + n):
        ev = (
            event(ktime_ns=i * 10**9, dport=80)
            if i % 2 == 0
            else event(
                ktime_ns=i * 10**9,
                dport=443,
                verdict=Verdict.DROPPED,
                drop_reason=DropReason.POLICY_DENIED,
            )
        )
        out.append(datapath_flow(ev, ENRICHER, NODE, T0))
    return out


def seconds(records) -> list[int]:
    return [(r.time_ns - T0) // 10**9 for r in records]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # short: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not
    path = Path(tempfile.mkdtemp(prefix="fsobs"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def observed(sock_dir: Path) -> AsyncIterator[tuple[FlowStream, ObserverServer, object]]:
    stream = FlowStream(100, node_name=NODE, client_queue=8)
    stream.publish(flows(10))
    server = await serve_observer(stream, sock_dir / "observer.sock")
    try:
        async with grpc.aio.insecure_channel(f"unix:{server.path}") as channel:
            yield stream, server, observer_pb2_grpc.ObserverStub(channel)
    finally:
        await server.close()


async def get(stub, **kw) -> list:
    request = observer_pb2.GetFlowsRequest(**kw)
    return [record_from_response(r) async for r in stub.GetFlows(request)]


def ts(second: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(T0 + second * 10**9)
    return t


async def test_history_last_first_and_time_window(observed) -> None:
    stream, _, stub = observed
    assert seconds(await get(stub)) == list(range(10))
    assert seconds(await get(stub, number=3)) == [7, 8, 9]
    assert seconds(await get(stub, number=3, first=True)) == [0, 1, 2]
    assert seconds(await get(stub, since=ts(4), until=ts(6))) == [4, 5, 6]
    assert seconds(await get(stub, since=ts(4), until=ts(8), number=2)) == [7, 8]
    assert seconds(await get(stub, since=ts(4), number=2, first=True)) == [4, 5]
    got = await get(stub, number=1)
    assert got == [stream.ring.last(1)[0].record]  # the whole flow, losslessly


async def test_whitelist_and_blacklist(observed) -> None:
    _, _, stub = observed
    dropped = flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])
    assert seconds(await get(stub, whitelist=[dropped])) == [1, 3, 5, 7, 9]
    assert seconds(await get(stub, blacklist=[dropped])) == [0, 2, 4, 6, 8]
    # OR across filters, AND within one, then minus the blacklist
    white = [
        flow_pb2.FlowFilter(destination_port=["80"], source_pod=["x/a"]),
        flow_pb2.FlowFilter(drop_reason_desc=[flow_pb2.POLICY_DENIED], source_ip=["10.244.1.0/24"]),
    ]
    black = [flow_pb2.FlowFilter(destination_label=["k8s:app=b"], destination_port=["443"])]
    assert seconds(await get(stub, whitelist=white)) == list(range(10))
    assert seconds(await get(stub, whitelist=white, blacklist=black)) == [0, 2, 4, 6, 8]
    none = flow_pb2.FlowFilter(source_pod=["y/"], node_name=[NODE])
    assert await get(stub, whitelist=[none]) == []
    assert seconds(await get(stub, whitelist=[dropped], number=2)) == [7, 9]


async def test_field_mask_keeps_only_the_asked_fields(observed) -> None:
    _, _, stub = observed
    request = observer_pb2.GetFlowsRequest(
        number=1, field_mask=field_mask_pb2.FieldMask(paths=["time", "source.pod_name"])
    )
    (resp,) = [r async for r in stub.GetFlows(request)]
    assert resp.flow.source.pod_name == "a" and resp.flow.time.ToNanoseconds() == T0 + 9 * 10**9
    assert not resp.flow.HasField("destination") and resp.flow.verdict == 0


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (
            {"whitelist": [flow_pb2.FlowFilter(source_ip=["10.0.0.0/33"])]},
            "whitelist[0].source_ip[0]",
        ),
        (
            {"blacklist": [flow_pb2.FlowFilter(), flow_pb2.FlowFilter(destination_port=["x"])]},
            "blacklist[1].destination_port[0]",
        ),
        (
            {"whitelist": [flow_pb2.FlowFilter(http_method=["FETCH"])]},
            "whitelist[0].http_method[0]",
        ),
        (
            {"whitelist": [flow_pb2.FlowFilter(destination_fqdn=["a b"])]},
            "whitelist[0].destination_fqdn[0]",
        ),
        ({"whitelist": [flow_pb2.FlowFilter(dns_query=["a("])]}, "whitelist[0].dns_query[0]"),
        ({"first": True, "follow": True}, "first"),
        ({"since": ts(5), "until": ts(4)}, "until"),
        ({"field_mask": field_mask_pb2.FieldMask(paths=["nope"])}, "field_mask"),
    ],
)
async def test_bad_requests_are_invalid_arguments_naming_the_field(observed, kw, field) -> None:
    _, _, stub = observed
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await get(stub, **kw)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details().startswith(field + ":"), exc.value.details()


async def next_record(it) -> object:
    return record_from_response(await asyncio.wait_for(it.__anext__(), 5))


async def test_follow_sends_history_then_new_flows_and_lets_go(observed) -> None:
    stream, _, stub = observed
    base = stream.followers
    dropped = flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])
    call = stub.GetFlows(observer_pb2.GetFlowsRequest(number=2, follow=True, whitelist=[dropped]))
    it = call.__aiter__()
    assert seconds([await next_record(it), await next_record(it)]) == [7, 9]
    assert stream.followers == base + 1
    stream.publish(flows(4, start=10))  # 10 and 12 forwarded: filtered out
    assert seconds([await next_record(it), await next_record(it)]) == [11, 13]
    call.cancel()
    for _ in range(100):
        if stream.followers == base:
            break
        await asyncio.sleep(0.01)
    assert stream.followers == base  # the follower is gone with its client


async def test_follow_without_number_or_since_sends_only_new_flows(observed) -> None:
    stream, _, stub = observed
    call = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
    it = call.__aiter__()
    await asyncio.sleep(0.1)  # the server has the follower before we publish
    stream.publish(flows(1, start=20))
    assert seconds([await next_record(it)]) == [20]
    call.cancel()


async def test_a_slow_follower_is_told_what_it_missed(observed) -> None:
    stream, _, stub = observed
    call = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, since=ts(100)))
    it = call.__aiter__()
    for _ in range(100):  # the server is following once the stream has a follower
        if stream.followers == 1:
            break
        await asyncio.sleep(0.01)
    # publish more than the client queue (8) in one go: the collector does not wait
    stream.publish(flows(20, start=100))
    got = [await next_record(it) for _ in range(9)]
    call.cancel()
    assert seconds(got[:8]) == list(range(100, 108))
    lost = got[8]
    assert isinstance(lost, LostEvent)
    assert (lost.source, lost.num_events_lost) == (LostEventSource.OBSERVER_EVENTS_QUEUE, 12)
    status = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
    counts = {e.source: e.num_events_lost for e in status.lost_events}
    assert counts[flow_pb2.OBSERVER_EVENTS_QUEUE] == 12


async def test_server_status_and_nodes(observed) -> None:
    stream, server, stub = observed
    stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 5, cpu=1)
    stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 2, cpu=0)
    status = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
    assert (status.num_flows, status.max_flows, status.seen_flows) == (12, 100, 12)
    assert status.uptime_ns > 0
    assert [(e.source, e.num_events_lost) for e in status.lost_events] == [
        (flow_pb2.PERF_EVENT_RING_BUFFER, 7)
    ]
    stream.publish(flows(100, start=10))  # the ring overflows: held 100, seen 112
    status = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
    assert (status.num_flows, status.max_flows, status.seen_flows) == (100, 100, 112)
    nodes = await stub.GetNodes(observer_pb2.GetNodesRequest())
    (node,) = nodes.nodes
    assert (node.name, node.state, node.address) == (
        NODE,
        observer_pb2.NODE_CONNECTED,
        f"unix:{server.path}",
    )
    assert (node.num_flows, node.seen_flows) == (100, 112)


async def test_records_the_collector_could_not_decode_are_a_lost_event_source_of_ours(
    observed,
) -> None:
    stream, _, stub = observed
    stream.publish_lost(LostEventSource.COLLECTOR_DECODE, 3)
    (lost,) = await get(stub, number=1)
    assert isinstance(lost, LostEvent) and lost.source is LostEventSource.COLLECTOR_DECODE
    assert lost.num_events_lost == 3
    status = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
    assert [(e.source, e.num_events_lost) for e in status.lost_events] == [(200004, 3)]
    assert flow_pb2.LostEventSource.Name(200004) == "COLLECTOR_DECODE"
    assert flow_pb2.OBSERVER_EVENTS_QUEUE == 2  # Hubble's numbers stay


async def test_socket_is_private_and_a_stale_one_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "observer.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: what a dead agent leaves
    stream = FlowStream(10, node_name=NODE)
    server = await serve_observer(stream, path)
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        with pytest.raises(OSError, match="already serves"):
            await serve_observer(stream, path)  # a live one is not taken over
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            status = await stub.ServerStatus(observer_pb2.ServerStatusRequest())
        assert status.max_flows == 10
    finally:
        await server.close()
    assert not path.exists()


async def test_follow_with_a_past_until_ends_after_the_history(observed) -> None:
    stream, _, stub = observed
    got = await asyncio.wait_for(get(stub, follow=True, since=ts(3), until=ts(5)), 5)
    assert seconds(got) == [3, 4, 5]
    assert stream.followers == 0  # the call's follower is gone with the call


async def test_closing_the_server_ends_live_streams(sock_dir: Path) -> None:
    stream = FlowStream(10, node_name=NODE)
    server = await serve_observer(stream, sock_dir / "observer.sock")
    async with grpc.aio.insecure_channel(f"unix:{server.path}") as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        reading = asyncio.ensure_future(get(stub, follow=True))
        for _ in range(100):
            if stream.followers == 1:
                break
            await asyncio.sleep(0.01)
        assert stream.followers == 1
        await server.close()
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(reading, 5)
    assert stream.followers == 0 and not server.path.exists()


async def test_history_end_marker_only_for_readers_that_ask(observed) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from collector.observer import HISTORY_END_METADATA, SERVICE_NAME, is_history_end

    stream, server, stub = observed
    req = observer_pb2.GetFlowsRequest(number=2, follow=True)
    marked = stub.GetFlows(req, metadata=(HISTORY_END_METADATA,))
    plain = stub.GetFlows(req)
    try:
        got = [await marked.read() for _ in range(3)]  # the newest 2 held, then the marker
        assert [is_history_end(r) for r in got] == [False, False, True]
        assert got[2].node_name == stream.node_name
        assert [is_history_end(await plain.read()) for _ in range(2)] == [False, False]
        stream.publish(flows(1, start=20))
        assert not is_history_end(await marked.read())
        assert not is_history_end(await plain.read())  # no marker ever came in between
    finally:
        marked.cancel()
        plain.cancel()
    async with grpc.aio.insecure_channel(f"unix:{server.path}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
