"""The kernel datapath of one node (probes.datapath.Datapath) as enforcement writes to it:
bound to the node's namespace, with the ipcache in the identity package's terms."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network

from dataplane.identity.ipcache import IPCacheEntry
from dataplane.maps.endpointmap import Endpoint as DatapathEndpoint
from dataplane.policy.entry import EndpointPolicy
from probes.datapath import Datapath


class NodeDatapath:
    def __init__(self, datapath: Datapath, netns: str) -> None:
        self.datapath = datapath
        self.netns = netns

    async def attach_endpoint(self, host_ifname: str) -> None:
        await self.datapath.attach_endpoint(self.netns, host_ifname)

    def ipcache_entries(self) -> dict[IPv4Network, IPCacheEntry]:
        return {
            prefix: IPCacheEntry(v.identity, v.cidr_identity, v.node_ip)
            for prefix, v in self.datapath.ipcache.entries().items()
        }

    def ipcache_update(self, upserts: Mapping[IPv4Network, IPCacheEntry]) -> None:
        self.datapath.ipcache.apply(upserts)

    def ipcache_delete(self, prefixes: list[IPv4Network]) -> None:
        self.datapath.ipcache.apply({}, prefixes)

    def policy_get(self, endpoint_id: int) -> EndpointPolicy | None:
        return self.datapath.policy.get(endpoint_id)

    def policy_set(self, endpoint_id: int, policy: EndpointPolicy) -> None:
        self.datapath.policy.set_policy(endpoint_id, policy)

    def policy_delete(self, endpoint_id: int) -> None:
        self.datapath.policy.delete(endpoint_id)

    def endpoint_set(
        self, ifindex: int, endpoint_id: int, identity: int, ip: IPv4Address, audit: bool
    ) -> None:
        # the datapath's endpoint id is the host ifindex, as enforcement's is
        self.datapath.endpoints.upsert(DatapathEndpoint(ifindex, identity, ip, audit))

    def endpoint_delete(self, ifindex: int) -> None:
        self.datapath.endpoints.delete(ifindex)
