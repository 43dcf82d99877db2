"""The Kubernetes e2e NetworkPolicy truth tables on a real 3-node lab, in both IPAM modes.

The cases and their expected 9x9 tables are the ones the pure compiler tests check
(tests/policy/test_e2e_matrix.py); here the same policies are applied to a lab running the real
datapath and `flowscope lab matrix` probes every pair through the kernel. Pods a, b, c of each
namespace sit on node-1, node-2, node-3, so every case crosses nodes as well as namespaces.

Like the e2e suite, a table is probed again while it differs (policies reach the agents through
the store's watch, within milliseconds, but the test does not assume when); the last table seen
is the one reported. Cases whose ipBlocks name the model's fixed pod addresses, SCTP checks and
checks of ports no pod serves (the lab's pods answer on 80 and 81, TCP and UDP: a closed port
can never show "connected") are covered by the pure tests only.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from tests.conftest import unique
from tests.e2e.lab import Lab
from tests.policy.test_e2e_matrix import CASES, Case
from tests.policy.truthtable import parse_matrix

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

CLUSTER_YAML = Path(__file__).parents[2] / "examples" / "netpol" / "cluster.yaml"
BASE = list(yaml.safe_load_all(CLUSTER_YAML.read_text()))
SERVED_PORTS, SERVED_PROTOCOLS = (80, 81), ("TCP", "UDP")  # what the lab's pods listen on
SETTLE = 15.0  # seconds a table may take to match before the case fails


def _uses_ip_block(case: Case) -> bool:
    return "ipBlock" in json.dumps(case.policies)


def _lab_checks(case: Case) -> list[tuple[int, str, str]]:
    return [
        (port, proto, table)
        for port, proto, table in case.checks
        if proto in SERVED_PROTOCOLS and port in SERVED_PORTS
    ]


LAB_CASES = [c for c in CASES if not _uses_ip_block(c) and _lab_checks(c)]
# vnet runs a cross-section: the datapath does not depend on the IPAM mode, the addressing does
VNET_CASES = {
    "default-deny-ingress",
    "default-deny-all",
    "allow traffic only from a different namespace, based on NamespaceSelector",
    "PodSelector and NamespaceSelector",
    "ingress access from namespace on one named port",
    "egress access on one named port",
    "deny egress from pods based on PodSelector",
    "UDP policy based on Ports",
    "endPort range on ingress",
    "ingress access from updated pod (after the label)",
}


def _lab(ipam: str):
    lab = Lab(unique(f"np{ipam[0]}"))
    lab.ipam = ipam
    try:
        lab.run("lab", "up", "--nodes", "3", "--ipam", ipam, timeout=180)
        lab.apply(yaml.safe_dump_all(_placed(BASE)))
        lab.wait_running(9)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


@pytest.fixture(scope="module")
def overlay_lab():
    yield from _lab("overlay")


@pytest.fixture(scope="module")
def vnet_lab():
    yield from _lab("vnet")


def _placed(objs: list[dict]) -> list[dict]:
    """Pod a of every namespace on node-1, b on node-2, c on node-3."""
    out = copy.deepcopy(objs)
    for obj in out:
        if obj["kind"] == "Pod":
            obj["spec"]["nodeName"] = f"node-{'abc'.index(obj['metadata']['name']) + 1}"
    return out


def _relabelled(case: Case) -> list[dict]:
    """The cluster's objects with the case's extra pod and namespace labels."""
    out = _placed(BASE)
    for obj in out:
        meta = obj["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}" if obj["kind"] == "Pod" else meta["name"]
        extra = (case.pod_labels if obj["kind"] == "Pod" else case.namespace_labels).get(key)
        meta["labels"] = {**meta.get("labels", {}), **(extra or {})}
    return out


def _matrix(lab: Lab, port: int, protocol: str) -> dict[tuple[str, str], bool]:
    out = lab.run(
        "lab",
        "matrix",
        "--namespaces",
        "x,y,z",
        "--port",
        str(port),
        "--protocol",
        protocol,
        "-o",
        "json",
    ).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    return {(r["from"], r["to"]): r["connected"] for r in rows if r["from"] != r["to"]}


def _differences(got: Mapping, want: Mapping) -> list[str]:
    return [
        f"{src} -> {dst}: expected {'.' if ok else 'X'}, got {'.' if got.get((src, dst)) else 'X'}"
        for (src, dst), ok in sorted(want.items())
        if got.get((src, dst)) != ok
    ]


def _expect(lab: Lab, port: int, protocol: str, table: str) -> float:
    want = {k: v for k, v in parse_matrix(table).items() if k[0] != k[1]}
    started = time.monotonic()
    while True:
        got = _matrix(lab, port, protocol)
        wrong = _differences(got, want)
        if not wrong:
            return time.monotonic() - started
        if time.monotonic() - started > SETTLE:
            raise AssertionError(
                f"{lab.ipam}: {port}/{protocol}: {len(wrong)} cells differ after {SETTLE:.0f}s:\n"
                + "\n".join(wrong)
            )


def _policy_docs(case: Case) -> list[dict]:
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **copy.deepcopy(p)}
        for p in case.policies
    ]


def _run_case(lab: Lab, case: Case) -> None:
    checks = _lab_checks(case)
    policies = _policy_docs(case)
    try:
        lab.apply(yaml.safe_dump_all([*_relabelled(case), *policies]))
        for port, protocol, table in checks:
            _expect(lab, port, protocol, table)
    finally:
        for p in policies:
            meta = p["metadata"]
            lab.run("delete", "networkpolicy", meta["name"], "-n", meta["namespace"], check=False)
        lab.apply(yaml.safe_dump_all(_placed(BASE)))  # apply replaces labels: back to the base


@pytest.mark.parametrize("case", LAB_CASES, ids=[c.name for c in LAB_CASES])
def test_truth_table_overlay(overlay_lab: Lab, case: Case) -> None:
    _run_case(overlay_lab, case)


VNET = [c for c in LAB_CASES if c.name in VNET_CASES]


@pytest.mark.parametrize("case", VNET, ids=[c.name for c in VNET])
def test_truth_table_vnet(vnet_lab: Lab, case: Case) -> None:
    _run_case(vnet_lab, case)


def test_the_lab_runs_most_cases() -> None:
    assert len(VNET) == len(VNET_CASES)
    assert len(LAB_CASES) >= 30, [c.name for c in LAB_CASES]
