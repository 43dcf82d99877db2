"""The reachability matrix's pure parts: which pods, which pairs, the e2e suite's table, JSON."""

from __future__ import annotations

import json

import pytest

from dataplane.lab.matrix import (
    MatrixPod,
    PairResult,
    batches,
    plan_rows,
    render_table,
    select_pods,
    table_of,
)


def pod(ns: str, name: str, phase: str = "Running", ip: str | None = "10.0.0.1") -> dict:
    status = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": {"namespace": ns, "name": name, "uid": f"uid-{ns}-{name}"},
        "spec": {"nodeName": "node-1"},
        "status": status,
    }


def test_select_running_pods_sorted() -> None:
    pods = [
        pod("y", "b"),
        pod("x", "b"),
        pod("x", "a"),
        pod("x", "c", phase="Pending", ip=None),
        pod("x", "d", ip=None),
        pod("kube-system", "dns"),
        pod("z", "a"),
    ]
    assert [p.key for p in select_pods(pods, None)] == ["x/a", "x/b", "y/b", "z/a"]
    assert [p.key for p in select_pods(pods, ["y", "x"])] == ["x/a", "x/b", "y/b"]
    assert [p.key for p in select_pods(pods, ["kube-system"])] == ["kube-system/dns"]
    assert select_pods(pods, ["w"]) == []
    first = select_pods(pods, ["x"])[0]
    assert (first.node, first.uid, first.ip) == ("node-1", "uid-x-a", "10.0.0.1")


def test_plan_covers_every_ordered_pair_including_self() -> None:
    pods = [MatrixPod("x", n, f"10.0.0.{i}", "node-1", n) for i, n in enumerate("abc")]
    rows = plan_rows(pods)
    pairs = [(s.key, t.key) for s, targets in rows for t in targets]
    assert len(pairs) == 9 and len(set(pairs)) == 9
    assert ("x/a", "x/a") in pairs and ("x/c", "x/a") in pairs
    assert [len(b) for b in batches(rows, 2)] == [2, 1]
    assert batches([], 4) == []
    with pytest.raises(ValueError):
        batches(rows, 0)


def test_table_as_the_e2e_suite_prints_it() -> None:
    keys = ["x/a", "x/b", "y/a"]
    connected = {(s, t): not (s == "x/b" and t.startswith("y/")) for s in keys for t in keys}
    del connected[("y/a", "y/a")]
    assert render_table(keys, keys, connected) == (
        "-\tx/a\tx/b\ty/a\nx/a\t.\t.\t.\nx/b\t.\t.\tX\ny/a\t.\t.\t?"
    )


def test_table_and_json_of_results() -> None:
    pods = [MatrixPod("x", "a", "10.0.0.1", "n", "u1"), MatrixPod("y", "b", "10.0.0.2", "n", "u2")]
    results = [
        PairResult(s.key, t.key, 81, "UDP", s.key != "x/a" or t.key == "x/a")
        for s in pods
        for t in pods
    ]
    assert table_of(pods, results) == "-\tx/a\ty/b\nx/a\t.\tX\ny/b\t.\t."
    assert json.loads(results[1].to_json()) == {
        "from": "x/a",
        "to": "y/b",
        "port": 81,
        "protocol": "UDP",
        "connected": False,
    }
    assert list(json.loads(results[0].to_json())) == ["from", "to", "port", "protocol", "connected"]
