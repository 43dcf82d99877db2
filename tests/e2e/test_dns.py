"""The cluster DNS on a real lab: pods resolve services by name through kube-dns (10.0.0.10),
through the node's DNS proxy on that address (dataplane.fqdn), served by DNS pods that are real pods
(endpoints, policy). Each pod sees its own resolv.conf; the host's is untouched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.e2e.lab import Lab, until
from tests.lab.test_pod_dns import resolv_conf_mounts

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

WORKLOAD = """
apiVersion: v1
kind: Namespace
metadata: {name: app}
---
apiVersion: v1
kind: Namespace
metadata: {name: locked}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: app, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: web, image: agnhost, ports: [{containerPort: 80, name: http}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: app}
spec: {nodeName: node-2, containers: [{name: c, image: agnhost}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: locked}
spec: {nodeName: node-1, containers: [{name: c, image: agnhost}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: app}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: pg, port: 5432}]
"""

DENY_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: locked}
spec: {podSelector: {}, policyTypes: [Egress]}
"""

ALLOW_DNS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: locked}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"""

# Run inside a pod with the test's Python (it has dnspython): resolve each name with the pod's
# resolver (getaddrinfo, as any program) and print JSON {name: ip | "error: ..."}.
RESOLVE = r"""
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as e:
        out[name] = "error: %d %s" % (e.errno, e.strerror)
print(json.dumps(out))
"""

# Ask the DNS service directly (UDP and TCP), print JSON {transport: [rcode, answers, soa?]}.
ASK = r"""
import json, sys
import dns.message, dns.query, dns.rcode
name, qtype, server = sys.argv[1:4]
out = {}
for transport in ("udp", "tcp"):
    q = dns.message.make_query(name, qtype)
    r = getattr(dns.query, transport)(q, server, timeout=3)
    out[transport] = [
        dns.rcode.to_text(r.rcode()),
        sorted(rd.to_text() for rrset in r.answer for rd in rrset),
        [rrset.to_text() for rrset in r.authority],
    ]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique("h2dns"))
    try:
        lab.run("lab", "up", "--nodes", "2", timeout=180)
        lab.apply(WORKLOAD)
        lab.wait_running(3)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


def in_pod(lab: Lab, pod: str, script: str, *args: str) -> dict:
    # one try of one second per query (glibc's default is 5 s, twice): a blocked query fails fast
    argv = ["env", "RES_OPTIONS=timeout:1 attempts:1", sys.executable, "-c", script, *args]
    return json.loads(lab.run("lab", "exec", pod, "--", *argv).stdout)


def cluster_ip(lab: Lab, ns: str, name: str) -> str:
    return json.loads(lab.run("get", "service", name, "-n", ns, "-o", "json").stdout)["spec"][
        "clusterIP"
    ]


def test_kube_dns_service_and_pods_are_real(lab: Lab) -> None:
    assert cluster_ip(lab, "kube-system", "kube-dns") == "10.0.0.10"
    pods = lab.pods("kube-system")
    assert sorted(p["metadata"]["name"] for p in pods) == ["coredns-node-1", "coredns-node-2"]
    assert all(p["metadata"]["labels"]["k8s-app"] == "kube-dns" for p in pods)
    slices = json.loads(lab.run("get", "endpointslices", "-n", "kube-system", "-o", "json").stdout)[
        "items"
    ]
    endpoint_ips = {a for s in slices for e in s["endpoints"] for a in e["addresses"]}
    assert endpoint_ips == {p["status"]["podIP"] for p in pods}


def test_pods_resolve_service_names_to_the_cluster_ip(lab: Lab) -> None:
    web = cluster_ip(lab, "app", "web")
    names = ["web", "web.app", "web.app.svc.cluster.local", "kube-dns.kube-system"]
    got = in_pod(lab, "app/client", RESOLVE, *names)
    assert got == {
        "web": web,
        "web.app": web,
        "web.app.svc.cluster.local": web,
        "kube-dns.kube-system": "10.0.0.10",
    }
    # the same from another namespace: a short name is looked up in the pod's own namespace
    got = in_pod(lab, "locked/client", RESOLVE, "web.app", "web")
    assert got["web.app"] == web and got["web"].startswith("error")


def test_headless_service_resolves_to_its_pods(lab: Lab) -> None:
    web_ip = next(p for p in lab.pods("app") if p["metadata"]["name"] == "web-1")["status"]
    got = in_pod(lab, "app/client", ASK, "db.app.svc.cluster.local.", "A", "10.0.0.10")
    assert got["udp"][:2] == ["NOERROR", [web_ip["podIP"]]]
    got = in_pod(
        lab, "app/client", ASK, "_http._tcp.web.app.svc.cluster.local.", "SRV", "10.0.0.10"
    )
    assert got["udp"][1] == ["0 100 8080 web.app.svc.cluster.local."]


def test_unknown_name_is_nxdomain(lab: Lab) -> None:
    got = in_pod(lab, "app/client", ASK, "nope.app.svc.cluster.local.", "A", "10.0.0.10")
    for transport in ("udp", "tcp"):
        rcode, answers, authority = got[transport]
        assert (rcode, answers) == ("NXDOMAIN", [])
        assert "SOA ns.dns.cluster.local." in authority[0]
    got = in_pod(lab, "app/client", RESOLVE, "nope.app.svc.cluster.local")
    assert got["nope.app.svc.cluster.local"].startswith("error: -2 ")  # EAI_NONAME
    # AAAA of an existing name: no error, no records
    got = in_pod(lab, "app/client", ASK, "web.app.svc.cluster.local.", "AAAA", "10.0.0.10")
    assert got["udp"][:2] == ["NOERROR", []]


def test_lab_probe_by_service_name(lab: Lab) -> None:
    for target in ("web.app:8080", "web:8080", "web.app.svc.cluster.local:8080"):
        result = lab.probe("app/client", target)
        assert result["connected"], result
        assert result["answer"] == "web-1"
        assert result["ip"] == cluster_ip(lab, "app", "web")
    failed = lab.probe("app/client", "nope.app.svc.cluster.local:80")
    assert not failed["connected"] and "cannot resolve" in failed["error"]
    # NS/POD and IP targets are as they were
    assert lab.probe("app/client", "app/web-1:80")["answer"] == "web-1"


def test_resolv_conf_is_the_pods_and_the_hosts_is_untouched(lab: Lab) -> None:
    host_before = Path("/etc/resolv.conf").read_text()
    before = resolv_conf_mounts()
    out = lab.run("lab", "exec", "app/client", "--", "cat", "/etc/resolv.conf").stdout
    assert out.splitlines() == [
        "nameserver 10.0.0.10",
        "search app.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5",
    ]
    out = lab.run("lab", "exec", "locked/client", "--", "cat", "/etc/resolv.conf").stdout
    assert "search locked.svc.cluster.local " in out
    # the DNS pods use the node's resolver (dnsPolicy Default), as CoreDNS does
    out = lab.run("lab", "exec", "kube-system/coredns-node-1", "--", "cat", "/etc/resolv.conf")
    assert out.stdout == host_before
    # nothing leaked: no bind mount in the host's namespace, the file as it was
    assert Path("/etc/resolv.conf").read_text() == host_before
    assert resolv_conf_mounts() == before


def test_new_services_resolve_without_restart(lab: Lab) -> None:
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: app}\n"
        "spec: {selector: {app: web}, ports: [{port: 81, targetPort: 80}]}\n"
    )
    ip = cluster_ip(lab, "app", "late")
    until(lambda: in_pod(lab, "app/client", RESOLVE, "late")["late"] == ip, "late resolves")
    lab.run("delete", "service", "late", "-n", "app")
    until(
        lambda: in_pod(lab, "app/client", RESOLVE, "late")["late"].startswith("error"),
        "late is gone",
    )


def test_default_deny_egress_blocks_dns_until_allowed(lab: Lab) -> None:
    lab.apply(DENY_EGRESS)
    try:
        until(
            lambda: in_pod(lab, "locked/client", RESOLVE, "web.app")["web.app"].startswith("error"),
            "DNS blocked by default-deny egress",
            timeout=40,
        )
        lab.apply(ALLOW_DNS)
        web = cluster_ip(lab, "app", "web")
        until(
            lambda: in_pod(lab, "locked/client", RESOLVE, "web.app")["web.app"] == web,
            "DNS allowed by the policy",
        )
    finally:
        lab.run("delete", "networkpolicy", "deny-egress", "allow-dns", "-n", "locked", check=False)


def test_a_dns_server_that_dies_is_restarted(lab: Lab) -> None:
    import os
    import signal

    from flowscope.paths import ClusterPaths

    (pod,) = [p for p in lab.pods("kube-system") if p["metadata"]["name"] == "coredns-node-1"]
    procs = ClusterPaths(lab.name).pod_cgroup("node-1", pod["metadata"]["uid"]) / "cgroup.procs"
    (old,) = procs.read_text().split()
    os.kill(int(old), signal.SIGKILL)  # the lab's own process, found by its pod's cgroup
    until(lambda: procs.read_text().split() not in ([], [old]), "a new DNS server", timeout=30)
    ask = in_pod(lab, "app/client", ASK, "web.app.svc.cluster.local.", "A", pod["status"]["podIP"])
    assert ask["udp"][:2] == ["NOERROR", [cluster_ip(lab, "app", "web")]]
