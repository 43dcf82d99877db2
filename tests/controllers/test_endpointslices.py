"""The EndpointSlice controller's pure decisions."""

from __future__ import annotations

from flowscope.apis.refs import ObjectRef
from flowscope.controllers import endpointslices as es


def service(name: str = "web", ports: list | None = None, selector: dict | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "app", "uid": "svc-uid"},
        "spec": {
            "selector": {"app": "web"} if selector is None else selector,
            "ports": ports
            or [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod(name: str, ip: str | None, http_port: int = 8080, ready: bool = True, labels=None) -> dict:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "app",
            "uid": f"uid-{name}",
            "labels": labels or {"app": "web"},
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "ports": [{"name": "http", "containerPort": http_port, "protocol": "TCP"}],
                }
            ],
        },
        "status": {
            **({"podIP": ip} if ip else {}),
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_endpoints_with_conditions_node_and_target_ref() -> None:
    (s,) = es.desired_slices(service(), [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False)])
    assert s["addressType"] == "IPv4"
    assert s["metadata"]["labels"] == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    }
    assert s["metadata"]["ownerReferences"][0]["uid"] == "svc-uid"
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert s["endpoints"] == [
        {
            "addresses": ["10.0.0.1"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": "app", "name": "a", "uid": "uid-a"},
            "nodeName": "node-1",
        },
        {
            "addresses": ["10.0.0.2"],
            "conditions": {"ready": False, "serving": False, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": "app", "name": "b", "uid": "uid-b"},
            "nodeName": "node-1",
        },
    ]


def test_named_port_resolving_differently_splits_slices() -> None:
    slices = es.desired_slices(
        service(),
        [pod("a", "10.0.0.1", 8080), pod("b", "10.0.0.2", 9090), pod("c", "10.0.0.3", 8080)],
    )
    by_port = {
        s["ports"][0]["port"]: [e["targetRef"]["name"] for e in s["endpoints"]] for s in slices
    }
    assert by_port == {8080: ["a", "c"], 9090: ["b"]}
    assert len({s["metadata"]["name"] for s in slices}) == 2


def test_pod_without_the_named_port_gets_no_such_port() -> None:
    svc = service(
        ports=[
            {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"},
            {"name": "web", "port": 80, "targetPort": 8080, "protocol": "TCP"},
        ]
    )
    (s,) = es.desired_slices(svc, [pod("a", "10.0.0.1")])
    assert s["ports"] == [{"name": "web", "port": 8080, "protocol": "TCP"}]


def test_pods_without_ip_other_labels_or_namespace_are_left_out() -> None:
    other_ns = pod("x", "10.0.0.9")
    other_ns["metadata"]["namespace"] = "elsewhere"
    pods = [pod("noip", None), pod("other", "10.0.0.5", labels={"app": "db"}), other_ns]
    (s,) = es.desired_slices(service(), pods)
    assert s["endpoints"] == [] and s["ports"] == []  # the placeholder slice


def test_service_without_selector_is_not_managed() -> None:
    assert es.desired_slices(service(selector={}), [pod("a", "10.0.0.1")]) == []


def test_at_most_100_endpoints_a_slice() -> None:
    pods = [pod(f"p{i:03}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    slices = es.desired_slices(service(), pods)
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]
    assert len({s["metadata"]["name"] for s in slices}) == 3


def test_reconcile_creates_updates_and_deletes() -> None:
    svc = service()
    pods = [pod("a", "10.0.0.1")]
    changes = es.reconcile([svc], pods, [])
    assert len(changes.apply) == 1 and changes.delete == []
    current = changes.apply
    assert not es.reconcile([svc], pods, current)  # converged
    pods.append(pod("b", "10.0.0.2"))
    update = es.reconcile([svc], pods, current)
    assert [len(s["endpoints"]) for s in update.apply] == [2]
    gone = es.reconcile([], pods, current)
    assert gone.apply == [] and gone.delete == [
        ObjectRef("EndpointSlice", "app", current[0]["metadata"]["name"])
    ]


def test_reconcile_leaves_foreign_slices_alone() -> None:
    foreign = {
        "kind": "EndpointSlice",
        "metadata": {
            "name": "x",
            "namespace": "app",
            "labels": {"kubernetes.io/service-name": "web"},
        },
    }
    assert es.reconcile([], [], [foreign]).delete == []


def test_readiness_is_followed_both_ways() -> None:
    svc = service()
    current = es.reconcile([svc], [pod("a", "10.0.0.1")], []).apply
    flipped = es.reconcile([svc], [pod("a", "10.0.0.1", ready=False)], current)
    (s,) = flipped.apply
    assert s["endpoints"][0]["conditions"] == {
        "ready": False,
        "serving": False,
        "terminating": False,
    }
    back = es.reconcile([svc], [pod("a", "10.0.0.1")], flipped.apply).apply
    assert back[0]["endpoints"][0]["conditions"]["ready"] is True


def test_terminating_pod_serves_but_is_not_ready_and_finished_pods_are_left_out() -> None:
    terminating = pod("a", "10.0.0.1")
    terminating["metadata"]["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    finished = [pod("b", "10.0.0.2"), pod("c", "10.0.0.3")]
    finished[0]["status"]["phase"] = "Succeeded"
    finished[1]["status"]["phase"] = "Failed"
    (s,) = es.desired_slices(service(), [terminating, *finished])
    assert [e["addresses"] for e in s["endpoints"]] == [["10.0.0.1"]]
    assert s["endpoints"][0]["conditions"] == {
        "ready": False,
        "serving": True,
        "terminating": True,
    }


def test_selector_matching_nothing_keeps_one_empty_slice() -> None:
    """The service exists with no endpoints: one slice without endpoints or ports, which the
    datapath reads as "refuse"."""
    (s,) = es.desired_slices(service(selector={"app": "none"}), [pod("a", "10.0.0.1")])
    assert s["endpoints"] == [] and s["ports"] == []
    # the pod that starts matching replaces it (one slice, its ports resolved)
    matching = service(selector={"app": "web"})
    current = es.reconcile([service(selector={"app": "none"})], [pod("a", "10.0.0.1")], [])
    changes = es.reconcile([matching], [pod("a", "10.0.0.1")], current.apply)
    assert [len(x["endpoints"]) for x in changes.apply] == [1]
    assert changes.delete == [
        ObjectRef("EndpointSlice", "app", current.apply[0]["metadata"]["name"])
    ]
