"""Lab variants: two overlay clusters with the same pod CIDR side by side, and VNET mode with a
separate pod subnet handed to nodes in blocks."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from tests.conftest import unique
from tests.e2e.lab import Lab
from tests.e2e.test_lab import assert_no_trace, pod_yaml

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"


def two_pods() -> str:
    return "---\n".join([NS, pod_yaml("x", "a", "node-1"), pod_yaml("x", "b", "node-2")])


def test_two_overlay_clusters_with_the_same_pod_cidr() -> None:
    labs = [Lab(unique("ov")), Lab(unique("ov"))]
    try:
        for lab in labs:
            lab.run("lab", "up", "--nodes", "2", "--ipam", "overlay", timeout=180)
            lab.apply(two_pods())
        ips = []
        for lab in labs:
            pods = lab.wait_running(2)
            ips.append(sorted(p["status"]["podIP"] for p in pods))
            assert lab.probe("x/a", "x/b:80")["answer"] == "b"
            assert lab.probe("x/b", "x/a:81", "UDP")["answer"] == "a"
        # the same private addresses, each cluster reaching its own pods
        assert all(IPv4Address(ip) in IPv4Network("10.244.0.0/16") for ip in ips[0] + ips[1])
        assert set(ips[0]) & set(ips[1])
    finally:
        for lab in labs:
            lab.run("lab", "down", check=False, timeout=120)
    for lab in labs:
        assert_no_trace(lab.name)


def test_vnet_with_a_separate_pod_subnet() -> None:
    lab = Lab(unique("vp"))
    try:
        lab.run(
            "lab",
            "up",
            "--nodes",
            "2",
            "--ipam",
            "vnet",
            "--pod-cidr",
            "10.225.0.0/16",
            timeout=180,
        )
        lab.apply(two_pods())
        pods = lab.wait_running(2)
        for pod in pods:
            assert IPv4Address(pod["status"]["podIP"]) in IPv4Network("10.225.0.0/16")
        assert lab.probe("x/a", "x/b:80")["answer"] == "b"
        # directly routable on the VNET: the outside host sees the pod's own address
        b_ip = next(p for p in pods if p["metadata"]["name"] == "b")["status"]["podIP"]
        assert lab.seen_as("x/b") == b_ip
        # bad input: an overlapping pod subnet is refused before anything is built
        other = Lab(unique("vp"))
        proc = other.run(
            "lab", "up", "--ipam", "vnet", "--pod-cidr", "10.224.128.0/17", check=False
        )
        assert proc.returncode != 0 and "--pod-cidr" in proc.stderr
        assert_no_trace(other.name)
    finally:
        lab.run("lab", "down", check=False, timeout=120)
    assert_no_trace(lab.name)


def test_cluster_wide_policy_audit_mode_and_a_smaller_flow_ring() -> None:
    """`lab up --policy-audit-mode`: a deny-all policy denies nothing, and each connection it
    would have dropped shows as an AUDIT flow. `--flow-ring-capacity`: each node keeps that many."""
    lab = Lab(unique("aud"))
    try:
        lab.run(
            "lab",
            "up",
            "--nodes",
            "2",
            "--policy-audit-mode",
            "--flow-ring-capacity",
            "1000",
            timeout=180,
        )
        status = json.loads(lab.run("status", "-o", "json").stdout)
        assert int(status["max_flows"]) == 2000, status  # uint64: a string in protojson
        lab.apply(two_pods())
        lab.wait_running(2)
        lab.apply(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            "metadata: {name: deny-all, namespace: x}\n"
            "spec: {podSelector: {}, ingress: []}\n"
        )
        trace = lab.run(
            "policy", "trace", "--from", "x/a", "--to", "x/b", "--port", "80", check=False
        )
        assert trace.returncode == 1, trace.stdout  # the policy denies it...
        deadline = time.monotonic() + 15
        while True:  # ...and audit mode lets it pass, reported
            assert lab.probe("x/a", "x/b:80")["connected"]
            out = lab.run("observe", "--last", "500", "--verdict", "AUDIT", "-o", "json").stdout
            audits = [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]
            if any(f["destination"].get("pod_name") == "b" for f in audits):
                break
            assert time.monotonic() < deadline, "no AUDIT flow for x/a -> x/b"
            time.sleep(0.2)
    finally:
        lab.run("lab", "down", check=False, timeout=120)
