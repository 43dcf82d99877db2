"""The cluster DNS server: UDP and TCP port 53, answering from mirrors of the store.

Started by the pod runtime for a DNS pod (`python -m dataplane.dns.server --etcd URL --netns PATH
--cgroup DIR ...`). It joins the pod's cgroup, reaches the store from the host's namespace (its
etcd connection never depends on pod networking) and opens its port-53 sockets, and the sockets
of forwarded queries, inside the pod's namespace: clients reach it as a pod, through the pod's
policy, the way they reach CoreDNS. It prints `ready` once it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import struct
import sys
from collections.abc import Sequence

from dataplane.dns import message
from dataplane.dns.forward import SocketFactory, Upstream, forward, plain_socket
from dataplane.dns.records import DOMAIN, ClusterRecords, cluster_records, resolve
from flowscope.apis import kinds
from flowscope.errors import UsageError
from flowscope.setns import socket_in_netns
from flowscope.store.kv import KV
from flowscope.store.mirror import PrefixMirror, json_value
from flowscope.supervise import on_change, run_together

log = logging.getLogger(__name__)
TCP_IDLE = 10.0  # seconds a TCP client may stay silent, as CoreDNS's read timeout
MAX_FORWARDS = 256  # UDP queries being forwarded at once; more get SERVFAIL at once


class ClusterDNS:
    """Answers DNS messages: cluster names from the records, others through the upstreams."""

    def __init__(
        self,
        kv: KV,
        *,
        domain: str = DOMAIN,
        dns_ip: str | None = None,
        upstreams: Sequence[Upstream] = (),
        new_socket: SocketFactory = plain_socket,
    ) -> None:
        self.domain = domain
        self.dns_ip = dns_ip
        self.upstreams = tuple(upstreams)
        self.new_socket = new_socket
        self._changed = asyncio.Event()
        self.mirrors = {
            kind: PrefixMirror(kv, kinds.get(kind).prefix(), json_value, self._changed.set)
            for kind in ("Service", "EndpointSlice", "Namespace")
        }
        self.records = ClusterRecords(domain=domain, dns_ip=dns_ip)
        self._tasks: set[asyncio.Task] = set()

    async def load(self) -> None:
        for mirror in self.mirrors.values():
            await mirror.load()
        await self.rebuild()

    async def rebuild(self) -> None:
        m = self.mirrors
        self.records = cluster_records(
            m["Service"].items.values(),
            m["EndpointSlice"].items.values(),
            (ns.get("metadata", {}).get("name", "") for ns in m["Namespace"].items.values()),
            domain=self.domain,
            dns_ip=self.dns_ip,
            serial=max(mirror.revision for mirror in m.values()),
        )

    async def run(self) -> None:
        parts = {f"mirror {kind}": mirror.run() for kind, mirror in self.mirrors.items()}
        parts["records"] = on_change(self._changed, self.rebuild)
        await run_together(parts, "cluster DNS")

    # -- answering -----------------------------------------------------------------------------
    def answer_now(self, query: message.Query, tcp: bool) -> bytes | None:
        """The reply if it needs no upstream; None if the query must be forwarded."""
        qname, qtype = query.question.name, query.question.rdtype
        if not message.is_in_class(query):
            return message.refused(query)
        answer = resolve(self.records, qname, qtype)
        if answer is not None:
            return message.reply(query, answer, tcp)
        return None if self.upstreams else message.refused(query)

    async def answer(self, wire: bytes, tcp: bool) -> bytes | None:
        """The reply to one message (None: drop it). Never raises."""
        query = message.parse(wire)
        if not isinstance(query, message.Query):
            return query
        try:
            now = self.answer_now(query, tcp)
            if now is not None:
                return now
            reply = await forward(wire, self.upstreams, tcp=tcp, new_socket=self.new_socket)
            if reply is None or not message.matches(query, reply):
                return message.servfail(query)
            return reply
        except Exception:  # one bad query must not take the server down
            log.exception("answering %s", query.question)
            return message.servfail(query)

    # -- transports ----------------------------------------------------------------------------
    def datagram(self, transport: asyncio.DatagramTransport, data: bytes, addr) -> None:
        query = message.parse(data)
        if isinstance(query, message.Query):
            try:
                now = self.answer_now(query, tcp=False)
            except Exception:
                log.exception("answering %s", query.question)
                now = message.servfail(query)
            if now is not None:  # the common case answers without a task
                transport.sendto(now, addr)
                return
        elif query is not None:
            transport.sendto(query, addr)
            return
        else:
            return
        if len(self._tasks) >= MAX_FORWARDS:  # overloaded: fail fast rather than pile up
            transport.sendto(message.servfail(query), addr)
            return
        task = asyncio.create_task(self._forward_datagram(transport, data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_datagram(self, transport, data: bytes, addr) -> None:
        reply = await self.answer(data, tcp=False)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP client: length-prefixed messages until it closes or idles."""
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                reply = await self.answer(data, tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, server: ClusterDNS) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        assert self.transport is not None
        self.server.datagram(self.transport, data, addr)


def netns_socket_factory(netns: str | None) -> SocketFactory:
    """Sockets made inside `netns` (a path), the pod's, while the process stays in the host's."""
    if netns is None:
        return plain_socket

    def new_socket(family: int, kind: int) -> socket.socket:
        return socket_in_netns(netns, family, kind)

    return new_socket


async def listen(
    server: ClusterDNS, new_socket: SocketFactory, host: str, port: int
) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
    """Bind UDP and TCP `host:port` with sockets from `new_socket`; (udp transport, tcp server)."""
    loop = asyncio.get_running_loop()
    udp = new_socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = new_socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for sock in (udp, tcp):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        tcp.listen(128)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(server), sock=udp)
        tcp_server = await asyncio.start_server(server.stream, sock=tcp)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return transport, tcp_server


async def serve(args: argparse.Namespace) -> None:
    from flowscope.store.etcd import EtcdKV

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    new_socket = netns_socket_factory(args.netns)
    kv = EtcdKV(args.etcd)
    try:
        server = ClusterDNS(
            kv,
            domain=args.domain,
            dns_ip=args.dns_ip,
            upstreams=args.upstream,
            new_socket=new_socket,
        )
        await server.load()
        transport, tcp_server = await listen(server, new_socket, args.bind, args.port)
        print(f"ready dns {args.bind}:{args.port} upstreams={list(map(str, args.upstream))}")
        sys.stdout.flush()
        running = asyncio.create_task(server.run())
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (running, stopping):
            task.cancel()
        transport.close()
        tcp_server.close()
        if running in done and not running.cancelled():
            running.result()  # a part that died: exit non-zero, the runtime restarts the pod
    finally:
        with contextlib.suppress(Exception):
            await kv.close()


def _upstream(text: str) -> Upstream:
    try:
        return Upstream.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd", required=True, help="the store's client URL")
    parser.add_argument("--netns", help="open the listening sockets in this network namespace")
    parser.add_argument("--cgroup", help="join this cgroup first (the pod's)")
    parser.add_argument("--domain", default=DOMAIN)
    parser.add_argument("--dns-ip", help="the DNS service's address (for ns.dns.DOMAIN)")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument(
        "--upstream",
        type=_upstream,
        action="append",
        default=[],
        help="IP[:PORT] to forward other names to (repeatable); none: REFUSED",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cgroup:
        from dataplane.lab.enter import enter

        enter(None, args.cgroup)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
