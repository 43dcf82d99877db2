"""Where IPAM keeps its state in the cluster store, and how each record is encoded (JSON).

See the package docstring for the whole layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

ROOT = "/flowscope/ipam/"
CONFIG_KEY = ROOT + "config"
NODES_KEY_PREFIX = ROOT + "nodes/"
PREFIXES_KEY_PREFIX = ROOT + "prefixes/"
IPS_KEY_PREFIX = ROOT + "ips/"
LEASES_KEY_PREFIX = ROOT + "leases/"
BLOCK_CURSOR_KEY = ROOT + "block-cursor"


def node_key(node: str) -> str:
    return NODES_KEY_PREFIX + node


def prefix_key(prefix: IPv4Network) -> str:
    # "_" rather than "/" so that one prefix is one key segment
    return f"{PREFIXES_KEY_PREFIX}{prefix.network_address}_{prefix.prefixlen}"


def prefix_from_key(key: str) -> IPv4Network:
    """The prefix a key under PREFIXES_KEY_PREFIX stands for (also for delete watch events)."""
    return IPv4Network(key.rsplit("/", 1)[-1].replace("_", "/"))


def ip_key(ip: IPv4Address) -> str:
    return IPS_KEY_PREFIX + str(ip)


def leases_prefix(node: str) -> str:
    return f"{LEASES_KEY_PREFIX}{node}/"


def lease_key(node: str, owner: str) -> str:
    return leases_prefix(node) + owner


@dataclass(frozen=True)
class Lease:
    owner: str  # "<containerID>/<ifname>"
    ip: IPv4Address
    pool: IPv4Network  # the node's CIDR (overlay) or the block (vnet) the IP came from
    node: str

    def encode(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "ip": str(self.ip), "pool": str(self.pool), "node": self.node}
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Lease:
        d = json.loads(raw)
        return cls(d["owner"], IPv4Address(d["ip"]), IPv4Network(d["pool"]), d["node"])


@dataclass(frozen=True)
class NodeRecord:
    """A node's IPAM state; every change to the node's prefixes or leases rewrites it, so its
    mod_revision serialises them (the CAS point for agents of the same node)."""

    node_ip: IPv4Address
    prefixes: tuple[IPv4Network, ...] = ()
    # pool -> the address handed out last in it, where the next search starts (rotation)
    last: dict[IPv4Network, IPv4Address] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "node_ip": str(self.node_ip),
                "prefixes": [str(p) for p in self.prefixes],
                "last": {str(p): str(a) for p, a in sorted(self.last.items())},
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> NodeRecord:
        d = json.loads(raw)
        return cls(
            IPv4Address(d["node_ip"]),
            tuple(IPv4Network(p) for p in d["prefixes"]),
            {IPv4Network(p): IPv4Address(a) for p, a in d.get("last", {}).items()},
        )


@dataclass(frozen=True)
class PrefixOwner:
    """The value under a prefix key: who owns the prefix and where to route it."""

    node: str
    node_ip: IPv4Address

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "node_ip": str(self.node_ip)}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PrefixOwner:
        d = json.loads(raw)
        return cls(d["node"], IPv4Address(d["node_ip"]))
