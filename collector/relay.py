"""The relay: one Observer API for the whole cluster, served on TCP (127.0.0.1:4245 by default),
as hubble-relay serves it, by fanning out to every node's Observer (its agent's Unix socket).

GetFlows sends the same request to every node, so filtering, since/until and the field mask run
on the nodes; the relay merges what they send:
- history: each node's selected held records (each sends its own newest or oldest `number`);
  merged in time order, each node's own order kept, then `number` applied across the merge (the
  newest N of the cluster, or with `first` the oldest N);
- follow: after the history, the live records of every node merged in time order, each held at
  most SORT_WINDOW for earlier ones from other nodes (Hubble's relay sorts with a drain timeout
  too); a node's own order is never changed.
A node that cannot be reached is reported in the stream as a NodeStatusEvent (NODE_UNAVAILABLE,
with the reason); while following, it is tried again every RETRY_INTERVAL and reported
NODE_CONNECTED when it is back (new records only: what it held meanwhile is not replayed).
ServerStatus sums the nodes' counters and names the nodes that did not answer; GetNodes lists
every node with its state.

`fan_out_flows` is the merge itself: the relay serves it, and `flowscope observe` runs it in
process when a cluster has no relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from collector.observer import (
    HISTORY_END_METADATA,
    SERVICE_NAME,
    _version,
    add_health,
    is_history_end,
    observer_socket,
    parse_request,
    set_serving,
)
from collector.tlsconfig import ServerTLS
from flowscope.clusterinfo import ClusterInfo
from flowscope.proto import flow_pb2, observer_pb2, observer_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:4245"  # hubble-relay's port
SORT_WINDOW = 0.25  # seconds a followed record waits for earlier ones from other nodes
RETRY_INTERVAL = 2.0  # seconds between tries of an unreachable node while following
CALL_TIMEOUT = 3.0  # seconds a node has to answer ServerStatus / GetNodes
RELAY_NAME = "relay"  # the node_name of the relay's own records (node status events)

__all__ = [
    "DEFAULT_ADDRESS",
    "SERVICE_NAME",
    "InvalidRequest",
    "Peer",
    "RelayServer",
    "RelayService",
    "cluster_peers",
    "fan_out_flows",
    "nodes_of",
    "recorded_address",
    "status_of",
    "with_address",
]


@dataclass(frozen=True)
class Peer:
    """A node's Observer: its name and gRPC address ("unix:/path" or "host:port")."""

    name: str
    address: str


def cluster_peers(info: ClusterInfo) -> list[Peer]:
    """Every node of a lab cluster, at its agent's Observer socket."""
    return [Peer(n.name, f"unix:{observer_socket(info.paths, n.name)}") for n in info.nodes]


class InvalidRequest(ValueError):
    """A node refused the request as invalid (INVALID_ARGUMENT); the message names the field."""


def _channel(peer: Peer) -> grpc.aio.Channel:
    # a node that restarts should be reachable again at once, not after gRPC's long backoff
    return grpc.aio.insecure_channel(
        peer.address,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    )


def _unreachable(peer: Peer, exc: grpc.aio.AioRpcError) -> str:
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return f"no Observer answers at {peer.address} (is its agent running?)"
    return f"{exc.code().name}: {exc.details()}"


def _status_event(
    state: int, names: Sequence[str], message: str = ""
) -> observer_pb2.GetFlowsResponse:
    resp = observer_pb2.GetFlowsResponse(
        node_status=observer_pb2.NodeStatusEvent(
            state_change=state, node_names=sorted(names), message=message
        ),
        node_name=RELAY_NAME,
    )
    resp.time.FromNanoseconds(time.time_ns())
    return resp


def _time(resp: observer_pb2.GetFlowsResponse) -> int:
    return resp.time.ToNanoseconds()


# --- GetFlows: fan out and merge -----------------------------------------------------------------

# what a node's pump reports: (node index, kind, payload)
_RECORD, _HISTORY_END, _DONE, _UNAVAILABLE, _INVALID, _CONNECTED = range(6)


async def _pump(
    index: int,
    peer: Peer,
    request: observer_pb2.GetFlowsRequest,
    out: asyncio.Queue,
    retry: bool,
) -> None:
    """Read one node's stream into `out`; while following (`retry`), try again when it fails."""
    first_try = True
    while True:
        got_any = False
        try:
            async with _channel(peer) as channel:
                stub = observer_pb2_grpc.ObserverStub(channel)
                metadata = (HISTORY_END_METADATA,) if request.follow else None
                async for resp in stub.GetFlows(request, metadata=metadata):
                    if not got_any and not first_try:
                        await out.put((index, _CONNECTED, None))
                    got_any = True
                    kind = _HISTORY_END if is_history_end(resp) else _RECORD
                    await out.put((index, kind, resp))
                if not got_any and not first_try:
                    await out.put((index, _CONNECTED, None))
            await out.put((index, _DONE, None))
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                await out.put((index, _INVALID, exc.details()))
                return
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            if first_try or got_any:
                await out.put((index, _UNAVAILABLE, _unreachable(peer, exc)))
        if not retry:
            return
        first_try = False
        # back again: only what is new, so nothing it sent before comes twice
        request = observer_pb2.GetFlowsRequest(
            follow=True,
            whitelist=request.whitelist,
            blacklist=request.blacklist,
            field_mask=request.field_mask if request.HasField("field_mask") else None,
        )
        await asyncio.sleep(RETRY_INTERVAL)


def merge_history(
    histories: Iterable[Sequence[observer_pb2.GetFlowsResponse]], number: int, first: bool
) -> list[observer_pb2.GetFlowsResponse]:
    """Nodes' histories (each in its own order) as one, in time order, each node's order kept,
    then the newest `number` (the oldest with `first`; 0: all)."""
    merged = list(heapq.merge(*histories, key=_time))
    if number:
        return merged[:number] if first else merged[-number:]
    return merged


class _LiveMerge:
    """Followed records of several nodes: per-node FIFO queues, released oldest head first once
    every still-streaming node has something queued or the head is older than the window."""

    def __init__(self, count: int, window_ns: int) -> None:
        self.queues: list[deque] = [deque() for _ in range(count)]
        self.streaming: set[int] = set()
        self.window_ns = window_ns

    def add(self, index: int, resp: observer_pb2.GetFlowsResponse) -> None:
        self.queues[index].append(resp)

    def _head(self) -> int | None:
        best = None
        for i, q in enumerate(self.queues):
            if q and (best is None or _time(q[0]) < _time(self.queues[best][0])):
                best = i
        return best

    def ready(self, now_ns: int) -> list[observer_pb2.GetFlowsResponse]:
        out = []
        while (i := self._head()) is not None:
            all_queued = all(self.queues[s] for s in self.streaming)
            if not all_queued and _time(self.queues[i][0]) > now_ns - self.window_ns:
                break
            out.append(self.queues[i].popleft())
        return out

    def next_due_ns(self) -> int | None:
        i = self._head()
        return None if i is None else _time(self.queues[i][0]) + self.window_ns

    def drain(self) -> list[observer_pb2.GetFlowsResponse]:
        self.streaming.clear()
        return self.ready(1 << 126)


async def fan_out_flows(
    peers: Sequence[Peer],
    request: observer_pb2.GetFlowsRequest,
    *,
    window: float = SORT_WINDOW,
) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
    """The cluster's GetFlows stream for `request` (see the module's doc). Raises
    InvalidRequest when a node refuses the request."""
    queue: asyncio.Queue = asyncio.Queue()
    retry = request.follow and not request.HasField("until")
    tasks = [
        asyncio.create_task(_pump(i, p, request, queue, retry), name=f"relay-{p.name}")
        for i, p in enumerate(peers)
    ]
    histories: list[list] = [[] for _ in peers]
    in_history = set(range(len(peers)))
    live = _LiveMerge(len(peers), int(window * 1e9))
    running = set(range(len(peers)))  # pumps that may still send something
    unavailable: dict[int, str] = {}
    try:
        # the history of every node first, then it is merged and cut to `number`
        while in_history:
            index, kind, payload = await queue.get()
            if kind == _RECORD:
                (histories if index in in_history else live.queues)[index].append(payload)
                continue
            if kind == _INVALID:
                raise InvalidRequest(payload)
            if kind == _CONNECTED:  # back already (retried while the others sent history)
                unavailable.pop(index, None)
                live.streaming.add(index)
                continue
            in_history.discard(index)
            if kind == _HISTORY_END:
                live.streaming.add(index)
            elif kind == _DONE:
                running.discard(index)
            elif kind == _UNAVAILABLE:
                unavailable[index] = payload
                if not retry:
                    running.discard(index)
        connected = [p.name for i, p in enumerate(peers) if i not in unavailable]
        if connected:
            yield _status_event(observer_pb2.NODE_CONNECTED, connected)
        for message, names in _group(unavailable, peers).items():
            yield _status_event(observer_pb2.NODE_UNAVAILABLE, names, message)
        for resp in merge_history(histories, request.number, request.first):
            yield resp
        if not request.follow:
            return
        # then the live records, merged with a short window
        while running:
            for resp in live.ready(time.time_ns()):
                yield resp
            due = live.next_due_ns()
            timeout = None if due is None else max(0.0, (due - time.time_ns()) / 1e9)
            try:
                index, kind, payload = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                continue
            if kind == _RECORD:
                live.add(index, payload)
            elif kind == _INVALID:
                raise InvalidRequest(payload)
            elif kind == _HISTORY_END:
                live.streaming.add(index)
            elif kind == _CONNECTED:
                live.streaming.add(index)
                yield _status_event(observer_pb2.NODE_CONNECTED, [peers[index].name])
            elif kind in (_DONE, _UNAVAILABLE):
                live.streaming.discard(index)
                if kind == _UNAVAILABLE:
                    # what it sent before it went comes first
                    for resp in _drain_node(live, index):
                        yield resp
                    yield _status_event(observer_pb2.NODE_UNAVAILABLE, [peers[index].name], payload)
                if kind == _DONE or not retry:
                    running.discard(index)
        for resp in live.drain():
            yield resp
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _drain_node(live: _LiveMerge, index: int) -> list[observer_pb2.GetFlowsResponse]:
    """Release everything up to and including `index`'s last queued record, in merge order."""
    out = []
    while live.queues[index]:
        i = live._head()
        assert i is not None
        out.append(live.queues[i].popleft())
    return out


def _group(unavailable: dict[int, str], peers: Sequence[Peer]) -> dict[str, list[str]]:
    by_message: dict[str, list[str]] = {}
    for index, message in sorted(unavailable.items()):
        by_message.setdefault(message, []).append(peers[index].name)
    return by_message


# --- ServerStatus and GetNodes --------------------------------------------------------------------


async def _ask(peer: Peer, method: str, request: object) -> object | str:
    """One unary call to a node: its answer, or why there is none."""
    try:
        async with _channel(peer) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            return await getattr(stub, method)(request, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        return _unreachable(peer, exc)


async def status_of(peers: Sequence[Peer]) -> observer_pb2.ServerStatusResponse:
    """The nodes' ServerStatus summed, with the connected and unavailable nodes."""
    answers = await asyncio.gather(
        *(_ask(p, "ServerStatus", observer_pb2.ServerStatusRequest()) for p in peers)
    )
    total = observer_pb2.ServerStatusResponse(version=_version())
    lost: Counter[int] = Counter()
    down = []
    for peer, answer in zip(peers, answers, strict=True):
        if not isinstance(answer, observer_pb2.ServerStatusResponse):
            down.append(peer.name)
            continue
        total.num_flows += answer.num_flows
        total.max_flows += answer.max_flows
        total.seen_flows += answer.seen_flows
        total.uptime_ns = max(total.uptime_ns, answer.uptime_ns)
        for event in answer.lost_events:
            lost[event.source] += event.num_events_lost
    total.num_connected_nodes.value = len(peers) - len(down)
    total.num_unavailable_nodes.value = len(down)
    total.unavailable_nodes.extend(sorted(down))
    total.lost_events.extend(
        flow_pb2.LostEvent(source=s, num_events_lost=n) for s, n in sorted(lost.items()) if n
    )
    return total


async def nodes_of(peers: Sequence[Peer]) -> observer_pb2.GetNodesResponse:
    """Every node with its state: the node's own description, or NODE_UNAVAILABLE."""
    answers = await asyncio.gather(
        *(_ask(p, "GetNodes", observer_pb2.GetNodesRequest()) for p in peers)
    )
    out = observer_pb2.GetNodesResponse()
    for peer, answer in zip(peers, answers, strict=True):
        if isinstance(answer, observer_pb2.GetNodesResponse) and answer.nodes:
            node = observer_pb2.Node()
            node.CopyFrom(answer.nodes[0])
            node.name = peer.name
            node.address = peer.address
        else:
            node = observer_pb2.Node(
                name=peer.name, address=peer.address, state=observer_pb2.NODE_UNAVAILABLE
            )
        out.nodes.append(node)
    return out


# --- the service and its server -------------------------------------------------------------------


class RelayService(observer_pb2_grpc.ObserverServicer):
    """The cluster's Observer: `peers()` names the nodes, asked anew for each call (so a node
    added to the cluster is seen without a restart)."""

    def __init__(self, peers: Callable[[], Sequence[Peer]], *, window: float = SORT_WINDOW):
        self.peers = peers
        self.window = window

    async def GetFlows(
        self, request: observer_pb2.GetFlowsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        try:
            parse_request(request)  # refuse a bad request here, naming the field, not per node
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        try:
            async for resp in fan_out_flows(self.peers(), request, window=self.window):
                yield resp
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def ServerStatus(
        self, request: observer_pb2.ServerStatusRequest, context: grpc.aio.ServicerContext
    ) -> observer_pb2.ServerStatusResponse:
        return await status_of(self.peers())

    async def GetNodes(
        self, request: observer_pb2.GetNodesRequest, context: grpc.aio.ServicerContext
    ) -> observer_pb2.GetNodesResponse:
        return await nodes_of(self.peers())


class RelayServer:
    """The relay listening on `address` (host:port), with TLS or mTLS when `tls` is given."""

    def __init__(
        self,
        peers: Callable[[], Sequence[Peer]],
        address: str = DEFAULT_ADDRESS,
        tls: ServerTLS | None = None,
        *,
        window: float = SORT_WINDOW,
    ) -> None:
        self.service = RelayService(peers, window=window)
        self.address = address
        self.tls = tls
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        observer_pb2_grpc.add_ObserverServicer_to_server(self.service, server)
        health = add_health(server)
        try:
            if self.tls is None:
                port = server.add_insecure_port(self.address)
            else:
                port = server.add_secure_port(self.address, self.tls.credentials())
        except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
            raise OSError(f"cannot listen on {self.address}: {exc}") from None
        if not port:
            raise OSError(f"cannot listen on {self.address} (in use?)")
        self.port = port
        await server.start()
        await set_serving(health)
        self._server = server
        log.info(
            "relay on %s (%s) for %d nodes",
            self.address,
            "mTLS" if self.tls and self.tls.mutual else "TLS" if self.tls else "plain text",
            len(self.service.peers()),
        )

    async def close(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.close()


# --- where a lab's relay listens (cluster.json) ---------------------------------------------------

EXTRA_KEY = "relay"


def recorded_address(info: ClusterInfo) -> str | None:
    """The address the cluster's relay listens on, as `lab up` recorded it (None: no relay)."""
    raw = info.extra.get(EXTRA_KEY)
    return raw.get("address") if isinstance(raw, dict) else None


def with_address(info: ClusterInfo, address: str) -> ClusterInfo:
    import dataclasses

    return dataclasses.replace(info, extra={**info.extra, EXTRA_KEY: {"address": address}})
