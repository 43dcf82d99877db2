"""Where the TUI's flows come from: the relay's Observer API (filters applied on the server) or
the Kafka flows topic (filters applied here). A source runs as one asyncio task that puts
Records into a FlowBuffer and tells the UI its state through a callback; it reconnects with a
growing backoff when the relay or broker cannot be reached, and stops (state "refused") when
the server refuses the request, which only a new filter can fix.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from flowscope.errors import FlowscopeError
from flowscope.flow.kafkaread import KafkaFlowReader
from tui.buffer import FlowBuffer
from tui.filtertext import Filters

log = logging.getLogger(__name__)

HISTORY = 500  # on (re)connecting: the newest N matching flows the relay holds, then live ones
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 10.0


class Link(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"  # retried after `retry_in` seconds
    REFUSED = "refused"  # the server refused the request (a bad filter): not retried


@dataclass(frozen=True)
class SourceState:
    link: Link
    message: str
    retry_in: float = 0.0


StateCallback = Callable[[SourceState], None]


class FlowSource(Protocol):
    """What the app reads from. `describe` names it for the status line; `server_side` says
    whether filters are applied by the server (else the source applies them itself)."""

    describe: str
    server_side: bool

    async def run(self, buffer: FlowBuffer, filters: Filters, on_state: StateCallback) -> None:
        """Feed `buffer` until cancelled."""
        ...


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): 1, 2, 4, 8, 10, 10 ..."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt)


class RelaySource:
    """GetFlows(follow) on an Observer API (the cluster's relay, or one agent): the request
    carries the filters, so the server sends only what matches."""

    server_side = True

    def __init__(self, address: str, tls=None, history: int = HISTORY) -> None:
        self.address = address
        self.tls = tls
        self.history = history
        self.describe = f"relay {address}"

    def request(self, filters: Filters, since_ns: int | None):
        from flowscope.proto import observer_pb2

        req = observer_pb2.GetFlowsRequest(
            follow=True, whitelist=list(filters.whitelist), blacklist=list(filters.blacklist)
        )
        if since_ns is None:
            req.number = self.history
        else:  # after an outage: from where the stream broke, nothing twice
            req.since.FromNanoseconds(since_ns + 1)
        return req

    async def run(self, buffer: FlowBuffer, filters: Filters, on_state: StateCallback) -> None:
        import grpc

        from flowscope.cli.observe import open_channel
        from flowscope.flow.protoconv import record_from_response
        from flowscope.proto import observer_pb2_grpc

        attempt = 0
        last_ns: int | None = None
        while True:
            on_state(SourceState(Link.CONNECTING, f"connecting to {self.describe}"))
            try:
                async with open_channel(self.address, self.tls) as channel:
                    stub = observer_pb2_grpc.ObserverStub(channel)
                    call = stub.GetFlows(self.request(filters, last_ns))
                    await call.wait_for_connection()
                    on_state(SourceState(Link.CONNECTED, f"connected to {self.describe}"))
                    attempt = 0
                    async for resp in call:
                        kind = resp.WhichOneof("response_types")
                        if kind not in ("flow", "lost_events"):
                            continue  # node status: the relay's business
                        record = record_from_response(resp)
                        buffer.put(record)
                        if kind == "flow":
                            last_ns = record.time_ns
                message = "the stream ended"
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    on_state(SourceState(Link.REFUSED, f"{self.describe}: {exc.details()}"))
                    return
                message = f"{exc.code().name}: {exc.details()}"
            wait = backoff(attempt)
            attempt += 1
            on_state(
                SourceState(
                    Link.UNREACHABLE, f"cannot reach {self.describe}: {message}", retry_in=wait
                )
            )
            await asyncio.sleep(wait)


class KafkaSource:
    """The flows topic from now on (no consumer group: every partition, nothing committed);
    the filters are applied here with the server's own matcher."""

    server_side = False

    def __init__(self, config, topic: str | None = None) -> None:
        self.config = config
        self.topic = topic
        self.describe = f"Kafka {','.join(config.bootstrap)}"

    async def run(self, buffer: FlowBuffer, filters: Filters, on_state: StateCallback) -> None:
        from flowscope.flow.protofilter import compile_selection

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the status line tells
        selection = compile_selection(list(filters.whitelist), list(filters.blacklist))
        attempt = 0
        while True:
            on_state(SourceState(Link.CONNECTING, f"connecting to {self.describe}"))
            connected = SourceState(Link.CONNECTED, f"connected to {self.describe}")
            reader = _AnnouncingReader(
                self.config,
                topic=self.topic,
                from_beginning=False,
                follow=True,
                matcher=selection,
                on_started=partial(on_state, connected),
            )
            started = time.monotonic()
            try:
                async for record in reader:
                    buffer.put(record)
                message = "the stream ended"
            except FlowscopeError as exc:
                message = str(exc).split("\n")[0]
            except Exception as exc:  # aiokafka's errors share no base worth naming
                message = f"{type(exc).__name__}: {exc}"
            finally:
                await reader.close()
            if time.monotonic() - started > BACKOFF_MAX:
                attempt = 0  # it ran for a while: a fresh outage
            wait = backoff(attempt)
            attempt += 1
            on_state(
                SourceState(
                    Link.UNREACHABLE, f"cannot read {self.describe}: {message}", retry_in=wait
                )
            )
            await asyncio.sleep(wait)


class _AnnouncingReader(KafkaFlowReader):
    """A KafkaFlowReader that says when its consumer has started (before any record comes:
    a quiet topic is still a working connection)."""

    def __init__(self, *args, on_started: Callable[[], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_started = on_started

    async def _start(self):
        consumer = await super()._start()
        self._on_started()
        return consumer
