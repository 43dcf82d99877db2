"""`flowscope controller`: the scheduler and the EndpointSlice controller (run by the lab)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from flowscope import clusterinfo
from flowscope.controllers import run_controllers
from flowscope.store.etcd import EtcdKV

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "controller",
        help="run the scheduler and the EndpointSlice controller (started by `lab up`)",
        description=(
            "The cluster's controller manager: binds pods to nodes and derives EndpointSlices "
            "from Services and Pods. `flowscope lab up` runs it as a daemon; run it by hand "
            "only to debug. Stops on SIGTERM or SIGINT."
        ),
    )
    p.set_defaults(func=cmd_controller)


async def cmd_controller(args: argparse.Namespace) -> int:
    info = clusterinfo.load(args.cluster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kv = EtcdKV(info.etcd_url)
    log.info("controller for cluster %s on %s", info.name, info.etcd_url)
    try:
        await run_controllers(kv, stop)
    finally:
        await kv.close()
    log.info("controller stopped")
    return 0
