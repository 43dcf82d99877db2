"""`lab matrix` on a real 3-node lab with the e2e suite's pods (examples/netpol/): without
policies every one of the 81 pairs connects, over TCP 80 and UDP 81, all probed at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.e2e.lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

CLUSTER_YAML = Path(__file__).parents[2] / "examples" / "netpol" / "cluster.yaml"
PODS = [f"{ns}/{pod}" for ns in "xyz" for pod in "abc"]


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique("mtx"))
    try:
        lab.run("lab", "up", "--nodes", "3", "--ipam", "overlay", timeout=180)
        lab.apply(CLUSTER_YAML.read_text())
        lab.wait_running(9)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


@pytest.mark.parametrize("protocol, port", [("TCP", 80), ("UDP", 81)])
def test_every_pair_connects_without_policies(lab: Lab, protocol: str, port: int) -> None:
    started = time.monotonic()
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
    took = time.monotonic() - started
    results = [json.loads(line) for line in out.splitlines()]
    pairs = {(r["from"], r["to"]) for r in results}
    assert pairs == {(s, t) for s in PODS for t in PODS}, f"{len(results)} results in {took:.1f} s"
    assert all(r["port"] == port and r["protocol"] == protocol for r in results)
    blocked = [r for r in results if not r["connected"]]
    assert blocked == [], f"{len(blocked)} of 81 blocked ({protocol} {port}, {took:.1f} s)"


def test_table_and_blocked_ports(lab: Lab) -> None:
    table = lab.run("lab", "matrix").stdout.splitlines()  # default: every non-system namespace
    assert table[0] == "\t".join(["-", *PODS])
    assert [row.split("\t")[0] for row in table[1:]] == PODS
    assert all(row.split("\t")[1:] == ["."] * 9 for row in table[1:]), "\n".join(table)
    # nothing listens on 82: every pair is refused, and says so with X
    refused = lab.run("lab", "matrix", "--namespaces", "y", "--port", "82").stdout.splitlines()
    assert refused == ["-\ty/a\ty/b\ty/c"] + [f"y/{p}\tX\tX\tX" for p in "abc"]


def test_bad_input(lab: Lab) -> None:
    proc = lab.run("lab", "matrix", "--namespaces", "x,nope", check=False)
    assert proc.returncode == 1 and "namespace not found: nope" in proc.stderr
    assert "get namespaces" in proc.stderr
    proc = lab.run("lab", "matrix", "--namespaces", "default", check=False)
    assert proc.returncode == 1 and "no Running pods in default" in proc.stderr
    proc = lab.run("lab", "matrix", "--port", "70000", check=False)
    assert proc.returncode == 2 and "--port" in proc.stderr
