"""The endpoints of one node, kept in the cluster store under /flowscope/endpoints/<node>/."""

from __future__ import annotations

from dataplane.endpoint.endpoint import Endpoint, endpoint_key, endpoint_prefix
from flowscope.store.kv import KV


class EndpointRegistry:
    def __init__(self, kv: KV, node: str) -> None:
        self.kv = kv
        self.node = node

    async def get(self, container_id: str, ifname: str) -> Endpoint | None:
        kv = await self.kv.get(endpoint_key(self.node, container_id, ifname))
        return Endpoint.from_json(kv.value) if kv else None

    async def put(self, endpoint: Endpoint) -> None:
        await self.kv.put(endpoint.key, endpoint.to_json())

    async def delete(self, container_id: str, ifname: str) -> bool:
        return await self.kv.delete(endpoint_key(self.node, container_id, ifname))

    async def list(self) -> list[Endpoint]:
        items, _ = await self.kv.range(endpoint_prefix(self.node))
        return [Endpoint.from_json(kv.value) for kv in items]
