"""The lab's address plan, decided before anything is created (pure, so it tests without a kernel).

The VNET is a flat subnet on the fabric bridge: the router (the fabric's own address) takes the
first host address, nodes follow from .4 (Azure keeps .1-.3 for itself), and an "outside world"
host sits at the top of the reserved range. In VNET mode the rest of the subnet (or a separate pod
subnet) feeds pods; in overlay mode pods live in a private CIDR the VNET never learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from flowscope.errors import UsageError

DEFAULT_VNET_CIDR = IPv4Network("10.224.0.0/16")
DEFAULT_OVERLAY_POD_CIDR = IPv4Network("10.244.0.0/16")
DEFAULT_SERVICE_CIDR = IPv4Network("10.0.0.0/16")
# LoadBalancer Service addresses: outside the VNET, routed by the fabric to the nodes (as an Azure
# load balancer's frontend IPs are reached through it, not on the node subnet)
DEFAULT_LB_POOL = IPv4Network("10.226.0.0/24")
FIRST_NODE_OFFSET = 4  # Azure reserves the first addresses of a subnet
RESERVED_PREFIX = 24  # the VNET's first /24 holds router, nodes and outside hosts, never pods
MAX_NODES = 200


@dataclass(frozen=True)
class NodePlan:
    name: str
    ip: IPv4Address
    fabric_ifname: str  # the node's leg on the fabric bridge, as seen inside the fabric netns


@dataclass(frozen=True)
class OutsideHost:
    """A host on the VNET outside the cluster, with DNS names the lab resolver answers."""

    name: str  # "world" is the first: the host `lab probe world` probes from
    ip: IPv4Address
    names: tuple[str, ...]


# The outside world, from the top of the reserved /24 down: names under example.* (RFC 2606), so
# that policies in the docs read like real ones and can never leak to a real resolver.
OUTSIDE = (
    ("world", ("www.example.org",)),
    ("api", ("api.example.com", "login.example.com")),
    ("other", ("other.example.net",)),
)
OUTSIDE_TTL = 30  # seconds: what the lab resolver answers with


def outside_hosts(reserved_last: int) -> tuple[OutsideHost, ...]:
    return tuple(
        OutsideHost(name, IPv4Address(reserved_last - i), names)
        for i, (name, names) in enumerate(OUTSIDE)
    )


@dataclass(frozen=True)
class LabPlan:
    cluster: str
    ipam: str
    vnet_cidr: IPv4Network
    pod_cidr: IPv4Network | None
    service_cidr: IPv4Network
    gateway: IPv4Address
    world_ip: IPv4Address
    nodes: tuple[NodePlan, ...]
    lb_pool: IPv4Network = DEFAULT_LB_POOL
    outside: tuple[OutsideHost, ...] = ()

    @property
    def reserved(self) -> IPv4Network:
        return next(self.vnet_cidr.subnets(new_prefix=RESERVED_PREFIX))


def node_name(index: int) -> str:
    return f"node-{index}"


def plan(
    cluster: str,
    nodes: int,
    ipam: str,
    vnet_cidr: IPv4Network = DEFAULT_VNET_CIDR,
    pod_cidr: IPv4Network | None = None,
    service_cidr: IPv4Network = DEFAULT_SERVICE_CIDR,
    lb_pool: IPv4Network = DEFAULT_LB_POOL,
) -> LabPlan:
    if ipam not in ("vnet", "overlay"):
        raise UsageError(f"--ipam: {ipam!r} is not a mode; use vnet or overlay")
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes: {nodes} is out of range; use 1 to {MAX_NODES}")
    if vnet_cidr.prefixlen > 22:
        raise UsageError(
            f"--vnet-cidr: {vnet_cidr} is too small; give a /22 or larger "
            "(its first /24 holds the router, nodes and outside hosts)"
        )
    if ipam == "overlay":
        pod_cidr = pod_cidr or DEFAULT_OVERLAY_POD_CIDR
        if pod_cidr.overlaps(vnet_cidr):
            raise UsageError(
                f"--pod-cidr: {pod_cidr} overlaps the VNET {vnet_cidr}; overlay pod CIDRs must be "
                "private to the cluster (default 10.244.0.0/16)"
            )
    elif pod_cidr is not None and pod_cidr.overlaps(vnet_cidr):
        raise UsageError(
            f"--pod-cidr: {pod_cidr} overlaps the VNET node subnet {vnet_cidr}; a separate pod "
            "subnet must not overlap it (omit --pod-cidr to take pod IPs from the VNET itself)"
        )
    for label, cidr in (("--vnet-cidr", vnet_cidr), ("--pod-cidr", pod_cidr)):
        if cidr is not None and service_cidr.overlaps(cidr):
            raise UsageError(f"{label}: {cidr} overlaps the service CIDR {service_cidr}")
    for label, cidr in (
        ("VNET", vnet_cidr),
        ("pod CIDR", pod_cidr),
        ("service CIDR", service_cidr),
    ):
        if cidr is not None and lb_pool.overlaps(cidr):
            raise UsageError(
                f"--lb-pool: {lb_pool} overlaps the {label} {cidr}; LoadBalancer addresses "
                f"need a range of their own (default {DEFAULT_LB_POOL})"
            )
    base = vnet_cidr.network_address
    reserved_last = int(base) + 2 ** (32 - RESERVED_PREFIX) - 2
    if FIRST_NODE_OFFSET + nodes > reserved_last - len(OUTSIDE) - int(base):
        raise UsageError(f"--nodes: {nodes} nodes do not fit the reserved /24 of {vnet_cidr}")
    node_plans = tuple(
        NodePlan(
            node_name(i), IPv4Address(int(base) + FIRST_NODE_OFFSET + i - 1), f"v{node_name(i)}"
        )
        for i in range(1, nodes + 1)
    )
    return LabPlan(
        cluster=cluster,
        ipam=ipam,
        vnet_cidr=vnet_cidr,
        pod_cidr=pod_cidr,
        service_cidr=service_cidr,
        gateway=IPv4Address(int(base) + 1),
        world_ip=IPv4Address(reserved_last),
        nodes=node_plans,
        lb_pool=lb_pool,
        outside=outside_hosts(reserved_last),
    )
