"""The terminal UI under a flood (issue 8): 10k flows/s for 30 s from a generator into the app,
headless (Textual's own test driver: everything is laid out and rendered, nothing is written
to a terminal), the flows tab on screen.

Printed, per run:
- render lag: how long after a flow was generated it was in the table (p50, p99, max, sampled
  every 100 ms), and how many rows the table was behind at the end;
- CPU of the whole process (generator included) as a share of one core.

Runs, all in this process, one after the other:
- idle: the app with no flows (the cost of the timers and the screen alone);
- baseline: the same flood into Textual's stock DataTable, one add_row per flow (batched per
  10 Hz tick as well, at most BASELINE_TICK_ROWS a tick so it stays responsive), formatting
  every row; unbounded, because removing its oldest rows costs milliseconds a row (measured
  and printed);
- flowscope: the app's FlowTable (rows kept in a bounded deque, only the rows on screen
  formatted), the stats of every view folded from each flow.
Ratios are flowscope's against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time
from collections import deque
from dataclasses import dataclass

from textual.app import App, ComposeResult
from textual.widgets import DataTable

from flowscope.flow.model import (
    DNS,
    HTTP,
    IP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    L7FlowType,
    Layer7,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
    Workload,
)
from tui import columns
from tui.buffer import FlowBuffer
from tui.flowtable import FlowTable
from tui.source import Link, SourceState

RATE = 10_000  # flows/s
SECONDS = 30.0
SCROLLBACK = 10_000
SIZE = (160, 48)
TICK = 0.01  # s between generator batches
BASELINE_TICK_ROWS = 5_000  # twice what is due a tick at 10k/s
GIVE_UP = 30.0  # s after the last flow was due: a table still behind is reported as never
POOL = 4096


def flow_pool(n: int = POOL, seed: int = 8) -> list[Flow]:
    """n varied flows: 64 pods in 4 namespaces, 6 ports, 3% dropped, 5% with L7 records."""
    rng = random.Random(seed)
    now = time.time_ns()
    out = []
    for i in range(n):
        s, d = rng.randrange(64), rng.randrange(64)
        port = rng.choice((80, 443, 8080, 53, 5432, 6379))
        dropped = rng.random() < 0.03
        l7 = None
        if rng.random() < 0.05:
            if port == 53:
                l7 = Layer7(L7FlowType.RESPONSE, 1_000_000, dns=DNS(f"svc-{d}.ns.", qtypes=("A",)))
            else:
                l7 = Layer7(L7FlowType.RESPONSE, 3_000_000, http=HTTP(200, "GET", f"/api/{d}"))
        out.append(
            Flow(
                now + i,
                Verdict.DROPPED if dropped else Verdict.FORWARDED,
                drop_reason=133 if dropped else 0,
                ip=IP(f"10.244.1.{s}", f"10.244.2.{d}"),
                l4=UDP(40000 + i % 20000, port) if port == 53 else TCP(40000 + i % 20000, port),
                l7=l7,
                source=Endpoint(
                    identity=1000 + s % 16,
                    namespace=f"ns-{s % 4}",
                    pod_name=f"app-{s % 16}-{s:02d}x7k2",
                    workloads=(Workload(f"app-{s % 16}", "Deployment"),),
                ),
                destination=Endpoint(
                    identity=1000 + d % 16,
                    namespace=f"ns-{d % 4}",
                    pod_name=f"app-{d % 16}-{d:02d}x7k2",
                    workloads=(Workload(f"app-{d % 16}", "Deployment"),),
                ),
                node_name=f"node-{1 + i % 3}",
                event_type=(
                    EventType.drop(133)
                    if dropped
                    else EventType.trace(TraceObservationPoint.TO_ENDPOINT)
                ),
                traffic_direction=TrafficDirection.INGRESS,
                is_reply=False,
            )
        )
    return out


class GeneratorSource:
    """rate x seconds flows into the buffer, flow k due at start + k/rate, put in batches every
    TICK (all that are due, late ones too: a blocked event loop delays them, never drops
    them). How far behind the table is counts from when a flow was due."""

    describe = "generator"
    server_side = False

    def __init__(self, rate: int, seconds: float) -> None:
        self.rate = rate
        self.seconds = seconds
        self.total = int(rate * seconds)
        self.pool = flow_pool()
        self.start: float | None = None
        self.done = asyncio.Event()

    async def run(self, buffer: FlowBuffer, filters, on_state) -> None:
        on_state(SourceState(Link.CONNECTED, "generating"))
        self.start = time.monotonic()
        made, i = 0, 0
        while made < self.total:
            due = min(self.total, int((time.monotonic() - self.start) * self.rate))
            for _ in range(due - made):
                buffer.put(self.pool[i])
                i = (i + 1) % len(self.pool)
            made = max(made, due)
            await asyncio.sleep(TICK)
        self.done.set()
        await asyncio.Event().wait()

    def due_at(self, count: int) -> float:
        """When the count-th flow (1-based) was due."""
        assert self.start is not None
        return self.start + count / self.rate


class BaselineApp(App[None]):
    """The stock way: a DataTable, each flow formatted and added as a row. Unbounded: removing
    a DataTable's oldest row costs milliseconds once it holds thousands (measured and printed
    by `remove_cost`), so a bounded scroll-back cannot keep up with this rate at all."""

    def __init__(self, source: GeneratorSource) -> None:
        super().__init__()
        self.source = source
        self.buffer = FlowBuffer(capacity=10**7)
        self.added = 0
        self.keys: list = []
        self.pending: deque = deque()

    def compose(self) -> ComposeResult:
        yield DataTable(id="t")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*columns.COLUMNS)
        self.set_interval(0.1, self.drain)
        self.run_worker(self.source.run(self.buffer, None, lambda s: None))

    def drain(self) -> None:
        table = self.query_one(DataTable)
        self.pending.extend(self.buffer.drain())
        # at most BASELINE_TICK_ROWS a tick, so the app (and the measurement) stays responsive
        for _ in range(min(len(self.pending), BASELINE_TICK_ROWS)):
            self.keys.append(table.add_row(*columns.row(self.pending.popleft())))
            self.added += 1
        table.move_cursor(row=table.row_count - 1, animate=False)

    def remove_cost(self, n: int = 20) -> float:
        """Seconds to remove one of the oldest rows, with the table as full as it is."""
        table = self.query_one(DataTable)
        t0 = time.perf_counter()
        for key in self.keys[:n]:
            table.remove_row(key)
        return (time.perf_counter() - t0) / n


@dataclass(frozen=True)
class Result:
    name: str
    cpu: float  # share of one core, while flows came
    lag_p50: float  # s: how long after it was due the newest flow in the table was
    lag_p99: float
    lag_max: float
    behind: int  # flows due but not yet in the table when the last one was due
    catch_up: float | None  # s after the last was due until the table had all (None: never)

    def line(self) -> str:
        if self.catch_up is None:
            catch_up = f"not caught up {GIVE_UP:.0f} s later"
        else:
            catch_up = f"caught up {self.catch_up:.1f} s later"
        return (
            f"{self.name:<10} CPU {self.cpu * 100:5.1f}%  lag p50 {self.lag_p50 * 1000:7.0f} ms"
            f"  p99 {self.lag_p99 * 1000:7.0f} ms  max {self.lag_max * 1000:7.0f} ms"
            f"  behind at the end {self.behind:,} rows, {catch_up}"
        )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(name: str, app, source: GeneratorSource, added) -> tuple[Result, float | None]:
    """The run's result, and the baseline's row removal cost (measured before it closes)."""
    lags: list[float] = []
    behind, catch_up, cpu = 0, None, 0.0
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        cpu0, wall0 = _cpu(), time.monotonic()
        while source.start is None:
            await asyncio.sleep(0.01)
        end = source.start + source.seconds
        while True:
            await asyncio.sleep(0.1)
            now, shown = time.monotonic(), added()
            if now < end:
                if shown:
                    lags.append(max(0.0, now - source.due_at(shown)))
                cpu = (_cpu() - cpu0) / (now - wall0)
            elif not behind and catch_up is None:
                behind = source.total - shown
                lags.append(max(0.0, now - source.due_at(shown)) if shown else now - end)
            if now >= end and shown >= source.total:
                catch_up = now - end
                break
            if now > end + GIVE_UP:
                break
        remove = app.remove_cost() if isinstance(app, BaselineApp) else None
    q = statistics.quantiles(lags, n=100, method="inclusive") if len(lags) > 1 else [0.0] * 99
    result = Result(name, cpu, q[49], q[98], max(lags, default=0.0), behind, catch_up)
    return result, remove


async def _idle(seconds: float) -> float:
    from tui.app import FlowscopeApp

    source = GeneratorSource(0, seconds)
    app = FlowscopeApp(source, scrollback=SCROLLBACK)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        cpu0, wall0 = _cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        return (_cpu() - cpu0) / (time.monotonic() - wall0)


@dataclass(frozen=True)
class Report:
    idle_cpu: float
    baseline: Result
    remove_row_s: float  # the baseline DataTable's cost to remove a row, as full as it got
    baseline_rows: int
    flowscope: Result
    table_rows: int  # what the FlowTable holds at the end (its scroll-back)
    table_added: int  # every flow the FlowTable was given
    folded: int  # flows folded into the views' stats


async def run(rate: int, seconds: float, log=print) -> Report:
    from tui.app import FlowscopeApp

    log(
        f"{rate:,} flows/s for {seconds:g} s, {SIZE[0]}x{SIZE[1]} headless, "
        f"scroll-back {SCROLLBACK:,} rows"
    )
    idle = await _idle(min(5.0, seconds))
    log(f"{'idle':<10} CPU {idle * 100:5.1f}%")

    source = GeneratorSource(rate, seconds)
    base_app = BaselineApp(source)
    base, remove = await _measure("baseline", base_app, source, lambda: base_app.added)
    remove = remove or 0.0
    log(base.line() + "   (DataTable, a row per flow, unbounded)")
    log(
        f"{'':<10} DataTable.remove_row at {base_app.added:,} rows: {remove * 1000:.1f} ms a row"
        f" (a bounded scroll-back at {rate:,}/s would need {remove * rate:.0f} s per second)"
    )

    source = GeneratorSource(rate, seconds)
    app = FlowscopeApp(source, scrollback=SCROLLBACK, buffer=FlowBuffer(capacity=10**7))
    table: list[FlowTable] = []

    def added() -> int:
        if not table:
            table.append(app.query_one(FlowTable))
        return table[0].added

    ours, _ = await _measure("flowscope", app, source, added)
    log(ours.line())
    cpu_ratio = ours.cpu / base.cpu if base.cpu else float("nan")
    lag_ratio = ours.lag_p99 / base.lag_p99 if base.lag_p99 else float("nan")
    log(
        f"ratios flowscope/baseline: CPU {cpu_ratio:.2f}, lag p99 {lag_ratio:.3f}; "
        f"flows folded into the views' stats: {app.stats.flows:,}"
    )
    return Report(
        idle,
        base,
        remove,
        base_app.added,
        ours,
        len(table[0].rows),
        table[0].added,
        app.stats.flows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=RATE, help="flows/s")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="each run")
    args = parser.parse_args([] if argv is None else argv)  # `make bench`: the defaults
    asyncio.run(run(args.rate, args.seconds))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
