"""/metrics over HTTP on the exporter's own event loop (no thread: the metric families are
plain dicts the handlers update on that loop, so a scrape never sees one half-updated).

GET /metrics answers the text exposition format (prometheus_client renders it); GET / says where
the metrics are; anything else is 404 / 405. One request per connection (Connection: close),
which Prometheus handles as well as keep-alive at a scrape interval's pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from flowscope.errors import FlowscopeError

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 16384


class MetricsServer:
    def __init__(self, collector: Collector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host or None, self.port, reuse_address=True
            )
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise FlowscopeError(
                    f"prometheus.listen {self.address}: the address is already in use",
                    hint="stop what listens there or set prometheus.listen to another port",
                ) from None
            raise FlowscopeError(
                f"prometheus.listen {self.address}: cannot listen: {e.strerror or e}",
                hint="set prometheus.listen to an address of this machine",
            ) from None
        if self.port == 0:  # tests: the port the kernel chose
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving /metrics on %s", self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path = _request_line(head)
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"only GET\n", "text/plain", method == "HEAD")
            elif path.split("?", 1)[0] == "/metrics":
                body = generate_latest(self.registry)
                await _respond(writer, 200, body, CONTENT_TYPE_LATEST, method == "HEAD")
            elif path == "/":
                await _respond(writer, 200, b"flowscope exporter: /metrics\n", "text/plain")
            else:
                await _respond(writer, 404, b"not found: try /metrics\n", "text/plain")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # a client that went away or sent no complete request: nothing to answer
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, head_only: bool = False
) -> None:
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(header if head_only else header + body)
    await writer.drain()
