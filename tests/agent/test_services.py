"""ServiceSync: Services and EndpointSlices in the store -> one node's socket-LB maps (the fake
maps; the kernel programs have their own tests in tests/probes/test_socklb*)."""

from __future__ import annotations

import asyncio
import contextlib
from ipaddress import IPv4Network

from dataplane.agent.services import ServiceSync
from dataplane.maps.lbmap import Backend, FakeLBMaps
from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from tests.agent.test_enforcement import until


def service(ports: list[dict], affinity: bool = False, local: bool = False) -> dict:
    spec: dict = {"selector": {"app": "web"}, "ports": ports}
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
    if local:
        spec["internalTrafficPolicy"] = "Local"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }


def endpoint_slice(endpoints: list[tuple[str, str, bool]], ports: list[dict]) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}
            for ip, node, ready in endpoints
        ],
        "ports": ports,
    }


@contextlib.asynccontextmanager
async def running(kv, node: str = "node-1"):
    maps = FakeLBMaps()
    sync = ServiceSync(kv, node, maps)
    await sync.start()
    task = asyncio.create_task(sync.run())
    try:
        yield sync, maps
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def by_port(maps: FakeLBMaps) -> dict[tuple[int, str], tuple[Backend, ...]]:
    return {(s.port, s.proto.name): s.backends for s in maps.services()}


async def test_clusterip_ports_get_their_ready_backends_and_follow_changes(kv) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")
    await store.apply([service([{"name": "http", "port": 80, "targetPort": 8080}])])
    async with running(kv) as (sync, maps):
        # no endpoints yet: the frontend exists, with nothing behind it (connect is refused)
        await until(lambda: by_port(maps) == {(80, "TCP"): ()})
        assert maps.services()[0].vip in IPv4Network("10.0.0.0/16")  # its ClusterIP
        slice_ports = [{"name": "http", "port": 8080, "protocol": "TCP"}]
        eps = [("10.244.1.5", "node-1", True), ("10.244.2.5", "node-2", True)]
        await store.apply([endpoint_slice(eps, slice_ports)], internal=True)
        await until(lambda: len(by_port(maps).get((80, "TCP"), ())) == 2)
        assert set(by_port(maps)[(80, "TCP")]) == {
            Backend("10.244.1.5", 8080),
            Backend("10.244.2.5", 8080),
        }
        # a backend turns unready: it gets no new connections
        eps[1] = ("10.244.2.5", "node-2", False)
        await store.apply([endpoint_slice(eps, slice_ports)], internal=True)
        await until(lambda: by_port(maps)[(80, "TCP")] == (Backend("10.244.1.5", 8080),))
        # the service is deleted: so is its frontend
        await store.delete([ObjectRef("Service", "default", "web")])
        await until(lambda: by_port(maps) == {})
        assert sync.problem is None


async def test_udp_affinity_and_internal_traffic_policy_local(kv) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")
    ports = [{"name": "dns", "port": 53, "protocol": "UDP"}]
    await store.apply([service(ports, affinity=True, local=True)])
    eps = [("10.244.1.5", "node-1", True), ("10.244.2.5", "node-2", True)]
    await store.apply([endpoint_slice(eps, ports)], internal=True)
    async with running(kv, "node-1") as (_, maps):
        await until(lambda: bool(maps.services()) and bool(maps.services()[0].backends))
        (svc,) = maps.services()
        assert svc.proto.name == "UDP" and svc.affinity_timeout == 10800
        assert svc.backends == (Backend("10.244.1.5", 53),)  # Local: this node's only
