"""The foundation on a real lab: 3 nodes, pods in two namespaces from YAML, reachable across
nodes on the first try in both IPAM modes, no iptables/nftables rules, and nothing left after
`lab down`."""

from __future__ import annotations

import os
import signal
import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.lab import daemons, netns
from dataplane.lab.cluster import agent_daemon
from flowscope.paths import ClusterPaths
from tests.conftest import unique
from tests.e2e.lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.lab]


def pod_yaml(ns: str, name: str, node: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}
spec:
  nodeName: {node}
  containers:
  - name: main
    image: agnhost
    ports:
    - {{containerPort: 80, protocol: TCP}}
    - {{containerPort: 81, protocol: UDP}}
"""


PODS = "---\n".join(
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n",
        pod_yaml("x", "a", "node-1"),
        pod_yaml("x", "b", "node-2"),
        pod_yaml("y", "a", "node-3"),
        pod_yaml("y", "c", "node-1"),
    ]
)


def assert_no_trace(name: str) -> None:
    paths = ClusterPaths(name)
    assert netns.list_with_prefix(paths.netns_prefix) == []
    for path in (paths.run_dir, paths.lib_dir, paths.bpf_dir, paths.cgroup_dir):
        assert not path.exists(), path
    assert paths.cni_conf_dirs() == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--cluster {name} " not in ps


def rules_in(ns: str) -> tuple[str, str]:
    ipt = subprocess.run(
        ["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True
    ).stdout
    nft = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True
    ).stdout
    rules = [line for line in ipt.splitlines() if line.startswith("-A")]
    return "\n".join(rules), nft.strip()


@pytest.fixture(params=["overlay", "vnet"])
def lab(request):
    lab = Lab(unique("e2e"))
    try:
        lab.run("lab", "up", "--nodes", "3", "--ipam", request.param, timeout=180)
        yield lab, request.param
    finally:
        lab.run("lab", "down", check=False, timeout=120)
    assert_no_trace(lab.name)


def test_pods_reach_each_other_across_nodes_first_try(lab) -> None:
    lab, ipam = lab
    lab.apply(PODS)
    pods = lab.wait_running(4)
    ips = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["status"]["podIP"] for p in pods
    }
    nodes = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["spec"]["nodeName"] for p in pods
    }
    assert len(set(ips.values())) == 4
    if ipam == "overlay":
        for ip in ips.values():
            assert IPv4Address(ip) in IPv4Network("10.244.0.0/16")
    else:
        for ip in ips.values():
            assert IPv4Address(ip) in IPv4Network("10.224.0.0/16")
    # every pair, each probed once: the first try must succeed
    for src in ips:
        for dst in ips:
            if src == dst:
                continue
            for proto, port in (("TCP", 80), ("UDP", 81)):
                result = lab.probe(src, f"{dst}:{port}", proto)
                assert result["connected"], (src, dst, proto, nodes, result)
                assert result["answer"] == dst.split("/")[1]
    # a closed port is refused, not answered
    assert not lab.probe("x/a", "y/a:9999")["connected"]
    # nothing of the lab is iptables or nftables
    for ns in netns.list_with_prefix(ClusterPaths(lab.name).netns_prefix):
        assert rules_in(ns) == ("", ""), ns


def test_outside_world_and_agent_restart(lab) -> None:
    lab, ipam = lab
    lab.apply(PODS)
    lab.wait_running(4)
    status = lab.run("lab", "status").stdout
    assert "DOWN" not in status and "node-3" in status
    world = "10.224.0.254"
    result = lab.probe("x/b", f"{world}:80")
    assert result["connected"] and result["answer"] == "world"
    seen_as = lab.seen_as("x/b", world)
    if ipam == "overlay":
        assert seen_as == "10.224.0.5"  # masqueraded to node-2's address
    else:
        pod_ip = next(p for p in lab.pods("x") if p["metadata"]["name"] == "b")["status"]["podIP"]
        assert seen_as == pod_ip  # VNET pods are routable as they are

    # a killed agent: its pods keep their network, status says so, `lab up` brings it back
    pidfile = agent_daemon(ClusterPaths(lab.name), "node-2").pidfile
    pid = daemons.pid_of(pidfile)
    assert pid
    os.kill(pid, signal.SIGKILL)
    while daemons.pid_of(pidfile) is not None:
        pass
    assert "DOWN" in lab.run("lab", "status").stdout
    assert lab.probe("x/a", "x/b:80")["connected"]
    lab.run("lab", "up", "--nodes", "3", "--ipam", ipam, timeout=120)
    assert daemons.pid_of(pidfile) not in (None, pid)
    assert lab.probe("x/a", "x/b:80")["connected"]
    # a new pod on the restarted node works on the first try too
    lab.apply(pod_yaml("y", "d", "node-2"))
    lab.wait_running(5)
    assert lab.probe("y/d", "x/b:80")["connected"]


def test_lab_up_twice_with_other_shape_and_down_twice(lab) -> None:
    lab, ipam = lab
    other = "vnet" if ipam == "overlay" else "overlay"
    proc = lab.run("lab", "up", "--nodes", "3", "--ipam", other, check=False)
    assert proc.returncode != 0 and "already up" in proc.stderr and "lab down" in proc.stderr
    lab.run("lab", "down")
    assert_no_trace(lab.name)
    proc = lab.run("lab", "down", check=False)
    assert proc.returncode != 0 and "nothing to remove" in proc.stderr
