"""`flowscope agent --node N`: the per-node agent (the lab starts one per node)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from flowscope import clusterinfo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run a node's agent (the lab starts these)")
    p.add_argument("--node", required=True, help="the node this agent serves")
    p.add_argument(
        "--kafka-config",
        type=Path,
        metavar="FILE",
        help="publish flows to these Kafka brokers (TOML or JSON: collector/kafkaconfig.py);"
        " default: $FLOWSCOPE_KAFKA_CONFIG, else the lab's broker when up with --kafka",
    )
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from dataplane.agent.agent import Agent

    info = clusterinfo.load(args.cluster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Agent(info, args.node, kafka_config=args.kafka_config).run(stop)
    return 0
