from ipaddress import IPv4Address, IPv4Network

from dataplane.agent.routing import Route, plan_routes

OWNERS = {
    "node-1": (IPv4Address("10.224.0.4"), [IPv4Network("10.244.0.0/24")]),
    "node-2": (IPv4Address("10.224.0.5"), [IPv4Network("10.244.1.0/24")]),
    "node-3": (IPv4Address("10.224.0.6"), []),
}


def test_overlay_routes_every_other_nodes_cidr_on_the_node() -> None:
    plan = plan_routes("overlay", "node-1", OWNERS)
    assert plan.node_routes == {Route(IPv4Network("10.244.1.0/24"), IPv4Address("10.224.0.5"))}
    assert plan.fabric_routes == frozenset()  # the VNET never learns overlay pod CIDRs


def test_vnet_routes_own_blocks_in_the_fabric_only() -> None:
    owners = {
        "node-1": (
            IPv4Address("10.224.0.4"),
            [IPv4Network("10.224.1.0/28"), IPv4Network("10.224.1.32/28")],
        ),
        "node-2": (IPv4Address("10.224.0.5"), [IPv4Network("10.224.1.16/28")]),
    }
    plan = plan_routes("vnet", "node-1", owners)
    assert plan.node_routes == frozenset()
    assert plan.fabric_routes == {
        Route(IPv4Network("10.224.1.0/28"), IPv4Address("10.224.0.4")),
        Route(IPv4Network("10.224.1.32/28"), IPv4Address("10.224.0.4")),
    }
