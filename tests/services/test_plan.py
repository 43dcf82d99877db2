"""The LB plan from Services + EndpointSlices (made by the real EndpointSlice controller's
functions from pods), and the diff between plans."""

from __future__ import annotations

from typing import Any

from dataplane.services.plan import (
    ALGORITHM_ANNOTATION,
    NODE_ANY,
    Backend,
    FrontendKey,
    Plan,
    diff,
    plan,
)
from flowscope.controllers.endpointslices import desired_slices


def pod(
    name: str,
    ip: str,
    node: str,
    ports: list[tuple[str, int, str]] | None = None,
    ready: bool = True,
    terminating: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "labels": {"app": "web"}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "image": "agnhost",
                    "ports": [
                        {"name": n, "containerPort": p, "protocol": proto}
                        for n, p, proto in (ports or [])
                    ],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", None)
    meta: dict[str, Any] = {"name": "web", "namespace": "default", "uid": "u1"}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.0.0.10",
            "selector": {"app": "web"},
            "ports": ports,
            **spec,
        },
    }


def lb(svc: dict[str, Any], pods: list[dict[str, Any]], node: str | None = "n1") -> Plan:
    return plan([svc], desired_slices(svc, pods), node)


HTTP = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
DNS = {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}


def test_multiport_named_target_ports_resolved_per_backend_pod() -> None:
    pods = [
        pod("a", "10.1.0.5", "n1", [("http", 8080, "TCP"), ("dns", 5353, "UDP")]),
        pod("b", "10.1.1.6", "n2", [("http", 9090, "TCP"), ("dns", 5354, "UDP")]),
        pod("c", "10.1.1.7", "n2", [("dns", 5355, "UDP")]),  # serves no http
    ]
    p = lb(service([HTTP, DNS]), pods)
    fe = p.by_key()
    http = fe[FrontendKey("10.0.0.10", 80, "TCP", "ClusterIP")]
    assert [(b.ip, b.port) for b in http.backends] == [("10.1.0.5", 8080), ("10.1.1.6", 9090)]
    assert http.backends[0].pod == "default/a" and http.backends[0].node == "n1"
    dns = fe[FrontendKey("10.0.0.10", 53, "UDP", "ClusterIP")]
    assert [(b.ip, b.port) for b in dns.backends] == [
        ("10.1.0.5", 5353),
        ("10.1.1.6", 5354),
        ("10.1.1.7", 5355),
    ]
    assert http.service == "default/web" and http.port_name == "http"


def test_slices_without_resolved_ports_use_pods_or_numeric_target() -> None:
    svc = service([HTTP, {"name": "raw", "port": 81, "targetPort": 8181, "protocol": "TCP"}])
    a = pod("a", "10.1.0.5", "n1", [("http", 8080, "TCP")])
    handmade = {
        "metadata": {
            "name": "web-x",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["10.1.0.5"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "namespace": "default", "name": "a"},
            }
        ],
    }
    fe = plan([svc], [handmade], "n1", pods=[a]).by_key()
    assert fe[FrontendKey("10.0.0.10", 80, "TCP", "ClusterIP")].backend_names() == (
        "10.1.0.5:8080",
    )
    assert fe[FrontendKey("10.0.0.10", 81, "TCP", "ClusterIP")].backend_names() == (
        "10.1.0.5:8181",
    )
    # without the pod, a named targetPort cannot be resolved: that frontend has no backends
    fe = plan([svc], [handmade], "n1").by_key()
    assert fe[FrontendKey("10.0.0.10", 80, "TCP", "ClusterIP")].no_endpoints


def test_readiness_and_terminating_fallback() -> None:
    pods = [
        pod("a", "10.1.0.5", "n1", [("http", 80, "TCP")]),
        pod("b", "10.1.0.6", "n1", [("http", 80, "TCP")], ready=False),
    ]
    (fe,) = lb(service([HTTP]), pods).frontends
    assert fe.backend_names() == ("10.1.0.5:80",)
    # none ready: the serving, terminating ones carry the traffic (kube-proxy's fallback)
    pods = [
        pod("a", "10.1.0.5", "n1", [("http", 80, "TCP")], terminating=True),
        pod("b", "10.1.0.6", "n1", [("http", 80, "TCP")], ready=False),
    ]
    (fe,) = lb(service([HTTP]), pods).frontends
    assert fe.backends == (Backend("10.1.0.5", 80, "n1", "default/a", terminating=True),)


def test_no_endpoints_frontend_is_kept() -> None:
    (fe,) = lb(service([HTTP]), []).frontends
    assert fe.key == FrontendKey("10.0.0.10", 80, "TCP", "ClusterIP")
    assert fe.no_endpoints and fe.backends == ()


def test_headless_service_has_no_frontend() -> None:
    assert lb(service([HTTP], clusterIP="None"), []).frontends == ()


def test_internal_traffic_policy_local_keeps_this_nodes_backends() -> None:
    pods = [
        pod("a", "10.1.0.5", "n1", [("http", 80, "TCP")]),
        pod("b", "10.1.1.6", "n2", [("http", 80, "TCP")]),
    ]
    svc = service([HTTP], internalTrafficPolicy="Local")
    (on_n1,) = lb(svc, pods, "n1").frontends
    (on_n3,) = lb(svc, pods, "n3").frontends
    assert on_n1.backend_names() == ("10.1.0.5:80",) and on_n1.local_only
    assert on_n3.no_endpoints  # no local backend: refused, never sent elsewhere


def test_node_port_frontends_and_external_traffic_policy() -> None:
    pods = [
        pod("a", "10.1.0.5", "n1", [("http", 80, "TCP")]),
        pod("b", "10.1.1.6", "n2", [("http", 80, "TCP")]),
    ]
    ports = [{**HTTP, "nodePort": 30080}]
    cluster = lb(service(ports, type="NodePort", externalTrafficPolicy="Cluster"), pods).by_key()
    node_key = FrontendKey(NODE_ANY, 30080, "TCP", "NodePort")
    assert len(cluster[node_key].backends) == 2
    local = lb(service(ports, type="NodePort", externalTrafficPolicy="Local"), pods, "n2")
    fe = local.by_key()
    assert fe[node_key].backend_names() == ("10.1.1.6:80",) and fe[node_key].local_only
    # the ClusterIP frontend of the same service is not affected by externalTrafficPolicy
    assert len(fe[FrontendKey("10.0.0.10", 80, "TCP", "ClusterIP")].backends) == 2


def test_load_balancer_ingress_frontends() -> None:
    svc = service([{**HTTP, "nodePort": 30081}], type="LoadBalancer")
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}]}}
    keys = [f.key for f in lb(svc, [pod("a", "10.1.0.5", "n1", [("http", 80, "TCP")])]).frontends]
    assert keys == sorted(
        [
            FrontendKey("10.0.0.10", 80, "TCP", "ClusterIP"),
            FrontendKey(NODE_ANY, 30081, "TCP", "NodePort"),
            FrontendKey("172.18.255.1", 80, "TCP", "LoadBalancer"),
        ]
    )


def test_affinity_and_algorithm_fields() -> None:
    pods = [pod("a", "10.1.0.5", "n1", [("http", 80, "TCP")])]
    (plain,) = lb(service([HTTP]), pods).frontends
    assert plain.affinity_timeout == 0 and plain.algorithm == "random"
    (sticky,) = lb(service([HTTP], sessionAffinity="ClientIP"), pods).frontends
    assert sticky.affinity_timeout == 10800
    svc = service(
        [HTTP],
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}},
        annotations={ALGORITHM_ANNOTATION: "maglev"},
    )
    (custom,) = lb(svc, pods).frontends
    assert custom.affinity_timeout == 30 and custom.algorithm == "maglev"
    (default_maglev,) = plan(
        [service([HTTP])], desired_slices(service([HTTP]), pods), "n1", default_algorithm="maglev"
    ).frontends
    assert default_maglev.algorithm == "maglev"


def test_diff_ports_added_and_removed_backends_added_and_removed() -> None:
    a = pod("a", "10.1.0.5", "n1", [("http", 80, "TCP"), ("dns", 53, "UDP")])
    b = pod("b", "10.1.0.6", "n1", [("http", 80, "TCP"), ("dns", 53, "UDP")])
    one_port = lb(service([HTTP]), [a])
    assert diff(one_port, one_port).upsert == () and not diff(one_port, one_port)
    # a port added: only its frontend is upserted
    two_ports = lb(service([HTTP, DNS]), [a])
    d = diff(one_port, two_ports)
    assert [f.key for f in d.upsert] == [FrontendKey("10.0.0.10", 53, "UDP", "ClusterIP")]
    assert d.delete == ()
    # a backend added: both frontends change; nothing deleted
    more = lb(service([HTTP, DNS]), [a, b])
    d = diff(two_ports, more)
    assert {f.key.port for f in d.upsert} == {53, 80} and d.delete == ()
    assert all(len(f.backends) == 2 for f in d.upsert)
    # a backend removed and a port removed at once
    d = diff(more, lb(service([HTTP]), [b]))
    assert [f.backend_names() for f in d.upsert] == [("10.1.0.6:80",)]
    assert d.delete == (FrontendKey("10.0.0.10", 53, "UDP", "ClusterIP"),)
    # the service gone: everything deleted
    d = diff(more, plan([], [], "n1"))
    assert d.upsert == () and len(d.delete) == 2
    # a setting changed (affinity) upserts though backends are equal
    d = diff(one_port, lb(service([HTTP], sessionAffinity="ClientIP"), [a]))
    assert len(d.upsert) == 1 and d.upsert[0].affinity_timeout == 10800


def test_many_services_plan_in_one_pass() -> None:
    services, slices = [], []
    for i in range(2000):
        svc = service([HTTP])
        svc["metadata"]["name"] = f"s{i}"
        svc["spec"]["clusterIP"] = f"10.0.{i // 250}.{i % 250 + 1}"
        svc["spec"]["selector"] = {"app": f"s{i}"}
        p = pod(f"p{i}", f"10.1.{i // 250}.{i % 250 + 1}", "n1", [("http", 80, "TCP")])
        p["metadata"]["labels"] = {"app": f"s{i}"}
        services.append(svc)
        slices += desired_slices(svc, [p])
    result = plan(services, slices, "n1")
    assert len(result.frontends) == 2000
    assert all(len(f.backends) == 1 for f in result.frontends)
    assert len({f.key.address for f in result.frontends}) == 2000
