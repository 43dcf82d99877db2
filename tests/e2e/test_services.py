"""Services on a real lab, translated at the socket (no iptables, no per-packet NAT): ClusterIP
over TCP and UDP reaching every backend, a service without endpoints refusing at once, a removed
backend getting no new connections, and ClientIP affinity."""

from __future__ import annotations

import collections
import time

import pytest

from tests.conftest import unique
from tests.e2e.lab import Lab
from tests.e2e.test_lab import pod_yaml

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

WORKLOAD = "---\n".join(
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: s}\n",
        pod_yaml("s", "client", "node-1"),
        *(
            pod_yaml("s", name, node).replace("labels: {", "labels: {app: web, ")
            for name, node in (("web-a", "node-1"), ("web-b", "node-2"))
        ),
        """apiVersion: v1
kind: Service
metadata: {name: web, namespace: s}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 8000, targetPort: 80}
  - {name: echo, port: 53, targetPort: 81, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: s}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 8001, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing, namespace: s}
spec:
  selector: {app: none}
  ports: [{port: 8002, targetPort: 80}]
""",
    ]
)


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique("svc"))
    try:
        lab.run("lab", "up", "--nodes", "2", "--ipam", "overlay", timeout=180)
        lab.apply(WORKLOAD)
        lab.wait_running(3)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


def answers(lab: Lab, target: str, n: int, protocol: str = "TCP") -> collections.Counter:
    return collections.Counter(lab.probe("s/client", target, protocol)["answer"] for _ in range(n))


def test_clusterip_reaches_every_backend_over_tcp_and_udp(lab: Lab) -> None:
    deadline = time.monotonic() + 15
    while set(answers(lab, "web.s:8000", 4)) != {"web-a", "web-b"}:  # endpoints arrive
        assert time.monotonic() < deadline, "both backends never answered"
    tcp = answers(lab, "web.s:8000", 16)
    assert set(tcp) == {"web-a", "web-b"}, tcp
    udp = answers(lab, "web.s:53", 16, "UDP")  # the reply reads as from the service
    assert set(udp) == {"web-a", "web-b"}, udp


def test_a_service_without_endpoints_refuses_at_once(lab: Lab) -> None:
    result = lab.probe("s/client", "nothing.s:8002", timeout=3)
    assert not result["connected"]
    assert "refused" in (result["error"] or "").lower(), result


def test_client_ip_affinity_keeps_one_backend(lab: Lab) -> None:
    got = answers(lab, "sticky.s:8001", 15)
    assert len(got) == 1 and None not in got, got


def test_a_removed_backend_gets_no_new_connections(lab: Lab) -> None:
    lab.run("delete", "pod", "web-b", "-n", "s")
    deadline = time.monotonic() + 15
    while "web-b" in answers(lab, "web.s:8000", 6):
        assert time.monotonic() < deadline, "web-b still chosen after its deletion"
    assert set(answers(lab, "web.s:8000", 12)) == {"web-a"}
