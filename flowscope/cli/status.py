"""`flowscope status`: the Observer API's health and the flow pipeline's counters, as
`hubble status` shows them:

  Healthcheck (via 127.0.0.1:4245): Ok
  Current/Max Flows: 1,234/196,605 (0.63%)
  Flows/s: 12.34
  Connected Nodes: 2/3
  Unavailable Nodes: 1
    - node-3

then what hubble does not show: flows seen since start, uptime, and events lost by where they
were lost (kernel ring, observer queues, publisher, spool, agent restarts), all from ServerStatus.
It asks the same server `observe` reads (the cluster's relay, --node NODE's agent, or --server
ADDR with the --tls options); a cluster without a relay is asked node by node, here.
Outputs: compact (above), dict, json, table. Exits non-zero when the server is not healthy.

When a node publishes to Kafka, the health of its publisher follows (from the stats file it
keeps next to its sockets, collector.publisher.read_stats): the broker's state and last error,
batches published, records acknowledged and in the spool, the spool's size, records dropped or
lost, and replays. Only for the local cluster's nodes (not with --server); without Kafka
nothing is added.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from flowscope.errors import FlowscopeError
from flowscope.flow.printer import tabulate

OUTPUTS = ("compact", "dict", "json", "table")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="the Observer API's health and counters (hubble status)")
    p.add_argument("-o", "--output", choices=OUTPUTS, default="compact")
    p.add_argument("--node", help="ask this node's agent directly")
    p.add_argument("--server", metavar="ADDR", help="an Observer API at host:port or unix:PATH")
    p.add_argument("--tls", action="store_true", help="connect to --server with TLS")
    p.add_argument("--tls-ca-cert-files", nargs="+", default=[], metavar="FILE")
    p.add_argument("--tls-client-cert-file", metavar="FILE")
    p.add_argument("--tls-client-key-file", metavar="FILE")
    p.add_argument("--tls-server-name", metavar="NAME")
    p.set_defaults(func=cmd_status)


def grouped(n: int) -> str:
    return f"{n:,}"


def duration(ns: int) -> str:
    """Go's Duration.String() of a whole number of seconds: '1h2m3s', '45s'."""
    seconds = round(ns / 1e9)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def lost_by_source(status) -> list[tuple[str, int]]:
    from flowscope.proto import flow_pb2

    out = []
    for event in status.lost_events:
        try:
            name = flow_pb2.LostEventSource.Name(event.source)
        except ValueError:
            name = str(event.source)
        out.append((name, event.num_events_lost))
    return out


def size(n: int) -> str:
    """Bytes as a person reads them: 512 B, 1.5 KiB, 64.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def publisher_row(stats: Any, now_ns: int) -> dict[str, Any]:
    """One node's publisher health (a collector.publisher.PublisherStats) as named values."""
    return {
        "node": stats.node,
        "broker": stats.broker,
        "last_error": stats.last_error,
        "published": stats.published,
        "acked": stats.acked,
        "spooled": stats.spooled,
        "spool_bytes": stats.spool_bytes,
        "spool_max_bytes": stats.spool_max_bytes,
        "dropped": stats.dropped,
        "retries": stats.retries,
        "lost": stats.lost,
        "age_s": max(0, now_ns - stats.updated_ns) // 10**9,
    }


def _publisher_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["Kafka Publishers:"]
    for r in rows:
        broker = r["broker"] + (f" ({r['last_error']})" if r["last_error"] else "")
        lines.append(
            f"  - {r['node']}: broker {broker}, published {grouped(r['published'])} batches, "
            f"acked {grouped(r['acked'])}, spooled {grouped(r['spooled'])} "
            f"({size(r['spool_bytes'])} of {size(r['spool_max_bytes'])}), "
            f"dropped {grouped(r['dropped'])}, retries {grouped(r['retries'])}, "
            f"lost {grouped(r['lost'])}" + (f", as of {r['age_s']}s ago" if r["age_s"] else "")
        )
    return lines


def flows_per_second(status) -> str:
    seconds = status.uptime_ns / 1e9
    return f"{status.seen_flows / seconds:.2f}" if seconds > 0 else "N/A"


def format_status(
    status,
    output: str,
    via: str,
    health: str = "Ok",
    publishers: Sequence[Any] = (),
    now_ns: int | None = None,
) -> str:
    """The ServerStatusResponse as `hubble status -o OUTPUT` writes it (plus the lost events),
    then the health of the nodes' Kafka publishers (PublisherStats) when there are any."""
    from google.protobuf import json_format

    has_nodes = status.HasField("num_connected_nodes")
    connected = status.num_connected_nodes.value if has_nodes else None
    unavailable = status.num_unavailable_nodes.value if has_nodes else None
    lost = lost_by_source(status)
    now = time.time_ns() if now_ns is None else now_ns
    rows = [publisher_row(p, now) for p in sorted(publishers, key=lambda p: p.node)]
    if output == "json":
        doc = json_format.MessageToDict(status, preserving_proto_field_name=True)
        if rows:
            doc["publishers"] = [{**asdict(p), "lost": p.lost} for p in publishers]
        return json.dumps(doc)
    if output == "table":
        header = ["NUM FLOWS", "MAX FLOWS", "SEEN FLOWS", "FLOWS PER SECOND", "UPTIME"]
        header += ["NUM CONNECTED NODES", "NUM UNAVAILABLE NODES", "LOST EVENTS", "VERSION"]
        row = [grouped(status.num_flows), grouped(status.max_flows), grouped(status.seen_flows)]
        row += [flows_per_second(status), duration(status.uptime_ns)]
        row += ["N/A" if connected is None else str(connected)]
        row += ["N/A" if unavailable is None else str(unavailable)]
        row += [grouped(sum(n for _, n in lost)), status.version or "-"]
        lines = tabulate([header, row])
        if rows:
            header = ["NODE", "BROKER", "PUBLISHED", "ACKED", "SPOOLED", "SPOOL BYTES"]
            header += ["DROPPED", "RETRIES", "LOST", "LAST ERROR"]
            cells = [
                [
                    r["node"],
                    r["broker"],
                    *(grouped(r[k]) for k in ("published", "acked", "spooled")),
                    size(r["spool_bytes"]),
                    *(grouped(r[k]) for k in ("dropped", "retries", "lost")),
                    r["last_error"] or "-",
                ]
                for r in rows
            ]
            lines += ["", *tabulate([header, *cells])]
        return "\n".join(lines)
    if output == "dict":
        lines = [
            f"          NUM FLOWS: {grouped(status.num_flows)}",
            f"          MAX FLOWS: {grouped(status.max_flows)}",
            f"         SEEN FLOWS: {grouped(status.seen_flows)}",
            f"   FLOWS PER SECOND: {flows_per_second(status)}",
            f"             UPTIME: {duration(status.uptime_ns)}",
            f"NUM CONNECTED NODES: {'N/A' if connected is None else connected}",
            f" NUM UNAVAIL. NODES: {'N/A' if unavailable is None else unavailable}",
            f"        LOST EVENTS: {grouped(sum(n for _, n in lost))}",
        ]
        lines += [f"{name:>19}: {grouped(n)}" for name, n in lost]
        lines.append(f"            VERSION: {status.version}")
        for r in rows:
            lines += [
                "",
                f"    KAFKA PUBLISHER: {r['node']}",
                f"             BROKER: {r['broker']}",
                f"         LAST ERROR: {r['last_error'] or '-'}",
                f"  PUBLISHED BATCHES: {grouped(r['published'])}",
                f"              ACKED: {grouped(r['acked'])}",
                f"            SPOOLED: {grouped(r['spooled'])}",
                f"        SPOOL BYTES: {size(r['spool_bytes'])} of {size(r['spool_max_bytes'])}",
                f"            DROPPED: {grouped(r['dropped'])}",
                f"            RETRIES: {grouped(r['retries'])}",
                f"               LOST: {grouped(r['lost'])}",
            ]
        return "\n".join(lines)
    ratio = ""
    if status.max_flows:
        ratio = f" ({status.num_flows / status.max_flows * 100:.2f}%)"
    lines = [
        f"Healthcheck (via {via}): {health}",
        f"Current/Max Flows: {grouped(status.num_flows)}/{grouped(status.max_flows)}{ratio}",
        f"Flows/s: {flows_per_second(status)}",
    ]
    if connected is not None:
        lines.append(f"Connected Nodes: {connected}/{connected + (unavailable or 0)}")
    if unavailable:
        names = sorted(status.unavailable_nodes)
        if unavailable > len(names):
            names.append(f"and {unavailable - len(names)} more...")
        lines.append(f"Unavailable Nodes: {unavailable}")
        lines += [f"  - {name}" for name in names]
    lines.append(f"Seen Flows: {grouped(status.seen_flows)} in {duration(status.uptime_ns)}")
    if lost:
        lines.append(f"Lost Events: {grouped(sum(n for _, n in lost))}")
        lines += [f"  - {name}: {grouped(n)}" for name, n in lost]
    else:
        lines.append("Lost Events: 0")
    if rows:
        lines += _publisher_lines(rows)
    return "\n".join(lines)


async def _check_health(channel) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from collector.observer import SERVICE_NAME

    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return f"Unavailable: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
    return "Ok"


async def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from collector.relay import cluster_peers, status_of
    from flowscope import clusterinfo
    from flowscope.cli.observe import _rpc_error, client_tls, open_channel, server_of
    from flowscope.proto import observer_pb2, observer_pb2_grpc

    args.follow = False
    tls = client_tls(args, args.server, "--server")
    address, what = server_of(args)
    if address is None:  # no relay: ask every node here, as the relay would
        status = await status_of(cluster_peers(clusterinfo.load(args.cluster)))
        health = "Ok" if status.num_connected_nodes.value else "Unavailable: no node answers"
        via = "the node sockets"
    else:
        via = address
        try:
            async with open_channel(address, tls) as channel:
                health = await _check_health(channel)
                status = None
                if health == "Ok":
                    stub = observer_pb2_grpc.ObserverStub(channel)
                    status = await stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, what) from None
    publishers = [] if args.server else local_publishers(args.cluster, args.node)
    if health != "Ok" or status is None:
        print(f"Healthcheck (via {via}): {health}")
        raise FlowscopeError(
            f"{what} is not healthy", hint="`flowscope lab status` shows the agents and the relay"
        )
    sys.stdout.write(format_status(status, args.output, via, health, publishers) + "\n")
    return 0


def local_publishers(cluster: str, node: str | None = None) -> list:
    """What the Kafka publishers of the cluster's nodes (or of `node`) last reported; none
    when no node publishes."""
    from collector.publisher import read_stats, stats_path
    from flowscope import clusterinfo

    info = clusterinfo.load(cluster)
    names = [n.name for n in info.nodes if node is None or n.name == node]
    found = (read_stats(stats_path(info.paths, name)) for name in names)
    return [stats for stats in found if stats is not None]


__all__ = ["OUTPUTS", "cmd_status", "format_status", "local_publishers", "register"]
