"""Hand-made flows for the TUI's tests (L3/L4, drops, service translations, DNS and HTTP)."""

from __future__ import annotations

import asyncio

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
    Service,
    TraceObservationPoint,
    TrafficDirection,
    Verdict,
    Workload,
)
from tui.buffer import FlowBuffer
from tui.filtertext import Filters
from tui.source import Link, SourceState

T0 = 1_764_366_771_000_000_000  # 2025-11-28T21:52:51Z
S = 1_000_000_000


def ep(ns: str, pod: str, workload: str = "", identity: int = 300) -> Endpoint:
    workloads = (Workload(workload, "Deployment"),) if workload else ()
    return Endpoint(identity=identity, namespace=ns, pod_name=pod, workloads=workloads)


def flow(
    t: int,
    src: str = "shop/web-1",
    dst: str = "shop/api-1",
    *,
    verdict: Verdict = Verdict.FORWARDED,
    port: int = 8080,
    drop_reason: int = 0,
    ingress: bool = False,
    l7: Layer7 | None = None,
    service: str = "",
    udp: bool = False,
) -> Flow:
    sns, spod = src.split("/")
    dns_, dpod = dst.split("/")
    dropped = verdict == Verdict.DROPPED
    reason = drop_reason or (133 if dropped else 0)
    svc = None
    if service:
        s_ns, s_name = service.split("/")
        svc = Service(s_name, s_ns)
    return Flow(
        T0 + t,
        verdict,
        drop_reason=reason,
        ip=IP("10.244.1.5", "10.244.2.7"),
        l4=UDP(40000, port) if udp else TCP(40000, port),
        l7=l7,
        source=ep(sns, spod, spod.rsplit("-", 1)[0]),
        destination=ep(dns_, dpod, dpod.rsplit("-", 1)[0], 301),
        node_name="node-1",
        event_type=(
            EventType.drop(reason)
            if dropped
            else EventType.trace(TraceObservationPoint.TO_ENDPOINT)
        ),
        traffic_direction=TrafficDirection.INGRESS if ingress else TrafficDirection.EGRESS,
        destination_service=svc,
        is_reply=False,
    )


def http_response(t: int) -> Flow:
    l7 = Layer7(
        L7FlowType.RESPONSE,
        latency_ns=3_000_000,
        http=HTTP(503, "GET", "http://api.shop/cart", "HTTP/1.1"),
    )
    return flow(t, l7=l7)


def dns_nxdomain(t: int) -> Flow:
    l7 = Layer7(L7FlowType.RESPONSE, dns=DNS("nope.shop.svc.", rcode=3, qtypes=("A",)))
    return flow(t, dst="kube-system/coredns-1", port=53, l7=l7, udp=True)


class FakeSource:
    """A neighbour faked for the UI tests: hands out the flows it is given, records each run's
    filters, and can play an unreachable relay."""

    describe = "fake relay"
    server_side = True

    def __init__(self, flows=(), *, unreachable_runs: int = 0) -> None:
        self.flows = list(flows)
        self.runs: list[Filters] = []
        self.unreachable_runs = unreachable_runs
        self.buffer: FlowBuffer | None = None

    async def run(self, buffer: FlowBuffer, filters: Filters, on_state) -> None:
        self.runs.append(filters)
        self.buffer = buffer
        if len(self.runs) <= self.unreachable_runs:
            on_state(
                SourceState(
                    Link.UNREACHABLE,
                    "cannot reach fake relay: UNAVAILABLE: connection refused",
                    retry_in=8,
                )
            )
            await asyncio.sleep(3600)
        on_state(SourceState(Link.CONNECTED, "connected to fake relay"))
        buffer.extend(self.flows)
        await asyncio.Event().wait()
