"""The lab's background traffic plan (pure)."""

from __future__ import annotations

from dataplane.lab.traffic import OUTSIDE_TARGET, Call, plan


def pod(ns: str, name: str, ip: str | None, ports=(), phase: str = "Running") -> dict:
    return {
        "metadata": {"namespace": ns, "name": name},
        "spec": {"containers": [{"name": "c", "ports": list(ports)}]},
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }


def service(ns: str, name: str, ports, cluster_ip: str = "10.0.0.20") -> dict:
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": cluster_ip, "ports": ports}}  # fmt: skip


def test_every_running_pod_calls_the_others_the_services_and_the_world() -> None:
    pods = [
        pod("a", "web", "10.244.0.5", [{"containerPort": 80}]),
        pod(
            "b",
            "api",
            "10.244.1.6",
            [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}],
        ),
        pod("b", "pending", None, [{"containerPort": 80}], phase="Pending"),
        pod("kube-system", "coredns", "10.244.0.2", [{"containerPort": 53}]),
    ]
    services = [
        service("a", "web", [{"port": 80, "protocol": "TCP"}]),
        service("b", "db", [{"port": 5432}], cluster_ip="None"),  # headless: skipped
        service("kube-system", "kube-dns", [{"port": 53, "protocol": "UDP"}], "10.0.0.10"),
    ]
    calls = plan(pods, services)
    assert set(calls) == {
        Call("a/web", "10.244.1.6", 8080, "TCP"),
        Call("a/web", "10.244.1.6", 53, "UDP"),
        Call("a/web", "web.a", 80, "TCP"),
        Call("a/web", *OUTSIDE_TARGET),
        Call("b/api", "10.244.0.5", 80, "TCP"),
        Call("b/api", "web.a", 80, "TCP"),
        Call("b/api", *OUTSIDE_TARGET),
    }
    assert plan([], services) == []
