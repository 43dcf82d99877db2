"""Translated traffic seen on a real 2-node lab: a pod connects to a ClusterIP, and

- the flow stream holds the socket LB's TRANSLATED trace-sock flow naming the client, the
  service (address and name) and the chosen backend;
- the packets of that connection (client -> backend after the socket LB) carry
  destination_service, and the compact line reads client -> service -> backend;
- `flowscope service list` shows the ClusterIP frontend with the backends the EndpointSlices
  list, named after its Service, read from the maps while the agents run.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.conftest import unique
from tests.e2e.lab import Lab, until

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

NS = "sf"
WORKLOAD = f"""apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: client}}}}
spec:
  nodeName: node-1
  containers: [{{name: main, image: agnhost, ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-a, namespace: {NS}, labels: {{app: web}}}}
spec:
  nodeName: node-1
  containers: [{{name: main, image: agnhost, ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-b, namespace: {NS}, labels: {{app: web}}}}
spec:
  nodeName: node-2
  containers: [{{name: main, image: agnhost, ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 8000, targetPort: 80}}]
"""

# Run in the client pod: N HTTP GETs to IP:PORT, each on a new connection; prints the answers.
ASK = r"""
import json, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    with socket.create_connection((ip, port), timeout=2.0) as s:
        s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    out.append(data.partition(b"\r\n\r\n")[2].decode().strip())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique("h3sf"))
    try:
        lab.run("lab", "up", "--nodes", "2", "--ipam", "overlay", timeout=180)
        lab.apply(WORKLOAD)
        lab.wait_running(3)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


def get(lab: Lab, kind: str, name: str | None = None) -> Any:
    args = ["get", kind, *([name] if name else []), "-n", NS, "-o", "json"]
    return json.loads(lab.run(*args).stdout)


def flows(lab: Lab, *args: str) -> list[dict]:
    out = lab.run("observe", "--last", "5000", "-o", "json", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]


def slice_backends(lab: Lab) -> set[str]:
    slices = get(lab, "endpointslices")["items"]
    return {
        f"{address}:80/TCP"
        for s in slices
        for ep in s.get("endpoints") or ()
        if (ep.get("conditions") or {}).get("ready", True)
        for address in ep["addresses"]
    }


def listed(lab: Lab, node: str, vip: str) -> dict | None:
    rows = json.loads(lab.run("service", "list", "--node", node, "-o", "json").stdout)
    return next((r for r in rows if (r["ip"], r["port"]) == (vip, 8000)), None)


def test_a_connection_to_a_cluster_ip_shows_client_service_and_backend(lab: Lab) -> None:
    vip = get(lab, "service", "web")["spec"]["clusterIP"]
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in get(lab, "pods")["items"]}
    backends = {ips["web-a"], ips["web-b"]}
    until(lambda: len((listed(lab, "node-1", vip) or {}).get("backends", ())) == 2, "2 backends")
    answers = json.loads(
        lab.run(
            "lab", "exec", f"{NS}/client", "--", sys.executable, "-c", ASK, vip, "8000", "6"
        ).stdout
    )
    assert set(answers) <= {"web-a", "web-b"} and len(answers) == 6

    def translated() -> list[dict]:
        got = flows(lab, "--type", "trace-sock", "--verdict", "TRANSLATED", "--node", "node-1")
        return [f for f in got if f["IP"]["destination"] == vip] if len(got) >= 6 else []

    socks = until(translated, "six TRANSLATED flows")
    for f in socks:
        assert f["Type"] == "SOCK" and f["event_type"] == {"type": 7, "sub_type": 2}
        assert f["sock_xlate_point"] == "SOCK_XLATE_POINT_POST_DIRECTION_FWD"
        assert int(f["socket_cookie"]) > 0 and int(f["cgroup_id"]) > 0
        assert f["IP"]["source"] == ips["client"] and f["source"]["pod_name"] == "client"
        assert f["l4"]["TCP"]["destination_port"] == 8000
        assert f["destination_service"] == {"name": "web", "namespace": NS}
        xlate = f["service_translation"]
        assert (xlate["service_ip"], xlate["service_port"]) == (vip, 8000)
        assert xlate["backend_ip"] in backends and xlate["backend_port"] == 80
        backend_pod = "web-a" if xlate["backend_ip"] == ips["web-a"] else "web-b"
        assert f["destination"]["pod_name"] == backend_pod
    # each connection's backend is the one that answered it
    chosen = sorted(
        "web-a" if f["service_translation"]["backend_ip"] == ips["web-a"] else "web-b"
        for f in socks[-6:]
    )
    assert chosen == sorted(answers)

    # the packets: client -> backend on the wire, named after the service
    def packets() -> list[dict]:
        # hubble pairs the ends of --pod and --service (source pod with source service): the
        # requests are from the client to the service, the replies from the service to it
        got = [
            *flows(lab, "--node", "node-1", "--from-pod", f"{NS}/client", "--to-service", "web"),
            *flows(lab, "--node", "node-1", "--to-pod", f"{NS}/client", "--from-service", "web"),
        ]
        return [f for f in got if f.get("Type") != "SOCK"]

    pkts = until(packets, "packet flows naming the service")
    requests = [f for f in pkts if not f.get("is_reply")]
    replies = [f for f in pkts if f.get("is_reply")]
    assert requests and replies
    for f in requests:
        assert f["IP"]["source"] == ips["client"] and f["IP"]["destination"] in backends
        assert f["destination_service"] == {"name": "web", "namespace": NS}
    for f in replies:
        assert f["IP"]["destination"] == ips["client"] and f["IP"]["source"] in backends
        assert f["source_service"] == {"name": "web", "namespace": NS}
    compact = lab.run(
        "observe", "--last", "5000", "--pod", f"{NS}/client", "--node", "node-1"
    ).stdout.splitlines()
    assert any(
        f"{NS}/client (ID:" in line
        and f"-> {NS}/web:8000 -> {NS}/web-" in line
        and "post-xlate-fwd TRANSLATED" in line
        for line in compact
    ), "\n".join(compact[-20:])
    assert any(
        f"{NS}/client:" in line and f"-> {NS}/web:8000 -> {NS}/web-" in line and "FORWARDED" in line
        for line in compact
    ), "\n".join(compact[-20:])
    assert any(f"<- {NS}/web:8000 <- {NS}/web-" in line for line in compact)


def test_service_list_shows_the_frontend_and_the_endpointslices_backends(lab: Lab) -> None:
    vip = get(lab, "service", "web")["spec"]["clusterIP"]
    want = until(lambda: len(slice_backends(lab)) == 2 and slice_backends(lab), "2 endpoints")
    for node in ("node-1", "node-2"):
        row = until(lambda node=node: listed(lab, node, vip), f"{vip} on {node}")
        assert row["service"] == f"{NS}/web" and row["type"] == "ClusterIP"
        assert row["protocol"] == "TCP" and row["id"] > 0
        got = {f"{b['ip']}:{b['port']}/{b['protocol']}" for b in row["backends"]}
        assert got == want
        assert [b["index"] for b in row["backends"]] == [1, 2]
        assert {b["state"] for b in row["backends"]} == {"active"}
    table = lab.run("service", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["Node", "ID", "Frontend", "Service"]
    line = next(t for t in table if f"{vip}:8000/TCP" in t)
    assert "ClusterIP" in line and f"{NS}/web" in line and "1 => " in line and "(active)" in line

    # a backend gone from the EndpointSlices is gone from the maps
    lab.run("delete", "pod", "web-b", "-n", NS)
    until(lambda: len(slice_backends(lab)) == 1, "web-b out of the EndpointSlices")
    row = until(
        lambda: (r := listed(lab, "node-1", vip)) and len(r["backends"]) == 1 and r,
        "web-b out of node-1's maps",
    )
    assert {f"{b['ip']}:{b['port']}/TCP" for b in row["backends"]} == slice_backends(lab)
