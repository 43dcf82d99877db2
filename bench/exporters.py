"""Exporters (issue 7): records/s and CPU of each exporter kind present, and the Prometheus
series count with and without the cardinality limit on a high-cardinality flood.

Throughput: each kind built from a default config (prometheus on a loopback port, otel against
an in-process OTLP/HTTP receiver (oteltap; its CPU counts too, it runs in this process), audit
into a temporary directory) is fed the same synthetic batches (64 pods in 4 namespaces, 80%
forwarded TCP, 5% drops, 5% DNS, 10% HTTP, 1 lost event per batch) through export() and
flush() as the runner does. CPU is this process's CPU time over the wall time (threads
included). Baseline, in the same run on the same records: what the runner pays per record
before any exporter sees it, decoding the flows-topic records (kafkaread.decode_batch); each
kind's rate is printed as a ratio to it (above 1: the exporter keeps up with the decoding).

Cardinality: a flood of flows from distinct source addresses to distinct ports, counted by
flow, drop and port-distribution with ip contexts, once with no limit and once with
cardinalityLimit 1000: series in the /metrics answer, its size and render time, as ratios of
the limited to the unlimited run.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from exporters.exporter import ExportBatch
from flowscope.flow.kafkaread import decode_batch
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
    LostEvent,
    LostEventSource,
    MessageType,
    TCPFlags,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
    Workload,
)
from flowscope.flow.protoconv import record_to_response
from flowscope.proto import kafka_pb2

RECORDS = 40_000
BATCH = 500
FLOOD = 60_000
LIMIT = 1000
KINDS = ("prometheus", "otel", "audit")
T0 = 1_764_000_000 * 10**9
TO_STACK = TraceObservationPoint.TO_STACK


def pods() -> list[Endpoint]:
    out = []
    for i in range(64):
        ns, app = f"ns{i % 4}", f"app{i % 16}"
        out.append(
            Endpoint(
                id=i + 1,
                identity=1000 + i % 16,
                namespace=ns,
                labels=(f"k8s:app={app}", f"k8s:io.kubernetes.pod.namespace={ns}"),
                pod_name=f"{app}-5f6c7d-{i:05d}",
                workloads=(Workload(app, "Deployment"),),
            )
        )
    return out


def synthetic(n: int, seed: int = 7) -> list[Flow]:
    rng = random.Random(seed)
    eps = pods()
    out = []
    for i in range(n):
        src, dst = rng.choice(eps), rng.choice(eps)
        ip = IP(
            f"10.0.{src.id // 250}.{src.id % 250 + 1}", f"10.0.{dst.id // 250}.{dst.id % 250 + 1}"
        )
        roll = rng.random()
        common = {"time_ns": T0 + i, "ip": ip, "source": src, "destination": dst,
                  "node_name": f"node-{src.id % 3}",
                  "traffic_direction": TrafficDirection.EGRESS}  # fmt: skip
        if roll < 0.80:
            flags = TCPFlags.from_bits(rng.choice((0x02, 0x12, 0x10, 0x18, 0x11)))
            out.append(Flow(verdict=Verdict.FORWARDED, l4=TCP(40000 + i % 20000,
                            rng.choice((80, 443, 5432, 6379)), flags),
                            event_type=EventType.trace(TraceObservationPoint.TO_ENDPOINT),
                            is_reply=rng.random() < 0.5, **common))  # fmt: skip
        elif roll < 0.85:
            out.append(Flow(verdict=Verdict.DROPPED, drop_reason=133, l4=TCP(40000, 80),
                            event_type=EventType.drop(133), is_reply=False, **common))  # fmt: skip
        elif roll < 0.90:
            reply = rng.random() < 0.5
            kind = L7FlowType.RESPONSE if reply else L7FlowType.REQUEST
            dns = DNS(query=f"svc{i % 50}.ns0.svc.cluster.local.", qtypes=("A",),
                      ips=("10.0.0.9",) if reply else (),
                      rrtypes=("A",) if reply else ())  # fmt: skip
            out.append(Flow(verdict=Verdict.FORWARDED, type=2, l4=UDP(40000, 53),
                            l7=Layer7(kind, dns=dns),
                            event_type=EventType(MessageType.ACCESS_LOG, 0), is_reply=reply,
                            **common))  # fmt: skip
        else:
            reply = rng.random() < 0.5
            kind = L7FlowType.RESPONSE if reply else L7FlowType.REQUEST
            latency = rng.randrange(1_000_000, 300_000_000) if reply else 0
            http = HTTP(code=rng.choice((200, 200, 200, 404, 503)) if reply else 0, method="GET",
                        url=f"http://{dst.workloads[0].name}/api/{i % 20}",
                        protocol="HTTP/1.1")  # fmt: skip
            out.append(Flow(verdict=Verdict.FORWARDED, type=2, l4=TCP(40000, 80),
                            l7=Layer7(kind, latency_ns=latency, http=http),
                            event_type=EventType(MessageType.ACCESS_LOG, 0), is_reply=reply,
                            **common))  # fmt: skip
    return out


def batches(flows: list[Flow]) -> list[ExportBatch]:
    out = []
    for i in range(0, len(flows), BATCH):
        lost = LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, 3, node_name="node-1")
        records = (*flows[i : i + BATCH], lost)
        out.append(ExportBatch(records, {("flowscope.flows", 0): len(flows) - i}))
    return out


def encoded(batch_list: list[ExportBatch]) -> list[bytes]:
    out = []
    for n, b in enumerate(batch_list):
        msg = kafka_pb2.FlowBatch(node_name="node-1", first_seq=1 + n * (BATCH + 1), run_id=1)
        msg.responses.extend(record_to_response(r) for r in b.records)
        out.append(msg.SerializeToString())
    return out


def timed(fn) -> tuple[float, float]:
    """(wall s, CPU s) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


async def timed_async(coro_fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await coro_fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_config(kind: str, workdir: Path, otlp_port: int) -> dict[str, Any]:
    return {
        "prometheus": {"listen": "127.0.0.1:0"},
        "otel": {"endpoint": f"http://127.0.0.1:{otlp_port}"},
        "audit": {"path": str(workdir / "audit" / "flows.jsonl")},
    }[kind]


async def run_kind(kind_name: str, raw: dict, work: list[ExportBatch]) -> tuple[float, float]:
    module = importlib.import_module(f"exporters.{kind_name}")
    kind = module.KIND
    exporter = kind.build(kind.parse(raw, kind_name))
    await exporter.start()
    try:
        await exporter.export(work[0])  # warm up (imports, first series)
        await exporter.flush()

        async def feed() -> None:
            for b in work[1:]:
                await exporter.export(b)
                await exporter.flush()

        return await timed_async(feed)
    finally:
        await exporter.close()


async def throughput() -> list[str]:
    work = batches(synthetic(RECORDS))
    records = sum(len(b.records) for b in work[1:])
    values = encoded(work)
    wall, cpu = timed(lambda: [decode_batch(v) for v in values[1:]])
    base = records / wall
    lines = [
        f"records: {records:,} in batches of {BATCH + 1} (flows + 1 lost event)",
        f"baseline  decode_batch (the runner's own cost)  {base:>10,.0f} records/s  "
        f"CPU {cpu / wall:4.0%}",
    ]
    from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-exporters-") as tmp:
        async with OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=port)):
            for name in KINDS:
                try:
                    raw = default_config(name, Path(tmp), port)
                    wall, cpu = await run_kind(name, raw, work)
                except ModuleNotFoundError as e:
                    lines.append(f"{name:<10} not present ({e.name})")
                    continue
                except Exception as e:  # a kind that fails here must not hide the others
                    lines.append(f"{name:<10} failed: {type(e).__name__}: {e}")
                    continue
                rate = records / wall
                lines.append(
                    f"{name:<10} export+flush                       {rate:>10,.0f} records/s  "
                    f"CPU {cpu / wall:4.0%}  x{rate / base:.2f} of the baseline"
                )
    return lines


def flood(n: int, seed: int = 11) -> list[Flow]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        src = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        drop = rng.random() < 0.1
        out.append(
            Flow(
                time_ns=T0 + i,
                verdict=Verdict.DROPPED if drop else Verdict.FORWARDED,
                drop_reason=133 if drop else 0,
                ip=IP(src, f"10.200.0.{rng.randrange(1, 255)}"),
                l4=TCP(rng.randrange(1024, 65535), rng.randrange(1, 65535), TCPFlags.from_bits(2)),
                event_type=EventType.drop(133) if drop else EventType.trace(TO_STACK),
                is_reply=False,
            )
        )  # fmt: skip
    return out


async def series_for(limit: int, work: list[ExportBatch]) -> tuple[int, int, float]:
    from prometheus_client import generate_latest

    from exporters.prometheus import KIND

    raw = {
        "listen": "127.0.0.1:0",
        "cardinalityLimit": limit,
        "metrics": [
            "flow:sourceContext=ip;destinationContext=ip",
            "drop:sourceContext=ip",
            "port-distribution:destinationContext=ip",
        ],
    }
    exporter = KIND.build(KIND.parse(raw, "prometheus"))
    for b in work:
        exporter.count(b)
    text = b""

    def render() -> None:
        nonlocal text
        text = generate_latest(exporter.server.registry)

    wall, _ = timed(render)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return series, len(text), wall


def row(name: str, series: int, size: int, render_s: float) -> str:
    return f"{name:<12} {series:>8,} series  {size / 1e6:6.1f} MB  render {render_s * 1e3:5.0f} ms"


async def cardinality() -> list[str]:
    work = batches(flood(FLOOD))
    free, free_bytes, free_s = await series_for(0, work)
    lim, lim_bytes, lim_s = await series_for(LIMIT, work)
    return [
        f"flood: {FLOOD:,} flows from distinct sources to random ports; flow, drop and "
        "port-distribution with ip contexts",
        row("no limit", free, free_bytes, free_s),
        row(f"limit {LIMIT}", lim, lim_bytes, lim_s),
        f"limited / unlimited: series x{lim / free:.3f}, bytes x{lim_bytes / free_bytes:.3f}, "
        f"render x{lim_s / free_s:.3f}",
    ]  # fmt: skip


async def run() -> list[str]:
    return [*(await throughput()), "", *(await cardinality())]


def main() -> None:
    for line in asyncio.run(run()):
        print(line, flush=True)


if __name__ == "__main__":
    main()
