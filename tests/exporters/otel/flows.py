"""Hand-made flows for the exporters' tests (L3/L4, a drop, HTTP and DNS L7, a lost event):
nothing produces L7 flows yet, so these stand for what issue 9's proxy will make."""

from __future__ import annotations

from flowscope.flow.model import (
    DNS,
    HTTP,
    IP,
    TCP,
    UDP,
    Endpoint,
    Flow,
    FlowType,
    HTTPHeader,
    L7FlowType,
    Layer7,
    LostEvent,
    LostEventSource,
    TCPFlags,
    TrafficDirection,
    Verdict,
    Workload,
)

T0 = 1_764_400_000_000_000_000
WEB = Endpoint(
    id=11,
    identity=1234,
    namespace="default",
    labels=("k8s:app=web",),
    pod_name="web-1",
    workloads=(Workload("web", "Deployment"),),
)
DB = Endpoint(id=12, identity=5678, namespace="prod", labels=("k8s:app=db",), pod_name="db-0")


def tcp_flow(i: int = 0, node: str = "n1", verdict: Verdict = Verdict.FORWARDED) -> Flow:
    return Flow(
        time_ns=T0 + i,
        verdict=verdict,
        drop_reason=133 if verdict == Verdict.DROPPED else 0,
        ip=IP("10.0.1.5", "10.0.2.7"),
        l4=TCP(40000 + i % 1000, 5432, TCPFlags(SYN=True)),
        source=WEB,
        destination=DB,
        node_name=node,
        traffic_direction=TrafficDirection.EGRESS,
        is_reply=False,
        uuid=f"u-{node}-{i}",
    )


def http_request(i: int = 0, node: str = "n1") -> Flow:
    return Flow(
        time_ns=T0 + i,
        verdict=Verdict.FORWARDED,
        ip=IP("10.0.1.5", "10.0.2.7"),
        l4=TCP(41000, 8080),
        source=WEB,
        destination=DB,
        type=FlowType.L7,
        node_name=node,
        traffic_direction=TrafficDirection.INGRESS,
        l7=Layer7(
            type=L7FlowType.REQUEST,
            http=HTTP(
                method="GET",
                url="http://user:pw@db.prod:8080/orders?token=s3cret&id=7#frag",
                protocol="HTTP/1.1",
                headers=(
                    HTTPHeader("Authorization", "Bearer MY_TOKEN"),
                    HTTPHeader("Cookie", "session=abc"),
                    HTTPHeader("User-Agent", "curl/8.7.1"),
                ),
            ),
        ),
    )


def http_response(i: int = 0, node: str = "n1", code: int = 200) -> Flow:
    return Flow(
        time_ns=T0 + i,
        verdict=Verdict.FORWARDED,
        ip=IP("10.0.2.7", "10.0.1.5"),
        l4=TCP(8080, 41000),
        source=DB,
        destination=WEB,
        type=FlowType.L7,
        node_name=node,
        traffic_direction=TrafficDirection.EGRESS,
        l7=Layer7(
            type=L7FlowType.RESPONSE,
            latency_ns=25_000_000,
            http=HTTP(
                code=code,
                method="GET",
                url="http://db.prod:8080/orders?token=s3cret",
                protocol="HTTP/1.1",
                headers=(HTTPHeader("Set-Cookie", "session=def"),),
            ),
        ),
    )


def dns_response(i: int = 0, node: str = "n1") -> Flow:
    return Flow(
        time_ns=T0 + i,
        verdict=Verdict.FORWARDED,
        ip=IP("10.0.0.10", "10.0.1.5"),
        l4=UDP(53, 33333),
        source=None,
        destination=WEB,
        type=FlowType.L7,
        node_name=node,
        l7=Layer7(
            type=L7FlowType.RESPONSE,
            dns=DNS(query="db.prod.svc.cluster.local.", ips=("10.0.2.7",), qtypes=("A",), rcode=0),
        ),
    )


def lost(node: str = "n1", n: int = 5) -> LostEvent:
    return LostEvent(LostEventSource.PERF_EVENT_RING_BUFFER, n, cpu=1, time_ns=T0, node_name=node)
