"""The scheduler's pure decisions."""

from __future__ import annotations

from flowscope.controllers.scheduler import Binding, Unschedulable, schedule


def node(name: str, ready: bool = True) -> dict:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(
    name: str, node_name: str | None = None, *, ts: str = "2026-01-01T00:00:00Z", **status
) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "x"}]}
    if node_name:
        spec["nodeName"] = node_name
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": ts},
        "spec": spec,
        "status": status,
    }


def test_spreads_to_fewest_pods_ties_by_name() -> None:
    nodes = [node("b"), node("a"), node("c")]
    pods = [pod("x1", "a"), pod("p1"), pod("p2"), pod("p3"), pod("p4")]
    assert schedule(pods, nodes) == [
        Binding("default", "p1", "b"),
        Binding("default", "p2", "c"),
        Binding("default", "p3", "a"),
        Binding("default", "p4", "b"),
        Binding("default", "x1", "a"),  # already there: only its PodScheduled condition is set
    ]


def test_not_ready_nodes_get_nothing() -> None:
    assert schedule([pod("p")], [node("a", ready=False), node("b")]) == [
        Binding("default", "p", "b")
    ]


def test_no_ready_node_leaves_pod_pending_with_a_reason() -> None:
    (d,) = schedule([pod("p")], [node("a", ready=False)])
    assert d == Unschedulable(
        "default", "p", "Unschedulable", "0/1 nodes are available: 1 node(s) were not ready."
    )


def test_pod_naming_a_missing_node_stays_pending_once() -> None:
    (d,) = schedule([pod("p", "ghost")], [node("a")])
    assert d == Unschedulable("default", "p", "NodeNotFound", 'node "ghost" not found')
    already = pod(
        "p",
        "ghost",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "NodeNotFound"}],
    )
    assert schedule([already], [node("a")]) == []


def test_settled_and_terminal_pods_need_nothing() -> None:
    settled = pod("s", "a", conditions=[{"type": "PodScheduled", "status": "True"}])
    done = pod("d", phase="Succeeded")
    assert schedule([settled, done], [node("a")]) == []


def test_older_pods_first() -> None:
    pods = [pod("young", ts="2026-01-02T00:00:00Z"), pod("old", ts="2026-01-01T00:00:00Z")]
    assert [d.name for d in schedule(pods, [node("a"), node("b")])] == ["old", "young"]
    assert [d.node for d in schedule(pods, [node("a"), node("b")])] == ["a", "b"]
