from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.lab import topology
from flowscope.errors import UsageError


def test_overlay_plan_defaults() -> None:
    plan = topology.plan("lab", 3, "overlay")
    assert plan.pod_cidr == IPv4Network("10.244.0.0/16")
    assert plan.gateway == IPv4Address("10.224.0.1")
    assert [n.ip for n in plan.nodes] == [IPv4Address(f"10.224.0.{i}") for i in (4, 5, 6)]
    assert [n.name for n in plan.nodes] == ["node-1", "node-2", "node-3"]
    assert plan.world_ip in plan.reserved and plan.world_ip not in {n.ip for n in plan.nodes}
    assert all(len(n.fabric_ifname) <= 15 for n in plan.nodes)


def test_vnet_plan_takes_pods_from_vnet_unless_a_pod_subnet_is_given() -> None:
    assert topology.plan("lab", 2, "vnet").pod_cidr is None
    plan = topology.plan("lab", 2, "vnet", pod_cidr=IPv4Network("10.225.0.0/16"))
    assert plan.pod_cidr == IPv4Network("10.225.0.0/16")
    assert not plan.lb_pool.overlaps(plan.pod_cidr)  # the README's example pod subnet fits


def test_cluster_names_never_prefix_each_other(tmp_path, monkeypatch) -> None:
    from flowscope import paths as paths_module

    monkeypatch.setattr(paths_module, "CNI_CONF_ROOT", tmp_path)
    a, b = paths_module.ClusterPaths("lab"), paths_module.ClusterPaths("lab-x")
    for p in (a, b):
        p.cni_conf_dir("node-1").mkdir()
    assert a.cni_conf_dirs() == [a.cni_conf_dir("node-1")]
    assert not b.netns_prefix.startswith(a.netns_prefix)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nodes": 0}, "--nodes"),
        ({"ipam": "bgp"}, "--ipam"),
        ({"pod_cidr": IPv4Network("10.224.128.0/17")}, "--pod-cidr"),
        ({"vnet_cidr": IPv4Network("10.224.0.0/24")}, "--vnet-cidr"),
        ({"ipam": "vnet", "vnet_cidr": IPv4Network("10.0.0.0/8")}, "--vnet-cidr"),  # services
        ({"lb_pool": IPv4Network("10.224.0.0/24")}, "--lb-pool: .* overlaps the VNET"),
        ({"lb_pool": IPv4Network("10.244.1.0/24")}, "--lb-pool: .* overlaps the pod CIDR"),
        ({"lb_pool": IPv4Network("10.0.0.0/24")}, "--lb-pool: .* overlaps the service CIDR"),
    ],
)
def test_bad_plans_name_the_option(kwargs: dict, field: str) -> None:
    args = {"cluster": "lab", "nodes": 2, "ipam": "overlay", **kwargs}
    with pytest.raises(UsageError, match=field):
        topology.plan(**args)
