"""`flowscope export --config FILE`: run the exporters (Prometheus, OpenTelemetry, audit files)
the file enables, each its own Kafka consumer group on the flows topic (or fed by the relay).

Start more processes with the same file to share the work: each group spreads the partitions
over its members. The file is followed: a valid change is applied without a restart, a broken one
is logged with the field and ignored. SIGTERM or SIGINT: the batches in hand are flushed and
committed, then exit 0. A bad file at start: exit 2, naming the field. `--check`: validate only.

Without a `source:` section the cluster's own broker is used (`lab up` records it), else its
relay. The config reference: docs/exporters.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from flowscope.errors import FlowscopeError, UsageError

log = logging.getLogger("flowscope.export")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="run the exporters of a config file (Prometheus, OpenTelemetry, audit)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the export config (YAML)")
    p.add_argument("--check", action="store_true", help="validate the file and exit")
    p.set_defaults(func=cmd_export)


def cluster_source(cluster: str) -> dict | None:
    """The lab's broker (or, without one, its relay) as a source table; None without a lab."""
    from collector.relay import recorded_address
    from flowscope import clusterinfo

    try:
        info = clusterinfo.load(cluster)
    except FlowscopeError:
        return None
    kafka = info.extra.get("kafka")
    if kafka:
        return {"kafka": {"bootstrap": kafka["bootstrap"], "topics": kafka.get("topics", {})}}
    address = recorded_address(info)
    return {"relay": {"address": address}} if address else None


async def cmd_export(args: argparse.Namespace) -> int:
    from exporters.exporter import ConfigError
    from exporters.runner import Runner

    # aiokafka logs every retry of an unreachable broker at ERROR; the source says it once
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    runner = Runner(args.config, default_source=cluster_source(args.cluster))
    try:
        if args.check:
            config = runner.load()
            names = ", ".join(s.name for s in config.sections) or "none"
            print(f"{args.config}: valid; enabled exporters: {names}")
            return 0
        await runner.start()
    except ConfigError as e:
        raise UsageError(e.args[0], hint=e.hint) from None
    loop = asyncio.get_running_loop()
    signals = [0]

    def on_signal() -> None:
        signals[0] += 1
        if signals[0] == 1:
            log.info("stopping: flushing and committing the batches in hand (again to force)")
            runner.stop()
        else:  # a second signal: leave now; what was not committed is read again next time
            log.warning("stopping at once; uncommitted records will be read again")
            os._exit(130)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    names = ", ".join(runner.pipelines)
    print(f"exporting: {names} (config {args.config}; SIGTERM or Ctrl-C to stop)", file=sys.stderr)
    try:
        await runner.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


__all__ = ["cluster_source", "cmd_export", "register"]
