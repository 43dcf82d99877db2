"""GetFlows on a full flow ring (issue 6): latency of a selective request, target <= 50 ms.

The ring is a real FlowStream of 65,535 flows (the default capacity) filled through the
collector's own batch path: synthetic datapath events (the kernel's record layout, 64 pods in 4
namespaces, 6 destination ports, 3% dropped) named by DatapathNamer over a directory of those
pods, a batch per BATCH events as the collector's drains append them. The requests go through a
real Observer (collector.observer) on a Unix socket and a gRPC client that reads every answer:

- selective: one source pod, one destination port, DROPPED (a handful of flows);
- broad: one namespace's flows, the newest 1,000;
- last 20: no filter, the newest 20.

Each run fills a fresh ring (its flows not built yet: a cold ring, as after a burst) and times
the first request (cold: the Observer's columnar index of the ring is built then) and the
median of repeats (warm). Baseline, in the same run on the same events: the Observer with its
columnar pre-filter off (every held record built and matched, as GetFlows did before), as a
ratio to the pre-filtered time.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import grpc
import numpy as np

from bench.poddirectory import Pod, PodDirectory
from collector.columns import DatapathNamer
from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.observer import serve_observer
from collector.ring import DEFAULT_CAPACITY
from dataplane.maps.flowevent import (
    EVENT_DTYPE,
    VERSION,
    CtState,
    DropReason,
    EventType,
    ObservationPoint,
    TrafficDirection,
    Verdict,
)
from dataplane.maps.netorder import u32_of
from flowscope.proto import flow_pb2, observer_pb2, observer_pb2_grpc

TARGET_MS = 50.0
BATCH = 256  # events per collector drain
NAMESPACES = 4
PODS = 64
PORTS = (80, 443, 8080, 53, 5432, 6379)
DROPPED_SHARE = 0.03
T0 = 1_764_000_000 * 10**9


def pod_name(i: int) -> tuple[str, str]:
    return f"ns-{i % NAMESPACES}", f"pod-{i:02d}-x7k2"


def directory() -> PodDirectory:
    """PODS pods over NAMESPACES namespaces, 16 identities (apps) among them."""
    pods = []
    for i in range(PODS):
        ns, name = pod_name(i)
        ip = IPv4Address(f"10.244.{1 + i // 32}.{10 + i % 32}")
        pods.append(Pod(ip, 1000 + i % 16, ns, name, {"app": f"app-{i % 16}"}))
    return PodDirectory(pods)


def synthetic_events(n: int, seed: int = 6) -> np.ndarray:
    """n datapath events between the directory's pods, as the kernel writes them."""
    rng = np.random.default_rng(seed)
    records = directory().records.values()
    addresses = np.array([u32_of(r.ip) for r in records], np.uint32)
    identities = np.array([r.identity for r in records], np.uint32)
    src, dst = rng.integers(0, PODS, n), rng.integers(0, PODS, n)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["ktime_ns"] = np.arange(n, dtype=np.uint64) * 1000
    ev["saddr"], ev["daddr"] = addresses[src], addresses[dst]
    ev["src_identity"], ev["dst_identity"] = identities[src], identities[dst]
    ev["sport"] = rng.integers(30000, 60000, n)
    ev["dport"] = np.array(PORTS)[rng.integers(0, len(PORTS), n)]
    ev["proto"] = np.where(ev["dport"] == 53, 17, 6)
    ev["tcp_flags"] = np.where(ev["proto"] == 6, 0x10, 0)
    egress = rng.random(n) < 0.5
    ev["obs_point"] = np.where(egress, ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_ENDPOINT)
    ev["traffic_direction"] = np.where(egress, TrafficDirection.EGRESS, TrafficDirection.INGRESS)
    ev["endpoint_id"] = np.where(egress, src, dst) + 1  # the local pod's endpoint
    dropped = rng.random(n) < DROPPED_SHARE
    ev["verdict"] = np.where(dropped, Verdict.DROPPED, Verdict.FORWARDED)
    ev["drop_reason"] = np.where(dropped, DropReason.POLICY_DENIED, 0)
    new = rng.random(n) < 0.1
    ev["ct_state"] = np.where(new, CtState.NEW, CtState.ESTABLISHED)
    ev["event_type"] = np.where(new | dropped, EventType.POLICY_VERDICT, EventType.TRACE)
    ev["is_reply"] = rng.random(n) < 0.4
    ev["ifindex"] = 7
    ev["pkt_len"] = 60
    ev["ethertype"] = 0x0800
    ev["version"] = VERSION
    return ev


def filled_stream(events: np.ndarray, capacity: int, batch: int) -> FlowStream:
    """A fresh stream holding `events`, appended a collector drain (a named batch) at a time."""
    stream = FlowStream(capacity, node_name="node-1")
    namer = DatapathNamer(Enricher(directory(), "bench"), "node-1", T0)
    for start in range(0, len(events), batch):
        stream.publish_batch(namer.batch(events[start : start + batch].copy()))
    return stream


def queries() -> dict[str, observer_pb2.GetFlowsRequest]:
    ns, pod = pod_name(5)
    return {
        "selective (pod, port 443, DROPPED)": observer_pb2.GetFlowsRequest(
            whitelist=[
                flow_pb2.FlowFilter(
                    source_pod=[f"{ns}/{pod}"],
                    destination_port=["443"],
                    verdict=[flow_pb2.DROPPED],
                )
            ]
        ),
        "broad (a namespace, last 1000)": observer_pb2.GetFlowsRequest(
            number=1000,
            whitelist=[flow_pb2.FlowFilter(source_pod=[f"{ns}/"])],
        ),
        "last 20": observer_pb2.GetFlowsRequest(number=20),
    }


@dataclass(frozen=True)
class Timing:
    query: str
    prefilter: bool
    cold_ms: list[float]  # the first request on a fresh ring, per run
    warm_ms: list[float]  # repeats on the ring of the last run
    flows: int  # what the request returned


@dataclass(frozen=True)
class Results:
    capacity: int
    batch: int
    timings: list[Timing]

    def timing(self, query: str, prefilter: bool) -> Timing:
        return next(t for t in self.timings if t.query == query and t.prefilter == prefilter)


async def _get(stub: observer_pb2_grpc.ObserverStub, request) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    async for _ in stub.GetFlows(request):
        count += 1
    return (time.perf_counter() - start) * 1000, count


async def _measure(
    events: np.ndarray,
    capacity: int,
    batch: int,
    request,
    prefilter: bool,
    runs: int,
    repeats: int,
    sock_dir: Path,
) -> tuple[list[float], list[float], int]:
    cold: list[float] = []
    warm: list[float] = []
    count = 0
    for run in range(runs):
        stream = filled_stream(events, capacity, batch)
        path = sock_dir / f"o{int(prefilter)}{run}.sock"
        server = await serve_observer(stream, path, prefilter=prefilter)
        try:
            async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
                stub = observer_pb2_grpc.ObserverStub(channel)
                await stub.ServerStatus(observer_pb2.ServerStatusRequest())  # connected
                ms, count = await _get(stub, request)
                cold.append(ms)
                if run == runs - 1:
                    for _ in range(repeats):
                        warm.append((await _get(stub, request))[0])
        finally:
            await server.close()
    return cold, warm, count


def run(
    capacity: int = DEFAULT_CAPACITY,
    batch: int = BATCH,
    runs: int = 5,
    baseline_runs: int = 2,
    repeats: int = 5,
    log: Callable[[str], None] = print,
) -> Results:
    events = synthetic_events(capacity)
    sock_dir = Path(tempfile.mkdtemp(prefix="fsgetflows"))
    timings = []
    try:
        for query, request in queries().items():
            for prefilter, n in ((True, runs), (False, baseline_runs)):
                cold, warm, count = asyncio.run(
                    _measure(events, capacity, batch, request, prefilter, n, repeats, sock_dir)
                )
                timings.append(Timing(query, prefilter, cold, warm, count))
                log(
                    f"  {query}, pre-filter {'on' if prefilter else 'off'}: "
                    f"{count} flows, cold {statistics.median(cold):.1f} ms"
                )
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    return Results(capacity, batch, timings)


def report(results: Results) -> list[str]:
    lines = [
        f"GetFlows over gRPC on a full ring of {results.capacity:,} flows "
        f"({results.batch} a batch), median ms (cold: first request on a fresh ring; warm: "
        "repeated); baseline = pre-filter off:"
    ]
    for query in dict.fromkeys(t.query for t in results.timings):
        on, off = results.timing(query, True), results.timing(query, False)
        cold, warm = statistics.median(on.cold_ms), statistics.median(on.warm_ms)
        base_cold, base_warm = statistics.median(off.cold_ms), statistics.median(off.warm_ms)
        lines.append(
            f"{query}: {on.flows} flows, cold {cold:.1f} ms (baseline {base_cold:.1f} ms, "
            f"{base_cold / cold:.1f}x), warm {warm:.1f} ms (baseline {base_warm:.1f} ms, "
            f"{base_warm / warm:.1f}x)"
        )
    selective = results.timings[0]
    worst = max(statistics.median(selective.cold_ms), statistics.median(selective.warm_ms))
    verdict = "met" if worst <= TARGET_MS else "NOT met"
    lines.append(
        f"target: a selective request on a full ring <= {TARGET_MS:.0f} ms: {worst:.1f} ms, "
        f"{verdict}"
    )
    return lines


def main() -> None:
    for line in report(run()):
        print(line, flush=True)
