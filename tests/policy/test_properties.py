"""Property tests over random NetworkPolicies on the x/y/z x a/b/c model.

- the compiled entries give the same 9x9 matrices as a naive evaluation of the API's rules on the
  pods themselves (tests/policy/reference.py), for TCP and UDP on 80 and 81;
- adding a policy never removes a connection in a direction it does not newly isolate;
- the verdicts do not depend on which numbers the identities got.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.policy.compiler import ContainerPort, PodInfo, security_labels
from dataplane.policy.entry import Direction
from tests.policy.reference import Reference
from tests.policy.truthtable import (
    Cluster,
    allocate,
    container_ports,
    make_namespaces,
    make_pods,
    pod_ip,
    render_matrix,
    stored,
)


def _vary_ports(pods: list[PodInfo]) -> list[PodInfo]:
    """Pods that disagree on their named ports, so it matters whose ports resolve a name:
    x/c serves "serve-80-tcp" on 81 and "serve-81-tcp" on 80; z/b names no ports at all."""
    swapped = (
        ContainerPort(81, 6, "serve-80-tcp"),
        ContainerPort(80, 6, "serve-81-tcp"),
        ContainerPort(80, 17, "serve-80-udp"),
        ContainerPort(81, 17, "serve-81-udp"),
    )
    unnamed = tuple(replace(p, name=None) for p in container_ports())
    changes = {("x", "c"): swapped, ("z", "b"): unnamed}
    return [replace(p, ports=changes[p.key]) if p.key in changes else p for p in pods]


PODS = _vary_ports(
    make_pods({"x/b": {"tier": "db"}, "y/c": {"tier": "web"}, "z/a": {"tier": "db"}})
)
NAMESPACES = make_namespaces({"z": {"team": "blue"}, "y": {"team": "red"}})
PROBES = ((80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"))

label_keys = st.sampled_from(["pod", "tier"])
label_values = st.sampled_from(["a", "b", "c", "db", "web"])


@st.composite
def pod_selectors(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["empty", "labels", "in", "notin", "exists", "doesnotexist"]))
    if kind == "empty":
        return {}
    if kind == "labels":
        return {"matchLabels": {draw(label_keys): draw(label_values)}}
    key = draw(label_keys)
    if kind in ("in", "notin"):
        values = draw(st.lists(label_values, min_size=1, max_size=2, unique=True))
        op = "In" if kind == "in" else "NotIn"
        return {"matchExpressions": [{"key": key, "operator": op, "values": values}]}
    op = "Exists" if kind == "exists" else "DoesNotExist"
    return {"matchExpressions": [{"key": key, "operator": op}]}


@st.composite
def namespace_selectors(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["empty", "name", "notin", "team", "noteam"]))
    name = draw(st.sampled_from(["x", "y", "z"]))
    if kind == "empty":
        return {}
    if kind == "name":
        return {"matchLabels": {"kubernetes.io/metadata.name": name}}
    if kind == "notin":
        expr = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [name]}
        return {"matchExpressions": [expr]}
    if kind == "team":
        return {"matchExpressions": [{"key": "team", "operator": "Exists"}]}
    return {"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}


POD_32 = [f"{pod_ip(ns, p)}/32" for ns in "xyz" for p in "abc"]
BLOCKS: dict[str, list[str]] = {
    "0.0.0.0/0": ["10.0.0.0/8", "10.244.1.0/24", "10.244.2.0/24", *POD_32[:3]],
    "10.244.0.0/16": ["10.244.1.0/24", "10.244.3.0/24", "10.244.2.0/28", *POD_32],
    "10.244.1.0/24": ["10.244.1.8/29", *POD_32[:3]],
    "10.244.2.0/24": POD_32[3:6],
    "10.244.2.0/28": POD_32[3:6],
    **{p: [] for p in POD_32[::2]},
}


@st.composite
def ip_blocks(draw: st.DrawFn) -> dict[str, Any]:
    cidr = draw(st.sampled_from(sorted(BLOCKS)))
    excepts = (
        draw(st.lists(st.sampled_from(BLOCKS[cidr]), max_size=2, unique=True))
        if BLOCKS[cidr]
        else []
    )
    block: dict[str, Any] = {"cidr": cidr}
    if excepts:
        block["except"] = excepts
    return {"ipBlock": block}


@st.composite
def peers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["pod", "ns", "both", "block"]))
    if kind == "block":
        return draw(ip_blocks())
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(pod_selectors())
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(namespace_selectors())
    return peer


@st.composite
def port_specs(draw: st.DrawFn) -> dict[str, Any]:
    proto = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    kind = draw(st.sampled_from(["number", "range", "name", "protocol"]))
    if kind == "number":
        return {"protocol": proto, "port": draw(st.sampled_from([80, 81, 82]))}
    if kind == "range":
        start = draw(st.sampled_from([1, 79, 80, 81]))
        return {"protocol": proto, "port": start, "endPort": draw(st.integers(start, 1024))}
    if kind == "name":
        port = draw(st.sampled_from([80, 81]))
        # mostly a name the pods serve with this protocol, sometimes one they do not
        named_proto = (
            proto.lower() if draw(st.integers(0, 3)) else draw(st.sampled_from(["tcp", "udp"]))
        )
        return {"protocol": proto, "port": f"serve-{port}-{named_proto}"}
    return {"protocol": proto}


@st.composite
def rules(draw: st.DrawFn, peers_key: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    how = draw(st.sampled_from(["missing", "empty", "some"]))
    if how == "empty":
        rule[peers_key] = []
    elif how == "some":
        rule[peers_key] = draw(st.lists(peers(), min_size=1, max_size=2))
    ports = draw(st.sampled_from(["missing", "empty", "some"]))
    if ports == "empty":
        rule["ports"] = []
    elif ports == "some":
        rule["ports"] = draw(st.lists(port_specs(), min_size=1, max_size=2))
    return rule


@st.composite
def policies(draw: st.DrawFn, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(pod_selectors())}
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        if draw(st.booleans()):
            spec[direction] = draw(st.lists(rules(peers_key), max_size=2))
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    ns = draw(st.sampled_from(["x", "y", "z"]))
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


def policy_sets(max_size: int = 4) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.integers(0, max_size).flatmap(
        lambda n: st.tuples(*(policies(f"p{i}") for i in range(n))).map(list)
    )


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(policy_sets())
def test_compiled_entries_agree_with_the_api_semantics(pols: list[dict[str, Any]]) -> None:
    cluster = Cluster(pols, PODS, NAMESPACES)
    reference = Reference(cluster.policies, PODS, NAMESPACES)
    for port, proto in PROBES:
        got, want = cluster.matrix(port, proto), reference.matrix(port, proto)
        assert got == want, (
            f"{port}/{proto}\ncompiled:\n{render_matrix(got)}\nreference:\n{render_matrix(want)}"
        )


def _isolated(cluster: Cluster) -> dict[tuple[tuple[str, str], Direction], bool]:
    return {
        (pod.key, d): d in cluster.compiled.selected_by.get(pod.key, {})
        for pod in PODS
        for d in Direction
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(3), policies("added"))
def test_adding_a_policy_never_removes_a_connection_it_does_not_isolate(
    pols: list[dict[str, Any]], extra: dict[str, Any]
) -> None:
    before, after = Cluster(pols, PODS, NAMESPACES), Cluster([*pols, extra], PODS, NAMESPACES)
    iso_before, iso_after = _isolated(before), _isolated(after)
    by_name = {str(p): p for p in PODS}
    for port, proto in PROBES:
        for s_name, d_name in before.matrix(port, proto):
            src, dst = by_name[s_name], by_name[d_name]
            for direction, local, peer in (
                (Direction.EGRESS, src, dst),
                (Direction.INGRESS, dst, src),
            ):
                newly = iso_after[(local.key, direction)] and not iso_before[(local.key, direction)]
                if newly:
                    continue
                ask = before.egress if direction is Direction.EGRESS else before.ingress
                ask_after = after.egress if direction is Direction.EGRESS else after.ingress
                was = ask(local, before.identity(peer), peer.ip, port, proto)
                now = ask_after(local, after.identity(peer), peer.ip, port, proto)
                assert not was or now, f"{extra} removed {direction.name} {s_name}->{d_name}"


@settings(max_examples=40, deadline=None)
@given(policy_sets(3), st.integers(1, 5000))
def test_verdicts_do_not_depend_on_identity_numbers(
    pols: list[dict[str, Any]], offset: int
) -> None:
    from dataplane.policy.compiler import compile_policies, required_prefixes

    objs = stored(pols)
    base = Cluster(objs, PODS, NAMESPACES, validate=False)
    ids, cidrs = allocate(PODS, NAMESPACES, required_prefixes(objs), offset=offset)
    compiled = compile_policies(objs, PODS, NAMESPACES, ids, cidrs)
    from dataplane.policy.compiler import cidr_identity_of

    for port, proto in PROBES:
        for s in PODS:
            for d in PODS:
                if s is d:
                    continue
                num = {"TCP": 6, "UDP": 17}[proto]
                out = compiled.endpoints[s.key].decide(
                    Direction.EGRESS,
                    ids[security_labels(d, NAMESPACES)],
                    cidr_identity_of(d.ip, cidrs),
                    num,
                    port,
                )
                inn = compiled.endpoints[d.key].decide(
                    Direction.INGRESS,
                    ids[security_labels(s, NAMESPACES)],
                    cidr_identity_of(s.ip, cidrs),
                    num,
                    port,
                )
                assert (out is not None and inn is not None) == base.connected(s, d, port, proto)
