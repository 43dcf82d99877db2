"""ServiceSync with NodePort: NodePort services in the store -> the uplink's NodePort maps (fake)
with remote backends marked, Local policy, Maglev and affinity; the node IP's socket frontend for
the hairpin; Maglev tables rebuilt only for the services whose backends changed; LoadBalancer
addresses on the uplink and at pod sockets."""

from __future__ import annotations

import asyncio
import contextlib
from ipaddress import IPv4Address

from dataplane.agent.services import ServiceSync
from dataplane.maps.lbmap import FakeLBMaps
from dataplane.maps.nodeportmap import FakeNodePortMaps, NodePortBackend
from flowscope.apis.objectstore import ObjectStore
from tests.agent.test_enforcement import until
from tests.agent.test_services import endpoint_slice

NODE_IP = "10.224.0.4"
PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"}]


def nodeport_service(name: str, node_port: int, **spec) -> dict:
    annotations = spec.pop("annotations", None)
    meta: dict = {"name": name, "namespace": "default"}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "NodePort",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": node_port}],
            **spec,
        },
    }


def slice_for(name: str, eps: list[tuple[str, str, bool]]) -> dict:
    s = endpoint_slice(eps, PORTS)
    s["metadata"]["name"] = f"{name}-abc"
    s["metadata"]["labels"]["kubernetes.io/service-name"] = name
    return s


@contextlib.asynccontextmanager
async def running(kv, node: str = "node-1"):
    sockets, nodeport = FakeLBMaps(), FakeNodePortMaps()
    sync = ServiceSync(kv, node, sockets, nodeport=nodeport, node_ip=NODE_IP)
    await sync.start()
    task = asyncio.create_task(sync.run())
    try:
        yield sync, sockets, nodeport
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


EPS = [("10.244.1.5", "node-1", True), ("10.244.2.5", "node-2", True)]


async def test_nodeport_frontends_reach_the_uplink_maps_and_the_node_ip_socket(kv) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")
    await store.apply(
        [
            nodeport_service("cluster", 30080),
            nodeport_service("local", 30081, externalTrafficPolicy="Local"),
            nodeport_service("sticky", 30082, sessionAffinity="ClientIP"),
        ]
    )
    await store.apply([slice_for(n, EPS) for n in ("cluster", "local", "sticky")], internal=True)
    async with running(kv) as (sync, sockets, nodeport):
        await until(
            lambda: all(s.backends for s in nodeport.services()) and len(nodeport.services()) == 3
        )
        by_port = {s.port: s for s in nodeport.services()}
        assert by_port[30080].backends == (
            NodePortBackend("10.244.1.5", 8080),
            NodePortBackend("10.244.2.5", 8080, remote=True),
        )
        assert not by_port[30080].local and by_port[30080].affinity_timeout is None
        assert by_port[30081].local
        assert by_port[30081].backends == (NodePortBackend("10.244.1.5", 8080),)
        assert by_port[30082].affinity_timeout == 10800
        # pods of this node reach node_ip:nodePort at the socket (they never cross the uplink)
        hairpin = sockets.lookup(NODE_IP, 30080, "TCP")
        assert hairpin is not None and len(hairpin.service.backends) == 2
        assert sockets.lookup(NODE_IP, 30081, "TCP").service.backends[0].ip == IPv4Address(
            "10.244.1.5"
        )
        assert sync.problem is None


async def test_maglev_tables_are_rebuilt_only_for_services_whose_backends_changed(kv) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")
    maglev = {"service.cilium.io/lb-algorithm": "maglev"}
    await store.apply(
        [
            nodeport_service("one", 30090, annotations=maglev),
            nodeport_service("two", 30091, annotations=maglev),
        ]
    )
    await store.apply([slice_for("one", EPS), slice_for("two", EPS)], internal=True)
    async with running(kv) as (_, _sockets, nodeport):
        await until(lambda: sum(len(s.backends) for s in nodeport.services()) == 4)
        assert all(s.maglev for s in nodeport.services())
        assert nodeport.maglev_builds == 2
        await store.apply([slice_for("two", EPS[:1])], internal=True)
        await until(lambda: len(nodeport.lookup(30091, "TCP").service.backends) == 1)
        assert nodeport.maglev_builds == 3  # "one" kept its table


async def test_a_loadbalancer_address_reaches_the_uplink_maps_and_pod_sockets(kv) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")
    await store.apply([nodeport_service("lb", 30095, type="LoadBalancer")])
    await store.apply([slice_for("lb", EPS)], internal=True)
    lb_ip = "10.225.0.7"
    async with running(kv) as (sync, sockets, nodeport):
        await until(lambda: nodeport.lookup(30095, "TCP") is not None)
        assert nodeport.lookup(80, "TCP", lb_ip) is None  # no address assigned yet
        await store.update_status(
            "Service", "default", "lb", {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
        )
        await until(lambda: nodeport.lookup(80, "TCP", lb_ip) is not None)
        at_lb = nodeport.lookup(80, "TCP", lb_ip).service
        assert at_lb.backends == nodeport.lookup(30095, "TCP").service.backends
        assert str(at_lb) == f"LoadBalancer {lb_ip}:80/TCP"
        assert sockets.lookup(lb_ip, 80, "TCP") is not None  # pods are translated at the socket
        assert sync.problem is None
