"""The HTTP proxy on loopback: a real upstream server, real client sockets, the real listener."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import h11

from dataplane.l7.httpproxy import DENIED_BODY, HTTPProxy, ProxyConfig
from dataplane.l7.httprules import HTTPRules, parse_http_rules
from dataplane.l7.redact import REDACTED
from flowscope.flow.dropreason import DropReason
from flowscope.flow.model import (
    TCP,
    EventType,
    FlowType,
    L7FlowType,
    MessageType,
    TrafficDirection,
    Verdict,
)
from tests.conftest import free_port
from tests.l7.httpharness import CHUNKS, Client, Upstream, running

RULES = parse_http_rules(
    [{"method": "GET", "path": "/public(/.*)?"}, {"method": "POST", "path": "/echo"}],
    "spec.ingress[0].toPorts[0].rules.http",
)
FAST = ProxyConfig(header_timeout=1.0, idle_timeout=2.0, response_timeout=1.0, linger_timeout=0.5)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: web.lab\r\n{extra}\r\n".encode()


def http_flows(flows, kind: L7FlowType):
    return [f for f in flows if f.l7 is not None and f.l7.type == kind]


async def test_allowed_request_is_forwarded_unchanged_and_flows_name_it() -> None:
    async with running(RULES) as h:
        c = await h.client()
        sent = b"hello upstream, a body of bytes \x00\xff\r\n" * 100
        await c.send(
            b"POST /echo HTTP/1.1\r\nHost: web.lab\r\nX-Custom: One\r\n"
            + f"Content-Length: {len(sent)}\r\n\r\n".encode()
            + sent
        )
        reply = await c.reply()
        await c.close()
    assert reply.code == 200 and reply.body == sent
    (seen,) = h.upstream.seen
    assert seen.method == "POST" and seen.target == "/echo" and seen.body == sent
    assert ("X-Custom", "One") in seen.headers  # names keep their case, values as sent

    (req,) = http_flows(h.flows, L7FlowType.REQUEST)
    (resp,) = http_flows(h.flows, L7FlowType.RESPONSE)
    client_port = req.l4.source_port
    assert req.verdict == Verdict.FORWARDED and req.drop_reason == 0
    assert req.type == FlowType.L7 and req.event_type == EventType(MessageType.ACCESS_LOG, 0)
    assert req.traffic_direction == TrafficDirection.INGRESS and req.is_reply is False
    assert req.ip.source == "127.0.0.1" and req.l4 == TCP(client_port, h.upstream.addr[1])
    assert req.l7.http.method == "POST" and req.l7.http.url == "http://web.lab/echo"
    assert req.l7.http.protocol == "HTTP/1.1" and req.l7.http.code == 0
    assert req.source.pod_name == "pod-127.0.0.1"
    assert resp.verdict == Verdict.FORWARDED and resp.is_reply is True
    assert resp.l4 == TCP(h.upstream.addr[1], client_port)  # the ends swapped
    assert resp.l7.http.code == 200 and resp.l7.http.method == "POST"
    assert resp.l7.latency_ns > 0 and resp.time_ns >= req.time_ns


async def test_chunked_request_and_response_bodies_pass_byte_for_byte() -> None:
    async with running(None) as h:
        c = await h.client()
        parts = [b"abc", b"\x00" * 3000, b"tail\r\n"]
        chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
        await c.send(
            b"POST /echo HTTP/1.1\r\nHost: web.lab\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        )
        echoed = await c.reply()
        await c.send(get("/chunked"))
        chunked_reply = await c.reply()
        await c.close()
    assert echoed.body == b"".join(parts)
    assert h.upstream.seen[0].body == b"".join(parts)
    assert chunked_reply.headers.get("transfer-encoding") == "chunked"
    assert chunked_reply.body == b"".join(CHUNKS)


async def test_large_response_is_streamed_whole() -> None:
    up = Upstream(big=8 << 20)
    async with running(None, upstream=up) as h:
        c = await h.client()
        await c.send(get("/big"))
        reply = await c.reply(timeout=20)
        await c.close()
    assert len(reply.body) == 8 << 20
    assert reply.body[65536 * 3] == 3  # the upstream's pattern, in order


async def test_forbidden_path_gets_403_and_never_reaches_upstream() -> None:
    async with running(RULES) as h:
        c = await h.client()
        await c.send(get("/private/keys?token=abc", "Authorization: Bearer xyz\r\n"))
        reply = await c.reply()
        await c.close()
    assert reply.code == 403 and reply.body == DENIED_BODY == b"Access denied\r\n"
    assert h.upstream.seen == [] and h.upstream.connections == 0
    assert b"private" not in h.upstream.raw
    (flow,) = h.flows
    assert flow.verdict == Verdict.DROPPED and flow.drop_reason == DropReason.POLICY_DENIED
    assert flow.l7.type == L7FlowType.REQUEST and flow.l7.http.method == "GET"
    assert flow.l7.http.url == f"http://web.lab/private/keys?{REDACTED}"
    assert ("Authorization", REDACTED) in [(x.key, x.value) for x in flow.l7.http.headers]


async def test_keep_alive_mixes_allowed_and_denied_in_order() -> None:
    async with running(RULES) as h:
        c = await h.client()
        codes = []
        for path in ("/public", "/admin", "/public/a", "/admin/b", "/public/c"):
            await c.send(get(path))
            codes.append((await c.reply()).code)
        # pipelined: all five at once, answered one at a time in order
        await c.send(b"".join(get(p) for p in ("/public/1", "/x", "/public/2", "/y", "/public/3")))
        piped = [await c.reply() for _ in range(5)]
        await c.close()
    assert codes == [200, 403, 200, 403, 200]
    assert [r.code for r in piped] == [200, 403, 200, 403, 200]
    assert [r.body for r in piped if r.code == 200] == [
        b"hello /public/1",
        b"hello /public/2",
        b"hello /public/3",
    ]
    assert [s.target for s in h.upstream.seen] == [
        "/public",
        "/public/a",
        "/public/c",
        "/public/1",
        "/public/2",
        "/public/3",
    ]
    assert h.upstream.connections == 1  # one upstream connection, kept alive
    reqs = http_flows(h.flows, L7FlowType.REQUEST)
    assert [f.verdict for f in reqs] == [Verdict.FORWARDED, Verdict.DROPPED] * 2 + [
        Verdict.FORWARDED
    ] + [Verdict.FORWARDED, Verdict.DROPPED] * 2 + [Verdict.FORWARDED]
    assert len(http_flows(h.flows, L7FlowType.RESPONSE)) == 6


async def test_denied_request_body_is_read_and_dropped_then_the_connection_serves_on() -> None:
    async with running(RULES) as h:
        c = await h.client()
        body = b"z" * 10000
        await c.send(
            f"PUT /public HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
            + get("/public")
        )
        first, second = await c.reply(), await c.reply()
        await c.close()
    assert (first.code, second.code) == (403, 200)
    assert [s.target for s in h.upstream.seen] == ["/public"] and b"zzz" not in h.upstream.raw


async def test_redaction_in_flows_only_the_forwarded_bytes_unchanged() -> None:
    async with running(None) as h:
        c = await h.client()
        await c.send(
            get(
                "/public/q?user=alice&token=t0p",
                "Authorization: Basic dXNlcjpwYXNz\r\nCookie: a=b\r\nX-Safe: keep\r\n",
            )
        )
        reply = await c.reply()
        await c.close()
    assert reply.headers["set-cookie"] == "session=s3cret"  # the client gets it as sent
    (seen,) = h.upstream.seen
    assert seen.target == "/public/q?user=alice&token=t0p"
    assert ("Authorization", "Basic dXNlcjpwYXNz") in seen.headers
    req, resp = (
        http_flows(h.flows, L7FlowType.REQUEST)[0],
        http_flows(h.flows, L7FlowType.RESPONSE)[0],
    )
    hdrs = {x.key: x.value for x in req.l7.http.headers}
    assert hdrs == {
        "Host": "web.lab",
        "Authorization": REDACTED,
        "Cookie": REDACTED,
        "X-Safe": "keep",
    }
    assert {x.key: x.value for x in resp.l7.http.headers}["Set-Cookie"] == REDACTED
    assert req.l7.http.url == resp.l7.http.url == f"http://web.lab/public/q?{REDACTED}"
    text = "".join(f.to_json() for f in h.flows)
    assert "t0p" not in text and "dXNlcjpwYXNz" not in text and "s3cret" not in text


async def test_url_without_host_names_the_original_destination() -> None:
    async with running(None) as h:
        c = await h.client()
        await c.send(b"GET /public HTTP/1.0\r\n\r\n")
        reply = await c.reply()
        await c.close()
    assert reply.code == 200
    ip, port = h.upstream.addr
    assert http_flows(h.flows, L7FlowType.REQUEST)[0].l7.http.url == f"http://{ip}:{port}/public"
    assert http_flows(h.flows, L7FlowType.REQUEST)[0].l7.http.protocol == "HTTP/1.0"


async def test_upstream_connection_close_is_passed_on() -> None:
    async with running(None) as h:
        c = await h.client()
        await c.send(get("/close"))
        reply = await c.reply()
        assert await c.closed(timeout=3)
        await c.close()
    assert reply.code == 200 and reply.headers.get("connection") == "close"


async def test_overload_gets_503_at_once_and_a_flow_says_why() -> None:
    cfg = ProxyConfig(max_connections=2, idle_timeout=5, linger_timeout=0.5)
    async with running(None, cfg) as h:
        held = [await h.client() for _ in range(2)]
        for c in held:
            await c.send(get("/public"))
            assert (await c.reply()).code == 200
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        extra = await h.client()
        await extra.send(get("/public"))
        reply = await extra.reply(timeout=3)
        waited = loop.time() - t0
        await extra.close()
        assert h.proxy.rejected == 1 and h.proxy.active == 2
        for c in held:
            await c.close()
    assert reply.code == 503 and waited < 4  # not waiting for a held one (idle_timeout 5 s)
    errors = [f for f in h.flows if f.verdict == Verdict.ERROR]
    assert len(errors) == 1 and "max_connections" in errors[0].summary
    assert len(h.upstream.seen) == 2


async def test_upstream_down_gets_503_and_an_error_flow() -> None:
    dead = ("127.0.0.1", free_port())
    async with running(None, FAST, original_dst=dead) as h:
        c = await h.client()
        await c.send(get("/public"))
        reply = await c.reply()
        assert await c.closed(timeout=3)
        await c.close()
    assert reply.code == 503
    (flow,) = h.flows
    assert flow.verdict == Verdict.ERROR and flow.l7.type == L7FlowType.REQUEST
    assert flow.l7.http.url.endswith("/public") and "unreachable" in flow.summary


async def test_upstream_too_slow_gets_504_and_an_error_response_flow() -> None:
    async with running(None, FAST, upstream=Upstream(slow=3.0)) as h:
        c = await h.client()
        await c.send(get("/slow"))
        reply = await c.reply()
        await c.close()
    assert reply.code == 504
    resp = http_flows(h.flows, L7FlowType.RESPONSE)
    assert [(f.verdict, f.l7.http.code) for f in resp] == [(Verdict.ERROR, 504)]


async def test_huge_header_gets_431_and_an_error_flow() -> None:
    cfg = ProxyConfig(max_header_bytes=8192, linger_timeout=0.5)
    async with running(None, cfg) as h:
        c = await h.client()
        await c.send(get("/public", f"X-Big: {'a' * 20000}\r\n"))
        reply = await c.reply()
        assert await c.closed(timeout=3)
        await c.close()
    assert reply.code == 431
    assert h.upstream.seen == []
    (flow,) = h.flows
    assert flow.verdict == Verdict.ERROR and "too large" in flow.summary
    assert flow.l7.http.headers == ()  # the oversized head is not copied into the flow


async def test_malformed_request_gets_400_and_close() -> None:
    async with running(None, FAST) as h:
        c = await h.client()
        await c.send(b"GET /public HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n")
        reply = await c.reply()
        assert await c.closed(timeout=3)
        await c.close()
    assert reply.code == 400 and h.upstream.seen == []
    assert [f.verdict for f in h.flows] == [Verdict.ERROR]


async def test_slow_head_gets_408_and_idle_connection_is_closed() -> None:
    cfg = ProxyConfig(header_timeout=0.5, idle_timeout=1.0, linger_timeout=0.5)
    async with running(None, cfg) as h:
        slow = await h.client()
        await slow.send(b"GET /public HTTP/1.1\r\nHo")
        reply = await slow.reply(timeout=4)
        await slow.close()
        idle = await h.client()
        await idle.send(get("/public"))
        assert (await idle.reply()).code == 200
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await idle.closed(timeout=5)  # after idle_timeout, not never
        assert loop.time() - t0 < 4  # idle_timeout is 1 s: closed for idling, not by chance
        await idle.close()
    assert reply.code == 408


async def test_truncated_chunked_body_closes_without_a_hang() -> None:
    async with running(None, FAST) as h:
        c = await h.client()
        await c.send(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort"
        )
        c.writer.write_eof()
        assert await c.closed(timeout=4)
        await c.close()
        assert h.proxy.active == 0


async def test_upgrade_is_spliced_after_101() -> None:
    """A WebSocket-style upgrade: after 101 the bytes pass both ways as they are."""

    async def upgrade_server(reader, writer):
        conn = h11.Connection(h11.SERVER)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await reader.read(4096))
                continue
            if isinstance(ev, h11.EndOfMessage):
                break
        writer.write(
            conn.send(
                h11.InformationalResponse(
                    status_code=101, headers=[("Upgrade", "echo"), ("Connection", "Upgrade")]
                )
            )
        )
        while data := await reader.read(4096):
            writer.write(data.upper())
        writer.close()

    srv = await asyncio.start_server(upgrade_server, "127.0.0.1", 0)
    dst = srv.sockets[0].getsockname()[:2]
    try:
        async with running(None, FAST, original_dst=dst) as h:
            r, w = await asyncio.open_connection(*h.addr)
            w.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 3)
            w.write(b"ping")
            echoed = await asyncio.wait_for(r.readexactly(4), 3)
            w.close()
    finally:
        srv.close()
    assert head.startswith(b"HTTP/1.1 101") and echoed == b"PING"
    assert [f.l7.http.code for f in http_flows(h.flows, L7FlowType.RESPONSE)] == [101]


async def test_visibility_only_allows_everything_and_rules_none_vs_empty() -> None:
    for rules in (None, HTTPRules()):
        async with running(rules) as h:
            c = await h.client()
            await c.send(b"DELETE /anything HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await c.reply()).code == 200
            await c.close()
        assert [f.verdict for f in h.flows] == [Verdict.FORWARDED, Verdict.FORWARDED]


async def test_a_failing_emit_does_not_break_traffic() -> None:
    def boom(_flow):
        raise RuntimeError("consumer broke")

    proxy = HTTPProxy(FAST, emit=boom)
    up = Upstream()
    await up.start()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    from dataplane.l7.httpproxy import serve

    listener = await serve(lsock, lambda _s: up.addr, proxy, rules_for=lambda _c, _d: None)
    try:
        c = await Client.connect(listener.address)
        await c.send(get("/public"))
        assert (await c.reply()).code == 200
        await c.close()
    finally:
        await listener.close()
        await up.stop()


async def test_head_response_has_no_body_and_the_connection_serves_on() -> None:
    async with running(None) as h:
        c = await h.client()
        await c.send(b"HEAD /public HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await c.reply(head=True)
        await c.send(get("/public/after"))
        after = await c.reply()
        await c.close()
    assert head.code == 200 and head.body == b"" and head.headers["content-length"] == "13"
    assert after.body == b"hello /public/after"


async def test_denied_request_waiting_for_100_continue_gets_403_and_close() -> None:
    async with running(RULES) as h:
        c = await h.client()
        await c.send(
            b"PUT /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"
        )
        reply = await c.reply()
        assert await c.closed(timeout=3)
        await c.close()
    assert reply.code == 403 and reply.headers.get("connection") == "close"
    assert h.upstream.connections == 0


async def test_a_kept_alive_upstream_closed_in_between_is_replaced() -> None:
    async with running(None) as h:
        c = await h.client()
        codes = []
        for path in ("/drop", "/public/1", "/drop", "/public/2"):
            await c.send(get(path))
            codes.append((await c.reply()).code)
        await c.close()
    assert codes == [200, 200, 200, 200]
    assert [s.target for s in h.upstream.seen] == ["/drop", "/public/1", "/drop", "/public/2"]
    assert h.upstream.connections == 3


async def test_a_bodiless_request_is_retried_once_when_the_reused_connection_drops_it() -> None:
    """The upstream takes one request per connection and drops the next unanswered (an idle
    close racing the reuse): a GET is sent again on a new connection, a POST (whose body was
    consumed) gets 502."""
    got: list[tuple[int, bytes]] = []
    conns = 0

    async def one_per_connection(reader, writer) -> None:
        nonlocal conns
        conns += 1
        me = conns
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            got.append((me, head.split(b" ")[1]))
            if b"Content-Length: 4" in head:
                await reader.readexactly(4)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")  # the next one: taken, not answered
            got.append((me, head.split(b" ")[1]))
        writer.close()

    srv = await asyncio.start_server(one_per_connection, "127.0.0.1", 0)
    dst = srv.sockets[0].getsockname()[:2]
    try:
        async with running(None, FAST, original_dst=dst) as h:
            c = await h.client()
            await c.send(get("/a"))
            first = await c.reply()
            await c.send(get("/b"))
            second = await c.reply()
            await c.send(b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
            third = await c.reply()
            await c.close()
    finally:
        srv.close()
    assert [first.code, second.code, third.code] == [200, 200, 502]
    assert got == [(1, b"/a"), (1, b"/b"), (2, b"/b"), (2, b"/c")]


async def test_rules_looked_up_per_request_reach_an_open_connection() -> None:
    current = {"rules": parse_http_rules([{"path": "/public.*"}], "test")}
    async with running(lambda: current["rules"]) as h:
        c = await h.client()
        await c.send(get("/admin"))
        before = (await c.reply()).code
        current["rules"] = parse_http_rules([{"path": "/admin"}], "test")  # a policy update
        await c.send(get("/admin"))
        after = (await c.reply()).code
        await c.close()
    assert (before, after) == (403, 200)
    assert h.proxy.counts == {"denied": 1, "forwarded": 1}


async def test_ambiguous_framing_is_refused_not_forwarded() -> None:
    async with running(None, FAST) as h:
        c = await h.client()
        await c.send(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
        )
        reply = await c.reply()
        assert await c.closed(timeout=3)
        await c.close()
    assert reply.code == 400 and h.upstream.seen == [] and b"smuggled" not in h.upstream.raw


async def test_http10_client_gets_a_chunked_upstream_response_without_chunks() -> None:
    async with running(None) as h:
        r, w = await asyncio.open_connection(*h.addr)
        w.write(b"GET /chunked HTTP/1.0\r\n\r\n")
        raw = await asyncio.wait_for(r.read(-1), 5)  # close-delimited: read to the end
        w.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert body == b"".join(CHUNKS)


async def test_many_clients_at_once_each_get_their_own_answers() -> None:
    async def one(i: int, h) -> list[tuple[int, bytes]]:
        c = await h.client()
        out = []
        for j in range(5):
            path = f"/public/{i}/{j}" if (i + j) % 3 else f"/private/{i}/{j}"
            await c.send(get(path))
            r = await c.reply()
            out.append((r.code, r.body))
        await c.close()
        return out

    async with running(RULES) as h:
        results = await asyncio.gather(*(one(i, h) for i in range(40)))
    for i, out in enumerate(results):
        for j, (code, body) in enumerate(out):
            if (i + j) % 3:
                assert (code, body) == (200, f"hello /public/{i}/{j}".encode())
            else:
                assert (code, body) == (403, DENIED_BODY)
    denied = sum(1 for i in range(40) for j in range(5) if not (i + j) % 3)
    assert h.proxy.counts == {"forwarded": 200 - denied, "denied": denied}
    assert len(http_flows(h.flows, L7FlowType.RESPONSE)) == 200 - denied
    assert h.proxy.active == 0


async def test_trailers_pass_to_an_http11_client() -> None:
    async def with_trailer(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Digest\r\n\r\n"
            b"4\r\nbody\r\n0\r\nX-Digest: abc123\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(with_trailer, "127.0.0.1", 0)
    try:
        async with running(None, FAST, original_dst=srv.sockets[0].getsockname()[:2]) as h:
            r, w = await asyncio.open_connection(*h.addr)
            w.write(get("/t"))
            raw = await asyncio.wait_for(r.readuntil(b"0\r\nX-Digest: abc123\r\n\r\n"), 5)
            w.close()
    finally:
        srv.close()
    assert b"4\r\nbody\r\n" in raw
