"""Routes between nodes, without encapsulation, from who owns which pod prefix.

- overlay: each node routes every other node's pod CIDR via that node's VNET address (the VNET
  never learns the private pod CIDR, which is why it can repeat across clusters).
- vnet: pods are VNET addresses; the VNET itself (the fabric namespace, standing for Azure's SDN)
  routes each block to the node that owns it. Each agent programs only its own blocks there, as
  Azure's control plane programs a NIC's secondary addresses.
Routes carry their own protocol number, so stale ones are told apart from everybody else's.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyroute2 import IPRoute

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)

RTPROT_FLOWSCOPE = 222  # /etc/iproute2/rt_protos leaves 200+ to local use


@dataclass(frozen=True, order=True)
class Route:
    dst: IPv4Network
    gateway: IPv4Address


@dataclass(frozen=True)
class RoutePlan:
    node_routes: frozenset[Route]  # in this node's namespace
    fabric_routes: frozenset[Route]  # in the fabric namespace, this node's own


def plan_routes(
    mode: str, node: str, owners: dict[str, tuple[IPv4Address, list[IPv4Network]]]
) -> RoutePlan:
    """Pure: the routes `node` is responsible for, given every node's (ip, prefixes)."""
    node_routes: set[Route] = set()
    fabric_routes: set[Route] = set()
    for owner, (ip, prefixes) in owners.items():
        for prefix in prefixes:
            if mode == "overlay" and owner != node:
                node_routes.add(Route(prefix, ip))
            elif mode == "vnet" and owner == node:
                fabric_routes.add(Route(prefix, ip))
    return RoutePlan(frozenset(node_routes), frozenset(fabric_routes))


def sync_routes(netns: str, want: frozenset[Route], gateway_filter: IPv4Address | None) -> int:
    """Make our routes in `netns` equal `want`; with a filter, only ours via that gateway."""
    changed = 0
    with IPRoute(netns=netns) as ipr:
        have: set[Route] = set()
        for msg in ipr.get_routes(family=2, proto=RTPROT_FLOWSCOPE):
            gw = msg.get("RTA_GATEWAY")
            if gw is None:
                continue
            route = Route(IPv4Network(f"{msg.get('RTA_DST')}/{msg['dst_len']}"), IPv4Address(gw))
            if gateway_filter is None or route.gateway == gateway_filter:
                have.add(route)
        for route in sorted(want - have):
            ipr.route(
                "replace", dst=str(route.dst), gateway=str(route.gateway), proto=RTPROT_FLOWSCOPE
            )
            changed += 1
        for route in sorted(have - want):
            ipr.route("del", dst=str(route.dst), gateway=str(route.gateway))
            changed += 1
    return changed
