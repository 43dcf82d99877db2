"""Which identity each pod IP has, published in the store by the agent that owns the pod.

Cilium's kvstore mode keeps the same records (`cilium/state/ip/v1/<cluster>/<ip>`): the owning
agent resolves a pod's labels to an identity once, and every other agent learns the IP's
identity by watching these keys, without re-deriving it. A record is rewritten when the pod (or
its namespace) is relabelled and deleted with the endpoint.

A record also names the pod's workload (flowscope.apis.owners.workload_of), so the collector of
any node can put Hubble's `workloads` on flows of a remote pod. The field is optional and left
out of the JSON when the pod has none: records of bare pods read as before, and records written
before the field existed decode with no workload. Unknown fields are ignored when decoding, so a
later field does not make this decoder drop records.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from ipaddress import IPv4Address

from flowscope.flow.model import Workload
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
    workload: Workload | None = None  # the pod's Deployment/ReplicaSet/...; None: a bare pod

    def to_json(self) -> bytes:
        doc: dict = {
            "ip": str(self.ip),
            "identity": self.identity,
            "node": self.node,
            "host_ip": str(self.host_ip),
            "namespace": self.namespace,
            "pod": self.pod,
        }
        if self.workload is not None:
            doc["workload"] = {"name": self.workload.name, "kind": self.workload.kind}
        return json.dumps(doc, sort_keys=True).encode()


_FIELDS = frozenset(f.name for f in fields(IPRecord))


def decode(key: str, value: bytes) -> IPRecord | None:
    """PrefixMirror decoder: a record, or None (logged) when it cannot be read."""
    try:
        doc = {k: v for k, v in json.loads(value).items() if k in _FIELDS}
        doc["ip"], doc["host_ip"] = IPv4Address(doc["ip"]), IPv4Address(doc["host_ip"])
        raw = doc.get("workload")
        doc["workload"] = Workload(str(raw["name"]), str(raw["kind"])) if raw else None
        return IPRecord(**doc)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("ignoring unreadable ipcache record %s: %s", key, e)
        return None


async def publish(kv: KV, record: IPRecord) -> int:
    """Write (or rewrite) the record; returns the store revision of the write."""
    return await kv.put(PREFIX + str(record.ip), record.to_json())


async def withdraw(kv: KV, ip: IPv4Address) -> bool:
    return await kv.delete(PREFIX + str(ip))
