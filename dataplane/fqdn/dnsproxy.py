"""The node's DNS proxy: every DNS query of the node's pods passes through it.

It listens (UDP and TCP) on the cluster DNS service address inside the node's namespace, where
the agent makes that address local and the socket LB leaves it untranslated, as NodeLocal
DNSCache does with its dummy interface: a pod's query to kube-dns reaches the proxy, and the
reply comes from the address the pod asked. The proxy

1. sees the query (an l7 dns-request flow) and checks it against the DNS rules of the pod's
   CiliumNetworkPolicies: a name no rule allows is answered REFUSED, never forwarded (a DROPPED
   flow);
2. forwards it to a kube-dns backend, from the client pod's namespace (a socket the proxy opens
   there: the query leaves as the pod's own, under its policy, from its address);
3. hands the answer to `learn` before the pod gets it: the names become addresses in the DNS
   cache and, when a toFQDNs selector wants them, in the pod's policy; `learn` returns once the
   datapath allows them (bounded), so the pod's first connect to the answer is not dropped;
4. sees the response (an l7 dns-response flow with its latency) and sends it to the pod.

Bounded everywhere: queries in flight (`max_inflight`, beyond it SERVFAIL at once), TCP clients'
idle time, one upstream timeout per query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dataplane.dns import message
from dataplane.dns.forward import SocketFactory, Upstream, forward
from dataplane.fqdn.answer import query_record, response_summary
from dataplane.fqdn.selector import FQDNSelector, any_matches
from flowscope.flow.dropreason import DropReason
from flowscope.flow.model import (
    DNS,
    IP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    L7FlowType,
    Layer7,
    MessageType,
    Service,
    TrafficDirection,
    Verdict,
)
from flowscope.flow.timestamp import now_ns

log = logging.getLogger(__name__)

MAX_INFLIGHT = 256
TCP_IDLE = 10.0
UPSTREAM_TIMEOUT = 2.0


class UDPSockets:
    """Idle UDP sockets for forwarded queries, per client, each made once in the client pod's
    namespace: making one there costs a thread and a setns(2), most of a proxied lookup's time
    otherwise. A socket serves one query at a time and is retired after `uses` queries, so the
    proxy's source ports keep changing."""

    def __init__(self, factory_for: Callable[[str], SocketFactory], keep: int = 4, uses: int = 64):
        self.factory_for = factory_for
        self.keep = keep
        self.uses = uses
        self._idle: dict[str, list[tuple[socket.socket, int]]] = {}

    async def take(self, client: str) -> tuple[socket.socket, int]:
        idle = self._idle.get(client)
        if idle:
            return idle.pop()
        sock = await asyncio.to_thread(self.factory_for(client), socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock, 0

    def give(self, client: str, sock: socket.socket, used: int, healthy: bool) -> None:
        idle = self._idle.setdefault(client, [])
        if healthy and used < self.uses and len(idle) < self.keep:
            idle.append((sock, used))
        else:
            sock.close()

    def clients(self) -> list[str]:
        return list(self._idle)

    def forget(self, client: str) -> None:
        for sock, _ in self._idle.pop(client, []):
            sock.close()

    def close(self) -> None:
        for client in list(self._idle):
            self.forget(client)


async def _udp_exchange(
    sock: socket.socket, wire: bytes, upstream: Upstream, timeout: float
) -> bytes:
    """The upstream's reply to `wire` on an unconnected socket: only from that upstream, only
    with the query's ID (anything else arriving is dropped)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, wire, (upstream.host, upstream.port))
    deadline = loop.time() + timeout
    while True:
        data, addr = await asyncio.wait_for(
            loop.sock_recvfrom(sock, 65535), max(0.0, deadline - loop.time())
        )
        if addr == (upstream.host, upstream.port) and data[:2] == wire[:2]:
            return data


@dataclass(frozen=True)
class Exchange:
    """One query of one client: who asked what, over which transport."""

    client_ip: str
    client_port: int
    tcp: bool


class DNSProxy:
    def __init__(
        self,
        *,
        address: str,
        upstreams: Callable[[], Sequence[Upstream]],
        allowed: Callable[[str], tuple[FQDNSelector, ...] | None],
        learn: Callable[[DNS], Awaitable[None]],
        emit: Callable[[Flow], None],
        describe: Callable[[str], Endpoint | None],
        new_socket: SocketFactory,
        upstream_socket: Callable[[str], SocketFactory] | None = None,
        port: int = 53,
        node_name: str = "",
        service: Service | None = None,
        max_inflight: int = MAX_INFLIGHT,
        timeout: float = UPSTREAM_TIMEOUT,
    ) -> None:
        self.address = address
        self.port = port
        self.upstreams = upstreams
        self.allowed = allowed
        self.learn = learn
        self.emit = emit
        self.describe = describe
        self.new_socket = new_socket  # the listening sockets'
        # the forwarded query's socket, by client address: the agent opens it in the client
        # pod's namespace, so the query travels as the pod's own (its policy, its address)
        self.upstream_socket = upstream_socket or (lambda _ip: new_socket)
        self.udp_sockets = UDPSockets(self.upstream_socket)
        self.node_name = node_name
        self.service = service
        self.max_inflight = max_inflight
        self.timeout = timeout
        self._tasks: set[asyncio.Task] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.stats = {"queries": 0, "refused": 0, "servfail": 0, "malformed": 0, "overload": 0}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        udp = await asyncio.to_thread(self.new_socket, socket.AF_INET, socket.SOCK_DGRAM)
        tcp = await asyncio.to_thread(self.new_socket, socket.AF_INET, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.address, self.port))
                sock.setblocking(False)
            tcp.listen(128)
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=udp)
            self._tcp = await asyncio.start_server(self._stream, sock=tcp)
        except BaseException:
            udp.close()
            tcp.close()
            raise

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        self.udp_sockets.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one query ------------------------------------------------------------------------------
    async def answer(self, wire: bytes, who: Exchange) -> bytes | None:
        """The reply for the client (None: say nothing, e.g. for garbage without a header)."""
        self.stats["queries"] += 1
        parsed = message.parse(wire)
        if not isinstance(parsed, message.Query):
            self.stats["malformed"] += 1
            return parsed  # the reply it gets (FORMERR, NOTIMP, ...), or None
        query = query_record(parsed.message)
        started = time.monotonic_ns()
        allowed = self.allowed(who.client_ip)
        if allowed is not None and not any_matches(allowed, query.query):
            self.stats["refused"] += 1
            self.emit(self._flow(who, self.address, query, L7FlowType.REQUEST, denied=True))
            return message.refused(parsed)
        upstreams = list(self.upstreams())
        server = upstreams[0].host if upstreams else self.address
        self.emit(self._flow(who, server, query, L7FlowType.REQUEST))
        if who.tcp:
            reply = await forward(
                wire,
                upstreams,
                tcp=True,
                new_socket=self.upstream_socket(who.client_ip),
                timeout=self.timeout,
            )
        else:
            reply = await self._forward_udp(wire, upstreams, who.client_ip)
        summary = response_summary(reply) if reply is not None else None
        if reply is None or summary is None or not message.matches(parsed, reply):
            self.stats["servfail"] += 1
            return message.servfail(parsed)
        try:
            await self.learn(summary)  # before the pod can use the answer
        except Exception:  # policy could not follow: the pod still gets its answer
            log.exception("learning the answer for %s", summary.query)
        latency = time.monotonic_ns() - started
        self.emit(self._flow(who, server, summary, L7FlowType.RESPONSE, latency_ns=latency))
        return reply

    async def _forward_udp(
        self, wire: bytes, upstreams: Sequence[Upstream], client: str
    ) -> bytes | None:
        """The first upstream's reply, each tried in turn, on a pooled socket of the client's."""
        for upstream in upstreams:
            sock, used = await self.udp_sockets.take(client)
            healthy = False
            try:
                reply = await _udp_exchange(sock, wire, upstream, self.timeout)
                healthy = True
                return reply
            except (OSError, TimeoutError):
                continue
            finally:
                self.udp_sockets.give(client, sock, used + 1, healthy)
        return None

    def _flow(
        self,
        who: Exchange,
        server: str,
        record: DNS,
        kind: L7FlowType,
        *,
        latency_ns: int = 0,
        denied: bool = False,
    ) -> Flow:
        reply = kind == L7FlowType.RESPONSE
        client, peer = (who.client_ip, who.client_port), (server, self.port)
        src, dst = (peer, client) if reply else (client, peer)
        l4 = TCP(src[1], dst[1]) if who.tcp else UDP(src[1], dst[1])
        return Flow(
            time_ns=now_ns(),
            verdict=Verdict.DROPPED if denied else Verdict.FORWARDED,
            drop_reason=int(DropReason.POLICY_DENIED) if denied else 0,
            ip=IP(src[0], dst[0]),
            l4=l4,
            l7=Layer7(kind, latency_ns, dns=record),
            source=self.describe(src[0]),
            destination=self.describe(dst[0]),
            type=FlowType.L7,
            node_name=self.node_name,
            event_type=EventType(MessageType.ACCESS_LOG),
            source_service=self.service if reply else None,
            destination_service=None if reply else self.service,
            traffic_direction=TrafficDirection.EGRESS,
            is_reply=reply,
        )

    # -- transports -----------------------------------------------------------------------------
    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(self._tasks) >= self.max_inflight:  # overloaded: fail fast, never pile up
            self.stats["overload"] += 1
            self._send(_servfail(data), addr)
            return
        task = asyncio.create_task(self._datagram(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = await self.answer(data, Exchange(addr[0], addr[1], tcp=False))
        except Exception:  # one bad query must not take the proxy down
            log.exception("DNS query from %s", addr[0])
            reply = _servfail(data)
        self._send(reply, addr)

    def _send(self, reply: bytes | None, addr: tuple[str, int]) -> None:
        if reply is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(reply, addr)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        who = Exchange(peer[0], peer[1], tcp=True)
        try:
            while True:
                (length,) = struct.unpack(
                    "!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                )
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                reply = await self.answer(data, who)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("DNS over TCP from %s", peer[0])
        finally:
            writer.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, proxy: DNSProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.proxy.datagram(data, addr)


def _servfail(wire: bytes) -> bytes | None:
    """SERVFAIL for a query the proxy cannot serve (what does not parse gets its own reply)."""
    parsed = message.parse(wire)
    return message.servfail(parsed) if isinstance(parsed, message.Query) else parsed
