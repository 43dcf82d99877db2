"""`flowscope` command line: one sub-command module per concept, registered here."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import sys

from flowscope.errors import FlowscopeError
from flowscope.paths import DEFAULT_CLUSTER

# Each module has register(subparsers); a sub-command sets `func` (sync or async) on its parser.
COMMAND_MODULES = (
    "flowscope.cli.resources",  # apply, delete, get
    "flowscope.cli.lab",  # lab up/down/status/exec/probe
    "flowscope.cli.controller",  # controller: scheduler, EndpointSlices (run by the lab)
    "flowscope.cli.agent",  # agent: one per node (run by the lab)
    "flowscope.cli.observe",  # observe: the nodes' flows
    "flowscope.cli.relay",  # relay: the cluster's merged Observer API (run by the lab)
    "flowscope.cli.status",  # status: the Observer's health and the pipeline's counters
    "flowscope.cli.policy",  # policy trace
    "flowscope.cli.service",  # service list: the datapath's load balancer
    "flowscope.cli.tui",  # tui: live flows in the terminal
    "flowscope.cli.export",  # export: the exporters (Prometheus, OpenTelemetry, audit)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowscope", description="flowscope: networking agent and flow observability"
    )
    parser.add_argument(
        "--cluster",
        default=DEFAULT_CLUSTER,
        help="lab cluster to talk to (default: %(default)s, or $FLOWSCOPE_CLUSTER)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a capability not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except FlowscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `flowscope get ... | head`: the reader left, as kubectl does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
