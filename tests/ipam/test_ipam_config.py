"""IPAM configuration: defaults and the clear errors for configurations that cannot work."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.ipam import IPAMConfig, IPAMConfigError, validate_config
from dataplane.ipam.config import check_node
from flowscope.clusterinfo import ClusterInfo, NodeInfo
from flowscope.errors import UsageError

N = IPv4Network


def test_overlay_defaults():
    cfg = IPAMConfig("overlay", N("10.224.0.0/16"))
    assert cfg.pod_cidr == N("10.244.0.0/16")
    assert (cfg.node_mask, cfg.max_pods) == (24, 250)
    assert cfg.pod_subnet == N("10.244.0.0/16")


def test_vnet_defaults_reserve_the_first_24_of_the_vnet():
    cfg = IPAMConfig("vnet", "10.224.0.0/16")
    assert cfg.pod_cidr is None and cfg.block_size == 16
    assert cfg.reserved == (N("10.224.0.0/24"),)
    assert N("10.224.0.0/24") in cfg.block_reserved
    assert N("10.224.255.255/32") in cfg.block_reserved


def test_vnet_with_a_pod_subnet_reserves_only_its_edges():
    cfg = IPAMConfig("vnet", "10.224.0.0/16", pod_cidr="10.225.0.0/16")
    assert cfg.pod_subnet == N("10.225.0.0/16")
    assert cfg.block_reserved == (N("10.225.0.0/32"), N("10.225.255.255/32"))


def test_reserved_accepts_one_or_many_ranges():
    one = IPAMConfig("vnet", "10.224.0.0/16", reserved="10.224.0.0/23")
    many = IPAMConfig("vnet", "10.224.0.0/16", reserved=["10.224.0.0/24", "10.224.9.0/24"])
    assert one.reserved == (N("10.224.0.0/23"),)
    assert many.reserved == (N("10.224.0.0/24"), N("10.224.9.0/24"))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "bridge", "vnet_cidr": "10.224.0.0/16"}, "mode"),
        ({"mode": "vnet", "vnet_cidr": "10.224.0.1/16"}, "vnet_cidr"),
        ({"mode": "vnet", "vnet_cidr": "not-a-cidr"}, "vnet_cidr"),
        ({"mode": "overlay", "vnet_cidr": "10.224.0.0/16", "pod_cidr": "10.224.128.0/17"},
         "pod_cidr"),
        ({"mode": "overlay", "vnet_cidr": "10.224.0.0/16", "node_mask": 12}, "node_mask"),
        ({"mode": "overlay", "vnet_cidr": "10.224.0.0/16", "node_mask": 31}, "node_mask"),
        ({"mode": "overlay", "vnet_cidr": "10.224.0.0/16", "node_mask": "24"}, "node_mask"),
        ({"mode": "overlay", "vnet_cidr": "10.224.0.0/16", "max_pods": 0}, "max_pods"),
        ({"mode": "vnet", "vnet_cidr": "10.224.0.0/16", "block_size": 12}, "block_size"),
        ({"mode": "vnet", "vnet_cidr": "10.224.0.0/16", "block_size": 0}, "block_size"),
        ({"mode": "vnet", "vnet_cidr": "10.224.0.0/16", "pod_cidr": "10.224.0.0/16"}, "pod_cidr"),
        ({"mode": "vnet", "vnet_cidr": "10.224.0.0/16", "reserved": "10.99.0.0/24"}, "reserved"),
        ({"mode": "vnet", "vnet_cidr": "10.224.0.0/24"}, "vnet_cidr"),  # all of it reserved
        ({"mode": "vnet", "vnet_cidr": "10.224.0.0/16", "pod_cidr": "10.225.0.0/28",
          "block_size": 32}, "block_size"),
    ],
)  # fmt: skip
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(IPAMConfigError, match=f"field {field}") as e:
        IPAMConfig(**kwargs)
    assert isinstance(e.value, UsageError)
    assert e.value.hint, "every config error says what to do"


def test_validate_config_accepts_good_ones():
    validate_config(IPAMConfig("overlay", "10.224.0.0/16", node_mask=26, max_pods=30))
    validate_config(IPAMConfig("vnet", "10.224.0.0/16", block_size=1))


def test_node_ip_must_not_be_a_pod_address():
    vnet = IPAMConfig("vnet", "10.224.0.0/16")
    check_node(vnet, "node-1", IPv4Address("10.224.0.11"))
    with pytest.raises(IPAMConfigError, match="could be handed to a pod"):
        check_node(vnet, "node-1", IPv4Address("10.224.3.4"))
    overlay = IPAMConfig("overlay", "10.224.0.0/16")
    with pytest.raises(IPAMConfigError, match="inside the overlay pod CIDR"):
        check_node(overlay, "node-1", IPv4Address("10.244.0.5"))


@pytest.mark.parametrize("name", ["", "a/b", "node 1"])
def test_node_name_must_be_one_key_segment(name):
    with pytest.raises(IPAMConfigError, match="node name"):
        check_node(IPAMConfig("vnet", "10.224.0.0/16"), name, IPv4Address("10.224.0.11"))


def test_from_cluster_info():
    info = ClusterInfo(
        name="c1",
        ipam="overlay",
        vnet_cidr=N("10.224.0.0/16"),
        pod_cidr=N("10.250.0.0/16"),
        service_cidr=N("10.96.0.0/16"),
        gateway=IPv4Address("10.224.0.1"),
        etcd_url="http://127.0.0.1:2379",
        nodes=(NodeInfo("node-1", IPv4Address("10.224.0.11"), "fs.c1.node-1"),),
    )
    cfg = IPAMConfig.from_cluster_info(info, max_pods=30)
    assert (cfg.mode, cfg.pod_cidr, cfg.max_pods) == ("overlay", N("10.250.0.0/16"), 30)


def test_layout_leaves_out_per_node_settings():
    a = IPAMConfig("overlay", "10.224.0.0/16", max_pods=10)
    b = IPAMConfig("overlay", "10.224.0.0/16", max_pods=250)
    c = IPAMConfig("overlay", "10.224.0.0/16", node_mask=25)
    assert a.layout_json() == b.layout_json() != c.layout_json()
