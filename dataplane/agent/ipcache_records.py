"""Which identity each pod IP has, published in the store by the agent that owns the pod.

Cilium's kvstore mode keeps the same records (`cilium/state/ip/v1/<cluster>/<ip>`): the owning
agent resolves a pod's labels to an identity once, and every other agent learns the IP's
identity by watching these keys, without re-deriving it. A record is rewritten when the pod (or
its namespace) is relabelled and deleted with the endpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address

from flowscope.store.kv import KV

log = logging.getLogger(__name__)

PREFIX = "/flowscope/ipcache/"


@dataclass(frozen=True)
class IPRecord:
    ip: IPv4Address
    identity: int
    node: str
    host_ip: IPv4Address  # the node's IP: where the address lives
    namespace: str
    pod: str

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc["ip"], doc["host_ip"] = str(self.ip), str(self.host_ip)
        return json.dumps(doc, sort_keys=True).encode()


def decode(key: str, value: bytes) -> IPRecord | None:
    """PrefixMirror decoder: a record, or None (logged) when it cannot be read."""
    try:
        doc = json.loads(value)
        doc["ip"], doc["host_ip"] = IPv4Address(doc["ip"]), IPv4Address(doc["host_ip"])
        return IPRecord(**doc)
    except (ValueError, TypeError, KeyError) as e:
        log.warning("ignoring unreadable ipcache record %s: %s", key, e)
        return None


async def publish(kv: KV, record: IPRecord) -> int:
    """Write (or rewrite) the record; returns the store revision of the write."""
    return await kv.put(PREFIX + str(record.ip), record.to_json())


async def withdraw(kv: KV, ip: IPv4Address) -> bool:
    return await kv.delete(PREFIX + str(ip))
