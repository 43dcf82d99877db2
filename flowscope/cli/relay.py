"""`flowscope relay`: the cluster's Observer API on TCP, merging every node (like hubble-relay).

The lab runs one per cluster (`lab up`); run it yourself to serve elsewhere or with TLS:

  flowscope relay --listen-address 0.0.0.0:4245 \\
      --tls-server-cert-file relay.crt --tls-server-key-file relay.key \\
      --tls-client-ca-files clients-ca.crt      # mTLS: clients need a certificate it signed
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from flowscope import clusterinfo
from flowscope.errors import FlowscopeError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    from collector.relay import DEFAULT_ADDRESS

    p = sub.add_parser("relay", help="serve the cluster's merged Observer API (hubble-relay)")
    p.add_argument(
        "--listen-address",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help="where to listen (default %(default)s)",
    )
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=ADDRESS",
        help="a node's Observer (unix:/path or host:port); repeat; default: the cluster's nodes",
    )
    p.add_argument("--tls-server-cert-file", metavar="FILE", help="serve TLS with this cert")
    p.add_argument("--tls-server-key-file", metavar="FILE", help="the certificate's key")
    p.add_argument(
        "--tls-client-ca-files",
        nargs="+",
        default=[],
        metavar="FILE",
        help="require client certificates signed by these CAs (mTLS)",
    )
    p.set_defaults(func=run)


def parse_peers(values: list[str]):
    from collector.relay import Peer

    peers = []
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or not name or not address:
            raise UsageError(f"--peer {value!r}: write NAME=ADDRESS (unix:/path or host:port)")
        peers.append(Peer(name, address))
    return peers


async def run(args: argparse.Namespace) -> int:
    from collector.relay import RelayServer, cluster_peers
    from collector.tlsconfig import server_tls

    tls = server_tls(args.tls_server_cert_file, args.tls_server_key_file, args.tls_client_ca_files)
    fixed = parse_peers(args.peer)
    if fixed:
        peers = lambda: fixed  # noqa: E731
    else:
        clusterinfo.load(args.cluster)  # the cluster must be up

        def peers():
            # re-read each time: `lab up` may add nodes
            return cluster_peers(clusterinfo.load(args.cluster))

    server = RelayServer(peers, args.listen_address, tls)
    try:
        await server.start()
    except OSError as exc:
        raise FlowscopeError(
            str(exc), hint="choose another --listen-address, or stop what listens there"
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close(grace=1.0)
    return 0
