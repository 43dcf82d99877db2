"""`flowscope get services,endpointslices -o wide` columns, as kubectl prints them, for
objects as the store allocates them and the EndpointSlice controller writes them."""

from __future__ import annotations

from typing import Any

from flowscope.apis import kinds
from flowscope.apis.objectstore import ObjectStore
from flowscope.cli.resources import table
from flowscope.controllers.endpointslices import desired_slices
from flowscope.store.kv import KV


def web_pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"web-{i}", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "n1",
            "containers": [
                {
                    "name": "c",
                    "image": "agnhost",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.1.0.{i + 10}",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


async def test_services_wide(kv: KV) -> None:
    store = ObjectStore(kv, service_cidr="10.0.0.0/16")
    await store.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {
                    "type": "NodePort",
                    "selector": {"app": "web", "tier": "front"},
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                    ],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "api"},
                "spec": {"selector": {"app": "api"}, "ports": [{"port": 8080}]},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "lb"},
                "spec": {
                    "type": "LoadBalancer",
                    "selector": {"app": "lb"},
                    "ports": [{"port": 443, "nodePort": 30443}],
                },
            },
        ]
    )
    services = await store.list("Service")
    web = next(s for s in services if s["metadata"]["name"] == "web")
    dns_node_port = web["spec"]["ports"][1]["nodePort"]
    rows = lines(table(kinds.get("Service"), services, wide=True, all_ns=False, prefix=False))
    assert rows[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name["web"][1:5] == [
        "NodePort",
        web["spec"]["clusterIP"],
        "<none>",
        f"80:30080/TCP,53:{dns_node_port}/UDP",
    ]
    assert by_name["web"][6] == "app=web,tier=front"
    assert by_name["api"][1:5] == ["ClusterIP", by_name["api"][2], "<none>", "8080/TCP"]
    assert by_name["api"][2].startswith("10.0.")
    assert by_name["lb"][1:5] == ["LoadBalancer", by_name["lb"][2], "<pending>", "443:30443/TCP"]
    # an ingress address replaces <pending>
    lb = next(s for s in services if s["metadata"]["name"] == "lb")
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}]}}
    rows = lines(table(kinds.get("Service"), [lb], wide=False, all_ns=False, prefix=False))
    assert rows[1][3] == "172.18.255.1" and len(rows[0]) == 6


def test_endpointslices_columns() -> None:
    svc = {
        "metadata": {"name": "web", "namespace": "default", "uid": "u"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    slices = desired_slices(svc, [web_pod(i) for i in range(5)])
    for s in slices:
        s["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    rows = lines(table(kinds.get("EndpointSlice"), slices, wide=True, all_ns=False, prefix=False))
    assert rows[0] == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert rows[1][1:6] == ["IPv4", "8080", "10.1.0.10,10.1.0.11,10.1.0.12", "+", "2"]
    assert rows[1][6] == "more..."
    # a service with no endpoints: kubectl's <unset>
    (empty,) = desired_slices(svc, [])
    empty["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    rows = lines(table(kinds.get("EndpointSlice"), [empty], wide=False, all_ns=False, prefix=False))
    assert rows[1][1:4] == ["IPv4", "<unset>", "<unset>"]
    # more than three ports are cut as kubectl cuts them
    many = {**empty, "ports": [{"name": f"p{i}", "port": 80 + i} for i in range(5)]}
    rows = lines(table(kinds.get("EndpointSlice"), [many], wide=False, all_ns=False, prefix=False))
    assert rows[1][2:6] == ["80,81,82", "+", "2", "more..."]
