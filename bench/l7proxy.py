"""HTTP requests/s through the L7 proxy against direct (issue 9), and the proxy's CPU per request.

Three processes on loopback: an upstream HTTP server (a minimal asyncio protocol answering each
request head with a fixed 200), the proxy (dataplane.l7.httpproxy.serve with a two-rule HTTP
policy that every request passes, flows counted), and the client here (CONCURRENCY connections
for DURATION seconds each round). The same client and upstream measure both paths in the same
run, so the ratio is what the proxy costs:

- keep-alive: each connection sends request after request on one connection;
- new connection: a connection per request (connect, request, response, close).

The proxy's CPU per request is its process's user+system time (from /proc) over the requests it
handled in the round. Printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import time
from dataclasses import dataclass

DURATION = float(os.environ.get("BENCH_L7_SECONDS", "3"))
CONCURRENCY = 8
REQUEST = b"GET /api/items/42?fields=all HTTP/1.1\r\nHost: web.lab\r\nUser-Agent: bench\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, bench\n"
)
RULES = [{"method": "GET", "path": "/api/.*"}, {"method": "POST", "path": "/submit"}]


class _Upstream(asyncio.Protocol):
    """One 200 per request head; closes when the client does (no parsing beyond the head end)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        buf = self.pending + data
        heads = buf.count(b"\r\n\r\n")
        self.pending = buf[buf.rfind(b"\r\n\r\n") + 4 :] if heads else buf
        if heads:
            self.transport.write(RESPONSE * heads)  # type: ignore[attr-defined]


def _run_upstream(ready: mp.connection.Connection) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Upstream, "127.0.0.1", 0, backlog=1024
        )
        ready.send(server.sockets[0].getsockname()[:2])
        await asyncio.Event().wait()

    asyncio.run(main())


def _run_proxy(ready: mp.connection.Connection, upstream: tuple[str, int]) -> None:
    from dataplane.l7.httpproxy import HTTPProxy, ProxyConfig, serve
    from dataplane.l7.httprules import parse_http_rules

    rules = parse_http_rules(RULES, "bench.rules.http")
    flows = [0]

    def emit(_flow: object) -> None:
        flows[0] += 1

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.setblocking(False)
        proxy = HTTPProxy(ProxyConfig(max_connections=4096), emit=emit)
        listener = await serve(sock, lambda _s: upstream, proxy, rules_for=lambda _c, _d: rules)
        ready.send(listener.address)
        await asyncio.Event().wait()

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _read_response(reader: asyncio.StreamReader) -> None:
    got = await reader.readexactly(len(RESPONSE))
    if not got.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response {got[:40]!r}")


async def _keepalive(addr: tuple[str, int], stop: float) -> int:
    reader, writer = await asyncio.open_connection(*addr)
    done = 0
    try:
        while time.monotonic() < stop:
            writer.write(REQUEST)
            await _read_response(reader)
            done += 1
    finally:
        writer.close()
    return done


async def _new_connections(addr: tuple[str, int], stop: float) -> int:
    done = 0
    while time.monotonic() < stop:
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(REQUEST)
        await _read_response(reader)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        done += 1
    return done


@dataclass(frozen=True)
class Round:
    requests: int
    seconds: float
    proxy_cpu: float | None  # seconds of the proxy process's CPU in the round

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _round(addr: tuple[str, int], keepalive: bool, proxy_pid: int | None) -> Round:
    cpu0 = _cpu_seconds(proxy_pid) if proxy_pid else 0.0
    t0 = time.monotonic()
    stop = t0 + DURATION
    work = _keepalive if keepalive else _new_connections
    counts = await asyncio.gather(*(work(addr, stop) for _ in range(CONCURRENCY)))
    seconds = time.monotonic() - t0
    cpu = _cpu_seconds(proxy_pid) - cpu0 if proxy_pid else None
    return Round(sum(counts), seconds, cpu)


def _start(ctx: mp.context.SpawnContext, target, *args) -> tuple[mp.Process, tuple[str, int]]:
    here, there = ctx.Pipe()
    proc = ctx.Process(target=target, args=(there, *args), daemon=True)
    proc.start()
    if not here.poll(30):
        proc.terminate()
        raise RuntimeError(f"{target.__name__} did not start")
    return proc, here.recv()


def main() -> None:
    ctx = mp.get_context("spawn")
    upstream, up_addr = _start(ctx, _run_upstream)
    try:
        proxy, proxy_addr = _start(ctx, _run_proxy, up_addr)
        try:
            print(
                f"HTTP/1.1 GET, {CONCURRENCY} client connections, {DURATION:.0f} s a round, "
                "loopback; upstream and proxy in their own processes"
            )
            for keepalive in (True, False):
                name = "keep-alive" if keepalive else "new connection per request"
                direct = asyncio.run(_round(up_addr, keepalive, None))
                proxied = asyncio.run(_round(proxy_addr, keepalive, proxy.pid))
                cpu_us = (proxied.proxy_cpu or 0.0) / max(proxied.requests, 1) * 1e6
                print(
                    f"  {name:28s} direct {direct.rate:9.0f} req/s   through the proxy "
                    f"{proxied.rate:8.0f} req/s   ratio {proxied.rate / direct.rate:5.2f}   "
                    f"proxy CPU {cpu_us:6.0f} us/request"
                )
        finally:
            proxy.terminate()
            proxy.join(5)
    finally:
        upstream.terminate()
        upstream.join(5)


if __name__ == "__main__":
    main()
