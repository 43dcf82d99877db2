"""The compiler's specifics beyond the pod matrix: world and node addresses through ipBlock,
the host, cookies, named ports resolved per peer, unresolved pods, inputs from stored objects,
and recompiles through one Compiler agreeing with fresh ones."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.identity.model import CIDR_ID_BASE, Reserved
from dataplane.policy.compiler import (
    Compiler,
    ContainerPort,
    compile_policies,
    namespace_labels,
    on_node,
    parse_policy,
    pod_info,
    required_prefixes,
    security_labels,
)
from dataplane.policy.entry import COOKIE_HOST, COOKIE_NO_POLICY, Direction, allow_all
from tests.policy.truthtable import Cluster, make_namespaces, make_pods, netpol, stored

WORLD_IP = IPv4Address("203.0.113.5")
NODE_IP = IPv4Address("10.224.0.2")  # a node on the VNET: not a pod, so "outside" to policy


def _outside(cluster: Cluster, address: IPv4Address, ask, pod, port: int) -> bool:
    """Ask with an outside address's identities, both ways a datapath might state them: the
    ipcache's (identity = its CIDR identity when one covers it, else world) and world always;
    the compiler must give the same verdict either way."""
    cidr = cluster.cidr_identity(address)
    as_ipcache = ask(pod, cidr or Reserved.WORLD, address, port, "TCP")
    as_world = ask(pod, Reserved.WORLD, address, port, "TCP")
    assert as_ipcache == as_world, f"{address}: identity {cidr} vs world disagree"
    return as_ipcache


def from_address(cluster: Cluster, dst: str, address: IPv4Address, port: int = 80) -> bool:
    """Ingress of `dst` from an address outside the cluster."""
    return _outside(cluster, address, cluster.ingress, cluster.by_name[dst], port)


def to_address(cluster: Cluster, src: str, address: IPv4Address, port: int = 80) -> bool:
    return _outside(cluster, address, cluster.egress, cluster.by_name[src], port)


def test_ipblock_with_except_for_world_node_and_pod_addresses() -> None:
    block = {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}
    cluster = Cluster([netpol("x", "world-not-10", {}, ingress=[{"from": [{"ipBlock": block}]}])])
    assert from_address(cluster, "x/a", WORLD_IP)
    assert not from_address(cluster, "x/a", NODE_IP)  # 10.224.0.2 lies in the except
    assert not cluster.connected(cluster.by_name["y/a"], cluster.by_name["x/a"], 80, "TCP")
    assert from_address(cluster, "y/a", NODE_IP)  # y is not selected


def test_ipblock_all_addresses_selects_world_even_without_a_cidr_identity() -> None:
    cluster = Cluster(
        [
            netpol(
                "x",
                "egress-world",
                {},
                egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}],
                types=["Egress"],
            )
        ]
    )
    assert to_address(cluster, "x/a", WORLD_IP)
    # a datapath that gave the address no CIDR identity (0) still matches reserved:world
    entry = cluster.compiled.endpoints[("x", "a")].decide(
        Direction.EGRESS, Reserved.WORLD, 0, 6, 80
    )
    assert entry is not None and entry.identity == Reserved.WORLD
    # and pods match through the CIDR identity of 0.0.0.0/0
    assert cluster.connected(cluster.by_name["x/a"], cluster.by_name["z/c"], 80, "TCP")


def test_ipblock_narrow_block_to_node_subnet() -> None:
    cluster = Cluster(
        [
            netpol(
                "x",
                "to-nodes",
                {},
                egress=[{"to": [{"ipBlock": {"cidr": "10.224.0.0/16"}}]}],
                types=["Egress"],
            )
        ]
    )
    assert to_address(cluster, "x/b", NODE_IP)
    assert not to_address(cluster, "x/b", WORLD_IP)
    assert to_address(cluster, "y/b", WORLD_IP)


def test_pod_selectors_never_select_world() -> None:
    cluster = Cluster(
        [netpol("x", "from-all-pods", {}, ingress=[{"from": [{"namespaceSelector": {}}]}])]
    )
    assert not from_address(cluster, "x/a", WORLD_IP)
    open_rule = Cluster([netpol("x", "from-anyone", {}, ingress=[{}])])
    assert from_address(open_rule, "x/a", WORLD_IP)


def test_host_is_allowed_into_isolated_pods_only_by_the_host_entry() -> None:
    cluster = Cluster([netpol("x", "deny", {}, ingress=[], egress=[], types=["Ingress", "Egress"])])
    xa = cluster.compiled.endpoints[("x", "a")]
    entry = xa.decide(Direction.INGRESS, Reserved.HOST, 0, 6, 10250)
    assert entry is not None and entry.cookie == COOKIE_HOST
    assert xa.decide(Direction.EGRESS, Reserved.HOST, 0, 6, 10250) is None
    assert xa.decide(Direction.INGRESS, Reserved.WORLD, 0, 6, 80) is None


def test_unselected_endpoint_is_exactly_two_allow_all_entries() -> None:
    cluster = Cluster([netpol("x", "deny", {"matchLabels": {"pod": "a"}}, ingress=[])])
    assert cluster.compiled.endpoints[("x", "b")].entries == frozenset(
        {allow_all(Direction.INGRESS), allow_all(Direction.EGRESS)}
    )
    assert cluster.compiled.selected_by[("x", "b")] == {}
    assert cluster.compiled.selected_by[("x", "a")] == {Direction.INGRESS: ("x/deny",)}
    egress = cluster.compiled.endpoints[("x", "a")].decide(Direction.EGRESS, 999, 0, 17, 53)
    assert egress is not None and egress.cookie == COOKIE_NO_POLICY


def test_cookies_name_the_rule_and_peer_and_survive_other_policies() -> None:
    pol = netpol(
        "x",
        "web",
        {"matchLabels": {"pod": "a"}},
        ingress=[
            {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]},
            {"from": [{"namespaceSelector": {}}, {"podSelector": {"matchLabels": {"pod": "c"}}}]},
        ],
    )
    one = Cluster([pol])
    xa = one.compiled.endpoints[("x", "a")]
    e = xa.decide(Direction.INGRESS, one.identity(one.by_name["x/b"]), 0, 6, 80)
    ref = one.compiled.cookies[e.cookie]
    assert (ref.namespace, ref.policy, ref.direction, ref.rule_index, ref.peer_index) == (
        "x",
        "web",
        Direction.INGRESS,
        0,
        0,
    )
    assert "pod=b" in ref.description and "TCP/80" in ref.description
    e2 = xa.decide(Direction.INGRESS, one.identity(one.by_name["y/c"]), 0, 6, 81)
    assert one.compiled.cookies[e2.cookie].rule_index == 1
    assert one.compiled.cookies[e2.cookie].peer_index == 0
    # every cookie in the entries names a rule (or is one of the two reserved cookies)
    cookies = {e.cookie for ep in one.compiled.endpoints.values() for e in ep.entries}
    assert cookies - {COOKIE_NO_POLICY, COOKIE_HOST} <= one.compiled.cookies.keys()
    # another policy elsewhere does not renumber this one's rules
    two = Cluster([netpol("y", "other", {}, ingress=[{}]), pol])
    assert two.compiled.endpoints[("x", "a")] == xa


def test_egress_named_port_resolves_per_peer_pod() -> None:
    pods = make_pods()
    http = {("y", "a"): 8080, ("y", "b"): 9090}
    pods = [
        replace(p, ports=(ContainerPort(http[p.key], 6, "http"),)) if p.key in http else p
        for p in pods
    ]
    cluster = Cluster(
        [
            netpol(
                "x",
                "to-http",
                {"matchLabels": {"pod": "a"}},
                egress=[{"ports": [{"port": "http"}]}],
                types=["Egress"],
            )
        ],
        pods,
    )
    xa, ya, yb, yc = (cluster.by_name[n] for n in ("x/a", "y/a", "y/b", "y/c"))
    assert cluster.connected(xa, ya, 8080, "TCP")
    assert not cluster.connected(xa, ya, 9090, "TCP")
    assert cluster.connected(xa, yb, 9090, "TCP")
    assert not cluster.connected(xa, yb, 8080, "TCP")
    assert not any(cluster.connected(xa, yc, p, "TCP") for p in (80, 8080, 9090))  # has no "http"
    assert not to_address(cluster, "x/a", WORLD_IP, 8080)


def test_ingress_named_port_resolves_against_each_selected_pod() -> None:
    pods = make_pods()
    http = {("x", "a"): 8080, ("x", "b"): 9090}
    pods = [
        replace(p, ports=(ContainerPort(http[p.key], 6, "http"),)) if p.key in http else p
        for p in pods
    ]
    cluster = Cluster([netpol("x", "http-in", {}, ingress=[{"ports": [{"port": "http"}]}])], pods)
    ya = cluster.by_name["y/a"]
    assert cluster.connected(ya, cluster.by_name["x/a"], 8080, "TCP")
    assert not cluster.connected(ya, cluster.by_name["x/a"], 9090, "TCP")
    assert cluster.connected(ya, cluster.by_name["x/b"], 9090, "TCP")
    assert not any(cluster.connected(ya, cluster.by_name["x/c"], p, "TCP") for p in (80, 8080))


def test_ipv6_block_selects_nothing_but_still_isolates() -> None:
    cluster = Cluster(
        [netpol("x", "v6", {}, ingress=[{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}])]
    )
    assert not from_address(cluster, "x/a", WORLD_IP)
    assert not cluster.connected(cluster.by_name["y/a"], cluster.by_name["x/a"], 80, "TCP")


def test_pods_without_an_identity_are_reported_and_never_selected() -> None:
    pods = make_pods()
    nss = make_namespaces()
    ids = {security_labels(p, nss): 300 + i for i, p in enumerate(pods) if p.namespace != "z"}
    pols = stored([netpol("x", "from-all", {}, ingress=[{"from": [{"namespaceSelector": {}}]}])])
    compiled = compile_policies(pols, pods, nss, ids, {})
    assert set(compiled.unresolved) == {("z", n) for n in "abc"}
    xa = compiled.endpoints[("x", "a")]
    assert {e.identity for e in xa.entries if e.direction is Direction.INGRESS} == {
        Reserved.HOST,
        *ids.values(),
    }


def test_on_node_compiles_only_that_nodes_pods() -> None:
    pods, nss = make_pods(), make_namespaces()
    ids = {security_labels(p, nss): 300 + i for i, p in enumerate(pods)}
    compiled = compile_policies([], pods, nss, ids, {}, local=on_node("node-2"))
    assert set(compiled.endpoints) == {(ns, "b") for ns in "xyz"}


def test_inputs_from_stored_objects() -> None:
    pod = pod_info(
        {
            "metadata": {"namespace": "shop", "name": "web-1", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "node-1",
                "containers": [
                    {
                        "name": "c",
                        "ports": [
                            {"containerPort": 8080, "name": "http"},
                            {"containerPort": 53, "protocol": "UDP"},
                        ],
                    }
                ],
            },
            "status": {"podIP": "10.244.1.7"},
        }
    )
    assert pod.key == ("shop", "web-1") and pod.node == "node-1"
    assert pod.ip == IPv4Address("10.244.1.7")
    assert pod.named_port("http", 6) == 8080 and pod.named_port("http", 17) is None
    assert pod.ports[1] == ContainerPort(53, 17, None)
    nss = namespace_labels([{"metadata": {"name": "shop", "labels": {"team": "a"}}}])
    assert nss == {"shop": {"team": "a", "kubernetes.io/metadata.name": "shop"}}
    assert "k8s:io.kubernetes.pod.namespace=shop" in security_labels(pod, nss)
    assert "k8s:io.cilium.k8s.namespace.labels.team=a" in security_labels(pod, nss)


def test_required_prefixes_and_implied_policy_types() -> None:
    pol = stored(
        [
            netpol(
                "x",
                "p",
                {},
                egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}],
            )
        ]
    )[0]
    assert required_prefixes([pol]) == {IPv4Network("10.0.0.0/8"), IPv4Network("10.1.0.0/16")}
    parsed = parse_policy(pol)
    assert parsed.ingress == () and parsed.egress is not None  # implied: Ingress and Egress
    only_ingress = parse_policy({"metadata": {"name": "q"}, "spec": {"podSelector": {}}})
    assert only_ingress.ingress == () and only_ingress.egress is None


@pytest.mark.parametrize("step", range(4))
def test_recompiling_through_one_compiler_equals_a_fresh_compile(step: int) -> None:
    """Policies added, changed, deleted; pods relabelled; namespace relabelled."""
    pods, nss = make_pods(), make_namespaces()
    pols = stored(
        [
            netpol(
                "x", "a", {"matchLabels": {"pod": "a"}}, ingress=[{"from": [{"podSelector": {}}]}]
            ),
            netpol(
                "y",
                "b",
                {},
                egress=[{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
                types=["Egress"],
            ),
            netpol(
                "z", "c", {}, ingress=[{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]
            ),
        ]
    )
    compiler = Compiler()

    def both(pols, pods, nss):
        prefixes = required_prefixes(pols)
        from tests.policy.truthtable import allocate

        ids, cidrs = allocate(pods, nss, prefixes)
        got = compiler.compile(pols, pods, nss, ids, cidrs)
        want = compile_policies(pols, pods, nss, ids, cidrs)
        assert got.endpoints == want.endpoints
        assert got.cookies == want.cookies
        assert got.selected_by == want.selected_by
        return got

    first = both(pols, pods, nss)
    if step == 0:  # a policy changes
        pols[0] = stored([netpol("x", "a", {"matchLabels": {"pod": "a"}}, ingress=[])])[0]
    elif step == 1:  # a policy goes away, another comes
        pols = [*pols[1:], *stored([netpol("x", "new", {}, egress=[], types=["Egress"])])]
    elif step == 2:  # a pod is relabelled
        pods = [replace(p, labels=(("pod", "b"),)) if p.key == ("x", "a") else p for p in pods]
    else:  # a namespace is relabelled
        nss = {**nss, "z": {**nss["z"], "ns": "zz"}}
    second = both(pols, pods, nss)
    assert second.endpoints != first.endpoints
    # endpoints whose policy did not change are the very same objects
    same = [k for k in second.endpoints if second.endpoints[k] == first.endpoints[k]]
    assert same and all(second.endpoints[k] is first.endpoints[k] for k in same if step < 2)


def test_cidr_identity_numbers_come_from_the_caller() -> None:
    pols = stored(
        [
            netpol(
                "x",
                "p",
                {},
                egress=[{"to": [{"ipBlock": {"cidr": "10.244.2.0/24"}}]}],
                types=["Egress"],
            )
        ]
    )
    pods, nss = make_pods(), make_namespaces()
    ids = {security_labels(p, nss): 300 + i for i, p in enumerate(pods)}
    compiled = compile_policies(
        pols, pods, nss, ids, {IPv4Network("10.244.2.0/24"): CIDR_ID_BASE + 7}
    )
    xa = compiled.endpoints[("x", "a")]
    assert {e.identity for e in xa.entries if e.direction is Direction.EGRESS} == {CIDR_ID_BASE + 7}


def test_a_policy_dict_changed_in_place_is_recompiled() -> None:
    pods, nss = make_pods(), make_namespaces()
    ids = {security_labels(p, nss): 300 + i for i, p in enumerate(pods)}
    pol = stored([netpol("x", "p", {}, ingress=[{}])])[0]
    compiler = Compiler()
    open_ = compiler.compile([pol], pods, nss, ids, {})
    pol["spec"]["ingress"] = []
    closed = compiler.compile([pol], pods, nss, ids, {})
    assert open_.endpoints[("x", "a")].decide(Direction.INGRESS, 301, 0, 6, 80) is not None
    assert closed.endpoints[("x", "a")].decide(Direction.INGRESS, 301, 0, 6, 80) is None
