"""Flows through Kafka on a real 2-node lab: `lab up --kafka` starts the broker and the agents
publish to it; a probe's flows come back from the topic through `observe --kafka` with a filter,
from both nodes; restarting an agent shows as a gap record (AGENT_RESTART), not as silence."""

from __future__ import annotations

import json
import os
import signal

import pytest

from collector.publisher import read_stats, stats_path
from dataplane.lab import daemons, kafka
from dataplane.lab.cluster import agent_daemon
from flowscope import clusterinfo
from tests.conftest import unique
from tests.e2e.lab import Lab, client_and_server, running_lab, until

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

WORKLOAD = client_and_server("kfk")


@pytest.fixture(scope="module")
def lab():
    with running_lab(
        unique("h3kfk"), "--nodes", "2", "--ipam", "overlay", "--kafka", workload=WORKLOAD, pods=2
    ) as lab:
        yield lab


def bootstrap(lab: Lab) -> str:
    info = kafka.of(clusterinfo.load(lab.name))
    assert info is not None, "lab up --kafka recorded no broker"
    return info.bootstrap


def from_kafka(lab: Lab, *args: str) -> list[dict]:
    out = lab.run("observe", "--kafka", bootstrap(lab), "-o", "json", "--all", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_probes_flows_come_back_from_kafka_filtered(lab: Lab) -> None:
    server_ip = next(p for p in lab.pods("kfk") if p["metadata"]["name"] == "server")["status"][
        "podIP"
    ]
    result = lab.probe("kfk/client", f"{server_ip}:80")
    assert result["connected"], result

    def flows_of_probe() -> list[dict]:
        lines = from_kafka(lab, "--to-pod", "kfk/server", "--to-port", "80")
        return [obj["flow"] for obj in lines if "flow" in obj]

    flows = until(
        lambda: (
            (f := flows_of_probe()) and {x["node_name"] for x in f} >= {"node-1", "node-2"} and f
        ),
        "the probe's flows from both nodes in Kafka",
        timeout=30,
    )
    assert all(f["destination"]["pod_name"] == "server" for f in flows)
    assert all(f["l4"]["TCP"]["destination_port"] == 80 for f in flows)
    # the filter ran: nothing of the other direction's pod as destination
    everything = from_kafka(lab)
    assert len(everything) > len(flows)
    # the publishers say what they did (what `flowscope status` reads)
    paths = clusterinfo.load(lab.name).paths
    for node in ("node-1", "node-2"):
        stats = until(lambda n=node: read_stats(stats_path(paths, n)), f"{node}'s stats file")
        assert stats.broker == "up" and stats.acked > 0 and stats.lost == 0, stats


def test_an_agent_restart_is_a_gap_record(lab: Lab) -> None:
    paths = clusterinfo.load(lab.name).paths
    daemon = agent_daemon(paths, "node-1")
    pid = daemons.pid_of(daemon.pidfile)
    assert pid is not None
    before = read_stats(stats_path(paths, "node-1"))
    os.kill(pid, signal.SIGTERM)
    until(lambda: daemons.pid_of(daemon.pidfile) is None, "the agent stopped", timeout=30)
    lab.run("lab", "up", "--nodes", "2", "--ipam", "overlay", "--kafka", timeout=180)
    after = until(
        lambda: (s := read_stats(stats_path(paths, "node-1"))) and s.run_id != before.run_id and s,
        "the new agent's publisher",
        timeout=30,
    )

    def gaps() -> list[dict]:
        return [
            obj
            for obj in from_kafka(lab, "--node", "node-1")
            if obj.get("lost_events", {}).get("source") == "AGENT_RESTART"
        ]

    gap = until(gaps, "a gap record of node-1's restart", timeout=30)
    assert len(gap) == 1 and gap[0]["node_name"] == "node-1"
    assert after.next_seq > before.next_seq  # the numbering went on from the old run's
