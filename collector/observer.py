"""A node's Observer gRPC service (flowscope.observer.v1, Hubble's API) over its FlowStream.

GetFlows sends the held records the request selects, then with `follow` the new ones as they
come; ServerStatus and GetNodes describe this node's ring. Filters are Hubble's whitelist and
blacklist (flowscope.flow.protofilter); a bad request ends with INVALID_ARGUMENT naming the field.

History (Hubble's reading of a request):
- `number` N: the newest N selected records; with `first`, the oldest N (not with follow);
- `since` / `until`: only records in that time window (both inclusive);
- number 0: every selected record, except with follow and no `since`: then only new ones, as
  `hubble observe -f` expects.
With follow and `until`, the stream ends when the clock passes `until`. Lost events pass every
filter (a reader must learn that it missed something) but not the time window.

Held records are found through the ring's columnar index (collector.ringcolumns): the columns
of its batches are masked by the request's filters and time window first, and only the rows that
pass are built and checked by the exact matcher, so a selective request over a full ring of
cold batches builds a handful of flows, not 65,535. The result is the same as matching every
record (the mask only ever passes more); `HistoryRequest.prefilter = False` skips it.

A follower is the FlowStream's own bounded Follower: the collector never waits for a slow client;
what the client's queue could not hold arrives as a LostEvent (OBSERVER_EVENTS_QUEUE) in its place.

A reader of several nodes (the relay) needs to know where a followed stream's history ends, to
apply `number` across nodes: when a request carries the metadata HISTORY_END_METADATA, the node
sends one NodeStatusEvent (NODE_CONNECTED, message HISTORY_END) between the held records and the
live ones. Other clients never see it. The server also answers gRPC health checks (`hubble
status` asks them) for the Observer service and the server as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector.flowstream import FlowStream, remove_stale
from collector.ring import RingEntry
from collector.ringcolumns import RingIndex
from flowscope.flow.model import Flow, LostEvent, LostEventSource, Record
from flowscope.flow.protoconv import record_to_response
from flowscope.flow.protofilter import FilterError, FlowColumns, FlowSelection, compile_selection
from flowscope.paths import ClusterPaths
from flowscope.proto import flow_pb2, observer_pb2, observer_pb2_grpc

SOCKET_NAME = "observer.sock"
SERVICE_NAME = observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name
HISTORY_END_METADATA = ("flowscope-mark-history-end", "1")
HISTORY_END = "end of history"
_YIELD_EVERY = 256  # history records sent between yields to the event loop


def observer_socket(paths: ClusterPaths, node: str) -> Path:
    """Where node `node`'s agent serves the Observer API (next to its other sockets)."""
    return paths.node_dir(node) / SOCKET_NAME


def _version() -> str:
    try:
        return metadata.version("flowscope")
    except metadata.PackageNotFoundError:
        return ""


@dataclass(frozen=True)
class HistoryRequest:
    """What a GetFlowsRequest asks of the held records and of the live ones."""

    number: int
    first: bool
    follow: bool
    since_ns: int | None
    until_ns: int | None
    selection: FlowSelection
    field_mask: field_mask_pb2.FieldMask | None
    prefilter: bool = True  # mask the ring's columns before building flows (see above)

    def in_window(self, record: Record) -> bool:
        t = record.time_ns
        if self.since_ns is not None and t < self.since_ns:
            return False
        return self.until_ns is None or t <= self.until_ns

    def wants(self, record: Record) -> bool:
        return self.in_window(record) and self.selection.matches(record)

    def mask(self, columns: FlowColumns) -> np.ndarray:
        """The rows that may be wanted (a superset of those `wants` accepts)."""
        if not self.prefilter:
            return np.ones(len(columns), bool)
        keep = self.selection.prefilter(columns)
        if self.since_ns is not None or self.until_ns is not None:
            times = columns.time_ns
            window = columns.opaque.copy()
            inside = np.ones(len(columns), bool)
            if self.since_ns is not None:
                inside &= times >= self.since_ns
            if self.until_ns is not None:
                inside &= times <= self.until_ns
            keep &= window | inside
        return keep

    @property
    def history_wanted(self) -> bool:
        return not (self.follow and self.number == 0 and self.since_ns is None)


def parse_request(req: observer_pb2.GetFlowsRequest) -> HistoryRequest:
    """The request, checked; ValueError (FilterError for filters) naming the field."""
    if req.first and req.follow:
        raise ValueError("first: not with follow (the oldest flows are not a live stream)")
    since = req.since.ToNanoseconds() if req.HasField("since") else None
    until = req.until.ToNanoseconds() if req.HasField("until") else None
    if since is not None and until is not None and until < since:
        raise ValueError("until: before since")
    mask = None
    if req.HasField("field_mask") and req.field_mask.paths:
        if not req.field_mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
            bad = [
                p
                for p in req.field_mask.paths
                if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(
                    flow_pb2.Flow.DESCRIPTOR
                )
            ]
            raise ValueError(f"field_mask: {', '.join(bad)} not a Flow field path")
        mask = req.field_mask
    return HistoryRequest(
        number=req.number,
        first=req.first,
        follow=req.follow,
        since_ns=since,
        until_ns=until,
        selection=compile_selection(req.whitelist, req.blacklist),
        field_mask=mask,
    )


def select_history(index: RingIndex, request: HistoryRequest) -> list[RingEntry]:
    """The held entries (oldest first) the request sends before any live ones: the newest
    `number` wanted (the oldest with `first`), all when number is 0."""
    if not request.history_wanted:
        return []
    n = request.number or None
    picked = []
    for entry in index.select(request.mask, newest_first=not request.first):
        if request.wants(entry.record):
            picked.append(entry)
            if n is not None and len(picked) >= n:
                break
    if not request.first:
        picked.reverse()
    return picked


class ObserverService(observer_pb2_grpc.ObserverServicer):
    """The Observer service of one node's FlowStream."""

    def __init__(self, stream: FlowStream, *, address: str = "", prefilter: bool = True) -> None:
        self.stream = stream
        self.address = address
        self.prefilter = prefilter  # False: match every held record (bench.getflows' baseline)
        self.started_ns = time.time_ns()
        self._started_mono = time.monotonic_ns()
        self.index = RingIndex(stream.ring)

    def close(self) -> None:
        pass  # nothing of the stream is held: followers end with their calls

    def uptime_ns(self) -> int:
        return time.monotonic_ns() - self._started_mono

    async def GetFlows(
        self, request: observer_pb2.GetFlowsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        try:
            req = parse_request(request)
            if not self.prefilter:
                req = dataclasses.replace(req, prefilter=False)
        except ValueError as exc:  # FilterError too
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        stream = self.stream
        mark_end = req.follow and HISTORY_END_METADATA in tuple(context.invocation_metadata() or ())
        # follow before taking the history, with no await in between: every record is in
        # exactly one of the two
        follower = stream.follow(req.selection) if req.follow else None
        try:
            history = select_history(self.index, req)
            for i, entry in enumerate(history):
                yield self._response(entry.record, req)
                if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
            if follower is None:
                return
            if mark_end:
                yield history_end(stream.node_name)
            deadline = None
            if req.until_ns is not None:
                deadline = time.monotonic() + max(0, req.until_ns - time.time_ns()) / 1e9
            while not follower.closed:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    return
                try:
                    await asyncio.wait_for(follower.wakeup.wait(), timeout)
                except TimeoutError:
                    return
                for item in follower.take():
                    if isinstance(item, RingEntry):
                        if req.in_window(item.record):
                            yield self._response(item.record, req)
                    else:
                        stream.count_lost(LostEventSource.OBSERVER_EVENTS_QUEUE, item.count)
                        yield record_to_response(
                            LostEvent.now(
                                LostEventSource.OBSERVER_EVENTS_QUEUE,
                                item.count,
                                node_name=stream.node_name,
                            )
                        )
        finally:
            if follower is not None:
                stream.unfollow(follower)

    def _response(self, record: Record, req: HistoryRequest) -> observer_pb2.GetFlowsResponse:
        resp = record_to_response(record)
        if req.field_mask is not None and isinstance(record, Flow):
            masked = flow_pb2.Flow()
            req.field_mask.MergeMessage(resp.flow, masked)
            resp.flow.CopyFrom(masked)
        return resp

    async def ServerStatus(
        self, request: observer_pb2.ServerStatusRequest, context: grpc.aio.ServicerContext
    ) -> observer_pb2.ServerStatusResponse:
        ring = self.stream.ring
        return observer_pb2.ServerStatusResponse(
            num_flows=len(ring),
            max_flows=ring.capacity,
            seen_flows=ring.seen,
            uptime_ns=self.uptime_ns(),
            version=_version(),
            lost_events=[
                flow_pb2.LostEvent(source=source, num_events_lost=count)
                for source, count in sorted(self.stream.lost_counts.items())
                if count
            ],
        )

    async def GetNodes(
        self, request: observer_pb2.GetNodesRequest, context: grpc.aio.ServicerContext
    ) -> observer_pb2.GetNodesResponse:
        ring = self.stream.ring
        node = observer_pb2.Node(
            name=self.stream.node_name,
            version=_version(),
            address=self.address,
            state=observer_pb2.NODE_CONNECTED,
            uptime_ns=self.uptime_ns(),
            num_flows=len(ring),
            max_flows=ring.capacity,
            seen_flows=ring.seen,
        )
        return observer_pb2.GetNodesResponse(nodes=[node])


def history_end(node_name: str) -> observer_pb2.GetFlowsResponse:
    """The marker between a followed stream's held records and its live ones (see above)."""
    resp = observer_pb2.GetFlowsResponse(
        node_status=observer_pb2.NodeStatusEvent(
            state_change=observer_pb2.NODE_CONNECTED, node_names=[node_name], message=HISTORY_END
        ),
        node_name=node_name,
    )
    resp.time.FromNanoseconds(time.time_ns())
    return resp


def is_history_end(resp: observer_pb2.GetFlowsResponse) -> bool:
    return resp.WhichOneof("response_types") == "node_status" and (
        resp.node_status.message == HISTORY_END
    )


def add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """Serve gRPC health checks: SERVING for the Observer service and for the server ("")."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def set_serving(servicer: health.aio.HealthServicer) -> None:
    for name in ("", SERVICE_NAME):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


class ObserverServer:
    """A running Observer on a Unix socket; `close()` stops it and removes the socket."""

    def __init__(self, stream: FlowStream, path: Path, *, prefilter: bool = True) -> None:
        self.path = path
        self.service = ObserverService(stream, address=f"unix:{path}", prefilter=prefilter)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.path)
        server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(self.service, server)
        health_servicer = add_health(server)
        # gRPC creates the socket itself: a umask makes it 0600 from the start, so no one can
        # connect before the chmod (umask is process-wide, hence only around the bind)
        old = os.umask(0o177)
        try:
            bound = server.add_insecure_port(f"unix:{self.path}")
        finally:
            os.umask(old)
        if not bound:
            raise OSError(f"could not listen on {self.path}")
        try:
            os.chmod(self.path, 0o600)
            await server.start()
            await set_serving(health_servicer)
        except BaseException:
            await server.stop(None)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            raise
        self._server = server

    async def close(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.service.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def __aenter__(self) -> ObserverServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_observer(
    stream: FlowStream, socket_path: Path | str, *, prefilter: bool = True
) -> ObserverServer:
    """Serve `stream`'s Observer API at `socket_path` (mode 0600); returns the running server.
    `prefilter=False` matches every held record instead of masking columns first (a baseline)."""
    server = ObserverServer(stream, Path(socket_path), prefilter=prefilter)
    await server.start()
    return server


__all__ = [
    "HISTORY_END_METADATA",
    "SERVICE_NAME",
    "SOCKET_NAME",
    "FilterError",
    "HistoryRequest",
    "ObserverServer",
    "ObserverService",
    "add_health",
    "history_end",
    "is_history_end",
    "observer_socket",
    "parse_request",
    "select_history",
    "serve_observer",
    "set_serving",
]
