"""The resolv.conf a pod gets, per dnsPolicy, as kubelet writes it."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from dataplane.dns.resolvconf import dns_service_ip, resolv_conf

DNS = IPv4Address("10.0.0.10")


def pod(ns: str = "shop", **spec) -> dict:
    return {"metadata": {"name": "p", "namespace": ns}, "spec": spec}


def test_the_dns_service_is_the_tenth_address() -> None:
    assert dns_service_ip(IPv4Network("10.0.0.0/16")) == IPv4Address("10.0.0.10")
    assert dns_service_ip(IPv4Network("172.20.0.0/24")) == IPv4Address("172.20.0.10")


def test_cluster_first_is_the_default() -> None:
    assert resolv_conf(pod(), DNS) == (
        "nameserver 10.0.0.10\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )
    assert resolv_conf(pod(dnsPolicy="ClusterFirst"), DNS) == resolv_conf(pod(), DNS)


def test_default_policy_and_host_network_keep_the_nodes_resolver() -> None:
    assert resolv_conf(pod(dnsPolicy="Default"), DNS) is None
    assert resolv_conf(pod(hostNetwork=True), DNS) is None
    assert resolv_conf(pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), DNS)


def test_dns_config_adds_and_none_uses_only_it() -> None:
    config = {
        "nameservers": ["10.1.1.1"],
        "searches": ["corp.example"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
    }
    text = resolv_conf(pod(dnsConfig=config), DNS)
    assert text.splitlines() == [
        "nameserver 10.0.0.10",
        "nameserver 10.1.1.1",
        "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example",
        "options ndots:2 edns0",
    ]
    only = resolv_conf(pod(dnsPolicy="None", dnsConfig=config), DNS)
    assert only.splitlines() == [
        "nameserver 10.1.1.1",
        "search corp.example",
        "options ndots:2 edns0",
    ]
