"""HTTP L7 rules on a real 2-node lab: a CiliumNetworkPolicy with `rules.http` on the server's
port sends the client pod's connections through the node's proxy (redirected at the client's
socket), which forwards allowed requests and answers others 403 "Access denied"; both are L7
flows. The L3 rule still holds: a pod it does not select gets nothing through."""

from __future__ import annotations

import json

import pytest

from tests.e2e.lab import Lab, client_and_server, running_lab, until

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

NS = "l7"
WORKLOAD = (
    client_and_server(NS)
    + f"""---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: {NS}, labels: {{app: other}}}}
spec:
  nodeName: node-2
  containers: [{{name: main, image: agnhost, ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: {NS}}}
spec:
  selector: {{app: server}}
  ports: [{{port: 8080, targetPort: 80, protocol: TCP}}]
"""
)

POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server-http, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http: [{{method: GET, path: "/public.*"}}]
"""

# One request from inside a pod: status, body and the peer the socket shows.
REQUEST = """
import http.client, json, sys
host, port, method, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = http.client.HTTPConnection(host, port, timeout=float(sys.argv[5]))
try:
    c.connect()
    peer = list(c.sock.getpeername())
    c.request(method, path)
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read().decode(), "peer": peer}))
except OSError as e:
    print(json.dumps({"error": str(e) or type(e).__name__}))
"""


@pytest.fixture(scope="module")
def lab():
    with running_lab(
        "l7http", "--nodes", "2", "--ipam", "overlay", workload=WORKLOAD, pods=3
    ) as lab:
        lab.apply(POLICY)
        yield lab


def request(
    lab: Lab, pod: str, host: str, port: int, path: str, method: str = "GET", timeout: float = 3
) -> dict:
    out = lab.run(
        "lab", "exec", f"{NS}/{pod}", "--", "python3", "-c", REQUEST,
        host, str(port), method, path, str(timeout),
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def pod_ip(lab: Lab, name: str) -> str:
    return next(p["status"]["podIP"] for p in lab.pods(NS) if p["metadata"]["name"] == name)


def cluster_ip(lab: Lab) -> str:
    out = lab.run("get", "services", "-n", NS, "-o", "json").stdout
    return next(s["spec"]["clusterIP"] for s in json.loads(out)["items"])


def flows(lab: Lab, *args: str) -> list[dict]:
    out = lab.run("observe", "--last", "500", "-o", "json", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]


def http_flows(lab: Lab, path: str, *args: str) -> list[dict]:
    return [
        f
        for f in flows(lab, "--type", "l7", *args)
        if f.get("l7", {}).get("http", {}).get("url", "").endswith(path)
    ]


def test_allowed_paths_are_forwarded_and_others_denied_with_l7_flows(lab: Lab) -> None:
    server = pod_ip(lab, "server")
    ok = until(
        lambda: (r := request(lab, "client", server, 80, "/public/a")).get("status") == 200 and r,
        "GET /public/a answered through the proxy",
    )
    assert ok["body"] == "server"
    assert ok["peer"] == [server, 80]  # the app sees the server, not the proxy
    denied = request(lab, "client", server, 80, "/private")
    assert denied["status"] == 403 and denied["body"].strip() == "Access denied", denied
    assert request(lab, "client", server, 80, "/public/b", method="POST")["status"] == 403

    # both requests are L7 flows: the 403's request DROPPED with what it asked
    drops = until(
        lambda: http_flows(lab, "/private", "--verdict", "DROPPED"), "the DROPPED http-request"
    )
    req = drops[-1]
    assert req["l7"]["type"] == "REQUEST" and req["l7"]["http"]["method"] == "GET"
    assert req["source"]["pod_name"] == "client" and req["destination"]["pod_name"] == "server"
    assert req["IP"] == {**req["IP"], "source": pod_ip(lab, "client"), "destination": server}
    fwd = until(lambda: http_flows(lab, "/public/a", "--verdict", "FORWARDED"), "forwarded")
    assert {f["l7"]["type"] for f in fwd} == {"REQUEST", "RESPONSE"}
    assert any(f["l7"]["http"].get("code") == 200 for f in fwd)
    # observe's HTTP filters find them
    by_status = flows(lab, "--http-status", "403")
    assert by_status and all(f["l7"]["http"]["code"] == 403 for f in by_status)
    by_method = flows(lab, "--type", "l7", "--http-method", "GET", "--to-pod", f"{NS}/server")
    urls = {f["l7"]["http"]["url"] for f in by_method}
    assert any(u.endswith("/public/a") for u in urls) and any(u.endswith("/private") for u in urls)
    compact = lab.run("observe", "--type", "l7", "--last", "100").stdout
    assert "http-request DROPPED" in compact


def test_through_the_service_cluster_ip(lab: Lab) -> None:
    vip = cluster_ip(lab)
    ok = until(
        lambda: (r := request(lab, "client", vip, 8080, "/public/svc")).get("status") == 200 and r,
        "GET /public/svc through the service",
    )
    assert ok["peer"] == [vip, 8080]  # getpeername: the service the app asked for
    # the server sees the client pod itself: the proxy's upstream leaves from its namespace
    client = pod_ip(lab, "client")
    assert request(lab, "client", vip, 8080, "/private")["status"] == 403
    until(lambda: http_flows(lab, "/public/svc", "--from-pod", f"{NS}/client"), "flows")
    seen = http_flows(lab, "/public/svc", "--from-pod", f"{NS}/client")
    assert all(f["IP"]["source"] == client for f in seen)


def test_a_pod_the_l3_rule_does_not_select_is_still_dropped(lab: Lab) -> None:
    server = pod_ip(lab, "server")
    # redirected to its own proxy too, whose upstream leg (from its namespace, with its
    # identity) the server's L3 rule drops: nothing is answered by the server
    got = request(lab, "other", server, 80, "/public/x", timeout=8)
    assert got.get("status") != 200, got
    drops = until(
        lambda: flows(lab, "--from-pod", f"{NS}/other", "--verdict", "DROPPED", "--to-ip", server),
        "the L3 drop",
    )
    assert drops[-1]["drop_reason_desc"] == "POLICY_DENIED"
