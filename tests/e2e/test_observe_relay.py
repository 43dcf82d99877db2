"""The Observer API on a real 2-node lab: `lab up` starts the relay and records where it listens;
`observe` reads the relay (both nodes' flows of a cross-node connection, merged, filtered on the
nodes) or one node's agent directly; `status` shows the health and counters; an agent that
stops is reported unavailable by the relay while the other node's flows still print.
"""

from __future__ import annotations

import heapq
import json
import os
import signal
import time

import pytest

from collector.relay import recorded_address
from flowscope import clusterinfo
from flowscope.flow.timestamp import format_rfc3339, parse_rfc3339
from flowscope.paths import ClusterPaths
from tests.conftest import unique
from tests.e2e.lab import Lab, client_and_server, running_lab, until

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

WORKLOAD = client_and_server("obs")


@pytest.fixture(scope="module")
def lab():
    with running_lab(
        unique("h2obs"), "--nodes", "2", "--ipam", "overlay", workload=WORKLOAD, pods=2
    ) as lab:
        yield lab


def responses(lab: Lab, *args: str) -> list[dict]:
    out = lab.run("observe", "-o", "json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_observe_through_the_relay_merges_both_nodes_with_filters(lab: Lab) -> None:
    info = clusterinfo.load(lab.name)
    address = recorded_address(info)
    assert address and address.startswith("127.0.0.1:")
    assert lab.probe("obs/client", "obs/server:80")["connected"]

    def both_nodes() -> list[dict]:
        got = responses(lab, "--last", "1000", "--from-pod", "obs/client", "--to-port", "80")
        nodes = {r["node_name"] for r in got}
        return got if nodes == {"node-1", "node-2"} else []

    until(both_nodes, "the client's flows to port 80 seen on both nodes through the relay")
    until_now = format_rfc3339(time.time_ns())
    common = ("--until", until_now, "--from-pod", "obs/client", "--to-port", "80")
    merged = responses(lab, "--all", *common)
    for r in merged:
        flow = r["flow"]
        assert flow["source"]["pod_name"] == "client" and flow["source"]["namespace"] == "obs"
        assert flow["l4"]["TCP"]["destination_port"] == 80
    # each node's records in the node's own order, as the node itself sends them
    direct = {}
    for node in ("node-1", "node-2"):
        direct[node] = responses(lab, "--all", "--node", node, *common)
        assert direct[node] and [r for r in merged if r["node_name"] == node] == direct[node]

    # across the nodes, in time order: always the earliest of the nodes' next records (a node's
    # own order is its ring's, where its datapath and kernel-event batches may interleave
    # slightly out of time order, as in Hubble's ring)
    def at(r: dict) -> int:
        return parse_rfc3339(r["time"])

    assert len(merged) >= 4
    assert merged == list(heapq.merge(*direct.values(), key=at))

    # --last applies to the merge; --not excludes; table has hubble's columns
    assert len(responses(lab, "--last", "3", *common)) == 3
    assert responses(lab, "--all", *common, "--not", "--to-port", "80") == []
    table = lab.run("observe", "--last", "2", *common, "-o", "table", "--print-node-name")
    header = table.stdout.splitlines()[0].split()
    assert header == ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(table.stdout.splitlines()) == 3
    bad = lab.run("observe", "--to-port", "eighty", check=False)
    assert bad.returncode == 2 and "--to-port" in bad.stderr

    status = lab.run("status").stdout
    assert f"Healthcheck (via {address}): Ok" in status
    assert "Connected Nodes: 2/2" in status and "Current/Max Flows: " in status


def test_a_stopped_agent_is_reported_unavailable(lab: Lab) -> None:
    pidfile = ClusterPaths(lab.name).run_dir / "agent-node-2.pid"
    os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)  # this test's lab's agent

    def reported() -> bool:
        got = lab.run("observe", "--last", "5", check=False)
        return got.returncode == 0 and "1 nodes are unavailable: node-2" in got.stderr

    until(reported, "node-2 reported unavailable by the relay", timeout=30)
    status = lab.run("status").stdout
    assert "Connected Nodes: 1/2" in status
    assert "Unavailable Nodes: 1\n  - node-2" in status
    # node-1 still answers through the relay
    assert any(r["node_name"] == "node-1" for r in responses(lab, "--last", "50"))
    lab.run("lab", "up", "--nodes", "2", "--ipam", "overlay", timeout=180)  # restarts it
    until(lambda: "Connected Nodes: 2/2" in lab.run("status").stdout, "node-2 back", timeout=30)
