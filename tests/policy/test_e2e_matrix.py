"""The Kubernetes e2e NetworkPolicy cases (test/e2e/network/netpol) as 9x9 truth tables.

Each case builds the suite's policies, compiles them for the nine pods of namespaces x, y, z and
compares the whole reachability matrix (egress of the client AND ingress of the server, through
EndpointPolicy.decide) against the table written out below. Rows are clients, columns servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.policy.truthtable import (
    Cluster,
    assert_matrix,
    make_namespaces,
    make_pods,
    netpol,
)

H = "-   x/a x/b x/c y/a y/b y/c z/a z/b z/c\n"

OPEN = (
    H
    + """
x/a  -   .   .   .   .   .   .   .   .
x/b  .   -   .   .   .   .   .   .   .
x/c  .   .   -   .   .   .   .   .   .
y/a  .   .   .   -   .   .   .   .   .
y/b  .   .   .   .   -   .   .   .   .
y/c  .   .   .   .   .   -   .   .   .
z/a  .   .   .   .   .   .   -   .   .
z/b  .   .   .   .   .   .   .   -   .
z/c  .   .   .   .   .   .   .   .   -
"""
)

# nothing reaches the pods of x
NO_INGRESS_X = (
    H
    + """
x/a  -   X   X   .   .   .   .   .   .
x/b  X   -   X   .   .   .   .   .   .
x/c  X   X   -   .   .   .   .   .   .
y/a  X   X   X   -   .   .   .   .   .
y/b  X   X   X   .   -   .   .   .   .
y/c  X   X   X   .   .   -   .   .   .
z/a  X   X   X   .   .   .   -   .   .
z/b  X   X   X   .   .   .   .   -   .
z/c  X   X   X   .   .   .   .   .   -
"""
)

# the pods of x reach nothing
NO_EGRESS_X = (
    H
    + """
x/a  -   X   X   X   X   X   X   X   X
x/b  X   -   X   X   X   X   X   X   X
x/c  X   X   -   X   X   X   X   X   X
y/a  .   .   .   -   .   .   .   .   .
y/b  .   .   .   .   -   .   .   .   .
y/c  .   .   .   .   .   -   .   .   .
z/a  .   .   .   .   .   .   -   .   .
z/b  .   .   .   .   .   .   .   -   .
z/c  .   .   .   .   .   .   .   .   -
"""
)

NO_TRAFFIC_X = (
    H
    + """
x/a  -   X   X   X   X   X   X   X   X
x/b  X   -   X   X   X   X   X   X   X
x/c  X   X   -   X   X   X   X   X   X
y/a  X   X   X   -   .   .   .   .   .
y/b  X   X   X   .   -   .   .   .   .
y/c  X   X   X   .   .   -   .   .   .
z/a  X   X   X   .   .   .   -   .   .
z/b  X   X   X   .   .   .   .   -   .
z/c  X   X   X   .   .   .   .   .   -
"""
)

NOTHING_TO_XA = (
    H
    + """
x/a  -   .   .   .   .   .   .   .   .
x/b  X   -   .   .   .   .   .   .   .
x/c  X   .   -   .   .   .   .   .   .
y/a  X   .   .   -   .   .   .   .   .
y/b  X   .   .   .   -   .   .   .   .
y/c  X   .   .   .   .   -   .   .   .
z/a  X   .   .   .   .   .   -   .   .
z/b  X   .   .   .   .   .   .   -   .
z/c  X   .   .   .   .   .   .   .   -
"""
)

ONLY_XB_TO_XA = (
    H
    + """
x/a  -   .   .   .   .   .   .   .   .
x/b  .   -   .   .   .   .   .   .   .
x/c  X   .   -   .   .   .   .   .   .
y/a  X   .   .   -   .   .   .   .   .
y/b  X   .   .   .   -   .   .   .   .
y/c  X   .   .   .   .   -   .   .   .
z/a  X   .   .   .   .   .   -   .   .
z/b  X   .   .   .   .   .   .   -   .
z/c  X   .   .   .   .   .   .   .   -
"""
)

ONLY_NS_Y_TO_XA = (
    H
    + """
x/a  -   .   .   .   .   .   .   .   .
x/b  X   -   .   .   .   .   .   .   .
x/c  X   .   -   .   .   .   .   .   .
y/a  .   .   .   -   .   .   .   .   .
y/b  .   .   .   .   -   .   .   .   .
y/c  .   .   .   .   .   -   .   .   .
z/a  X   .   .   .   .   .   -   .   .
z/b  X   .   .   .   .   .   .   -   .
z/c  X   .   .   .   .   .   .   .   -
"""
)

NOTHING_FROM_XA = (
    H
    + """
x/a  -   X   X   X   X   X   X   X   X
x/b  .   -   .   .   .   .   .   .   .
x/c  .   .   -   .   .   .   .   .   .
y/a  .   .   .   -   .   .   .   .   .
y/b  .   .   .   .   -   .   .   .   .
y/c  .   .   .   .   .   -   .   .   .
z/a  .   .   .   .   .   .   -   .   .
z/b  .   .   .   .   .   .   .   -   .
z/c  .   .   .   .   .   .   .   .   -
"""
)


def ns_is(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def pod_is(name: str) -> dict[str, Any]:
    return {"matchLabels": {"pod": name}}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    e: dict[str, Any] = {"key": key, "operator": op}
    if values:
        e["values"] = list(values)
    return {"matchExpressions": [e]}


def tcp(port: int | str, end: int | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"port": port, "protocol": "TCP"}
    if end is not None:
        p["endPort"] = end
    return p


def ip(ns: str, pod: str) -> str:
    from tests.policy.truthtable import pod_ip

    return str(pod_ip(ns, pod))


@dataclass(frozen=True)
class Case:
    name: str
    policies: Sequence[Mapping[str, Any]]
    checks: Sequence[tuple[int, str, str]]  # (port, protocol, expected table)
    pod_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


DENY_INGRESS_X = netpol("x", "deny-ingress", ingress=[])

CASES = [
    Case("default-deny-ingress", [DENY_INGRESS_X], [(80, "TCP", NO_INGRESS_X)]),
    Case(
        "default-deny-all",
        [netpol("x", "deny-all", ingress=[], egress=[], types=["Ingress", "Egress"])],
        [(80, "TCP", NO_TRAFFIC_X)],
    ),
    Case(
        "allow from pods within server namespace based on PodSelector",
        [
            netpol(
                "x",
                "x-a-allows-x-b",
                pod_is("a"),
                ingress=[{"from": [{"podSelector": pod_is("b")}]}],
            )
        ],
        [(80, "TCP", ONLY_XB_TO_XA)],
    ),
    Case(
        "allow ingress traffic for a target",
        [
            netpol("x", "deny-all", ingress=[]),
            netpol(
                "x",
                "allow-all-to-a",
                pod_is("a"),
                ingress=[{"from": [{"podSelector": {}, "namespaceSelector": {}}]}],
            ),
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   X   X   .   .   .   .   .   .
                x/b  .   -   X   .   .   .   .   .   .
                x/c  .   X   -   .   .   .   .   .   .
                y/a  .   X   X   -   .   .   .   .   .
                y/b  .   X   X   .   -   .   .   .   .
                y/c  .   X   X   .   .   -   .   .   .
                z/a  .   X   X   .   .   .   -   .   .
                z/b  .   X   X   .   .   .   .   -   .
                z/c  .   X   X   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "allow ingress traffic from pods in all namespaces",
        [
            netpol(
                "x",
                "allow-from-another-ns",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": {}}]}],
            )
        ],
        [(80, "TCP", OPEN)],
    ),
    Case(
        "allow traffic only from a different namespace, based on NamespaceSelector",
        [
            netpol(
                "x",
                "allow-client-a-via-ns-selector",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": ns_is("y")}]}],
            )
        ],
        [(80, "TCP", ONLY_NS_Y_TO_XA)],
    ),
    Case(
        "PodSelector with MatchExpressions",
        [
            netpol(
                "x",
                "x-a-allows-x-b",
                pod_is("a"),
                ingress=[{"from": [{"podSelector": expr("pod", "In", "b")}]}],
            )
        ],
        [(80, "TCP", ONLY_XB_TO_XA)],
    ),
    Case(
        "NamespaceSelector with MatchExpressions",
        [
            netpol(
                "x",
                "allow-ns-y-match-selector",
                pod_is("a"),
                ingress=[
                    {
                        "from": [
                            {"namespaceSelector": expr("kubernetes.io/metadata.name", "In", "y")}
                        ]
                    }
                ],
            )
        ],
        [(80, "TCP", ONLY_NS_Y_TO_XA)],
    ),
    Case(
        "PodSelector or NamespaceSelector",
        [
            netpol(
                "x",
                "allow-ns-y-match-selector",
                pod_is("a"),
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": expr(
                                    "kubernetes.io/metadata.name", "NotIn", "x"
                                )
                            },
                            {"podSelector": pod_is("b")},
                        ]
                    }
                ],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   .   .   .   .   .   .   .
                x/b  .   -   .   .   .   .   .   .   .
                x/c  X   .   -   .   .   .   .   .   .
                y/a  .   .   .   -   .   .   .   .   .
                y/b  .   .   .   .   -   .   .   .   .
                y/c  .   .   .   .   .   -   .   .   .
                z/a  .   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  .   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "PodSelector and NamespaceSelector",
        [
            netpol(
                "x",
                "allow-ns-y-podselector-and-nsselector",
                pod_is("a"),
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": expr(
                                    "kubernetes.io/metadata.name", "NotIn", "x"
                                ),
                                "podSelector": pod_is("b"),
                            }
                        ]
                    }
                ],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   .   .   .   .   .   .   .
                x/b  X   -   .   .   .   .   .   .   .
                x/c  X   .   -   .   .   .   .   .   .
                y/a  X   .   .   -   .   .   .   .   .
                y/b  .   .   .   .   -   .   .   .   .
                y/c  X   .   .   .   .   -   .   .   .
                z/a  X   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  X   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "Multiple PodSelectors and NamespaceSelectors",
        [
            netpol(
                "x",
                "allow-ns-y-z-pod-b-c",
                pod_is("a"),
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": expr(
                                    "kubernetes.io/metadata.name", "NotIn", "x"
                                ),
                                "podSelector": expr("pod", "In", "b", "c"),
                            }
                        ]
                    }
                ],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   .   .   .   .   .   .   .
                x/b  X   -   .   .   .   .   .   .   .
                x/c  X   .   -   .   .   .   .   .   .
                y/a  X   .   .   -   .   .   .   .   .
                y/b  .   .   .   .   -   .   .   .   .
                y/c  .   .   .   .   .   -   .   .   .
                z/a  X   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  .   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "any PodSelectors",
        [
            netpol(
                "x",
                "allow-ns-x-pod-b-c",
                pod_is("a"),
                ingress=[{"from": [{"podSelector": pod_is("b")}, {"podSelector": pod_is("c")}]}],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   .   .   .   .   .   .   .
                x/b  .   -   .   .   .   .   .   .   .
                x/c  .   .   -   .   .   .   .   .   .
                y/a  X   .   .   -   .   .   .   .   .
                y/b  X   .   .   .   -   .   .   .   .
                y/c  X   .   .   .   .   -   .   .   .
                z/a  X   .   .   .   .   .   -   .   .
                z/b  X   .   .   .   .   .   .   -   .
                z/c  X   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        [
            netpol(
                "x",
                "allow-ns-y-pod-a",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("a")}]}],
            )
        ],
        [
            (
                proto_port,
                proto,
                H
                + """
                x/a  -   .   .   .   .   .   .   .   .
                x/b  X   -   .   .   .   .   .   .   .
                x/c  X   .   -   .   .   .   .   .   .
                y/a  .   .   .   -   .   .   .   .   .
                y/b  X   .   .   .   -   .   .   .   .
                y/c  X   .   .   .   .   -   .   .   .
                z/a  X   .   .   .   .   .   -   .   .
                z/b  X   .   .   .   .   .   .   -   .
                z/c  X   .   .   .   .   .   .   .   -
                """,
            )
            for proto_port, proto in ((80, "TCP"), (80, "UDP"), (80, "SCTP"))
        ],
    ),
    Case(
        "Ports: only namespace y, only port 81",
        [
            netpol(
                "x",
                "allow-client-a-via-ns-selector",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [tcp(81)]}],
            )
        ],
        [(81, "TCP", ONLY_NS_Y_TO_XA), (80, "TCP", NOTHING_TO_XA), (81, "UDP", NOTHING_TO_XA)],
    ),
    Case(
        "multiple, stacked policies with overlapping podSelectors",
        [
            netpol(
                "x",
                "allow-client-a-via-ns-selector",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [tcp(81)]}],
            ),
            netpol(
                "x",
                "allow-client-a-via-ns-selector-80",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [tcp(80)]}],
            ),
        ],
        [(80, "TCP", ONLY_NS_Y_TO_XA), (81, "TCP", ONLY_NS_Y_TO_XA), (82, "TCP", NOTHING_TO_XA)],
    ),
    Case(
        "allow-all policy",
        [netpol("x", "allow-all", ingress=[{}])],
        [(80, "TCP", OPEN), (81, "TCP", OPEN), (81, "UDP", OPEN)],
    ),
    Case(
        "ingress access on one named port",
        [netpol("x", "allow-all", ingress=[{"ports": [{"port": "serve-81-tcp"}]}])],
        [(81, "TCP", OPEN), (80, "TCP", NO_INGRESS_X), (81, "UDP", NO_INGRESS_X)],
    ),
    Case(
        "ingress access from namespace on one named port",
        [
            netpol(
                "x",
                "allow-client-a-via-ns-selector-80",
                pod_is("a"),
                ingress=[
                    {"from": [{"namespaceSelector": ns_is("y")}], "ports": [tcp("serve-80-tcp")]}
                ],
            )
        ],
        [(80, "TCP", ONLY_NS_Y_TO_XA), (81, "TCP", NOTHING_TO_XA)],
    ),
    Case(
        "egress access on one named port",
        [
            netpol(
                "x",
                "allow-egress",
                egress=[{"ports": [{"port": "serve-80-tcp"}]}],
                types=["Egress"],
            )
        ],
        [(80, "TCP", OPEN), (81, "TCP", NO_EGRESS_X)],
    ),
    Case(
        "deny ingress from pods on other namespaces",
        [netpol("x", "deny-empty-policy", ingress=[{"from": [{"podSelector": {}}]}])],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   .   .   .   .   .   .   .
                x/b  .   -   .   .   .   .   .   .   .
                x/c  .   .   -   .   .   .   .   .   .
                y/a  X   X   X   -   .   .   .   .   .
                y/b  X   X   X   .   -   .   .   .   .
                y/c  X   X   X   .   .   -   .   .   .
                z/a  X   X   X   .   .   .   -   .   .
                z/b  X   X   X   .   .   .   .   -   .
                z/c  X   X   X   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "deny egress from pods based on PodSelector",
        [netpol("x", "deny-egress-pod-a", pod_is("a"), egress=[], types=["Egress"])],
        [(80, "TCP", NOTHING_FROM_XA)],
    ),
    Case(
        "deny egress from all pods in a namespace",
        [netpol("x", "deny-egress-ns-x", egress=[], types=["Egress"])],
        [(80, "TCP", NO_EGRESS_X)],
    ),
    Case(
        "Ingress, Egress specified together",
        [
            netpol(
                "x",
                "allow-client-a-via-pod-selector",
                pod_is("a"),
                ingress=[{"from": [{"podSelector": pod_is("b")}]}],
                egress=[{"ports": [{"port": 80}]}],
                types=["Egress", "Ingress"],
            )
        ],
        [
            (80, "TCP", ONLY_XB_TO_XA),
            (
                81,
                "TCP",
                H
                + """
                x/a  -   X   X   X   X   X   X   X   X
                x/b  .   -   .   .   .   .   .   .   .
                x/c  X   .   -   .   .   .   .   .   .
                y/a  X   .   .   -   .   .   .   .   .
                y/b  X   .   .   .   -   .   .   .   .
                y/c  X   .   .   .   .   -   .   .   .
                z/a  X   .   .   .   .   .   -   .   .
                z/b  X   .   .   .   .   .   .   -   .
                z/c  X   .   .   .   .   .   .   .   -
                """,
            ),
        ],
    ),
    Case(
        "denying egress on the client side even if the server explicitly allows it",
        [
            netpol(
                "x",
                "allow-to-ns-y-pod-a",
                pod_is("a"),
                egress=[{"to": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("a")}]}],
                types=["Egress"],
            ),
            netpol(
                "y",
                "allow-from-xa-on-ya-match-selector",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": ns_is("x"), "podSelector": pod_is("a")}]}],
            ),
            netpol(
                "y",
                "allow-from-xa-on-yb-match-selector",
                pod_is("b"),
                ingress=[{"from": [{"namespaceSelector": ns_is("x"), "podSelector": pod_is("a")}]}],
            ),
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   X   X   .   X   X   X   X   X
                x/b  .   -   .   X   X   .   .   .   .
                x/c  .   .   -   X   X   .   .   .   .
                y/a  .   .   .   -   X   .   .   .   .
                y/b  .   .   .   X   -   .   .   .   .
                y/c  .   .   .   X   X   -   .   .   .
                z/a  .   .   .   X   X   .   -   .   .
                z/b  .   .   .   X   X   .   .   -   .
                z/c  .   .   .   X   X   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "egress to a server in a different namespace based on PodSelector and NamespaceSelector",
        [
            netpol(
                "x",
                "allow-to-ns-y-pod-a",
                pod_is("a"),
                egress=[{"to": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("a")}]}],
                types=["Egress"],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   X   X   .   X   X   X   X   X
                x/b  .   -   .   .   .   .   .   .   .
                x/c  .   .   -   .   .   .   .   .   .
                y/a  .   .   .   -   .   .   .   .   .
                y/b  .   .   .   .   -   .   .   .   .
                y/c  .   .   .   .   .   -   .   .   .
                z/a  .   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  .   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "ingress allowing any port on a specific protocol",
        [
            netpol(
                "x",
                "allow-ingress-by-proto",
                pod_is("a"),
                ingress=[{"ports": [{"protocol": "TCP"}]}],
            )
        ],
        [(80, "TCP", OPEN), (81, "TCP", OPEN), (80, "UDP", NOTHING_TO_XA)],
    ),
    Case(
        "multiple ingress policies, allow-all taking precedence (before)",
        [netpol("x", "allow-ingress-port-80", ingress=[{"ports": [{"port": 80}]}])],
        [(81, "TCP", NO_INGRESS_X), (80, "TCP", OPEN)],
    ),
    Case(
        "multiple ingress policies, allow-all taking precedence (after)",
        [
            netpol("x", "allow-ingress-port-80", ingress=[{"ports": [{"port": 80}]}]),
            netpol("x", "allow-ingress", ingress=[{}]),
        ],
        [(81, "TCP", OPEN), (80, "UDP", OPEN)],
    ),
    Case(
        "multiple egress policies, allow-all taking precedence (before)",
        [netpol("x", "allow-egress-port-80", egress=[{"ports": [{"port": 80}]}], types=["Egress"])],
        [(81, "TCP", NO_EGRESS_X), (80, "TCP", OPEN)],
    ),
    Case(
        "multiple egress policies, allow-all taking precedence (after)",
        [
            netpol(
                "x", "allow-egress-port-80", egress=[{"ports": [{"port": 80}]}], types=["Egress"]
            ),
            netpol("x", "allow-egress", egress=[{}], types=["Egress"]),
        ],
        [(81, "TCP", OPEN)],
    ),
    Case(
        "egress access to server in CIDR block",
        [
            netpol(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                pod_is("a"),
                egress=[{"to": [{"ipBlock": {"cidr": f"{ip('y', 'b')}/32"}}]}],
                types=["Egress"],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   X   X   X   .   X   X   X   X
                x/b  .   -   .   .   .   .   .   .   .
                x/c  .   .   -   .   .   .   .   .   .
                y/a  .   .   .   -   .   .   .   .   .
                y/b  .   .   .   .   -   .   .   .   .
                y/c  .   .   .   .   .   -   .   .   .
                z/a  .   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  .   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "except clause while egress access to server in CIDR block",
        [
            netpol(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                pod_is("a"),
                egress=[
                    {
                        "to": [
                            {"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{ip('x', 'b')}/32"]}}
                        ]
                    }
                ],
                types=["Egress"],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   X   .   .   .   .   .   .   .
                x/b  .   -   .   .   .   .   .   .   .
                x/c  .   .   -   .   .   .   .   .   .
                y/a  .   .   .   -   .   .   .   .   .
                y/b  .   .   .   .   -   .   .   .   .
                y/c  .   .   .   .   .   -   .   .   .
                z/a  .   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  .   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed by a second policy",
        [
            netpol(
                "x",
                "allow-client-a-via-cidr-egress-rule",
                pod_is("a"),
                egress=[
                    {
                        "to": [
                            {"ipBlock": {"cidr": "10.244.0.0/16", "except": [f"{ip('x', 'b')}/32"]}}
                        ]
                    }
                ],
                types=["Egress"],
            ),
            netpol(
                "x",
                "allow-client-a-to-x-b",
                pod_is("a"),
                egress=[{"to": [{"ipBlock": {"cidr": f"{ip('x', 'b')}/32"}}]}],
                types=["Egress"],
            ),
        ],
        [(80, "TCP", OPEN)],
    ),
    Case(
        "the except of one policy does not hide a longer prefix of another inside it",
        [
            netpol(
                "x",
                "to-x-subnet-but-not-x-c",
                pod_is("a"),
                egress=[
                    {"to": [{"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.12/32"]}}]}
                ],
                types=["Egress"],
            ),
            # Another policy's prefix 10.244.1.0/28 lies inside x/a's block and covers x/a, x/b,
            # x/c: x/b's CIDR identity is now the /28's (longest match), which x/a's block must
            # select; x/c's is its /32's, inside the except.
            netpol(
                "y",
                "to-the-first-16-of-x",
                egress=[{"to": [{"ipBlock": {"cidr": "10.244.1.0/28"}}]}],
                types=["Egress"],
            ),
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   X   X   X   X   X   X   X
                x/b  .   -   .   .   .   .   .   .   .
                x/c  .   .   -   .   .   .   .   .   .
                y/a  .   .   .   -   X   X   X   X   X
                y/b  .   .   .   X   -   X   X   X   X
                y/c  .   .   .   X   X   -   X   X   X
                z/a  .   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  .   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case(
        "ingress and egress policies controlled independently (egress allow-all, ingress deny)",
        [
            netpol("x", "allow-egress-for-target", pod_is("a"), egress=[{}], types=["Egress"]),
            netpol(
                "x", "deny-ingress-via-label-selector", pod_is("a"), ingress=[], types=["Ingress"]
            ),
        ],
        [(80, "TCP", NOTHING_TO_XA)],
    ),
    Case(
        "'protocol: SCTP' is not treated as 'protocol: TCP'",
        [
            DENY_INGRESS_X,
            netpol(
                "x",
                "allow-only-sctp-ingress-on-port-81",
                pod_is("a"),
                ingress=[{"ports": [{"port": 81, "protocol": "SCTP"}]}],
            ),
        ],
        [(81, "TCP", NO_INGRESS_X)],
    ),
    Case(
        "a policy allowing only SCTP isolates the pod for TCP",
        [
            netpol(
                "x",
                "allow-only-sctp-ingress-on-port-80",
                pod_is("a"),
                ingress=[{"ports": [{"port": 80, "protocol": "SCTP"}]}],
            )
        ],
        [(81, "TCP", NOTHING_TO_XA), (80, "TCP", NOTHING_TO_XA), (80, "SCTP", OPEN)],
    ),
    Case(
        "no access by TCP when a policy specifies only UDP",
        [
            netpol(
                "x",
                "allow-only-udp-ingress-on-port-81",
                pod_is("a"),
                ingress=[{"ports": [{"port": 81, "protocol": "UDP"}]}],
            )
        ],
        [(81, "TCP", NOTHING_TO_XA), (81, "UDP", OPEN)],
    ),
    Case(
        "NamespaceSelector with MatchExpressions using default ns label (egress NotIn y)",
        [
            netpol(
                "x",
                "allow-ns-y-match-selector-for-immutable-ns-label",
                pod_is("a"),
                egress=[
                    {
                        "to": [
                            {"namespaceSelector": expr("kubernetes.io/metadata.name", "NotIn", "y")}
                        ]
                    }
                ],
                types=["Egress"],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   .   X   X   X   .   .   .
                x/b  .   -   .   .   .   .   .   .   .
                x/c  .   .   -   .   .   .   .   .   .
                y/a  .   .   .   -   .   .   .   .   .
                y/b  .   .   .   .   -   .   .   .   .
                y/c  .   .   .   .   .   -   .   .   .
                z/a  .   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  .   .   .   .   .   .   .   .   -
                """,
            )
        ],
    ),
    Case("UDP default-deny-ingress", [DENY_INGRESS_X], [(80, "UDP", NO_INGRESS_X)]),
    Case("SCTP default-deny-ingress", [DENY_INGRESS_X], [(80, "SCTP", NO_INGRESS_X)]),
    Case(
        "UDP policy based on Ports",
        [
            netpol(
                "x",
                "allow-ingress-on-port-81-ns-x",
                pod_is("a"),
                ingress=[
                    {
                        "from": [{"namespaceSelector": ns_is("y")}],
                        "ports": [{"port": 81, "protocol": "UDP"}],
                    }
                ],
            )
        ],
        [(81, "UDP", ONLY_NS_Y_TO_XA), (81, "TCP", NOTHING_TO_XA), (80, "UDP", NOTHING_TO_XA)],
    ),
    Case(
        "endPort range on ingress",
        [
            netpol(
                "x",
                "allow-80-to-81-from-y",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [tcp(80, 81)]}],
            )
        ],
        [
            (80, "TCP", ONLY_NS_Y_TO_XA),
            (81, "TCP", ONLY_NS_Y_TO_XA),
            (82, "TCP", NOTHING_TO_XA),
            (79, "TCP", NOTHING_TO_XA),
        ],
    ),
    Case(
        "endPort range on egress",
        [
            netpol(
                "x",
                "egress-81-to-90",
                pod_is("a"),
                egress=[{"ports": [tcp(81, 90)]}],
                types=["Egress"],
            )
        ],
        [
            (80, "TCP", NOTHING_FROM_XA),
            (81, "TCP", OPEN),
            (90, "TCP", OPEN),
            (91, "TCP", NOTHING_FROM_XA),
        ],
    ),
    Case(
        "allow DNS-only egress",
        [
            netpol(
                "x",
                "dns-only",
                egress=[
                    {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
                ],
                types=["Egress"],
            )
        ],
        [(53, "UDP", OPEN), (53, "TCP", OPEN), (80, "TCP", NO_EGRESS_X), (80, "UDP", NO_EGRESS_X)],
    ),
    Case(
        "policyTypes Egress only: ingress rules of the policy are ignored",
        [netpol("x", "egress-only", ingress=[], egress=[], types=["Egress"])],
        [(80, "TCP", NO_EGRESS_X)],
    ),
    Case(
        "policyTypes implied: a policy with egress rules affects ingress too",
        [netpol("x", "implied-types", egress=[{"ports": [{"port": 80}]}])],
        [(80, "TCP", NO_INGRESS_X), (81, "TCP", NO_TRAFFIC_X)],
    ),
    Case(
        "empty from list with ports: every peer on those ports",
        [netpol("x", "from-empty", pod_is("a"), ingress=[{"from": [], "ports": [tcp(80)]}])],
        [(80, "TCP", OPEN), (81, "TCP", NOTHING_TO_XA)],
    ),
    Case(
        "ingress access from updated namespace (before the label)",
        [
            netpol(
                "x",
                "allow-client-a-via-ns-selector",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}],
            )
        ],
        [(80, "TCP", NOTHING_TO_XA)],
    ),
    Case(
        "ingress access from updated namespace (after the label)",
        [
            netpol(
                "x",
                "allow-client-a-via-ns-selector",
                pod_is("a"),
                ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}],
            )
        ],
        [(80, "TCP", ONLY_NS_Y_TO_XA)],
        namespace_labels={"y": {"ns2": "updated"}},
    ),
    Case(
        "ingress access from updated pod (after the label)",
        [
            netpol(
                "x",
                "allow-client-a-via-pod-selector",
                pod_is("a"),
                ingress=[
                    {"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}
                ],
            )
        ],
        [(80, "TCP", ONLY_XB_TO_XA)],
        pod_labels={"x/b": {"pod2": "updated"}},
    ),
    Case(
        "deny ingress access to updated pod (after the label)",
        [
            netpol(
                "x",
                "deny-ingress-via-label-selector",
                {"matchLabels": {"target": "isolated"}},
                ingress=[],
            )
        ],
        [(80, "TCP", NOTHING_TO_XA)],
        pod_labels={"x/a": {"target": "isolated"}},
    ),
    Case(
        "namespaceSelector Exists / podSelector DoesNotExist",
        [
            netpol(
                "x",
                "exists",
                pod_is("a"),
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": expr("team", "Exists"),
                                "podSelector": expr("pod2", "DoesNotExist"),
                            }
                        ]
                    }
                ],
            )
        ],
        [
            (
                80,
                "TCP",
                H
                + """
                x/a  -   .   .   .   .   .   .   .   .
                x/b  X   -   .   .   .   .   .   .   .
                x/c  X   .   -   .   .   .   .   .   .
                y/a  X   .   .   -   .   .   .   .   .
                y/b  X   .   .   .   -   .   .   .   .
                y/c  X   .   .   .   .   -   .   .   .
                z/a  .   .   .   .   .   .   -   .   .
                z/b  .   .   .   .   .   .   .   -   .
                z/c  X   .   .   .   .   .   .   .   -
                """,
            )
        ],
        namespace_labels={"z": {"team": "blue"}},
        pod_labels={"z/c": {"pod2": "marked"}},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_e2e_truth_table(case: Case) -> None:
    cluster = Cluster(
        case.policies,
        make_pods(case.pod_labels),
        make_namespaces(case.namespace_labels),
    )
    for port, protocol, table in case.checks:
        try:
            assert_matrix(cluster.matrix(port, protocol), table)
        except AssertionError as e:
            raise AssertionError(f"{port}/{protocol}: {e}") from None


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


def test_no_policy_is_all_open_for_every_protocol() -> None:
    cluster = Cluster([])
    for port, proto in ((80, "TCP"), (81, "UDP"), (80, "SCTP")):
        assert_matrix(cluster.matrix(port, proto), OPEN)


def test_a_wrong_table_fails() -> None:
    """The harness itself can fail: a deny-ingress cluster does not match the open table."""
    cluster = Cluster([DENY_INGRESS_X])
    with pytest.raises(AssertionError, match="wrong cell"):
        assert_matrix(cluster.matrix(80), OPEN)
