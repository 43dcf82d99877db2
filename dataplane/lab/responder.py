"""A pod's built-in server, in the spirit of agnhost's netexec: one per pod, stdlib only.

Started by the pod runtime as `python -m dataplane.lab.responder --netns PATH --cgroup DIR
--name POD --tcp 80 --udp 53 ...`. It first joins the pod's cgroup and network namespace, so
every socket it opens belongs to the pod, then serves:
- TCP ports: HTTP/1.x. `GET /hostname` (and `/`) answers the pod name, `GET /clientip` the peer's
  ip:port, `GET /echo?msg=X` X. Connections are closed after one answer.
- UDP ports: a datagram `hostname` answers the pod name, `clientip` the peer, `echo X` X;
  anything else the pod name.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from urllib.parse import parse_qs, urlsplit

from dataplane.lab.enter import enter


def answer(name: str, command: str, peer: tuple) -> str:
    """The reply to one request; `command` is a path (TCP) or a datagram (UDP)."""
    if command.startswith("/"):
        parts = urlsplit(command)
        command = parts.path.strip("/")
        if command == "echo":
            return parse_qs(parts.query).get("msg", [""])[0]
    if command == "clientip":
        return f"{peer[0]}:{peer[1]}"
    if command.startswith("echo "):
        return command[5:]
    return name


async def serve_tcp_client(
    name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = writer.get_extra_info("peername")
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=10)
        parts = line.decode("latin-1").split()
        path = parts[1] if len(parts) >= 2 else "/"
        # drain headers, bounded
        for _ in range(100):
            header = await asyncio.wait_for(reader.readline(), timeout=10)
            if header in (b"\r\n", b"\n", b""):
                break
        body = answer(name, path, peer).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


class UDPResponder(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        reply = answer(self.name, data.decode("utf-8", "replace").strip(), addr)
        assert self.transport is not None
        self.transport.sendto(reply.encode(), addr)


async def serve(name: str, tcp: list[int], udp: list[int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    for port in tcp:
        servers.append(
            await asyncio.start_server(
                lambda r, w: serve_tcp_client(name, r, w), "0.0.0.0", port, reuse_address=True
            )
        )
    transports = []
    for port in udp:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UDPResponder(name), local_addr=("0.0.0.0", port), family=socket.AF_INET
        )
        transports.append(transport)
    print(f"ready tcp={tcp} udp={udp}", flush=True)
    await stop.wait()
    for s in servers:
        s.close()
    for t in transports:
        t.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--netns")
    parser.add_argument("--cgroup")
    parser.add_argument("--resolv-conf", help="the pod's file, shown as /etc/resolv.conf")
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    args = parser.parse_args(argv)
    enter(args.netns, args.cgroup, args.resolv_conf)
    asyncio.run(serve(args.name, args.tcp, args.udp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
