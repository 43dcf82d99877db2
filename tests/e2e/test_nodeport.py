"""NodePort on a real 3-node lab in both IPAM modes, handled by tc on each node's uplink
(probes/nodeport.c): reached from the world and from another node at every node's IP,
externalTrafficPolicy Cluster (any node answers, remote backends through SNAT) and Local (the
client's address kept, only nodes with a backend answer), ClientIP affinity, Maglev, UDP, the
hairpin through the node's IP, a LoadBalancer address from the lab's pool (routed to the nodes
by the fabric, translated on their uplinks), and not one iptables or nftables rule in any node."""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import time

import pytest

from dataplane.lab.fabric import world_netns
from flowscope import clusterinfo
from flowscope.netns_sockets import socket_in_netns
from tests.conftest import unique
from tests.e2e.lab import WORLD, Lab
from tests.e2e.test_lab import pod_yaml

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

CLUSTER, LOCAL, STICKY, MAGLEV, UDP, LB_NODEPORT = 30080, 30081, 30082, 30083, 30084, 30085


def _service(name: str, node_port: int, extra: str = "", meta: str = "") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: np{meta}}}
spec:
  type: NodePort
  selector: {{app: web}}
{extra}  ports: [{{port: 80, targetPort: 80, nodePort: {node_port}}}]
"""


WORKLOAD = "---\n".join(
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: np}\n",
        *(
            pod_yaml("np", name, node).replace("labels: {", "labels: {app: web, ")
            for name, node in (("web-a", "node-1"), ("web-b", "node-2"))
        ),
        _service("cluster", CLUSTER),
        _service("local", LOCAL, "  externalTrafficPolicy: Local\n"),
        _service("sticky", STICKY, "  sessionAffinity: ClientIP\n"),
        _service("maglev", MAGLEV, meta=", annotations: {service.cilium.io/lb-algorithm: maglev}"),
        """apiVersion: v1
kind: Service
metadata: {name: udp, namespace: np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 53, targetPort: 81, protocol: UDP, nodePort: 30084}]
""",
        _service("lb", LB_NODEPORT).replace("type: NodePort", "type: LoadBalancer"),
    ]
)


class NodePortLab:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.info = clusterinfo.load(lab.name)
        self.world = world_netns(self.info.paths)
        self.node_ips = {n.name: str(n.ip) for n in self.info.nodes}

    def netns(self, node: str) -> str:
        return self.info.paths.node_netns(node)

    def get(self, netns: str, ip: str, port: int, path: str = "/hostname") -> str | None:
        """One HTTP request from `netns`; the body, or None when nothing answered."""
        try:
            with socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM, 0) as s:
                s.settimeout(1.0)
                s.connect((ip, port))
                s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        except OSError:
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        return body.decode() if head.startswith(b"HTTP/1.1 200") else None

    def udp(self, netns: str, ip: str, port: int, message: bytes = b"hostname") -> str | None:
        try:
            with socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM, 0) as s:
                s.settimeout(1.0)
                s.connect((ip, port))
                s.send(message)
                return s.recv(4096).decode()
        except OSError:
            return None

    def answers(self, netns: str, ip: str, port: int, n: int) -> collections.Counter:
        return collections.Counter(self.get(netns, ip, port) for _ in range(n))


@pytest.fixture(scope="module", params=["overlay", "vnet"])
def np_lab(request: pytest.FixtureRequest):
    lab = Lab(unique("h1np"))
    try:
        lab.run("lab", "up", "--nodes", "3", "--ipam", request.param, timeout=180)
        lab.apply(WORKLOAD)
        lab.wait_running(2)
        world = NodePortLab(lab)
        deadline = time.monotonic() + 30
        while set(world.answers(world.world, world.node_ips["node-3"], CLUSTER, 6)) != {
            "web-a",
            "web-b",
        }:  # endpoints arrive, agents program
            assert time.monotonic() < deadline, "the NodePort never answered from both backends"
        yield world
    finally:
        lab.run("lab", "down", check=False, timeout=120)


def test_cluster_policy_answers_from_every_node_ip_for_the_world_and_other_nodes(
    np_lab: NodePortLab,
) -> None:
    for node, ip in np_lab.node_ips.items():
        got = np_lab.answers(np_lab.world, ip, CLUSTER, 12)
        assert set(got) == {"web-a", "web-b"}, (node, got)  # local and remote (SNAT) backends
        other = next(n for n in np_lab.node_ips if n != node)
        got = np_lab.answers(np_lab.netns(other), ip, CLUSTER, 8)
        assert None not in got and set(got) <= {"web-a", "web-b"}, (other, node, got)


def test_local_policy_keeps_the_client_ip_and_answers_only_where_a_backend_lives(
    np_lab: NodePortLab,
) -> None:
    ips = np_lab.node_ips
    assert set(np_lab.answers(np_lab.world, ips["node-1"], LOCAL, 6)) == {"web-a"}
    assert set(np_lab.answers(np_lab.world, ips["node-2"], LOCAL, 6)) == {"web-b"}
    seen = np_lab.get(np_lab.world, ips["node-1"], LOCAL, "/clientip")
    assert seen is not None and seen.rpartition(":")[0] == WORLD, seen
    from_node = np_lab.get(np_lab.netns("node-3"), ips["node-2"], LOCAL, "/clientip")
    assert from_node is not None and from_node.rpartition(":")[0] == ips["node-3"], from_node
    # node-3 has no backend: dropped, so the client times out instead of reaching one
    assert np_lab.get(np_lab.world, ips["node-3"], LOCAL) is None


def test_cluster_policy_snats_remote_backends_to_the_node_ip(np_lab: NodePortLab) -> None:
    ips = np_lab.node_ips
    seen = collections.Counter(
        np_lab.get(np_lab.world, ips["node-3"], CLUSTER, "/clientip") for _ in range(6)
    )
    assert None not in seen
    assert {s.rpartition(":")[0] for s in seen} == {ips["node-3"]}, seen  # no local backend


def test_client_ip_affinity_keeps_one_backend_for_15_connections(np_lab: NodePortLab) -> None:
    for ip in np_lab.node_ips.values():
        got = np_lab.answers(np_lab.world, ip, STICKY, 15)
        assert len(got) == 1 and None not in got, (ip, got)


def test_maglev_mode_serves_from_every_node(np_lab: NodePortLab) -> None:
    for ip in np_lab.node_ips.values():
        got = np_lab.answers(np_lab.world, ip, MAGLEV, 16)
        assert None not in got and set(got) == {"web-a", "web-b"}, (ip, got)


def test_udp_nodeport_answers_as_the_node(np_lab: NodePortLab) -> None:
    for ip in np_lab.node_ips.values():
        got = {np_lab.udp(np_lab.world, ip, UDP) for _ in range(8)}
        assert None not in got and got <= {"web-a", "web-b"}, (ip, got)


def test_a_backend_reaches_its_own_nodeport_through_its_node_ip(np_lab: NodePortLab) -> None:
    ip = np_lab.node_ips["node-1"]
    # one process in the pod (its cgroup: the socket LB translates node_ip:nodePort, which never
    # crosses the uplink), 16 connections to the Cluster NodePort and 3 to the Local one
    script = (
        "import json, urllib.request as u;"
        f"get = lambda p: u.urlopen(f'http://{ip}:{{p}}/hostname', timeout=2).read().decode();"
        f"print(json.dumps([[get({CLUSTER}) for _ in range(16)],"
        f" [get({LOCAL}) for _ in range(3)]]))"
    )
    out = np_lab.lab.run("lab", "exec", "np/web-a", "--", "python3", "-c", script).stdout
    cluster, local = json.loads(out)
    assert set(cluster) <= {"web-a", "web-b"} and "web-a" in cluster, cluster  # itself too
    assert local == ["web-a"] * 3  # Local: this node's own backend, itself


def test_service_list_shows_each_nodes_nodeport_maps(np_lab: NodePortLab) -> None:
    rows = json.loads(np_lab.lab.run("service", "list", "-o", "json").stdout)
    nodeport = {
        (r["node"], r["port"]): r for r in rows if r["source"] == "nodeport" and r["port"] >= 30080
    }
    assert set(nodeport) == {
        (n, p) for n in np_lab.node_ips for p in (CLUSTER, LOCAL, STICKY, MAGLEV, UDP, LB_NODEPORT)
    }
    cluster = nodeport[("node-1", CLUSTER)]
    assert (cluster["type"], cluster["service"], cluster["ip"]) == (
        "NodePort",
        "np/cluster",
        "0.0.0.0",
    )
    assert sorted(b["state"] for b in cluster["backends"]) == ["active", "active, remote (SNAT)"]
    assert nodeport[("node-3", LOCAL)]["backends"] == []  # eTP Local without a local backend
    assert "maglev" in nodeport[("node-2", MAGLEV)]["flags"]


def test_no_iptables_or_nftables_rules_in_any_node(np_lab: NodePortLab) -> None:
    for node in np_lab.node_ips:
        ns = np_lab.netns(node)
        nft = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert nft.stdout.strip() == "", (node, nft.stdout)
        ipt = subprocess.run(
            ["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True
        )
        rules = [
            line
            for line in ipt.stdout.splitlines()
            if line and not line.startswith(("#", "*", ":", "COMMIT"))
        ]
        assert rules == [], (node, ipt.stdout)


def _lb_address(np_lab: NodePortLab) -> str:
    deadline = time.monotonic() + 30
    while True:
        svc = json.loads(np_lab.lab.run("get", "service", "lb", "-n", "np", "-o", "json").stdout)
        ingress = (svc.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        if ingress:
            return ingress[0]["ip"]
        assert time.monotonic() < deadline, "the LoadBalancer Service never got an address"
        time.sleep(0.2)


def test_a_loadbalancer_gets_a_pool_address_that_the_world_and_pods_reach(
    np_lab: NodePortLab,
) -> None:
    ip = _lb_address(np_lab)
    assert ip.startswith("10.226.0."), ip  # the lab's default pool
    wide = np_lab.lab.run("get", "services", "-n", "np", "-o", "wide").stdout
    assert any(
        line.split()[:4] == ["lb", "LoadBalancer", line.split()[2], ip]
        for line in wide.splitlines()
    ), wide
    deadline = time.monotonic() + 30
    got = np_lab.answers(np_lab.world, ip, 80, 12)
    while set(got) != {"web-a", "web-b"}:  # the nodes' uplink maps follow the status
        assert time.monotonic() < deadline, got
        got = np_lab.answers(np_lab.world, ip, 80, 12)
    # from a pod: translated at its socket, as for a ClusterIP; `lab probe world` as a user would
    assert np_lab.lab.probe("np/web-b", f"{ip}:80")["connected"]
    assert np_lab.lab.probe("world", f"{ip}:80")["answer"] in ("web-a", "web-b")
    # a port the address does not serve is refused by the node, not routed around
    started = time.monotonic()
    assert np_lab.get(np_lab.world, ip, 81) is None
    assert time.monotonic() - started < 0.9  # refused (unreachable), not a timeout
    rows = json.loads(np_lab.lab.run("service", "list", "-o", "json").stdout)
    lb_rows = [r for r in rows if r["source"] == "nodeport" and r["ip"] == ip]
    assert {(r["node"], r["port"], r["type"], r["service"]) for r in lb_rows} == {
        (n, 80, "LoadBalancer", "np/lb") for n in np_lab.node_ips
    }
