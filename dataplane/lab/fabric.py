"""The lab's kernel objects: the VNET fabric, the outside-world host and each node's uplink.

The fabric namespace holds the bridge that stands for the Azure VNET and routes between its
subnets like the VNET's SDN does; every node and the outside host has one veth leg on it. Nothing
here touches the root namespace: veths are created inside the node (or world) namespace with their
peer placed straight into the fabric namespace.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from pyroute2 import IPRoute

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)
from dataplane.lab import netns
from dataplane.lab.topology import LabPlan, NodePlan
from flowscope.paths import ClusterPaths

BRIDGE = "vnet0"
UPLINK = "eth0"
WORLD_IFNAME = "vworld"

ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
}


def world_netns(paths: ClusterPaths, host: str = "world") -> str:
    """The namespace of an outside host ("world": the one `lab probe world` uses)."""
    return f"{paths.netns_prefix}world" + ("" if host == "world" else f".{host}")


def _link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _ensure_addr(ipr: IPRoute, index: int, ip: IPv4Address, prefixlen: int) -> None:
    have = {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
    if str(ip) not in have:
        ipr.addr("add", index=index, address=str(ip), prefixlen=prefixlen)


def build_fabric(paths: ClusterPaths, plan: LabPlan) -> None:
    name = paths.fabric_netns
    netns.create(name)
    netns.set_sysctls(name, ROUTER_SYSCTLS)
    with IPRoute(netns=name) as ipr:
        if _link_index(ipr, BRIDGE) is None:
            ipr.link("add", ifname=BRIDGE, kind="bridge")
        index = _link_index(ipr, BRIDGE)
        assert index is not None
        _ensure_addr(ipr, index, plan.gateway, plan.vnet_cidr.prefixlen)
        ipr.link("set", index=index, state="up")


def _attach_leg(
    paths: ClusterPaths, host_netns: str, fabric_ifname: str, ip: IPv4Address, plan: LabPlan
) -> None:
    """One host on the VNET: `eth0` in `host_netns`, its peer on the fabric bridge.

    Hosts see only the VNET's reserved /24 (router, nodes, outside hosts) as on-link; every other
    VNET address goes through the router. Azure's SDN answers ARP for the whole subnet itself;
    here pod addresses, which no host on the bridge answers ARP for, reach their node that way.
    """
    netns.create(host_netns)
    with IPRoute(netns=host_netns) as ipr:
        if _link_index(ipr, UPLINK) is None:
            ipr.link(
                "add",
                ifname=UPLINK,
                kind="veth",
                peer={"ifname": fabric_ifname, "net_ns_fd": paths.fabric_netns},
            )
        index = _link_index(ipr, UPLINK)
        assert index is not None
        _ensure_addr(ipr, index, ip, plan.reserved.prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.route("replace", dst="0.0.0.0/0", gateway=str(plan.gateway))
    with IPRoute(netns=paths.fabric_netns) as ipr:
        leg = _link_index(ipr, fabric_ifname)
        bridge = _link_index(ipr, BRIDGE)
        ipr.link("set", index=leg, master=bridge, state="up")


def build_node(paths: ClusterPaths, plan: LabPlan, node: NodePlan) -> None:
    name = paths.node_netns(node.name)
    _attach_leg(paths, name, node.fabric_ifname, node.ip, plan)
    netns.set_sysctls(name, ROUTER_SYSCTLS)


def build_world(paths: ClusterPaths, plan: LabPlan) -> None:
    """The outside hosts, each in its own namespace with a leg on the VNET."""
    for host in plan.outside or ():
        ifname = WORLD_IFNAME if host.name == "world" else f"vout-{host.name}"[:15]
        _attach_leg(paths, world_netns(paths, host.name), ifname, host.ip, plan)


def route_lb_pool(paths: ClusterPaths, plan: LabPlan) -> None:
    """LoadBalancer addresses reach the nodes through the router, spread over all of them by
    the flow's hash (ECMP, as Azure's load balancer spreads over its backend pool); each node's
    uplink program (probes/nodeport.c) translates the addresses it holds frontends for. On the
    nodes the pool is unreachable: a packet for an address or port no Service holds is refused
    there instead of being routed back to the router and around again."""
    hops = [{"gateway": str(node.ip)} for node in plan.nodes]
    with IPRoute(netns=paths.fabric_netns) as ipr:
        ipr.route("replace", dst=str(plan.lb_pool), multipath=hops)
    for node in plan.nodes:
        with IPRoute(netns=paths.node_netns(node.name)) as ipr:
            ipr.route("replace", dst=str(plan.lb_pool), type="unreachable")


def teardown(paths: ClusterPaths) -> list[str]:
    """Remove every namespace of the cluster (their links and routes go with them)."""
    removed = []
    for name in netns.list_with_prefix(paths.netns_prefix):
        netns.remove(name)
        removed.append(name)
    return removed
