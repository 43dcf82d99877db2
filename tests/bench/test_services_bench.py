"""bench.services' machinery on a real 2-node lab at tiny counts: every mode measures a positive
rate through the translator it claims (checked inside the run by the socket LB's and iptables'
own counters), the maps are followed up and down, the kube-proxy ruleset is loaded and removed
again, and the map memory is read from the kernel. No timing is asserted."""

from __future__ import annotations

import subprocess

import pytest

from bench import services
from dataplane.maps import lbmap
from flowscope.paths import ClusterPaths
from tests.conftest import unique

pytestmark = [pytest.mark.privileged, pytest.mark.etcd]


def test_services_bench_machinery_at_tiny_counts() -> None:
    name = unique("h4sv")
    lines: list[str] = []
    results = services.run(name, counts=(50, 10), seconds=0.3, rounds=1, log=lines.append)

    for mode in services.MODES:
        for count in (10, 50):
            assert results.rate(mode, count) > 0, (mode, count, lines)
    assert results.program_s > 0 and results.apply_s > 0 and 10 in results.shrink_s
    assert 0 <= results.slices_s <= results.program_s + 1  # whole seconds
    # 50 services of 2 backends: a service entry and 2 slots each, one reverse-NAT id each
    held = {m.name: m for m in results.memory}
    assert held[lbmap.SERVICES_MAP].entries >= 50 * 3
    assert held[lbmap.REVNAT_MAP].entries >= 50
    assert all(m.memlock > 0 for m in results.memory)
    # kube-proxy's nat rules per service of two endpoints: its KUBE-SERVICES rule, the masquerade
    # mark and two picks in KUBE-SVC-*, hairpin mark and DNAT in each of two KUBE-SEP-*
    assert results.iptables_rules[50] - results.iptables_rules[10] == 40 * 8
    assert len(report := services.report(results, 0.3, 1)) > 5
    assert any(line.startswith("flowscope(50)/iptables(50) = ") for line in report)
    assert all(n > 0 and cpu > 0 for n, cpu in results.agents_cpu.values())

    # the lab is gone, and with it the namespace that held the ruleset
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ClusterPaths(name).node_netns(services.CLIENT_NODE) not in netns
