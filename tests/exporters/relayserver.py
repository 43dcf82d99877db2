"""A relay of the tests' own: a real gRPC server with an Observer servicer that serves given
records (a neighbour faked for the exporters' relay source, over real gRPC)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from flowscope.flow.protoconv import record_to_response
from flowscope.proto import observer_pb2, observer_pb2_grpc
from tests.conftest import free_port


class Observer(observer_pb2_grpc.ObserverServicer):
    """A relay that serves `records` to the first stream and then ends it, and the rest to the
    next one; it remembers the requests."""

    def __init__(self, first: list, then: list) -> None:
        self.parts = [first, then]
        self.requests: list = []

    async def GetFlows(self, request, context):
        self.requests.append(request)
        part = self.parts.pop(0) if self.parts else []
        status = observer_pb2.GetFlowsResponse(node_name="n1")
        status.node_status.state_change = observer_pb2.NODE_CONNECTED
        yield status
        for record in part:
            yield record_to_response(record)
        if not self.parts and not part:
            await asyncio.sleep(30)


@contextlib.asynccontextmanager
async def serving(servicer: Observer) -> AsyncIterator[str]:
    """The servicer on a free loopback port; yields its address."""
    port = free_port()
    server = grpc.aio.server()
    observer_pb2_grpc.add_ObserverServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
