"""`flowscope tui`: the cluster's flows live in the terminal (a Textual app, tui/).

Where it reads (first that applies):
- `--relay ADDR`: an Observer API at host:port (or unix:PATH), TLS with --tls/--tls-* options;
- `--kafka BOOTSTRAP` (or --kafka-config FILE): the flows topic, from now on;
- `--node NODE`: that node's agent on its Unix socket (only its flows);
- the cluster's relay, as `observe` finds it (cluster.json, written by `lab up`).

The filter flags are `observe`'s; they fill the filter bar, where they can be edited live. With
the relay the filters run on the server; with Kafka, in the TUI. Keys: `?` in the app.
"""

from __future__ import annotations

import argparse

from flowscope.cli.observeflags import add_filter_flags, build_filters
from flowscope.errors import FlowscopeError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tui",
        help="live flows, drops, service map and top talkers in the terminal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source")
    src.add_argument("--relay", metavar="ADDR", help="an Observer API at host:port or unix:PATH")
    src.add_argument("--node", help="read this node's agent directly (only its flows)")
    src.add_argument("--tls", action="store_true", help="connect to --relay with TLS")
    src.add_argument("--tls-ca-cert-files", nargs="+", default=[], metavar="FILE")
    src.add_argument("--tls-client-cert-file", metavar="FILE", help="for mTLS")
    src.add_argument("--tls-client-key-file", metavar="FILE", help="for mTLS")
    src.add_argument("--tls-server-name", metavar="NAME", help="name in the server's cert")
    src.add_argument("--kafka", metavar="BOOTSTRAP", help="read the flows topic at host:port")
    src.add_argument("--kafka-topic", metavar="TOPIC", help="default flowscope.flows")
    src.add_argument("--kafka-config", metavar="FILE", help="brokers, TLS and SASL from a file")
    view = p.add_argument_group("view")
    view.add_argument(
        "--scrollback",
        type=int,
        default=10_000,
        metavar="N",
        help="rows the flow table keeps (default %(default)s)",
    )
    add_filter_flags(p.add_argument_group("filters (editable in the app's filter bar)"))
    p.set_defaults(func=cmd_tui)


def build_source(args: argparse.Namespace):
    """The FlowSource the flags ask for; UsageError or ClusterNotUp when there is none."""
    from flowscope.cli.observe import client_tls
    from flowscope.cli.observekafka import kafka_config, wants_kafka
    from tui.source import KafkaSource, RelaySource

    if wants_kafka(args):
        if args.relay or args.node:
            raise UsageError("--kafka and --relay/--node: give one source")
        return KafkaSource(kafka_config(args), topic=args.kafka_topic)
    tls = client_tls(args, args.relay, "--relay")
    if args.relay:
        return RelaySource(args.relay, tls)
    from collector.relay import recorded_address
    from flowscope import clusterinfo

    info = clusterinfo.load(args.cluster)
    if args.node:
        from collector.observer import observer_socket
        from flowscope.cli.nodes import selected_nodes

        (node,) = selected_nodes(info, args.node)
        return RelaySource(f"unix:{observer_socket(info.paths, node)}")
    address = recorded_address(info)
    if not address:
        raise FlowscopeError(
            f"cluster {info.name!r} has no relay",
            hint="`flowscope lab up` starts one; or give --relay ADDR, --node NODE or --kafka",
        )
    return RelaySource(address)


def cmd_tui(args: argparse.Namespace) -> int:
    from tui.app import FlowscopeApp
    from tui.filtertext import Filters, filter_text

    if args.scrollback <= 0:
        raise UsageError(f"--scrollback {args.scrollback}: give a positive number of rows")
    ops = args.filter_ops or []
    white, black = build_filters(ops)  # a bad flag fails here, before the screen is taken
    filters = Filters(filter_text(ops), tuple(white), tuple(black))
    app = FlowscopeApp(build_source(args), filters, scrollback=args.scrollback)
    app.run()
    return 0
