"""`flowscope observe`: the flows every node (or one) sees, in time order, as `hubble observe`.

Reads each node's flow stream (collector/flowstream.py: <node dir>/flows.sock). Without --follow
it prints the last N flows of all nodes together and exits; with --follow it then prints new
flows as they come, held back for a moment so that flows of different nodes come out in time
order (all nodes of a lab share this machine's clock). A node without a stream is reported on
stderr and the others still print.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import heapq
import itertools
import sys
import time
from collections.abc import Iterable

from flowscope import clusterinfo
from flowscope.cli.nodes import selected_nodes
from flowscope.errors import FlowscopeError, UsageError

DEFAULT_LAST = 20
REORDER_WINDOW = 0.2  # seconds a followed flow waits for earlier ones from other nodes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("observe", help="print the flows the nodes see (like `hubble observe`)")
    p.add_argument("--node", help="only this node's flows (default: every node)")
    p.add_argument(
        "--last",
        type=int,
        help=f"print the last N flows first (default {DEFAULT_LAST}; with --follow 0)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    p.add_argument(
        "--namespace", action="append", default=[], help="flows from or to this namespace"
    )
    p.add_argument(
        "--pod", action="append", default=[], metavar="[NS/]POD", help="flows from or to this pod"
    )
    p.add_argument(
        "--verdict",
        action="append",
        default=[],
        help="FORWARDED, DROPPED, AUDIT, TRANSLATED, ... (repeat for several)",
    )
    p.add_argument(
        "-t",
        "--type",
        action="append",
        default=[],
        metavar="TYPE[:SUB]",
        help="event type: trace, drop, policy-verdict, trace-sock (socket LB translations), ...;"
        " e.g. trace:to-endpoint (repeat for several)",
    )
    p.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="[NS/]NAME",
        help="flows to or from this service (repeat for several)",
    )
    p.add_argument("-o", "--output", choices=("compact", "json"), default="compact")
    p.add_argument("--print-node-name", action="store_true", help="compact: show each node")
    p.set_defaults(func=cmd_observe)


class TimeMerger:
    """Orders records from several nodes by time, holding each `window_ns` for latecomers."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._heap: list = []
        self._order = itertools.count()  # ties keep arrival order

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, record) -> None:
        heapq.heappush(self._heap, (record.time_ns, next(self._order), record))

    def pop_until(self, time_ns: int) -> list:
        out = []
        while self._heap and self._heap[0][0] <= time_ns:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def ready(self, now_ns: int) -> list:
        return self.pop_until(now_ns - self.window_ns)

    def drain(self) -> list:
        return self.pop_until(1 << 127)


def last_in_time(records: Iterable, n: int) -> list:
    """The newest `n` records of all nodes, oldest first (equal times keep their order)."""
    ordered = sorted(records, key=lambda r: r.time_ns)
    return ordered[-n:] if n > 0 else []


def build_filter(args: argparse.Namespace):
    from flowscope.flow.filter import FlowFilter, parse_each, parse_event_type, parse_verdict

    try:
        verdicts = parse_each(args.verdict, parse_verdict, "--verdict")
        types = parse_each(args.type, parse_event_type, "--type")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for flag, values in (("--pod", args.pod), ("--service", args.service)):
        for value in values:
            ns, sep, name = value.rpartition("/")
            if not name or (sep and not ns):
                raise UsageError(f"{flag} {value!r}: write NAMESPACE/NAME or NAME")
    return FlowFilter(
        tuple(args.namespace),
        tuple(args.pod),
        verdicts,
        types,
        tuple(args.service),
    )


async def cmd_observe(args: argparse.Namespace) -> int:
    from collector.flowstream import FlowRequest, flow_socket

    if args.last is not None and args.last < 0:
        raise UsageError(f"--last {args.last}: give a count of 0 or more")
    last = args.last if args.last is not None else (0 if args.follow else DEFAULT_LAST)
    flow_filter = build_filter(args)
    info = clusterinfo.load(args.cluster)
    nodes = selected_nodes(info, args.node)
    request = FlowRequest(last=last, follow=args.follow, filter=flow_filter)
    sockets = {node: flow_socket(info.paths, node) for node in nodes}
    printer = _Printer(args.output, args.print_node_name)
    return await observe(sockets, request, printer)


class _Printer:
    def __init__(self, output: str, node_name: bool) -> None:
        from flowscope.flow.compact import format_compact

        self._format = (
            (lambda r: r.to_json())
            if output == "json"
            else (lambda r: format_compact(r, node_name=node_name))
        )

    def __call__(self, records: list) -> None:
        if records:
            sys.stdout.write("".join(self._format(r) + "\n" for r in records))
            sys.stdout.flush()


_END = object()


class _Problem(str):
    """A node's trouble, for stderr; `unreachable` when its stream could not be read at all."""

    unreachable = False


class _Unreachable(_Problem):
    unreachable = True


async def _pump(node: str, path, request, out: asyncio.Queue) -> None:
    """Feed `out` with (node, record), (node, problem text) and finally (node, _END)."""
    from collector.flowstream import FlowStreamError, read_flows

    try:
        async for record in read_flows(path, request):
            await out.put((node, record))
        if request.follow:
            await out.put((node, _Problem("its flow stream closed (did its agent stop?)")))
    except (FileNotFoundError, ConnectionRefusedError):
        await out.put((node, _Unreachable(f"no flow stream at {path} (is its agent running?)")))
    except FlowStreamError as exc:
        await out.put((node, _Unreachable(f"its flow stream refused the request: {exc}")))
    except (OSError, ValueError) as exc:
        await out.put((node, _Problem(f"reading its flow stream failed: {exc}")))
    finally:
        out.put_nowait((node, _END))


async def observe(sockets: dict, request, printer) -> int:
    """Read every node's stream; print via `printer(records)`: first the newest `request.last`
    held records of all nodes together, then (following) new ones in time order. Exit code 0;
    FlowscopeError when no node could be read at all."""
    from collector.flowstream import HISTORY_END

    request = dataclasses.replace(request, mark_history_end=True)
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(n, p, request, queue)) for n, p in sockets.items()]
    live, in_history, unreachable = set(sockets), set(sockets), set()
    history: list = []
    history_printed = False
    merger = TimeMerger(int(REORDER_WINDOW * 1e9))
    try:
        while live:
            try:
                node, item = await asyncio.wait_for(queue.get(), REORDER_WINDOW / 4)
            except TimeoutError:
                node, item = None, None
            if item is _END:
                live.discard(node)
                in_history.discard(node)
            elif item is HISTORY_END:
                in_history.discard(node)
            elif isinstance(item, _Problem):
                print(f"warning: node {node}: {item}", file=sys.stderr, flush=True)
                if item.unreachable:
                    unreachable.add(node)
            elif item is not None:
                (history.append if node in in_history else merger.add)(item)
            if not history_printed and not in_history:
                printer(last_in_time(history, request.last or 0))
                history_printed = True
            if history_printed:
                printer(merger.ready(time.time_ns()))
        if not history_printed:
            printer(last_in_time(history, request.last or 0))
        printer(merger.drain())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if len(unreachable) == len(sockets):
        raise FlowscopeError(
            "no node's flow stream could be read",
            hint="`flowscope lab status` shows whether the agents run",
        )
    return 0
