"""Fuzzing the proxy with hypothesis: random bytes, mutated valid requests, huge headers,
truncated chunked bodies, and garbage from the upstream. Whatever comes, the proxy answers with
an HTTP response or closes within its timeouts, no exception escapes it (none is logged), and
every connection it took is let go."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.l7.httpproxy import ProxyConfig
from dataplane.l7.httprules import parse_http_rules
from tests.l7.httpharness import Harness, running

CFG = ProxyConfig(
    max_header_bytes=8192,
    header_timeout=0.5,
    idle_timeout=0.25,
    response_timeout=0.5,
    connect_timeout=0.5,
    linger_timeout=0.1,
)
RULES = parse_http_rules([{"path": "/public.*"}, {"method": "POST", "path": "/echo"}], "fuzz")
LIMIT = 4.0  # seconds: every exchange ends well within this (the timeouts above are <= 0.5 s)

VALID = [
    b"GET /public HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /private HTTP/1.1\r\nHost: a\r\nCookie: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET /public HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /public HTTP/1.0\r\n\r\n",
    b"HEAD /public HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
]


def settings_(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )


async def exchange(h: Harness, data: bytes, *, eof: bool = True) -> bytes:
    """Send `data` (then half-close), read all the proxy says until it closes; fail on a hang."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(*h.addr)
    got = bytearray()
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
            if eof:
                writer.write_eof()
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), LIMIT):
                got += chunk
    except TimeoutError:
        pytest.fail(f"the proxy neither answered nor closed within {LIMIT}s: {data[:200]!r}")
    finally:
        writer.close()
    assert time.monotonic() - t0 < LIMIT
    return bytes(got)


async def settled(h: Harness) -> None:
    """Every connection the proxy took is let go (its count returns to 0)."""
    for _ in range(200):
        if h.proxy.active == 0:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{h.proxy.active} connections still held")


def check_answer(got: bytes) -> None:
    if got:
        assert got.startswith(b"HTTP/1.1 "), got[:100]


def run_fuzz(
    caplog: pytest.LogCaptureFixture,
    body: Callable[[asyncio.Runner, Harness], None],
    **kw: Any,
) -> None:
    caplog.set_level(logging.WARNING, logger="dataplane.l7.httpproxy")
    with asyncio.Runner() as runner:
        cm = running(RULES, CFG, **kw)
        h = runner.run(cm.__aenter__())
        try:
            body(runner, h)
        finally:
            runner.run(cm.__aexit__(None, None, None))
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert crashes == [], crashes[0].getMessage()


def runs(runner: asyncio.Runner, coro: Coroutine[Any, Any, bytes]) -> bytes:
    return runner.run(coro)


def test_random_bytes(caplog: pytest.LogCaptureFixture) -> None:
    def body(runner: asyncio.Runner, h: Harness) -> None:
        @settings_(150)
        @given(st.binary(max_size=3000))
        def one(data: bytes) -> None:
            check_answer(runs(runner, exchange(h, data)))
            runner.run(settled(h))

        one()

    run_fuzz(caplog, body)


mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "truncate"]),
    st.integers(min_value=0, max_value=400),
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, steps: list[tuple[str, int, bytes]]) -> bytes:
    for kind, pos, blob in steps:
        pos = pos % (len(data) + 1)
        if kind == "insert":
            data = data[:pos] + blob + data[pos:]
        elif kind == "delete":
            data = data[:pos] + data[pos + len(blob) :]
        elif kind == "replace":
            data = data[:pos] + blob + data[pos + len(blob) :]
        else:
            data = data[:pos]
    return data


def test_mutated_valid_requests(caplog: pytest.LogCaptureFixture) -> None:
    def body(runner: asyncio.Runner, h: Harness) -> None:
        @settings_(250)
        @given(st.sampled_from(VALID), st.lists(mutation, max_size=4))
        def one(valid: bytes, steps: list[tuple[str, int, bytes]]) -> None:
            data = mutate(valid, steps)
            got = runs(runner, exchange(h, data))
            check_answer(got)
            if not steps and b"/private" not in valid:
                assert got.startswith(b"HTTP/1.1 200") or got.startswith(b"HTTP/1.1 100")
            runner.run(settled(h))

        one()

    run_fuzz(caplog, body)


def test_huge_headers_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    def body(runner: asyncio.Runner, h: Harness) -> None:
        @settings_(40)
        @given(
            st.integers(min_value=1, max_value=200_000),
            st.integers(min_value=1, max_value=40),
        )
        def one(size: int, count: int) -> None:
            per = max(1, size // count)
            headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * per) for i in range(count))
            data = b"GET /public HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
            got = runs(runner, exchange(h, data))
            if len(data) > 2 * CFG.max_header_bytes:
                assert got.startswith(b"HTTP/1.1 431"), got[:60]
            elif len(data) < CFG.max_header_bytes // 2:
                assert got.startswith(b"HTTP/1.1 200"), got[:60]
            runner.run(settled(h))

        one()
        # nothing oversized got through to the upstream
        sizes = [sum(len(n) + len(v) + 4 for n, v in s.headers) for s in h.upstream.seen]
        assert sizes and max(sizes) <= 2 * CFG.max_header_bytes

    run_fuzz(caplog, body)


def test_truncated_chunked_bodies(caplog: pytest.LogCaptureFixture) -> None:
    def body(runner: asyncio.Runner, h: Harness) -> None:
        @settings_(25)
        @given(
            st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5),
            st.integers(min_value=0, max_value=2000),
            st.booleans(),
        )
        def one(chunks: list[bytes], cut: int, eof: bool) -> None:
            encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            head = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            data = head + encoded[: cut % len(encoded)]  # never the whole body
            got = runs(runner, exchange(h, data, eof=eof))
            check_answer(got)
            assert not got.startswith(b"HTTP/1.1 200")  # an incomplete body is never answered OK
            runner.run(settled(h))

        one()

    run_fuzz(caplog, body)


def test_garbage_from_upstream(caplog: pytest.LogCaptureFixture) -> None:
    """The upstream answers with random or mutated bytes: the client gets 502, 504 or what
    could be parsed, never a crash."""
    answer = {"bytes": b""}

    async def bad_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(65536)
            writer.write(answer["bytes"])
            await writer.drain()
            writer.close()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(bad_upstream, "127.0.0.1", 0)

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    with asyncio.Runner() as runner:
        srv = runner.run(start())
        dst = srv.sockets[0].getsockname()[:2]

        def body(runner_: asyncio.Runner, h: Harness) -> None:
            @settings_(150)
            @given(
                st.one_of(
                    st.binary(max_size=500),
                    st.tuples(st.sampled_from([ok, chunked]), st.lists(mutation, max_size=3)).map(
                        lambda t: mutate(t[0], t[1])
                    ),
                )
            )
            def one(data: bytes) -> None:
                answer["bytes"] = data
                got = runs(runner_, exchange(h, b"GET /public HTTP/1.1\r\nHost: a\r\n\r\n"))
                check_answer(got)
                if data == ok:
                    assert got.endswith(b"hello")
                runner_.run(settled(h))

            one()

        caplog.set_level(logging.WARNING, logger="dataplane.l7.httpproxy")
        cm = running(RULES, CFG, original_dst=dst)
        h = runner.run(cm.__aenter__())
        try:
            body(runner, h)
        finally:
            runner.run(cm.__aexit__(None, None, None))
            srv.close()
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert crashes == [], crashes[0].getMessage()
