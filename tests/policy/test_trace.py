"""`policy trace` as a function: the verdict of both ends and the reason, text and JSON."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest

from dataplane.identity.model import Reserved
from dataplane.policy.compiler import PROTOCOLS, Compiler, required_prefixes
from dataplane.policy.trace import trace
from flowscope.errors import FlowscopeError
from tests.policy.test_e2e_matrix import CASES
from tests.policy.truthtable import Cluster, allocate, make_namespaces, make_pods, netpol, stored

PODS, NAMESPACES = make_pods(), make_namespaces()
BY_NAME = {str(p): p for p in PODS}


def run(policies, src, dst, port=80, protocol="TCP"):
    objs = stored(policies)
    ids, cidrs = allocate(PODS, NAMESPACES, required_prefixes(objs))
    s = BY_NAME.get(src) or IPv4Address(src)
    d = BY_NAME.get(dst) or IPv4Address(dst)
    return trace(objs, PODS, NAMESPACES, ids, cidrs, s, d, port, PROTOCOLS[protocol])


ALLOW_B = netpol(
    "x",
    "a-from-b",
    {"matchLabels": {"pod": "a"}},
    ingress=[{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}],
)


def test_allowed_names_the_policy_rule_and_peer() -> None:
    t = run([ALLOW_B], "x/b", "x/a")
    assert t.allowed
    assert t.egress is not None and t.egress.allowed and "no policy selects x/b" in t.egress.reason
    assert t.ingress is not None and t.ingress.rule is not None
    r = t.ingress.rule
    assert (r.namespace, r.policy, r.rule_index, r.peer_index) == ("x", "a-from-b", 0, 0)
    assert t.ingress.policies == ("x/a-from-b",)
    text = t.render()
    assert "Final verdict: ALLOWED" in text and "x/a-from-b ingress rule 0" in text


def test_denied_names_the_policies_whose_default_deny_applied() -> None:
    t = run([ALLOW_B, netpol("x", "deny-all", {}, ingress=[])], "x/c", "x/a")
    assert not t.allowed
    assert t.ingress is not None and not t.ingress.allowed and t.ingress.rule is None
    assert set(t.ingress.policies) == {"x/a-from-b", "x/deny-all"}
    assert "default deny" in t.ingress.reason and "x/deny-all" in t.ingress.reason
    assert "Final verdict: DENIED" in t.render()
    doc = json.loads(json.dumps(t.to_json()))
    assert doc["verdict"] == "DENIED" and doc["allowed"] is False
    assert set(doc["ingress"]["selected_by"]) == {"x/a-from-b", "x/deny-all"}
    assert doc["from"]["name"] == "x/c" and doc["to"]["name"] == "x/a" and doc["port"] == 80
    assert doc["egress"]["verdict"] == "ALLOWED"


def test_wrong_port_is_denied_right_port_allowed() -> None:
    assert not run([ALLOW_B], "x/b", "x/a", port=81).allowed
    assert not run([ALLOW_B], "x/b", "x/a", protocol="UDP").allowed


def test_egress_denial_is_reported_on_the_source() -> None:
    t = run([netpol("y", "no-egress", {}, egress=[], types=["Egress"])], "y/a", "x/a")
    assert not t.allowed
    assert t.egress is not None and not t.egress.allowed
    assert t.egress.policies == ("y/no-egress",)
    assert t.ingress is not None and t.ingress.allowed


def test_world_source_has_no_egress_side() -> None:
    block = {"cidr": "203.0.113.0/24"}
    pol = netpol("x", "from-net", {}, ingress=[{"from": [{"ipBlock": block}]}])
    t = run([pol], "203.0.113.9", "x/a")
    assert t.allowed and t.egress is None
    # as the ipcache has it: a covered address has its CIDR identity as its identity
    assert t.source.identity == t.source.cidr_identity != 0
    assert t.source.labels == ("cidr:203.0.113.0/24",)
    assert "outside the cluster" in t.render()
    outside = run([pol], "198.51.100.1", "x/a")
    assert not outside.allowed
    assert outside.source.identity == Reserved.WORLD and outside.source.cidr_identity == 0


def test_a_node_address_is_the_host_on_its_own_node_only() -> None:
    objs = stored([netpol("x", "deny", {}, ingress=[])])
    ids, cidrs = allocate(PODS, NAMESPACES, required_prefixes(objs))
    nodes = {IPv4Address("10.224.0.11"): "node-1", IPv4Address("10.224.0.12"): "node-2"}
    xa = BY_NAME["x/a"]  # on node-1

    def from_node(address: str):
        return trace(
            objs, PODS, NAMESPACES, ids, cidrs, IPv4Address(address), xa, 80, 6, node_ips=nodes
        )

    own = from_node("10.224.0.11")
    assert own.allowed and own.ingress is not None
    assert own.ingress.entry is not None and own.ingress.entry.identity == Reserved.HOST
    assert "kubelet" in own.ingress.reason
    other = from_node("10.224.0.12")
    assert not other.allowed and "identity 6" in other.ingress.reason  # remote-node


def test_a_pod_address_stands_for_the_pod() -> None:
    t = run([ALLOW_B], str(BY_NAME["x/b"].ip), "x/a")
    assert t.source.name == "x/b" and t.allowed


def test_a_pod_without_identity_is_an_error() -> None:
    with pytest.raises(FlowscopeError, match="no identity"):
        trace([], PODS, NAMESPACES, {}, {}, BY_NAME["x/a"], BY_NAME["y/a"], 80, 6)


@pytest.mark.parametrize("case", CASES[:30], ids=[c.name for c in CASES[:30]])
def test_trace_agrees_with_the_truth_tables(case) -> None:
    pods, nss = make_pods(case.pod_labels), make_namespaces(case.namespace_labels)
    cluster = Cluster(case.policies, pods, nss)
    compiler = Compiler()
    for port, protocol, _ in case.checks:
        for (s, d), connected in cluster.matrix(port, protocol).items():
            t = trace(
                cluster.policies,
                pods,
                nss,
                cluster.identities,
                cluster.cidrs,
                cluster.by_name[s],
                cluster.by_name[d],
                port,
                PROTOCOLS[protocol],
                compiler=compiler,
            )
            assert t.allowed == connected, f"{s}->{d} {port}/{protocol}"
