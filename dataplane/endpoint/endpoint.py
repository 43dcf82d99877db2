"""An endpoint: one pod interface plumbed into a node, as the agent records it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address
from typing import Any

# Every pod's next hop: a link-local address no node owns, answered by a permanent neighbour
# entry in the pod (the host veth's MAC), as Cilium and Calico do. The pod's IP is a /32.
GATEWAY = IPv4Address("169.254.1.1")
HOST_IFNAME_PREFIX = "lxc"


def host_ifname(container_id: str, ifname: str) -> str:
    """The host side veth's name: stable for (container, ifname), so DEL and CHECK find it."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_IFNAME_PREFIX + digest[:11]  # 14 bytes, under IFNAMSIZ


def endpoint_prefix(node: str) -> str:
    return f"/flowscope/endpoints/{node}/"


def endpoint_key(node: str, container_id: str, ifname: str) -> str:
    return f"{endpoint_prefix(node)}{container_id}/{ifname}"


@dataclass(frozen=True)
class Endpoint:
    node: str
    container_id: str
    ifname: str
    netns: str  # the pod's network namespace path (CNI_NETNS)
    ip: IPv4Address
    pod_mac: str
    host_ifname: str
    host_mac: str
    host_ifindex: int  # in the node's namespace
    mtu: int
    pod_namespace: str
    pod_name: str
    pod_uid: str
    created: str  # RFC 3339, UTC

    @property
    def key(self) -> str:
        return endpoint_key(self.node, self.container_id, self.ifname)

    @property
    def owner(self) -> str:
        """The IPAM owner of this endpoint's address."""
        return f"{self.container_id}/{self.ifname}"

    def to_json(self) -> bytes:
        doc: dict[str, Any] = asdict(self)
        doc["ip"] = str(self.ip)
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Endpoint:
        doc = json.loads(data)
        doc["ip"] = IPv4Address(doc["ip"])
        return cls(**doc)
