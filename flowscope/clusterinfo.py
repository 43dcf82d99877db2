"""What `flowscope lab up` built, as the rest of the tools read it (cluster.json in the run dir)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network

from flowscope.errors import ClusterNotUp
from flowscope.paths import ClusterPaths


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ip: IPv4Address  # the node's address on the VNET
    netns: str


@dataclass(frozen=True)
class ClusterInfo:
    name: str
    ipam: str  # "vnet" | "overlay"
    vnet_cidr: IPv4Network  # the node subnet on the fabric
    pod_cidr: IPv4Network | None  # overlay: private pod CIDR; vnet: separate pod subnet or None
    service_cidr: IPv4Network
    gateway: IPv4Address  # the fabric router's address on the VNET
    etcd_url: str
    nodes: tuple[NodeInfo, ...] = ()
    extra: dict = field(default_factory=dict)  # later capabilities (kafka, relay) add keys here

    @property
    def paths(self) -> ClusterPaths:
        return ClusterPaths(self.name)

    @property
    def policy_audit_mode(self) -> bool:
        """Cluster-wide policy audit mode (Cilium's policy-audit-mode): drops become AUDIT."""
        return bool(self.extra.get("policy_audit_mode", False))

    @property
    def lb_pool(self) -> IPv4Network | None:
        """Where LoadBalancer Services get their addresses (None: a cluster made before pools)."""
        value = self.extra.get("lb_pool")
        return IPv4Network(value) if value else None

    @property
    def policy_map_entries(self) -> int | None:
        """The most policy entries one endpoint may have (None: the datapath's default)."""
        value = self.extra.get("policy_map_entries")
        return int(value) if value else None

    def node(self, name: str) -> NodeInfo:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def to_json(self) -> str:
        def conv(o):
            if isinstance(o, IPv4Address | IPv4Network):
                return str(o)
            raise TypeError(o)

        return json.dumps(asdict(self), default=conv, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        raw = json.loads(text)
        return cls(
            name=raw["name"],
            ipam=raw["ipam"],
            vnet_cidr=IPv4Network(raw["vnet_cidr"]),
            pod_cidr=IPv4Network(raw["pod_cidr"]) if raw.get("pod_cidr") else None,
            service_cidr=IPv4Network(raw["service_cidr"]),
            gateway=IPv4Address(raw["gateway"]),
            etcd_url=raw["etcd_url"],
            nodes=tuple(
                NodeInfo(n["name"], IPv4Address(n["ip"]), n["netns"]) for n in raw["nodes"]
            ),
            extra=raw.get("extra", {}),
        )


def load(cluster: str) -> ClusterInfo:
    path = ClusterPaths(cluster).state_file
    try:
        return ClusterInfo.from_json(path.read_text())
    except FileNotFoundError:
        raise ClusterNotUp(cluster) from None


def save(info: ClusterInfo) -> None:
    path = info.paths.state_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(info.to_json())
    os.replace(tmp, path)
