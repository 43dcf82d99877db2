"""CiliumNetworkPolicy: validation with field paths, and its L3/L4 part as compiler rules."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.fqdn.selector import FQDNSelector
from dataplane.policy.cnp import (
    CNPError,
    check,
    dns_selectors,
    fqdn_selectors,
    http_rules,
    parse_cnp,
    to_policy,
)

DNS_RULE = {
    "toEndpoints": [
        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s-app": "kube-dns"}}
    ],
    "toPorts": [
        {"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}
    ],
}
FQDN_RULE = {
    "toFQDNs": [{"matchName": "api.example.com"}, {"matchPattern": "*.example.org"}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
}


def cnp(spec: dict, name: str = "p", namespace: str = "shop") -> dict:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_fqdn_egress_becomes_ipblocks_of_what_dns_answered() -> None:
    parsed = parse_cnp(
        cnp({"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [DNS_RULE, FQDN_RULE]})
    )
    answers = {
        "api.example.com.": ["1.2.3.4"],
        "x.example.org.": ["5.6.7.8"],
        "b.net.": ["9.9.9.9"],
    }

    def ips(sel: FQDNSelector):
        return [IPv4Address(ip) for n, a in answers.items() if sel.matches(n) for ip in a]

    policy = to_policy(parsed, ips)
    assert policy.ingress is None  # egress only: ingress is not isolated
    dns, fqdn = policy.egress
    peer = dns.peers[0]
    assert peer.namespace_selector.matches({"kubernetes.io/metadata.name": "kube-system"})
    assert peer.pod_selector.matches({"k8s-app": "kube-dns"})
    assert {(p.protocol, p.port) for p in dns.ports} == {(6, 53), (17, 53), (132, 53)}
    assert {p.ip_block.cidr for p in fqdn.peers} == {
        IPv4Network("1.2.3.4/32"),
        IPv4Network("5.6.7.8/32"),
    }
    assert [(p.protocol, p.port) for p in fqdn.ports] == [(6, 80)]


def test_fqdn_rule_without_answers_allows_nothing_not_everything() -> None:
    policy = to_policy(
        parse_cnp(cnp({"endpointSelector": {}, "egress": [FQDN_RULE]})), lambda s: []
    )
    assert policy.egress == ()  # isolated, no rule: only what DNS answers will open


def test_dns_and_http_rules_by_endpoint() -> None:
    client = parse_cnp(
        cnp({"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [DNS_RULE, FQDN_RULE]})
    )
    server = parse_cnp(
        cnp(
            {
                "endpointSelector": {"matchLabels": {"app": "api"}},
                "ingress": [
                    {
                        "fromEndpoints": [{"matchLabels": {"app": "web"}}],
                        "toPorts": [
                            {
                                "ports": [{"port": "8080", "protocol": "TCP"}],
                                "rules": {"http": [{"method": "GET", "path": "/public.*"}]},
                            }
                        ],
                    }
                ],
            },
            name="api",
        )
    )
    assert dns_selectors([client, server], "shop", {"app": "web"}) == (
        FQDNSelector.parse({"matchPattern": "*"}, "x"),
    )
    assert dns_selectors([client, server], "shop", {"app": "api"}) is None
    assert dns_selectors([client], "other", {"app": "web"}) is None  # another namespace
    assert http_rules([client, server], "shop", {"app": "api"}) == {
        (6, 8080): ({"method": "GET", "path": "/public.*"},)
    }
    assert fqdn_selectors([client, server]) == {
        FQDNSelector.parse({"matchName": "api.example.com"}, "x"),
        FQDNSelector.parse({"matchPattern": "*.example.org"}, "x"),
    }


def test_entities_cidrs_and_port_only_rules() -> None:
    policy = to_policy(
        parse_cnp(
            cnp(
                {
                    "endpointSelector": {},
                    "egress": [
                        {"toEntities": ["world"]},
                        {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]},
                        {"toPorts": [{"ports": [{"port": "443"}]}]},
                    ],
                }
            )
        ),
        lambda s: [],
    )
    world, cidr, ports_only = policy.egress
    assert world.peers[0].ip_block.cidr == IPv4Network("0.0.0.0/0")
    assert cidr.peers[0].ip_block.excepts == (IPv4Network("10.1.0.0/16"),)
    assert ports_only.peers == () and len(ports_only.ports) == 3  # ANY: TCP, UDP, SCTP


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"egress": []}, "spec.endpointSelector"),
        ({"endpointSelector": {}, "egres": []}, "spec.egres"),
        (
            {"endpointSelector": {}, "egress": [{"toFQDNs": [{"matchName": "a b"}]}]},
            "spec.egress[0].toFQDNs[0].matchName",
        ),
        (
            {"endpointSelector": {}, "egress": [{"toEntities": ["host"]}]},
            "spec.egress[0].toEntities[0]",
        ),
        (
            {"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.0.300/8"]}]},
            "spec.egress[0].toCIDR[0]",
        ),
        (
            {
                "endpointSelector": {},
                "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "GRE"}]}]}],
            },
            "spec.ingress[0].toPorts[0].ports[0].protocol",
        ),
        (
            {"endpointSelector": {}, "ingress": [{"toPorts": [{"rules": {"kafka": []}}]}]},
            "spec.ingress[0].toPorts[0].rules.kafka",
        ),
        ({"endpointSelector": {}, "ingress": [{"toFQDNs": []}]}, "spec.ingress[0].toFQDNs"),
        ({"endpointSelector": {"matchLabels": {"a": "b c"}}}, "spec.endpointSelector.matchLabels"),
    ],
)
def test_bad_fields_are_named(spec: dict, path: str) -> None:
    errors = check(cnp(spec))
    assert errors, spec
    assert any(str(e).startswith(path) for e in errors), [str(e) for e in errors]
    with pytest.raises(CNPError):
        parse_cnp(cnp(spec))
