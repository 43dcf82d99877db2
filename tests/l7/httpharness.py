"""A real HTTP/1.1 upstream on loopback that records what reaches it, the proxy listening in front
of it, and a client that speaks raw bytes and reads responses with h11."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11

from dataplane.l7.httpproxy import HTTPProxy, ProxyConfig, Rules, serve
from flowscope.flow.model import Endpoint, Flow

CHUNKS = (b"first chunk\n", b"x" * 5000, b"", b"last\n")  # b"": h11 sends no empty chunk


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Upstream:
    """Routes: /chunked answers a chunked body, /echo echoes the request body, /slow answers
    after `slow` seconds, /close answers with Connection: close, /drop answers and closes
    without a word, /big answers `big` bytes;
    anything else: 200 "hello <target>". Every request that reaches it is kept in `seen`."""

    seen: list[Seen] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    slow: float = 2.0
    big: int = 1 << 20
    server: asyncio.Server | None = None
    connections: int = 0
    tasks: set = field(default_factory=set)

    addr: tuple[str, int] = ("", 0)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.addr = self.server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=3)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            pass  # stopping
        finally:
            self.tasks.discard(task)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = None
                body = bytearray()
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        data = await reader.read(65536)
                        self.raw += data
                        conn.receive_data(data)
                        continue
                    if isinstance(ev, h11.Request):
                        req = ev
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    elif isinstance(ev, h11.ConnectionClosed):
                        return
                assert req is not None
                target = req.target.decode("latin-1")
                self.seen.append(
                    Seen(
                        req.method.decode("latin-1"),
                        target,
                        [
                            (n.decode("latin-1"), v.decode("latin-1"))
                            for n, v in req.headers.raw_items()
                        ],
                        bytes(body),
                    )
                )
                await self._answer(conn, writer, req, target, bytes(body))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            return
        finally:
            writer.close()

    async def _answer(self, conn, writer, req, target: str, body: bytes) -> None:
        def send(ev) -> None:
            data = conn.send(ev)
            if data:
                writer.write(data)

        if target == "/chunked":
            send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
            for c in CHUNKS:
                if c:
                    send(h11.Data(data=c))
                    await writer.drain()
        elif target == "/echo":
            send(h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))]))
            send(h11.Data(data=body))
        elif target == "/big":
            send(h11.Response(status_code=200, headers=[("Content-Length", str(self.big))]))
            for off in range(0, self.big, 65536):
                send(h11.Data(data=bytes([off // 65536 % 256]) * min(65536, self.big - off)))
                await writer.drain()
        else:
            if target == "/slow":
                await asyncio.sleep(self.slow)
            text = f"hello {target}".encode()
            headers = [
                ("Content-Length", str(len(text))),
                ("Set-Cookie", "session=s3cret"),
                ("X-Upstream", "yes"),
            ]
            if target == "/close":
                headers.append(("Connection", "close"))
            send(h11.Response(status_code=200, headers=headers))
            if req.method != b"HEAD":
                send(h11.Data(data=text))
        send(h11.EndOfMessage())
        await writer.drain()
        if target == "/drop":  # a server whose keep-alive ends now, without saying so
            writer.close()
            raise ConnectionError("dropped")


@dataclass
class Reply:
    code: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One client connection to the proxy: sends raw bytes, reads h11-parsed responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, addr: tuple[str, int]) -> Client:
        return cls(*await asyncio.open_connection(*addr))

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def reply(self, timeout: float = 5.0, head: bool = False) -> Reply:
        """The next response. h11's client role frames a response by its request, so a GET
        (or HEAD) stands in for the raw request that was sent; nothing of it is written."""
        return await asyncio.wait_for(self._reply(head), timeout)

    async def _reply(self, head: bool) -> Reply:
        conn = self.h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        if conn.our_state is h11.IDLE:
            method = "HEAD" if head else "GET"
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        code, headers, body = 0, {}, bytearray()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await self.reader.read(65536))
                continue
            if isinstance(ev, h11.Response):
                code = ev.status_code
                headers = {n.decode().lower(): v.decode() for n, v in ev.headers.raw_items()}
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return Reply(code, headers, bytes(body))
            elif isinstance(ev, h11.ConnectionClosed):
                raise ConnectionError("closed before a response")

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the proxy closes the connection (EOF or reset) within timeout."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionError:
            return True
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def endpoint_of(ip: str) -> Endpoint | None:
    return Endpoint(
        identity=1000 + int(ip.rsplit(".", 1)[1]), namespace="lab", pod_name=f"pod-{ip}"
    )


@dataclass
class Harness:
    upstream: Upstream
    proxy: HTTPProxy
    addr: tuple[str, int]  # the proxy's listening address
    flows: list[Flow]

    async def client(self) -> Client:
        return await Client.connect(self.addr)


@contextlib.asynccontextmanager
async def running(
    rules: Rules,
    config: ProxyConfig | None = None,
    upstream: Upstream | None = None,
    original_dst: tuple[str, int] | None = None,
) -> AsyncIterator[Harness]:
    """The upstream, the proxy listening on loopback in front of it (the original destination
    of every connection is the upstream, or `original_dst`), flows collected in a list."""
    upstream = upstream or Upstream()
    await upstream.start()
    flows: list[Flow] = []
    proxy = HTTPProxy(config, emit=flows.append, describe=endpoint_of)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    dst = original_dst or upstream.addr
    listener = await serve(sock, lambda _s: dst, proxy, rules_for=lambda _c, _d: rules)
    try:
        yield Harness(upstream, proxy, listener.address, flows)
    finally:
        await listener.close()
        await upstream.stop()
