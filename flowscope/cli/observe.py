"""`flowscope observe`: the cluster's flows through the Observer API, as `hubble observe`.

Where it reads (first that applies):
- `--server ADDR`: an Observer API at host:port (or unix:/path), with TLS when --tls or any
  --tls-* option is given (--tls-ca-cert-files, --tls-client-cert-file/--tls-client-key-file for
  mTLS, --tls-server-name);
- `--node NODE`: that node's agent, on its Unix socket (only that node's flows);
- the cluster's relay (its address is in cluster.json; `lab up` starts it), which merges all
  nodes in time order; a cluster without one is merged here, the relay's way, in process.

The request is hubble's: filter flags (flowscope.cli.observeflags; filtering runs on the
server), --last N (default 20 without --follow, --since or --until), --first N, --all,
--follow, --since/--until (a duration such as 5m, or RFC 3339). Outputs: compact, dict, json,
jsonpb, table (flowscope.flow.printer). Nodes the relay cannot reach are reported on stderr; when
none can be read at all, the command fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import AsyncIterator

from flowscope import clusterinfo
from flowscope.cli.nodes import selected_nodes
from flowscope.cli.observeflags import add_filter_flags, build_filters
from flowscope.cli.observekafka import add_kafka_flags, observe_kafka, wants_kafka
from flowscope.errors import FlowscopeError, UsageError
from flowscope.flow.printer import OUTPUTS

DEFAULT_LAST = 20  # hubble's FlowPrintCount
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "observe",
        help="print the flows the nodes see (like `hubble observe`)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sel = p.add_argument_group("selection")
    sel.add_argument(
        "--last", type=int, metavar="N", help=f"the newest N flows (default {DEFAULT_LAST})"
    )
    sel.add_argument("--first", type=int, metavar="N", help="the oldest N flows held")
    sel.add_argument("--all", action="store_true", help="every flow held")
    sel.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    sel.add_argument("--since", metavar="TIME", help="flows since: 5m, 1h30m, or RFC 3339")
    sel.add_argument("--until", metavar="TIME", help="flows until: 5m (ago), or RFC 3339")
    add_filter_flags(p.add_argument_group("filters"))
    fmt = p.add_argument_group("output")
    fmt.add_argument("-o", "--output", choices=OUTPUTS, default="compact")
    fmt.add_argument("--print-node-name", action="store_true", help="show each flow's node")
    fmt.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour compact and dict output (auto: on a terminal)",
    )
    srv = p.add_argument_group("server")
    srv.add_argument("--node", help="read this node's agent directly (only its flows)")
    srv.add_argument("--server", metavar="ADDR", help="an Observer API at host:port or unix:PATH")
    srv.add_argument("--tls", action="store_true", help="connect to --server with TLS")
    srv.add_argument("--tls-ca-cert-files", nargs="+", default=[], metavar="FILE")
    srv.add_argument("--tls-client-cert-file", metavar="FILE", help="for mTLS")
    srv.add_argument("--tls-client-key-file", metavar="FILE", help="for mTLS")
    srv.add_argument("--tls-server-name", metavar="NAME", help="name in the server's cert")
    add_kafka_flags(p.add_argument_group("kafka"))
    p.set_defaults(func=cmd_observe)


# --- the request ----------------------------------------------------------------------------------


def parse_duration_ns(text: str) -> int:
    """Go's time.ParseDuration for non-negative durations ("5m", "1h30m", "1.5s"); ValueError."""
    body = text.strip()
    if body in ("0", ""):
        if body == "0":
            return 0
        raise ValueError("empty duration")
    total, pos = 0, 0
    for m in _DURATION_PART.finditer(body):
        if m.start() != pos:
            break
        total += int(float(m.group(1)) * _UNIT_NS[m.group(2)])
        pos = m.end()
    if pos != len(body):
        raise ValueError(f"{text!r} is not a duration (e.g. 5m, 1h30m, 90s)")
    return total


def parse_time_ns(text: str, flag: str, now_ns: int) -> int:
    """--since/--until: a duration before now, or an RFC 3339 time; UsageError naming `flag`."""
    from flowscope.flow.timestamp import parse_rfc3339

    try:
        return now_ns - parse_duration_ns(text)
    except ValueError:
        pass
    try:
        return parse_rfc3339(text.strip())
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: not a duration (5m, 1h30m) or RFC 3339 time (2026-11-28T21:52:51Z)"
        ) from None


def build_request(args: argparse.Namespace, now_ns: int | None = None):
    """The GetFlowsRequest the flags ask for; UsageError naming a bad flag."""
    from flowscope.proto import observer_pb2

    now = time.time_ns() if now_ns is None else now_ns
    for flag in ("last", "first"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise UsageError(f"--{flag} {value}: give a count of 0 or more")
    first = bool(args.first)
    if first and args.last:
        raise UsageError("--first and --last: give one of them")
    if first and args.follow:
        raise UsageError("--first: not with --follow (the oldest flows are not a live stream)")
    if args.all and (first or args.last):
        raise UsageError("--all: not with --first or --last")
    if args.output == "table" and args.follow:
        raise UsageError("-o table: not with --follow (a table is written when it is complete)")
    whitelist, blacklist = build_filters(args.filter_ops or [])
    req = observer_pb2.GetFlowsRequest(
        follow=args.follow, first=first, whitelist=whitelist, blacklist=blacklist
    )
    if args.since:
        req.since.FromNanoseconds(parse_time_ns(args.since, "--since", now))
    if args.until and not args.follow:
        req.until.FromNanoseconds(parse_time_ns(args.until, "--until", now))
    if (
        args.since
        and req.HasField("until")
        and req.until.ToNanoseconds() < req.since.ToNanoseconds()
    ):
        raise UsageError("--until: before --since")
    if first:
        req.number = args.first
    elif args.last:
        req.number = args.last
    elif not (args.all or args.follow or args.since or args.until):
        req.number = DEFAULT_LAST
    return req


# --- where to read --------------------------------------------------------------------------------


def client_tls(args: argparse.Namespace, address: str | None, flag: str):
    """The ClientTLS hubble's --tls flags ask for (None: plain text); they need `address`, the
    server given with `flag`."""
    from collector.tlsconfig import ClientTLS

    wanted = (
        args.tls
        or args.tls_ca_cert_files
        or args.tls_client_cert_file
        or args.tls_client_key_file
        or args.tls_server_name
    )
    if not wanted:
        return None
    if not address:
        raise UsageError(f"--tls options go with {flag} ADDR (the lab's relay is plain text)")
    return ClientTLS(
        tuple(args.tls_ca_cert_files),
        args.tls_client_cert_file,
        args.tls_client_key_file,
        args.tls_server_name,
    )


def open_channel(address: str, tls=None):
    """A gRPC channel to an Observer API (plain, or TLS with `tls`: a ClientTLS)."""
    import grpc

    if tls is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, tls.credentials(), options=tls.channel_options())


def server_of(args: argparse.Namespace) -> tuple[str | None, str]:
    """(address to dial or None for in-process merging, how to name it in errors)."""
    from collector.relay import recorded_address

    if args.server:
        return args.server, f"the Observer at {args.server}"
    info = clusterinfo.load(args.cluster)
    if args.node:
        from collector.observer import observer_socket

        (node,) = selected_nodes(info, args.node)
        return f"unix:{observer_socket(info.paths, node)}", f"node {node}'s agent"
    address = recorded_address(info)
    if address:
        return address, f"the relay of cluster {info.name!r} at {address}"
    return None, f"the nodes of cluster {info.name!r}"


async def _grpc_stream(address: str, tls, request) -> AsyncIterator:
    from flowscope.proto import observer_pb2_grpc

    async with open_channel(address, tls) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        async for resp in stub.GetFlows(request):
            yield resp


async def _local_stream(args: argparse.Namespace, request) -> AsyncIterator:
    from collector.relay import InvalidRequest, cluster_peers, fan_out_flows

    info = clusterinfo.load(args.cluster)
    try:
        async for resp in fan_out_flows(cluster_peers(info), request):
            yield resp
    except InvalidRequest as exc:
        raise UsageError(f"the nodes refused the request: {exc}") from None


# --- the command ----------------------------------------------------------------------------------


def use_color(choice: str, stream=None) -> bool:
    stream = stream or sys.stdout
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


async def cmd_observe(args: argparse.Namespace) -> int:
    import grpc

    from flowscope.flow.compact import COLOR, PLAIN
    from flowscope.flow.printer import Printer

    if wants_kafka(args):
        return await observe_kafka(args)
    request = build_request(args)
    tls = client_tls(args, args.server, "--server")
    address, what = server_of(args)
    printer = Printer(
        args.output,
        node_name=args.print_node_name,
        palette=COLOR if use_color(args.color) else PLAIN,
        debug=bool(getattr(args, "verbose", False)),
    )
    stream = _grpc_stream(address, tls, request) if address else _local_stream(args, request)
    try:
        seen = await print_stream(stream, printer, args.follow)
    except grpc.aio.AioRpcError as exc:
        raise _rpc_error(exc, what) from None
    finally:
        printer.close()
    if seen.nodes_named and not seen.connected:
        raise FlowscopeError(
            f"no node's Observer could be read ({', '.join(sorted(seen.unavailable))})",
            hint="`flowscope lab status` shows whether the agents run",
        )
    return 0


class StreamSeen:
    """What the stream said about the nodes (from the relay's node status events)."""

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.unavailable: set[str] = set()

    @property
    def nodes_named(self) -> bool:
        return bool(self.connected or self.unavailable)


async def print_stream(stream: AsyncIterator, printer, follow: bool) -> StreamSeen:
    """Print every response; returns what the stream said about the nodes."""
    from flowscope.proto import observer_pb2

    seen = StreamSeen()
    async for resp in stream:
        if resp.WhichOneof("response_types") == "node_status":
            names = set(resp.node_status.node_names)
            if resp.node_status.state_change == observer_pb2.NODE_CONNECTED:
                seen.connected |= names
                seen.unavailable -= names
            elif resp.node_status.state_change == observer_pb2.NODE_UNAVAILABLE:
                seen.unavailable |= names
                seen.connected -= names
        printer.write(resp)
        if follow:
            printer.flush()
    return seen


def _rpc_error(exc, what: str) -> FlowscopeError:
    import grpc

    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return UsageError(f"{what} refused the request: {exc.details()}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return FlowscopeError(
            f"cannot reach {what}: {exc.details()}",
            hint="is it running? `flowscope lab up` restarts a lab's agents and relay;"
            " with TLS check --tls-* (a server wanting client certificates refuses one without)",
        )
    return FlowscopeError(f"{what}: {code.name}: {exc.details()}")


# what H3's `observe --kafka` may reuse: the request the flags ask for and the printer
__all__ = ["build_request", "cmd_observe", "open_channel", "print_stream", "register"]
