"""`flowscope controller`: the scheduler, the EndpointSlice controller and LoadBalancer address
assignment from the cluster's pool (run by the lab)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from flowscope import clusterinfo
from flowscope.controllers import run_controllers
from flowscope.controllers.loadbalancer import LoadBalancerIPAM
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
    parts = [asyncio.create_task(run_controllers(kv, stop), name="controllers")]
    if info.lb_pool is not None:
        ipam = LoadBalancerIPAM(kv, info.lb_pool)
        parts.append(asyncio.create_task(ipam.run(), name="loadbalancer-ipam"))
        log.info("LoadBalancer addresses from %s", info.lb_pool)
    try:
        # the controllers return when stopped; the IPAM runs until cancelled, or fails
        done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in parts:
            task.cancel()
        await asyncio.gather(*parts, return_exceptions=True)
        await kv.close()
    log.info("controller stopped")
    return 0
