"""The transparent HTTP/1.1 proxy that connections selected by an L7 policy are redirected to.

For each accepted client connection, given its original destination, the rules that apply and a
way to open the upstream connection (the node agent opens it inside the client pod's namespace),
the proxy reads requests one at a time (pipelined ones wait their turn), decides each against
the rules and either forwards it or answers 403 as Cilium's proxy does. Requests and responses
are framed by h11 and their bodies streamed, never buffered whole; the message forwarded is the
one the client sent (method, target, header names, values and order, body bytes; h11 re-frames
it, so chunk boundaries may differ). Every request and response becomes an L7 flow.

Bad input never escapes as an exception and never hangs: a malformed request gets 400, a head
larger than `max_header_bytes` 431, a head that does not complete in `header_timeout` 408, and
the connection is closed; an idle connection is closed after `idle_timeout`. Beyond
`max_connections` a new client gets 503 at once; an upstream that cannot be reached gives 503,
one that breaks its response 502, one that does not answer in `response_timeout` 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import inspect
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from dataplane.l7.httpflow import Address, Connection, Describe, request_flow, response_flow
from dataplane.l7.httpmessage import RequestHead, ResponseHead
from dataplane.l7.httprules import HTTPRules
from dataplane.l7.redact import DEFAULT_HEADERS, QueryRedaction, Redaction
from dataplane.l7.upstream import ConnectUpstream, Streams, direct_upstream
from flowscope.errors import UsageError
from flowscope.flow.model import Endpoint, Flow, TrafficDirection, Verdict

log = logging.getLogger(__name__)

Emit = Callable[[Flow], None]
# The rules for a connection: fixed, or looked up anew for each request (so that a policy
# change reaches connections already open). None: visibility only, every request allowed.
Rules = HTTPRules | None | Callable[[], HTTPRules | None]

_HIGH_WATER = 64 * 1024  # bytes queued to a peer beyond which the sender waits for it
DENIED_BODY = b"Access denied\r\n"  # what Cilium's proxy (Envoy) answers a denied request with


@dataclass(frozen=True)
class ProxyConfig:
    max_header_bytes: int = 64 * 1024  # a request or response head larger than this: 431 / 502
    header_timeout: float = 10.0  # from a request's first byte (or the accept) to its whole head
    idle_timeout: float = 60.0  # no byte from a peer for this long while one is awaited
    connect_timeout: float = 5.0  # opening the upstream connection
    response_timeout: float = 60.0  # from the forwarded request to the response head
    max_connections: int = 1024  # client connections handled at once; beyond: 503
    max_discard_bytes: int = 1024 * 1024  # a denied request's body read and dropped, at most
    linger_timeout: float = 1.0  # after an error response: wait for the client to read it
    read_size: int = 64 * 1024
    redaction: Redaction = field(default_factory=Redaction)
    node_name: str = ""
    direction: TrafficDirection = TrafficDirection.INGRESS

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_connections", "read_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ProxyConfig.{name}: must be positive, got {getattr(self, name)}")
        for name in ("header_timeout", "idle_timeout", "connect_timeout", "response_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ProxyConfig.{name}: must be positive seconds")

    @classmethod
    def from_dict(cls, raw: Any, field: str = "l7_proxy", **fixed: Any) -> ProxyConfig:
        """From a config section: the tunables by their names here (timeouts in seconds) and
        `redact: {enabled, headers, query: redact|remove|keep}` (headers are added to the
        defaults); `fixed` (node_name, direction) comes from the agent. UsageError naming the
        field that is wrong."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UsageError(f"{field}: expected a mapping, got {type(raw).__name__}")
        tunables = sorted(
            {f.name for f in dataclasses.fields(cls)} - {"redaction", "node_name", "direction"}
            | {"redact"}
        )
        for key in raw:
            if key not in tunables:
                raise UsageError(f"{field}.{key}: unknown field", hint=f"one of {tunables}")
        values: dict[str, Any] = dict(fixed)
        for key, value in raw.items():
            if key == "redact":
                values["redaction"] = _redaction(value, f"{field}.redact")
                continue
            want = int if key in _INT_FIELDS else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UsageError(f"{field}.{key}: expected a positive number, got {value!r}")
            if want is int and not isinstance(value, int):
                raise UsageError(f"{field}.{key}: expected a whole number, got {value!r}")
            values[key] = want(value)
        return cls(**values)


_INT_FIELDS = frozenset({"max_header_bytes", "max_connections", "max_discard_bytes", "read_size"})


def _redaction(raw: Any, field: str) -> Redaction:
    if not isinstance(raw, dict):
        raise UsageError(f"{field}: expected a mapping {{enabled, headers, query}}")
    unknown = sorted(set(raw) - {"enabled", "headers", "query"})
    if unknown:
        raise UsageError(f"{field}.{unknown[0]}: unknown field", hint="enabled, headers, query")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise UsageError(f"{field}.enabled: expected true or false, got {enabled!r}")
    headers = raw.get("headers") or []
    if not isinstance(headers, list) or not all(isinstance(h, str) and h for h in headers):
        raise UsageError(f"{field}.headers: expected a list of header names")
    query = raw.get("query", QueryRedaction.REDACT.value)
    try:
        mode = QueryRedaction(query)
    except ValueError:
        modes = [m.value for m in QueryRedaction]
        raise UsageError(f"{field}.query: {query!r} is not one of {modes}") from None
    return Redaction(enabled=enabled, headers=DEFAULT_HEADERS + tuple(headers), query=mode)


class _ClientError(Exception):
    """The client broke the protocol or was too slow: answer `code` (if no answer has begun)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class _UpstreamError(Exception):
    """The upstream failed: answer `code`. `stale`: a kept-alive connection that turned out to
    be closed before it took the request (a server's idle close racing our reuse)."""

    def __init__(self, code: int, why: str, *, stale: bool = False) -> None:
        super().__init__(why)
        self.code = code
        self.stale = stale


def _has_body(request: RequestHead) -> bool:
    length = request.header("content-length")
    return request.header("transfer-encoding") is not None or (
        length is not None and length.strip() != "0"
    )


def _no_endpoint(_ip: str) -> Endpoint | None:
    return None


def _error_bytes(code: int, body: bytes | None = None) -> bytes:
    status = http.HTTPStatus(code)
    body = body if body is not None else f"{status.phrase}\r\n".encode()
    return (
        f"HTTP/1.1 {code} {status.phrase}\r\n"
        f"content-length: {len(body)}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n"
    ).encode() + body


async def _linger_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
) -> None:
    """Close so that what was written reaches the client: closing with unread input makes the
    kernel send a reset, which can destroy the error response before the client reads it. So
    shut the write side, read and drop what the client still sends (bounded), then close."""
    try:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        deadline = time.monotonic() + timeout
        dropped = 0
        while dropped < 1024 * 1024:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            data = await asyncio.wait_for(reader.read(64 * 1024), left)
            if not data:
                break
            dropped += len(data)
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), timeout)


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Small writes (a head, then its body) must not wait for the peer's delayed ACK (40 ms):
    asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP, not proto 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Peer:
    """One side of the proxy: its streams and the h11 connection that frames them."""

    def __init__(
        self, streams: Streams, role: type[h11.CLIENT] | type[h11.SERVER], cfg: ProxyConfig
    ):
        self.reader, self.writer = streams
        _set_nodelay(self.writer)
        self.h11 = h11.Connection(role, max_incomplete_event_size=cfg.max_header_bytes)
        self.read_size = cfg.read_size

    async def next_event(self, timeout: float, deadline: float | None = None) -> object:
        """The next event; `timeout` bounds each wait for bytes, `deadline` (monotonic) the
        whole. h11's RemoteProtocolError passes through; TimeoutError when a limit is hit."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            wait = timeout if deadline is None else min(timeout, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError
            try:
                async with asyncio.timeout(wait):  # (cheaper than wait_for: no task)
                    data = await self.reader.read(self.read_size)
            except TimeoutError:  # (an OSError too: not to be taken for a reset)
                raise
            except (ConnectionError, OSError):
                data = b""  # a reset: as a close, h11 says whether a message was cut short
            self.h11.receive_data(data)

    async def send(self, event: object, timeout: float) -> None:
        data = self.h11.send(event)
        if data:
            if self.writer.transport.is_closing():
                raise ConnectionResetError("the peer's connection is gone")
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
                async with asyncio.timeout(timeout):  # a slow reader: wait, but not forever
                    await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class HTTPProxy:
    """Handles redirected client connections; one instance per node agent (it holds the
    connection bound and the counters)."""

    def __init__(
        self,
        config: ProxyConfig | None = None,
        *,
        emit: Emit,
        describe: Describe = _no_endpoint,
    ) -> None:
        self.config = config or ProxyConfig()
        self._emit_cb = emit
        self._describe = describe
        self.active = 0  # client connections being handled now
        self.rejected = 0  # client connections turned away with 503 (overload)
        # requests "forwarded", "denied", and "error" flows (the proxy's own answers)
        self.counts: Counter[str] = Counter()

    def _emit(self, flow: Flow) -> None:
        if flow.verdict == Verdict.ERROR:
            self.counts["error"] += 1
        elif flow.is_reply is False:
            self.counts["forwarded" if flow.verdict == Verdict.FORWARDED else "denied"] += 1
        try:
            self._emit_cb(flow)
        except Exception:  # a broken consumer must not break the traffic
            log.exception("l7 proxy: emitting a flow failed")

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: Address,
        original_dst: Address,
        rules: Rules,
        connect_upstream: ConnectUpstream,
    ) -> None:
        """Serve one accepted client connection until it ends; never raises (but cancellation)."""
        cfg = self.config
        conn = Connection(client, original_dst, cfg.node_name, cfg.direction, self._describe)
        if self.active >= cfg.max_connections:
            self.rejected += 1
            why = f"proxy overloaded: {self.active} connections open (max_connections)"
            log.warning("l7 proxy: %s; %s:%d gets 503", why, *client)
            self._emit(request_flow(conn, None, Verdict.ERROR, cfg.redaction, summary=why))
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(_error_bytes(503))
            await _linger_close(reader, writer, cfg.linger_timeout)
            return
        self.active += 1
        session = _Session(self, conn, (reader, writer), rules, connect_upstream)
        try:
            await session.run()
        except Exception:
            log.exception("l7 proxy: connection from %s:%d failed", *client)
        finally:
            self.active -= 1
            await session.close()


class _Session:
    """One client connection and (opened on its first allowed request) its upstream one."""

    def __init__(
        self,
        proxy: HTTPProxy,
        conn: Connection,
        streams: Streams,
        rules: Rules,
        connect_upstream: ConnectUpstream,
    ) -> None:
        self.proxy = proxy
        self.cfg = proxy.config
        self.conn = conn
        self.client = _Peer(streams, h11.SERVER, self.cfg)
        self.rules = rules
        self.connect_upstream = connect_upstream
        self.upstream: _Peer | None = None
        self.linger = False  # an error response was written: close gently

    async def run(self) -> None:
        first = True
        while True:
            request: RequestHead | None = None
            try:
                event = await self._read_head(first)
                first = False
                if not isinstance(event, h11.Request):
                    return  # the client closed between requests
                head = RequestHead.from_h11(event)
                if head.size > self.cfg.max_header_bytes:
                    # h11 bounds a head still arriving; one that came in whole is checked here
                    # (and not put into the flow: its size is the problem)
                    raise _ClientError(431, f"request head of {head.size} bytes too large")
                if head.header("transfer-encoding") and head.header("content-length"):
                    # which one frames the body is for the upstream to guess: a smuggling
                    # vector, refused (as Envoy does by default)
                    raise _ClientError(400, "both Content-Length and Transfer-Encoding")
                request = head
                rules = self.rules() if callable(self.rules) else self.rules
                if rules is not None and not rules.allows(request):
                    keep = await self._deny(request)
                else:
                    keep = await self._forward(event, request)
            except _ClientError as exc:
                self._fail(exc.code, str(exc), request)
                return
            except h11.RemoteProtocolError as exc:
                self._fail(exc.error_status_hint, f"bad request: {exc}", request)
                return
            except (TimeoutError, ConnectionError, OSError, h11.LocalProtocolError) as exc:
                log.debug("l7 proxy: %s:%d: %r", *self.conn.client, exc)
                return
            if not keep:
                return
            c = self.client.h11
            if c.our_state is not h11.DONE or c.their_state is not h11.DONE:
                return
            c.start_next_cycle()

    async def _read_head(self, first: bool) -> object:
        """The next request head. The first request's clock starts at the accept, later ones'
        at their first byte (before it, the connection is idle)."""
        cfg = self.cfg
        deadline = time.monotonic() + cfg.header_timeout if first else None
        c = self.client
        while True:
            event = c.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if deadline is None and c.h11.trailing_data[0]:
                deadline = time.monotonic() + cfg.header_timeout
            if deadline is None:
                wait = cfg.idle_timeout
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise _ClientError(408, "request head not complete in header_timeout")
            try:
                async with asyncio.timeout(wait):
                    data = await c.reader.read(c.read_size)
            except TimeoutError:
                if deadline is None:
                    raise  # idle: close without a word, as servers do
                raise _ClientError(408, "request head not complete in header_timeout") from None
            except (ConnectionError, OSError):
                data = b""
            c.h11.receive_data(data)

    def _fail(self, code: int, why: str, request: RequestHead | None) -> None:
        """The client's request could not be served: an ERROR flow, and `code` to the client if
        no response has begun."""
        cfg = self.cfg
        log.info("l7 proxy: %s:%d: %d: %s", *self.conn.client, code, why)
        if self.client.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.proxy._emit(
                request_flow(self.conn, request, Verdict.ERROR, cfg.redaction, summary=why)
            )
            with contextlib.suppress(OSError, RuntimeError):
                self.client.writer.write(_error_bytes(code))
            self.linger = True

    async def _deny(self, request: RequestHead) -> bool:
        """403 as Cilium's proxy answers; the request is read and dropped, never forwarded."""
        cfg = self.cfg
        self.proxy._emit(request_flow(self.conn, request, Verdict.DROPPED, cfg.redaction))
        c = self.client
        keep = not c.h11.they_are_waiting_for_100_continue  # its body will not come
        dropped = 0
        while keep:
            event = await c.next_event(cfg.idle_timeout)
            if isinstance(event, h11.EndOfMessage):
                break
            if not isinstance(event, h11.Data):
                return False  # closed mid-body
            dropped += len(event.data)
            if dropped > cfg.max_discard_bytes:
                keep = False  # answer now and close rather than read on
        headers = [("Content-Length", str(len(DENIED_BODY))), ("Content-Type", "text/plain")]
        if not keep:
            headers.append(("Connection", "close"))
        await c.send(
            h11.Response(status_code=403, reason=b"Forbidden", headers=headers), cfg.idle_timeout
        )
        await c.send(h11.Data(data=DENIED_BODY), cfg.idle_timeout)
        await c.send(h11.EndOfMessage(), cfg.idle_timeout)
        self.linger = not keep  # a body may still be coming: let the 403 be read first
        return keep

    async def _open_upstream(self) -> tuple[_Peer, bool]:
        """The upstream connection, and whether it is one kept alive from an earlier request."""
        up = self.upstream
        if up is not None:
            u = up.h11
            gone = up.reader.at_eof() or up.writer.transport.is_closing()
            if not gone and u.our_state is h11.DONE and u.their_state is h11.DONE:
                u.start_next_cycle()
                return up, True
            up.close()
            self.upstream = None
        try:
            streams = await asyncio.wait_for(self.connect_upstream(), self.cfg.connect_timeout)
        except TimeoutError:
            raise _UpstreamError(503, "upstream unreachable: connect timed out") from None
        except OSError as exc:
            raise _UpstreamError(503, f"upstream unreachable: {exc}") from None
        self.upstream = _Peer(streams, h11.CLIENT, self.cfg)
        return self.upstream, False

    async def _forward(self, event: h11.Request, request: RequestHead) -> bool:
        cfg = self.cfg
        if not request.host:  # HTTP/1.0 without Host: h11 speaks 1.1 upstream, which needs one
            ip, port = self.conn.original_dst
            host = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            event = h11.Request(
                method=event.method,
                target=event.target,
                headers=[*event.headers.raw_items(), (b"Host", host.encode())],
            )
        # a request without a body can be sent again on a new connection when a kept-alive
        # one was closed under it (nothing of it was taken); one with a body was consumed
        may_retry = not _has_body(request)
        retrying = False
        start = 0
        while True:
            try:
                up, reused = await self._open_upstream()
            except _UpstreamError as exc:
                self._fail(exc.code, str(exc), request)  # nothing went upstream: the flow says so
                return False
            if not start:
                self.proxy._emit(request_flow(self.conn, request, Verdict.FORWARDED, cfg.redaction))
                start = time.monotonic_ns()
            pump: asyncio.Future[None] | None = None
            try:
                try:
                    await up.send(event, cfg.idle_timeout)
                except (ConnectionError, OSError) as exc:
                    raise _UpstreamError(
                        502, f"upstream connection lost: {exc}", stale=True
                    ) from None
                if retrying:
                    # the request (without a body) was read whole on the first try
                    await up.send(h11.EndOfMessage(), cfg.idle_timeout)
                    pump = asyncio.get_running_loop().create_future()
                    pump.set_result(None)
                elif self._forward_buffered_body(up):
                    # the whole request was in hand (most requests): no task to pump its body
                    pump = asyncio.get_running_loop().create_future()
                    pump.set_result(None)
                else:
                    pump = asyncio.create_task(self._pump_request_body(up))
                return await self._relay_response(up, request, start, pump)
            except _UpstreamError as exc:
                if pump is not None and pump.done() and not pump.cancelled() and pump.exception():
                    raise pump.exception() from None  # the client broke the body: its error
                if exc.stale and reused and may_retry and not retrying:
                    retrying = True
                    log.debug("l7 proxy: kept-alive upstream connection was closed; retrying")
                    continue
                self._upstream_failed(exc, request, start)
                return False
            finally:
                if pump is not None:
                    if not pump.done():
                        pump.cancel()
                        await asyncio.wait([pump])  # (our own cancellation still passes)
                    if not pump.cancelled():
                        pump.exception()  # retrieved: not logged as lost

    def _upstream_failed(self, exc: _UpstreamError, request: RequestHead, start: int) -> None:
        cfg = self.cfg
        log.info("l7 proxy: %s:%d: %d: %s", *self.conn.client, exc.code, exc)
        if self.client.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # the response had begun: the client sees the connection end
        head = ResponseHead(exc.code, http.HTTPStatus(exc.code).phrase)
        self.proxy._emit(
            response_flow(
                self.conn,
                request,
                head,
                time.monotonic_ns() - start,
                cfg.redaction,
                verdict=Verdict.ERROR,
                summary=str(exc),
            )
        )
        with contextlib.suppress(OSError, RuntimeError):
            self.client.writer.write(_error_bytes(exc.code))
        self.linger = True

    def _forward_buffered_body(self, up: _Peer) -> bool:
        """Forward what of the request's body has already been read; True when that was all of
        it (h11's RemoteProtocolError passes to the caller, as for a bad head)."""
        while True:
            event = self.client.h11.next_event()
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.Data):
                event = h11.Data(data=event.data)
            elif not isinstance(event, h11.EndOfMessage):
                raise _ClientError(400, "client closed before its request's end")
            data = up.h11.send(event)
            if data:
                up.writer.write(data)  # at most one read's worth: no need to wait for a drain
            if isinstance(event, h11.EndOfMessage):
                return True

    async def _pump_request_body(self, up: _Peer) -> None:
        """The request's body and end, client -> upstream, as they come. A client error stops
        the upstream side too (so the response wait ends)."""
        cfg = self.cfg
        try:
            while True:
                event = await self.client.next_event(cfg.idle_timeout)
                if isinstance(event, h11.Data):
                    await up.send(h11.Data(data=event.data), cfg.idle_timeout)
                elif isinstance(event, h11.EndOfMessage):
                    await up.send(event, cfg.idle_timeout)
                    return
                else:
                    raise _ClientError(400, "client closed before its request's end")
        except h11.RemoteProtocolError as exc:
            up.writer.transport.abort()
            raise _ClientError(exc.error_status_hint, f"bad request body: {exc}") from None
        except TimeoutError:
            up.writer.transport.abort()
            raise _ClientError(408, "request body stalled past idle_timeout") from None
        except _ClientError:
            up.writer.transport.abort()
            raise

    async def _upstream_event(self, up: _Peer, timeout: float, waiting_for: str) -> object:
        try:
            event = await up.next_event(timeout)
        except TimeoutError:
            raise _UpstreamError(504, f"upstream sent no {waiting_for} in time") from None
        except h11.RemoteProtocolError as exc:
            rest, closed = up.h11.trailing_data
            if closed and not rest and waiting_for == "response head":
                raise _UpstreamError(
                    502, "upstream closed before the response head", stale=True
                ) from None
            raise _UpstreamError(502, f"upstream broke the protocol: {exc}") from None
        if isinstance(event, h11.ConnectionClosed):
            raise _UpstreamError(502, f"upstream closed before the {waiting_for}")
        return event

    async def _relay_response(
        self, up: _Peer, request: RequestHead, start: int, pump: asyncio.Future[None]
    ) -> bool:
        cfg = self.cfg
        c = self.client
        while True:
            event = await self._upstream_event(up, cfg.response_timeout, "response head")
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                if request.http_version != "1.0":  # (1xx must not be sent to HTTP/1.0 clients)
                    await c.send(event, cfg.idle_timeout)  # 100 Continue and the like
                continue
            break
        head = ResponseHead.from_h11(event)  # type: ignore[arg-type]
        if head.size > cfg.max_header_bytes:
            raise _UpstreamError(502, f"upstream response head of {head.size} bytes too large")
        self.proxy._emit(
            response_flow(self.conn, request, head, time.monotonic_ns() - start, cfg.redaction)
        )
        if up.h11.their_state is h11.SWITCHED_PROTOCOL:
            # an Upgrade or CONNECT: the client side may switch only once its request has ended
            await asyncio.wait_for(pump, cfg.idle_timeout)
            await c.send(event, cfg.idle_timeout)
            await self._splice(up)
            return False
        await c.send(event, cfg.idle_timeout)
        while True:
            event = await self._upstream_event(up, cfg.idle_timeout, "response body")
            if isinstance(event, h11.Data):
                await c.send(h11.Data(data=event.data), cfg.idle_timeout)
            elif isinstance(event, h11.EndOfMessage):
                if event.headers and request.http_version == "1.0":
                    event = h11.EndOfMessage()  # no chunks to an HTTP/1.0 client: no trailers
                await c.send(event, cfg.idle_timeout)
                break
        if not pump.done():
            self.linger = True  # the rest of the request is unread: close gently
            return False  # the upstream answered before the request's end: close, as it will
        return pump.exception() is None

    async def _splice(self, up: _Peer) -> None:
        """After a protocol switch (101, CONNECT): bytes both ways as they are, until either
        side ends or stays idle past idle_timeout."""
        c = self.client
        c_rest, _ = c.h11.trailing_data
        u_rest, _ = up.h11.trailing_data
        if c_rest:
            up.writer.write(c_rest)
        if u_rest:
            c.writer.write(u_rest)

        async def copy(src: _Peer, dst: _Peer) -> None:
            with contextlib.suppress(TimeoutError, OSError, ConnectionError):
                while data := await asyncio.wait_for(
                    src.reader.read(src.read_size), self.cfg.idle_timeout
                ):
                    dst.writer.write(data)
                    await asyncio.wait_for(dst.writer.drain(), self.cfg.idle_timeout)
            with contextlib.suppress(OSError, RuntimeError):
                if dst.writer.can_write_eof():
                    dst.writer.write_eof()

        tasks = [asyncio.create_task(copy(c, up)), asyncio.create_task(copy(up, c))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        if self.linger:
            await _linger_close(self.client.reader, self.client.writer, self.cfg.linger_timeout)
            return
        self.client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.writer.wait_closed(), self.cfg.linger_timeout)


# --- the listener --------------------------------------------------------------------------

ResolveOriginalDst = Callable[[socket.socket], Address | Awaitable[Address]]
RulesFor = Callable[[Address, Address], Rules]
UpstreamFor = Callable[[Address, Address], ConnectUpstream]


class ProxyListener:
    """The proxy accepting on a listening socket (see `serve`)."""

    def __init__(self, server: asyncio.Server, tasks: set[asyncio.Task[None]]) -> None:
        self.server = server
        self._tasks = tasks

    @property
    def address(self) -> tuple[str, int]:
        return self.server.sockets[0].getsockname()[:2]

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and end the connections being served."""
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


async def serve(
    sock: socket.socket,
    resolve_original_dst: ResolveOriginalDst,
    proxy: HTTPProxy,
    *,
    rules_for: RulesFor,
    upstream_for: UpstreamFor = direct_upstream,
    client_of: Callable[[Address], Address] = lambda peer: peer,
) -> ProxyListener:
    """Accept on a listening socket and hand each connection to `proxy`. For each accepted
    socket, `resolve_original_dst(sock)` names where the client meant to go (it may be async;
    LookupError or OSError: the connection is closed and logged), `client_of(peer)` who the
    client is (a listener on a pod's loopback sees 127.0.0.1: the agent names the pod),
    `rules_for(client, dst)` the rules (None: visibility only) and `upstream_for(client, dst)`
    how to reach it. The listener returned is serving; close() it to stop."""
    tasks: set[asyncio.Task[None]] = set()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await _accepted(reader, writer)
        except asyncio.CancelledError:
            writer.close()  # the listener is closing: this connection ends with it
        finally:
            tasks.discard(task)

    async def _accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            client: Address = client_of((peer[0], peer[1]))
            dst = resolve_original_dst(writer.get_extra_info("socket"))
            if inspect.isawaitable(dst):
                dst = await dst
            original_dst: Address = (dst[0], int(dst[1]))
            rules = rules_for(client, original_dst)
            upstream = upstream_for(client, original_dst)
        except (LookupError, OSError, ValueError) as exc:
            log.warning("l7 proxy: no original destination for %s: %s", peer, exc)
            writer.close()
            return
        await proxy.handle(
            reader,
            writer,
            client=client,
            original_dst=original_dst,
            rules=rules,
            connect_upstream=upstream,
        )

    server = await asyncio.start_server(accepted, sock=sock, limit=proxy.config.read_size)
    return ProxyListener(server, tasks)
