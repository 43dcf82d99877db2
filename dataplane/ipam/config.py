"""IPAM configuration: the two modes of Azure CNI (vnet, overlay) and their checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any, Literal

from dataplane.ipam.errors import IPAMConfigError
from dataplane.ipam.pools import block_capacity, subnet_reserved

if TYPE_CHECKING:
    from flowscope.clusterinfo import ClusterInfo

DEFAULT_OVERLAY_POD_CIDR = IPv4Network("10.244.0.0/16")
# Smallest node CIDR that still holds one pod next to network, gateway and broadcast.
MAX_NODE_MASK = 30


@dataclass(frozen=True)
class IPAMConfig:
    """How pod addresses are handed out. Strings are accepted for the networks and converted.

    reserved (vnet): ranges of the VNET never used for pods (nodes, gateway, outside hosts);
    default: the VNET's first /24. Only matters when pods take addresses from the VNET itself.
    """

    mode: Literal["vnet", "overlay"]
    vnet_cidr: IPv4Network
    pod_cidr: IPv4Network | None = None
    node_mask: int = 24
    block_size: int = 16
    max_pods: int = 250
    reserved: tuple[IPv4Network, ...] | None = None

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        set_("vnet_cidr", _network("vnet_cidr", self.vnet_cidr))
        if self.pod_cidr is not None:
            set_("pod_cidr", _network("pod_cidr", self.pod_cidr))
        elif self.mode == "overlay":
            set_("pod_cidr", DEFAULT_OVERLAY_POD_CIDR)
        if self.reserved is None:
            # The VNET's first /24 (all of it when the VNET is smaller): nodes, gateway, hosts.
            plen = max(24, self.vnet_cidr.prefixlen)
            set_("reserved", (IPv4Network((self.vnet_cidr.network_address, plen)),))
        else:
            items = (
                [self.reserved] if isinstance(self.reserved, str | IPv4Network) else self.reserved
            )
            set_("reserved", tuple(_network("reserved", r) for r in items))
        validate_config(self)

    @property
    def pod_subnet(self) -> IPv4Network:
        """Where pod addresses come from: the pod CIDR, else (vnet) the VNET itself."""
        return self.pod_cidr if self.pod_cidr is not None else self.vnet_cidr

    @property
    def block_reserved(self) -> tuple[IPv4Network, ...]:
        """vnet: what no block may contain (subnet edges, and the VNET's reserved ranges)."""
        own = self.reserved if self.pod_cidr is None else ()
        return subnet_reserved(self.pod_subnet, own or ())

    def layout(self) -> dict[str, Any]:
        """The fields every agent of a cluster must agree on (max_pods may differ per node)."""
        return {
            "mode": self.mode,
            "vnet_cidr": str(self.vnet_cidr),
            "pod_cidr": str(self.pod_cidr) if self.pod_cidr else None,
            "node_mask": self.node_mask if self.mode == "overlay" else None,
            "block_size": self.block_size if self.mode == "vnet" else None,
            "reserved": [str(r) for r in self.reserved or ()] if self.mode == "vnet" else None,
        }

    def layout_json(self) -> bytes:
        return json.dumps(self.layout(), sort_keys=True).encode()

    @classmethod
    def from_cluster_info(cls, info: ClusterInfo, **overrides: Any) -> IPAMConfig:
        """The config a lab cluster's agents use: mode and CIDRs from `flowscope lab up`."""
        return cls(
            mode=info.ipam,  # type: ignore[arg-type]
            vnet_cidr=info.vnet_cidr,
            pod_cidr=info.pod_cidr,
            **overrides,
        )


def _network(field: str, value: object) -> IPv4Network:
    if isinstance(value, IPv4Network):
        return value
    try:
        return IPv4Network(str(value))
    except ValueError as e:
        raise IPAMConfigError(
            f"IPAM config field {field}: {value!r} is not an IPv4 network ({e})",
            hint="write it as a.b.c.d/len with the host bits zero, e.g. 10.224.0.0/16",
        ) from None


def _int(cfg: IPAMConfig, field: str) -> int:
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise IPAMConfigError(
            f"IPAM config field {field}: {value!r} is not an integer",
            hint=f"give {field} as a number",
        )
    return value


def validate_config(cfg: IPAMConfig) -> None:
    """Raise IPAMConfigError, naming the field, when `cfg` cannot work."""
    if cfg.mode not in ("vnet", "overlay"):
        raise IPAMConfigError(
            f"IPAM config field mode: {cfg.mode!r} is not a mode", hint="use 'vnet' or 'overlay'"
        )
    max_pods = _int(cfg, "max_pods")
    if max_pods < 1:
        raise IPAMConfigError(
            f"IPAM config field max_pods: {max_pods} must be at least 1",
            hint="the usual is 250 (Azure CNI's default for overlay)",
        )
    for r in cfg.reserved or ():
        if not r.subnet_of(cfg.vnet_cidr):
            raise IPAMConfigError(
                f"IPAM config field reserved: {r} is not inside vnet_cidr {cfg.vnet_cidr}",
                hint="reserved ranges are parts of the VNET kept for nodes and gateways",
            )
    if cfg.mode == "overlay":
        _validate_overlay(cfg)
    else:
        _validate_vnet(cfg)


def _validate_overlay(cfg: IPAMConfig) -> None:
    pod = cfg.pod_cidr
    assert pod is not None  # set by __post_init__
    if pod.overlaps(cfg.vnet_cidr):
        raise IPAMConfigError(
            f"IPAM config field pod_cidr: overlay pod CIDR {pod} overlaps "
            f"vnet_cidr {cfg.vnet_cidr}",
            hint="overlay pod addresses are private to the cluster: pick a range outside the "
            "VNET, e.g. 10.244.0.0/16",
        )
    mask = _int(cfg, "node_mask")
    if not pod.prefixlen <= mask <= MAX_NODE_MASK:
        raise IPAMConfigError(
            f"IPAM config field node_mask: /{mask} does not fit pod_cidr {pod}",
            hint=f"use a mask from /{pod.prefixlen} (one node) to /{MAX_NODE_MASK} "
            "(one pod a node); the usual is /24",
        )


def _validate_vnet(cfg: IPAMConfig) -> None:
    size = _int(cfg, "block_size")
    if size < 1 or size & (size - 1):
        raise IPAMConfigError(
            f"IPAM config field block_size: {size} is not a power of two",
            hint="Azure hands pod addresses to nodes in blocks of 16; use 1, 2, 4, 8, 16, ...",
        )
    subnet = cfg.pod_subnet
    if cfg.pod_cidr is not None and cfg.pod_cidr.overlaps(cfg.vnet_cidr):
        raise IPAMConfigError(
            f"IPAM config field pod_cidr: pod subnet {cfg.pod_cidr} overlaps the node subnet "
            f"vnet_cidr {cfg.vnet_cidr}",
            hint="give pods a separate subnet, or leave pod_cidr unset to take pod addresses "
            "from the VNET itself",
        )
    if size > subnet.num_addresses:
        raise IPAMConfigError(
            f"IPAM config field block_size: {size} addresses do not fit in {subnet}",
            hint="use a smaller block_size or a larger subnet",
        )
    if block_capacity(subnet, size, cfg.block_reserved) == 0:
        field = "pod_cidr" if cfg.pod_cidr is not None else "vnet_cidr"
        raise IPAMConfigError(
            f"IPAM config field {field}: {subnet} has no block of {size} addresses free of "
            f"reserved ones ({', '.join(map(str, cfg.block_reserved))})",
            hint="use a larger subnet, a smaller block_size or a smaller reserved range",
        )


def check_node(cfg: IPAMConfig, node: str, node_ip: IPv4Address) -> None:
    """A node name must be usable as one key segment; its IP must not be a pod address."""
    if not node or "/" in node or any(c.isspace() for c in node):
        raise IPAMConfigError(
            f"node name {node!r} is not valid for IPAM",
            hint="use a non-empty name without '/' or spaces, e.g. node-1",
        )
    if not isinstance(node_ip, IPv4Address):
        raise IPAMConfigError(
            f"node {node}: node_ip {node_ip!r} is not an IPv4 address",
            hint="pass an ipaddress.IPv4Address",
        )
    if cfg.mode == "overlay":
        assert cfg.pod_cidr is not None
        if node_ip in cfg.pod_cidr:
            raise IPAMConfigError(
                f"node {node}: node_ip {node_ip} lies inside the overlay pod CIDR {cfg.pod_cidr}",
                hint="node addresses belong to the VNET, outside the pod CIDR",
            )
    elif node_ip in cfg.pod_subnet and not any(node_ip in r for r in cfg.block_reserved):
        reserved = ", ".join(map(str, cfg.reserved or ()))
        raise IPAMConfigError(
            f"node {node}: node_ip {node_ip} lies in the pod address space {cfg.pod_subnet} "
            "outside the reserved ranges, so it could be handed to a pod",
            hint=f"give nodes addresses in the reserved range ({reserved}) or reserve the "
            "node's address",
        )
