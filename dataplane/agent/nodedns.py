"""The node's DNS proxy, wired in: where it listens, whom it forwards to, which names each pod
may ask (its CiliumNetworkPolicies' DNS rules), and what an answer does to policy.

The cluster DNS address is made local to the node's namespace (a /32 on its loopback, as
NodeLocal DNSCache puts it on a dummy interface) and left out of the socket LB, so pods' DNS
packets reach the proxy; enforcement gives that address the DNS pods' identity in the ipcache,
so pods' policies towards kube-dns govern it as before.

Why a pod cannot open a toFQDNs hole by guessing an address: the holes are the DNS cache's
addresses, and only this proxy writes the cache, from answers the cluster DNS gave to queries
the proxy itself sent (the answer must carry the query's ID, on the proxy's own socket to the
upstream, opened in the asking pod's namespace). Connecting to an address first, or asking
another server, opens nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyroute2 import IPRoute

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)
from dataplane.dns.forward import Upstream
from dataplane.dns.resolvconf import DNS_SERVICE, dns_service_ip
from dataplane.dns.server import netns_socket_factory
from dataplane.endpoint.netns import netns_path
from dataplane.fqdn.dnsproxy import DNSProxy
from dataplane.fqdn.selector import FQDNSelector, any_matches
from dataplane.policy.cnp import dns_selectors, fqdn_selectors
from flowscope.flow.model import DNS, Service

log = logging.getLogger(__name__)

APPLY_TIMEOUT = 2.0  # seconds an answer waits for the datapath to allow its addresses
EXPIRE_INTERVAL = 5.0


class NodeDNS:
    def __init__(self, info, node: str, enforcement, services, publish, enricher) -> None:
        self.info = info
        self.node = node
        self.enforcement = enforcement
        self.services = services
        self.publish = publish  # FlowStream.publish
        self.enricher = enricher
        self.address = str(dns_service_ip(info.service_cidr))
        self.netns = info.paths.node_netns(node)
        self.proxy: DNSProxy | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._add_address)
        ns, name = DNS_SERVICE
        self.proxy = DNSProxy(
            address=self.address,
            upstreams=self._upstreams,
            allowed=self.allowed,
            learn=self.learn,
            emit=lambda flow: self.publish([flow]),
            describe=self.enricher.known_endpoint,
            new_socket=netns_socket_factory(netns_path(self.netns)),
            upstream_socket=self.upstream_socket,
            node_name=self.node,
            service=Service(name, ns),
        )
        await self.proxy.start()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            self.enforcement.expire_fqdns(time.monotonic())
            # a pooled socket holds its pod's namespace alive: let go of gone pods' sockets
            local = {str(x.endpoint.ip) for x in self.enforcement.local.values()}
            if self.proxy is not None:
                for client in list(self.proxy.udp_sockets.clients()):
                    if client not in local:
                        self.proxy.udp_sockets.forget(client)

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()

    def _add_address(self) -> None:
        with IPRoute(netns=self.netns) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            # scope host: local, but never chosen as the source of the node's own packets
            ipr.addr("replace", index=lo, address=self.address, prefixlen=32, scope=254)

    def _upstreams(self) -> list[Upstream]:
        # the kube-dns backends, UDP's (the same pods serve TCP)
        return [Upstream(b.ip, b.port) for b in self.services.backends(self.address, 53, "UDP")]

    # -- the proxy's questions ------------------------------------------------------------------
    def allowed(self, client_ip: str) -> tuple[FQDNSelector, ...] | None:
        """The names the pod at `client_ip` may ask; None: any (no DNS rules select it)."""
        local = self.enforcement.local_at(client_ip)
        if local is None:
            return None
        ep = local.endpoint
        pod = self.enforcement.pods.items.get(f"{ep.pod_namespace}/{ep.pod_name}") or {}
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return dns_selectors(self.enforcement.cnps(), ep.pod_namespace, labels)

    async def learn(self, answer: DNS) -> None:
        if answer.rcode != 0 or not answer.ips:
            return
        names = [answer.query, *answer.cnames]
        cache = self.enforcement.dns_cache
        grew = cache.learn(names, answer.ips, answer.ttl, time.monotonic())
        wanted = fqdn_selectors(self.enforcement.cnps())
        if not grew or not any(any_matches(wanted, n) for n in names):
            return
        self.enforcement.fqdn_learned()
        if not await self.enforcement.wait_fqdn_applied(cache.version, APPLY_TIMEOUT):
            log.warning(
                "DNS answer for %s released before the datapath allowed %s (%.1fs)",
                answer.query,
                ", ".join(answer.ips),
                APPLY_TIMEOUT,
            )

    def upstream_socket(self, client_ip: str):
        """Sockets in the client pod's namespace (the node's for a client that is no pod)."""
        local = self.enforcement.local_at(client_ip)
        return netns_socket_factory(local.endpoint.netns if local else netns_path(self.netns))
