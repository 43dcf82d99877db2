"""Keep one node's socket load-balancer maps equal to the cluster's Services and EndpointSlices.

Inputs are mirrors of the store (Services, EndpointSlices); the plan is pure
(dataplane.services.plan: frontends and their ready backends for this node, traffic policies,
affinity); the maps module (dataplane.maps.lbmap) writes only what changed, in an order a
concurrent connect() can never catch half-done. Changes are coalesced like enforcement's.

The socket programs translate ClusterIPs (and LoadBalancer addresses) for pod sockets. NodePort
frontends go two ways: into the NodePort maps (dataplane.maps.nodeportmap) for traffic that
arrives at the node's uplink (probes/nodeport.c), and, at this node's own IP, into the socket maps
too: a pod connecting to its node's IP never crosses the uplink (the hairpin case), so its socket
is translated like Cilium's socket LB does for NodePorts.
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address

from dataplane.maps.lbmap import Backend, LBMaps, Service
from dataplane.maps.nodeportmap import (
    NODE_ADDRESS,
    NodePortBackend,
    NodePortMaps,
    NodePortService,
)
from dataplane.services.plan import Frontend, plan
from flowscope.apis import kinds
from flowscope.errors import FlowscopeError
from flowscope.store.kv import KV
from flowscope.store.mirror import PrefixMirror, json_value
from flowscope.supervise import on_change, run_together

log = logging.getLogger(__name__)

SOCKET_KINDS = frozenset({"ClusterIP", "LoadBalancer"})  # what a pod's socket may connect to
SOCKET_PROTOCOLS = frozenset({"TCP", "UDP"})  # what the socket programs translate


def _socket_service(f: Frontend, vip: str) -> Service:
    """One frontend as the socket LB maps hold it, at address `vip`."""
    return Service(
        vip=vip,
        port=f.key.port,
        proto=f.key.protocol,
        backends=tuple(Backend(b.ip, b.port) for b in f.backends),
        affinity_timeout=f.affinity_timeout or None,
    )


def socket_services(frontends: tuple[Frontend, ...]) -> list[Service]:
    """The plan's frontends a pod socket can reach, as the socket LB maps hold them."""
    return [
        _socket_service(f, f.key.address)
        for f in frontends
        if f.key.kind in SOCKET_KINDS and f.key.protocol in SOCKET_PROTOCOLS
    ]


UPLINK_KINDS = frozenset({"NodePort", "LoadBalancer"})  # what traffic from the fabric may reach


def nodeport_services(frontends: tuple[Frontend, ...], node: str) -> list[NodePortService]:
    """The plan's NodePort and LoadBalancer frontends as the uplink's maps hold them (a NodePort
    at the node's own address, a LoadBalancer at its ingress address): backends on other nodes
    are marked remote (reached with SNAT to this node's IP)."""
    return [
        NodePortService(
            port=f.key.port,
            proto=f.key.protocol,
            backends=tuple(NodePortBackend(b.ip, b.port, b.node != node) for b in f.backends),
            local=f.local_only,
            maglev=f.algorithm == "maglev",
            affinity_timeout=f.affinity_timeout or None,
            address=NODE_ADDRESS if f.key.kind == "NodePort" else IPv4Address(f.key.address),
        )
        for f in frontends
        if f.key.kind in UPLINK_KINDS and f.key.protocol in SOCKET_PROTOCOLS
    ]


def nodeport_socket_services(frontends: tuple[Frontend, ...], node_ip: str) -> list[Service]:
    """The NodePort frontends at this node's own IP, for pod sockets (hairpin through the node)."""
    return [
        _socket_service(f, node_ip)
        for f in frontends
        if f.key.kind == "NodePort" and f.key.protocol in SOCKET_PROTOCOLS
    ]


class ServiceSync:
    def __init__(
        self,
        kv: KV,
        node: str,
        maps: LBMaps,
        *,
        nodeport: NodePortMaps | None = None,
        node_ip: str | None = None,
        local_addresses: frozenset[str] = frozenset(),
    ) -> None:
        self.node = node
        self.maps = maps
        self.nodeport = nodeport  # None: NodePort is not programmed (unit tests of sockets)
        self.node_ip = node_ip
        self._changed = asyncio.Event()
        self.services = PrefixMirror(
            kv, kinds.get("Service").prefix(), json_value, self._changed.set
        )
        self.slices = PrefixMirror(
            kv, kinds.get("EndpointSlice").prefix(), json_value, self._changed.set
        )
        # service addresses served on the node itself (the DNS proxy on kube-dns's address): the
        # socket LB leaves them alone, so pods' packets to them reach the node
        self.local_addresses = local_addresses
        # the last plan's backends by frontend (address, port, protocol): the DNS proxy asks
        # for kube-dns's on every query, whatever the number of services
        self._backends: dict[tuple[str, int, str], tuple] = {}
        self.problem: str | None = None  # why the maps could not be written, while it lasts
        self.syncs = 0

    async def start(self) -> None:
        for mirror in (self.services, self.slices):
            await mirror.load()
        await self.sync()

    async def run(self) -> None:
        await run_together(
            {
                "mirror services": self.services.run(),
                "mirror endpointslices": self.slices.run(),
                "service sync": on_change(self._changed, self.sync),
            },
            "service sync",
        )

    def backends(self, address: str, port: int, protocol: str) -> tuple:
        """The ready backends of a ClusterIP frontend, from the last plan."""
        return self._backends.get((address, port, protocol), ())

    async def sync(self) -> None:
        frontends = plan(
            list(self.services.items.values()), list(self.slices.items.values()), self.node
        ).frontends
        self._backends = {
            (f.key.address, f.key.port, f.key.protocol): f.backends for f in frontends
        }
        wanted = [s for s in socket_services(frontends) if str(s.vip) not in self.local_addresses]
        if self.node_ip is not None:
            wanted += nodeport_socket_services(frontends, self.node_ip)
        nodeports = nodeport_services(frontends, self.node)
        try:
            upserted, deleted = await asyncio.to_thread(self.maps.sync, wanted)
            if self.nodeport is not None:
                np_up, np_del = await asyncio.to_thread(self.nodeport.sync, nodeports)
                upserted, deleted = upserted + np_up, deleted + np_del
        except FlowscopeError as e:  # a full map, above all: reported, retried on the next change
            if str(e) != self.problem:
                log.error("cannot program services: %s", e)
            self.problem = str(e)
            return
        self.problem = None
        self.syncs += 1
        if upserted or deleted:
            log.info("services: %d frontends written, %d deleted", upserted, deleted)
