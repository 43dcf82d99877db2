"""The relay over real gRPC: node Observers on Unix sockets fed by FlowStreams, the relay on a TCP
port of the test's own, a real client. Merge order, --last/--first across nodes, filters on the
nodes, a node that is down (in the stream, ServerStatus and GetNodes), following while a node
goes away and comes back."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector import relay
from collector.flowstream import FlowStream
from collector.observer import SERVICE_NAME, ObserverServer, serve_observer
from collector.relay import Peer, RelayServer, merge_history
from flowscope.flow import (
    IP,
    TCP,
    Endpoint,
    EventType,
    Flow,
    LostEventSource,
    TraceObservationPoint,
    Verdict,
)
from flowscope.flow.protoconv import record_from_response
from flowscope.proto import flow_pb2, observer_pb2, observer_pb2_grpc
from tests.conftest import free_port

T0 = 1_764_366_771_000_000_000
MS = 1_000_000


def flow(t: int, node: str, pod: str = "a", verdict: Verdict = Verdict.FORWARDED) -> Flow:
    return Flow(
        t,
        verdict,
        drop_reason=133 if verdict == Verdict.DROPPED else 0,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=TCP(40000, 80),
        source=Endpoint(identity=300, namespace="x", pod_name=pod),
        destination=Endpoint(identity=301, namespace="y", pod_name="b"),
        node_name=node,
        event_type=EventType.trace(TraceObservationPoint.TO_ENDPOINT),
        is_reply=False,
    )


@dataclass
class Cluster:
    dir: Path
    streams: dict[str, FlowStream]
    servers: dict[str, ObserverServer]
    relay: RelayServer
    channel: grpc.aio.Channel

    @property
    def stub(self) -> observer_pb2_grpc.ObserverStub:
        return observer_pb2_grpc.ObserverStub(self.channel)

    async def flows(self, **request: object) -> list[observer_pb2.GetFlowsResponse]:
        req = observer_pb2.GetFlowsRequest(**request)
        return [r async for r in self.stub.GetFlows(req)]

    def socket(self, node: str) -> Path:
        return self.dir / f"{node}.sock"


@pytest.fixture
async def cluster(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setattr(relay, "RETRY_INTERVAL", 0.2)
    tmp = Path(tempfile.mkdtemp(prefix="h2relay"))
    streams = {n: FlowStream(capacity=100, node_name=n) for n in ("node-1", "node-2")}
    servers: dict[str, ObserverServer] = {}
    # node-3 is in the cluster, but its agent does not run
    peers = [Peer(n, f"unix:{tmp / f'{n}.sock'}") for n in ("node-1", "node-2", "node-3")]
    server = RelayServer(lambda: peers, f"127.0.0.1:{free_port()}", window=0.1)
    channel = None
    try:
        for name, stream in streams.items():
            servers[name] = await serve_observer(stream, tmp / f"{name}.sock")
        await server.start()
        channel = grpc.aio.insecure_channel(server.address)
        yield Cluster(tmp, streams, servers, server, channel)
    finally:
        if channel is not None:
            await channel.close()
        await server.close()
        for s in servers.values():
            await s.close()
        shutil.rmtree(tmp, ignore_errors=True)


def times(responses: list[observer_pb2.GetFlowsResponse]) -> list[tuple[str, int]]:
    return [
        (r.node_name, (r.time.ToNanoseconds() - T0) // MS)
        for r in responses
        if r.WhichOneof("response_types") == "flow"
    ]


def statuses(responses: list[observer_pb2.GetFlowsResponse]) -> list[tuple[str, list[str]]]:
    return [
        (observer_pb2.NodeState.Name(r.node_status.state_change), list(r.node_status.node_names))
        for r in responses
        if r.WhichOneof("response_types") == "node_status"
    ]


def test_merge_history_keeps_each_nodes_order() -> None:
    def resp(t: int, node: str) -> observer_pb2.GetFlowsResponse:
        r = observer_pb2.GetFlowsResponse(node_name=node)
        r.time.FromNanoseconds(T0 + t * MS)
        return r

    one = [resp(t, "n1") for t in (0, 2, 4, 3)]  # the node's own order is not time order
    two = [resp(t, "n2") for t in (1, 5)]
    got = [
        (r.node_name, (r.time.ToNanoseconds() - T0) // MS)
        for r in merge_history([one, two], 0, False)
    ]
    assert got == [("n1", 0), ("n2", 1), ("n1", 2), ("n1", 4), ("n1", 3), ("n2", 5)]
    assert merge_history([one, two], 3, False) == [one[2], one[3], two[1]]
    assert merge_history([one, two], 2, True) == [one[0], two[0]]


async def test_history_in_time_order_with_last_and_first_across_nodes(cluster: Cluster) -> None:
    cluster.streams["node-1"].publish([flow(T0 + t * MS, "node-1") for t in (0, 2, 4, 3)])
    cluster.streams["node-2"].publish([flow(T0 + t * MS, "node-2") for t in (1, 5, 6)])
    got = await cluster.flows(number=0, since=None)
    assert times(got) == [
        ("node-1", 0),
        ("node-2", 1),
        ("node-1", 2),
        ("node-1", 4),
        ("node-1", 3),  # node-1 sent it after 4: its order holds
        ("node-2", 5),
        ("node-2", 6),
    ]
    # the nodes before the flows: who answered, who did not and why
    assert statuses(got) == [
        ("NODE_CONNECTED", ["node-1", "node-2"]),
        ("NODE_UNAVAILABLE", ["node-3"]),
    ]
    down = next(r for r in got if r.node_status.state_change == observer_pb2.NODE_UNAVAILABLE)
    assert "node-3.sock" in down.node_status.message
    assert "agent running" in down.node_status.message
    # --last 3 of the cluster, not of each node
    assert times(await cluster.flows(number=3)) == [("node-1", 3), ("node-2", 5), ("node-2", 6)]
    assert times(await cluster.flows(number=3, first=True)) == [
        ("node-1", 0),
        ("node-2", 1),
        ("node-1", 2),
    ]
    # since/until run on the nodes
    since = observer_pb2.GetFlowsRequest()
    since.since.FromNanoseconds(T0 + 2 * MS)
    since.until.FromNanoseconds(T0 + 5 * MS)
    got = [r async for r in cluster.stub.GetFlows(since)]
    assert times(got) == [("node-1", 2), ("node-1", 4), ("node-1", 3), ("node-2", 5)]


async def test_filters_run_on_the_nodes_and_bad_ones_are_refused(cluster: Cluster) -> None:
    cluster.streams["node-1"].publish(
        [flow(T0, "node-1"), flow(T0 + MS, "node-1", "d", Verdict.DROPPED)]
    )
    cluster.streams["node-2"].publish([flow(T0 + 2 * MS, "node-2", "e", Verdict.DROPPED)])
    got = await cluster.flows(whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
    assert times(got) == [("node-1", 1), ("node-2", 2)]
    got = await cluster.flows(blacklist=[flow_pb2.FlowFilter(source_pod=["x/d"])])
    assert times(got) == [("node-1", 0), ("node-2", 2)]
    # the field mask too: only the asked-for fields arrive
    mask = observer_pb2.GetFlowsRequest(number=1)
    mask.field_mask.paths.extend(["source.pod_name", "verdict"])
    (resp,) = [r async for r in cluster.stub.GetFlows(mask) if r.HasField("flow")]
    assert resp.flow.source.pod_name == "e" and not resp.flow.HasField("IP")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await cluster.flows(whitelist=[flow_pb2.FlowFilter(source_ip=["10.0.0.300"])])
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details().startswith("whitelist[0].source_ip[0]: ")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await cluster.flows(first=True, follow=True)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first" in exc.value.details()


async def test_status_and_nodes_sum_the_nodes_and_name_the_missing(cluster: Cluster) -> None:
    cluster.streams["node-1"].publish([flow(T0 + t, "node-1") for t in range(3)])
    cluster.streams["node-1"].publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 7)
    cluster.streams["node-2"].publish([flow(T0 + t, "node-2") for t in range(2)])
    cluster.streams["node-2"].publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 5)
    cluster.streams["node-2"].publish_lost(LostEventSource.PUBLISHER_SPOOL, 2)
    status = await cluster.stub.ServerStatus(observer_pb2.ServerStatusRequest())
    assert (status.num_flows, status.max_flows) == (3 + 1 + 2 + 2, 200)
    assert status.num_connected_nodes.value == 2
    assert status.num_unavailable_nodes.value == 1
    assert list(status.unavailable_nodes) == ["node-3"]
    assert {e.source: e.num_events_lost for e in status.lost_events} == {
        flow_pb2.PERF_EVENT_RING_BUFFER: 12,
        flow_pb2.PUBLISHER_SPOOL: 2,
    }
    nodes = await cluster.stub.GetNodes(observer_pb2.GetNodesRequest())
    assert [(n.name, observer_pb2.NodeState.Name(n.state)) for n in nodes.nodes] == [
        ("node-1", "NODE_CONNECTED"),
        ("node-2", "NODE_CONNECTED"),
        ("node-3", "NODE_UNAVAILABLE"),
    ]
    assert nodes.nodes[0].num_flows == 4 and nodes.nodes[2].address.endswith("node-3.sock")
    health = health_pb2_grpc.HealthStub(cluster.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_follow_merges_live_records_and_reports_a_node_that_leaves_and_returns(
    cluster: Cluster,
) -> None:
    cluster.streams["node-1"].publish([flow(T0, "node-1", "old")])
    cluster.streams["node-2"].publish([flow(T0 + MS, "node-2", "newer")])
    call = cluster.stub.GetFlows(observer_pb2.GetFlowsRequest(number=1, follow=True))
    got: list[observer_pb2.GetFlowsResponse] = []

    async def until(what, check) -> None:
        async with asyncio.timeout(10):
            while not check():
                got.append(await call.read())

    try:
        await until("history", lambda: any(r.HasField("flow") for r in got))
        # the newest of the two nodes' history only
        assert [record_from_response(r).source.pod_name for r in got if r.HasField("flow")] == [
            "newer"
        ]
        while not all(s.followers >= 1 for s in cluster.streams.values()):
            await asyncio.sleep(0.01)  # the relay's follower on each node
        # published out of time order across nodes: the relay puts them in time order
        now = time.time_ns()
        cluster.streams["node-2"].publish([flow(now - 1 * MS, "node-2", "c")])
        cluster.streams["node-1"].publish([flow(now - 2 * MS, "node-1", "a")])
        cluster.streams["node-1"].publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 9)
        n = len(got)
        await until("live", lambda: len(got) >= n + 3)
        live = got[n:]
        assert [r.WhichOneof("response_types") for r in live] == ["flow", "flow", "lost_events"]
        assert [record_from_response(r).source.pod_name for r in live[:2]] == ["a", "c"]

        # node-1's agent stops: reported in the stream, node-2 still streams
        await cluster.servers["node-1"].close()
        await until("gone", lambda: ("NODE_UNAVAILABLE", ["node-1"]) in statuses(got))
        cluster.streams["node-2"].publish([flow(time.time_ns(), "node-2", "still")])
        await until("node-2", lambda: "still" in str(got[-1]))
        # and comes back: connected again, its new flows arrive
        cluster.servers["node-1"] = await serve_observer(
            cluster.streams["node-1"], cluster.socket("node-1")
        )
        await until("back", lambda: ("NODE_CONNECTED", ["node-1"]) in statuses(got))
        cluster.streams["node-1"].publish([flow(time.time_ns(), "node-1", "back")])
        await until("new", lambda: "back" in str(got[-1]))
    finally:
        call.cancel()
