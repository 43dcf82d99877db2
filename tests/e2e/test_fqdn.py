"""DNS visibility and DNS-FQDN egress policy on a real lab: pods' lookups become L7 flows, the
names they learn name later flows, DNS rules refuse names, and a toFQDNs policy opens exactly the
addresses DNS answered for the allowed names, never a guessed one."""

from __future__ import annotations

import json

import pytest

from flowscope import clusterinfo
from tests.e2e.lab import Lab, running_lab, until

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

WORKLOAD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: c, image: agnhost}]}
---
apiVersion: v1
kind: Pod
metadata: {name: free, namespace: shop, labels: {app: free}}
spec: {nodeName: node-1, containers: [{name: c, image: agnhost}]}
"""

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.com"}, {matchPattern: "*.example.net"},
              {matchPattern: "*.cluster.local"}]
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


@pytest.fixture(scope="module")
def lab():
    with running_lab("fqdn", "--nodes", "2", "--ipam", "overlay", workload=WORKLOAD, pods=2) as lab:
        yield lab


def outside(lab: Lab, host: str) -> str:
    return clusterinfo.load(lab.name).extra["outside_hosts"][host]["ip"]


def flows(lab: Lab, *args: str) -> list[dict]:
    out = lab.run("observe", "--last", "200", "-o", "json", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]


def test_lookups_are_l7_flows_with_their_answer_and_latency(lab: Lab) -> None:
    api = outside(lab, "api")
    assert lab.probe("shop/free", "api.example.com:80")["connected"]
    l7 = until(
        lambda: [
            f
            for f in flows(lab, "--type", "l7", "--pod", "shop/free")
            if f["l7"]["dns"].get("query") == "api.example.com."
        ],
        "the lookup's L7 flows",
    )
    requests = [f for f in l7 if f["l7"]["type"] == "REQUEST"]
    responses = [f for f in l7 if f["l7"]["type"] == "RESPONSE"]
    assert requests and requests[0]["source"]["pod_name"] == "free"
    assert requests[0]["destination_service"] == {"name": "kube-dns", "namespace": "kube-system"}
    answer = next(r for r in responses if "A" in r["l7"]["dns"].get("qtypes", []))
    assert answer["l7"]["dns"]["ips"] == [api] and answer["l7"]["dns"]["ttl"] > 0
    assert int(answer["l7"]["latency_ns"]) > 0 and answer["is_reply"] is True
    # the name names the connection that followed, and filters find it by name
    named = flows(lab, "--to-fqdn", "api.example.com", "--from-pod", "shop/free")
    assert named and all(f["IP"]["destination"] == api for f in named)
    assert named[0]["destination_names"] == ["api.example.com"]
    compact = lab.run("observe", "--type", "l7", "--last", "50").stdout
    assert "dns-response FORWARDED (DNS Answer" in compact


def test_fqdn_policy_allows_only_what_dns_answered_for_allowed_names(lab: Lab) -> None:
    api, other = outside(lab, "api"), outside(lab, "other")
    lab.apply(POLICY)
    # a guessed address opens nothing: the pod has not asked for its name
    until(
        lambda: not lab.probe("shop/web", f"{api}:80", timeout=1)["connected"],
        "the policy in force",
    )
    # asked through the cluster DNS, the allowed name opens its address, at once
    assert lab.probe("shop/web", "api.example.com:80")["connected"]
    assert lab.probe("shop/web", f"{api}:80")["connected"]
    # a name the DNS rules allow but no toFQDNs selects: resolved, and still dropped
    result = lab.probe("shop/web", "other.example.net:80", timeout=1)
    assert not result["connected"]
    drops = flows(lab, "--from-pod", "shop/web", "--verdict", "DROPPED", "--to-ip", other)
    assert drops and drops[-1]["drop_reason_desc"] == "POLICY_DENIED"
    assert drops[-1]["destination_names"] == ["other.example.net"]
    # the pod without the policy is not affected
    assert lab.probe("shop/free", "other.example.net:80")["connected"]


def test_dns_rules_refuse_other_names(lab: Lab) -> None:
    lab.apply(POLICY)
    result = lab.probe("shop/web", "www.example.org:80", timeout=1)
    assert not result["connected"]
    refused = until(
        lambda: [
            f
            for f in flows(lab, "--type", "l7", "--pod", "shop/web", "--verdict", "DROPPED")
            if f["l7"]["dns"].get("query", "").startswith("www.example.org")
        ],
        "a DROPPED dns-request",
    )
    assert refused[-1]["drop_reason_desc"] == "POLICY_DENIED"
