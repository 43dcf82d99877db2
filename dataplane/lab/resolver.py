"""The outside world's DNS server: the names of the lab's outside hosts, nothing else.

Started by `lab up` in the world host's namespace (`python -m dataplane.lab.resolver --netns PATH
--name api.example.com=10.224.0.253 ...`); the cluster DNS forwards every name outside the
cluster domain here, as CoreDNS forwards to the VNET's resolver on AKS. A name it holds gets its
A record (TTL --ttl); a name under one of its zones that it does not hold gets NXDOMAIN; any
other name REFUSED (it is nobody's recursive resolver).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from dataplane.lab.enter import enter


def answer(wire: bytes, names: Mapping[str, str], ttl: int) -> bytes | None:
    """The reply to one query; None for what is not a query."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    if query.flags & dns.flags.QR or len(query.question) != 1:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    question = query.question[0]
    name = question.name.to_text().lower()
    zones = {n.split(".", 1)[1] for n in names}
    if name in names:
        if question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", names[name]))
    elif any(name == z or name.endswith("." + z) for z in zones):
        response.set_rcode(dns.rcode.NXDOMAIN)
    else:
        response.set_rcode(dns.rcode.REFUSED)
    return response.to_wire()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, names: Mapping[str, str], ttl: int) -> None:
        self.names, self.ttl = names, ttl

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        reply = answer(data, self.names, self.ttl)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def serve(names: Mapping[str, str], ttl: int, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
            reply = answer(await asyncio.wait_for(reader.readexactly(length), 10), names, ttl)
            if reply is not None:
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    udp, _ = await loop.create_datagram_endpoint(
        lambda: _Datagrams(names, ttl), local_addr=("0.0.0.0", port), family=socket.AF_INET
    )
    tcp = await asyncio.start_server(stream, "0.0.0.0", port, reuse_address=True)
    print(f"ready resolver :{port} names={sorted(names)}", flush=True)
    await stop.wait()
    udp.close()
    tcp.close()


def _pair(text: str) -> tuple[str, str]:
    name, sep, ip = text.partition("=")
    if not sep or not name or not ip:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=IP")
    return (name.lower().rstrip(".") + ".", ip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", help="serve inside this network namespace (a path)")
    parser.add_argument("--name", type=_pair, action="append", default=[], metavar="NAME=IP")
    parser.add_argument("--ttl", type=int, default=30)
    parser.add_argument("--port", type=int, default=53)
    args = parser.parse_args(argv)
    if args.netns:
        enter(args.netns, None)
    asyncio.run(serve(dict(args.name), args.ttl, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
