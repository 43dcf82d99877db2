"""1,000 policies x 1,000 pods: compiles in well under the bound, and a one-policy change
recompiles only what it touches.

The bound is generous (measured ~0.3 s on 2 cores; asserted 5 s) so that only an algorithmic
regression (a quadratic selector scan, a lost cache) fails it, not a slow machine."""

from __future__ import annotations

import time
from ipaddress import IPv4Address
from typing import Any

from dataplane.policy.compiler import (
    Compiler,
    ContainerPort,
    PodInfo,
    compile_policies,
    on_node,
    required_prefixes,
)
from tests.policy.truthtable import allocate

BOUND_S = 5.0


def cluster() -> tuple[list[dict[str, Any]], list[PodInfo], dict[str, dict[str, str]]]:
    """20 namespaces x 10 deployments x 5 replicas; 50 policies per namespace of five kinds."""
    nss = {
        f"ns{i}": {"kubernetes.io/metadata.name": f"ns{i}", "team": f"t{i % 4}"} for i in range(20)
    }
    pods = []
    for n in range(20):
        for d in range(10):
            for r in range(5):
                i = len(pods)
                pods.append(
                    PodInfo(
                        f"ns{n}",
                        f"app{d}-{r}",
                        (("app", f"app{d}"), ("tier", f"tier{d % 3}")),
                        IPv4Address(f"10.244.{i // 250}.{i % 250 + 1}"),
                        f"node-{i % 3}",
                        (ContainerPort(8080, 6, "http"), ContainerPort(9090, 6, "metrics")),
                    )
                )
    pols = []
    for i in range(1000):
        n, d = i % 20, (i // 20) % 10
        spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": f"app{d}"}}}
        kind = i % 5
        if kind == 0:
            spec["ingress"] = [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": f"app{(d + 1) % 10}"}}}],
                    "ports": [{"port": 8080, "protocol": "TCP"}],
                }
            ]
        elif kind == 1:
            tiers = {"key": "tier", "operator": "In", "values": ["tier0", "tier1"]}
            spec["ingress"] = [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": f"t{i % 4}"}},
                            "podSelector": {"matchExpressions": [tiers]},
                        }
                    ],
                    "ports": [{"port": "http", "protocol": "TCP"}],
                }
            ]
        elif kind == 2:
            spec["policyTypes"] = ["Egress"]
            to_ns = {"kubernetes.io/metadata.name": f"ns{(n + 1) % 20}"}
            spec["egress"] = [
                {
                    "to": [{"namespaceSelector": {"matchLabels": to_ns}}],
                    "ports": [{"port": "http", "protocol": "TCP"}],
                },
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            ]
        elif kind == 3:
            spec["policyTypes"] = ["Egress"]
            block = {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", f"192.168.{i % 50}.0/24"]}
            spec["egress"] = [
                {"to": [{"ipBlock": block}], "ports": [{"port": 443, "protocol": "TCP"}]}
            ]
        else:
            spec["ingress"] = [
                {"from": [{"podSelector": {}}]},
                {"ports": [{"port": 9000, "endPort": 9100, "protocol": "TCP"}]},
            ]
        pols.append({"metadata": {"namespace": f"ns{n}", "name": f"pol{i}"}, "spec": spec})
    return pols, pods, nss


def test_thousand_policies_thousand_pods() -> None:
    pols, pods, nss = cluster()
    ids, cidrs = allocate(pods, nss, required_prefixes(pols))
    compiler = Compiler()
    t0 = time.perf_counter()
    first = compiler.compile(pols, pods, nss, ids, cidrs)
    full = time.perf_counter() - t0
    assert len(first.endpoints) == 1000 and len(first.cookies) >= 1000

    # one ingress policy of ns5/app0 becomes a default deny
    pols[5] = {**pols[5], "spec": {**pols[5]["spec"], "ingress": []}}
    t0 = time.perf_counter()
    second = compiler.compile(pols, pods, nss, ids, cidrs)
    again = time.perf_counter() - t0
    changed = {k for k in second.endpoints if second.endpoints[k] is not first.endpoints[k]}
    assert changed == {("ns5", f"app0-{r}") for r in range(5)}
    assert second.endpoints == compile_policies(pols, pods, nss, ids, cidrs).endpoints

    t0 = time.perf_counter()
    node = Compiler().compile(pols, pods, nss, ids, cidrs, local=on_node("node-1"))
    one_node = time.perf_counter() - t0
    assert set(node.endpoints) == {p.key for p in pods if p.node == "node-1"}

    print(
        f"\n1,000 policies x 1,000 pods: full {full:.3f}s, after one change {again:.3f}s, "
        f"one node from scratch {one_node:.3f}s"
    )
    assert full < BOUND_S and again < BOUND_S and one_node < BOUND_S
