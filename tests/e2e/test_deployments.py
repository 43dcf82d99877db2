"""A Deployment on a real 2-node lab, through the real `flowscope` command: examples/deployments
applied, its pods running on the nodes with the ReplicaSet's names, a flow from one of them
carrying the Deployment as its workload, then scaled down, rolled to a new template, deleted
(its ReplicaSets and pods collected)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import unique
from tests.e2e.lab import Lab, until

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

NS = "shop"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deployments" / "shop.yaml"
CLIENT = f"""apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: client}}}}
spec:
  nodeName: node-1
  containers: [{{name: main, image: agnhost, ports: [{{containerPort: 8080}}]}}]
"""
WORKLOAD = [{"name": "web", "kind": "Deployment"}]


@pytest.fixture(scope="module")
def lab():
    lab = Lab(unique("h4dp"))
    try:
        lab.run("lab", "up", "--nodes", "2", "--ipam", "overlay", timeout=180)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


def manifests(replicas: int | None = None, image: str | None = None) -> str:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    if replicas is not None:
        deploy["spec"]["replicas"] = replicas
    if image is not None:
        deploy["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return "---\n".join(yaml.safe_dump(d) for d in docs)


def get(lab: Lab, kind: str) -> list[dict[str, Any]]:
    return json.loads(lab.run("get", kind, "-n", NS, "-o", "json").stdout)["items"]


def web_pods(lab: Lab) -> list[dict[str, Any]]:
    return [p for p in get(lab, "pods") if p["metadata"]["name"] != "client"]


def settled(lab: Lab, replicas: int, image: str) -> list[dict[str, Any]] | None:
    """The Deployment's pods once it reports `replicas` available, all of `image`, running."""
    (deploy,) = get(lab, "deployments")
    status = deploy.get("status") or {}
    pods = web_pods(lab)
    ok = (
        status.get("availableReplicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("replicas") == replicas
        and status.get("observedGeneration") == deploy["metadata"]["generation"]
        and len(pods) == replicas
        and all(p["spec"]["containers"][0]["image"] == image for p in pods)
        and all(p.get("status", {}).get("phase") == "Running" for p in pods)
    )
    return pods if ok else None


def source_flows(lab: Lab, pod: str) -> list[dict]:
    out = lab.run("observe", "--last", "2000", "-o", "json", "--from-pod", f"{NS}/{pod}").stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if '"flow"' in line]


def test_a_deployment_runs_scales_rolls_and_is_collected(lab: Lab) -> None:
    first_image = yaml.safe_load_all(EXAMPLE.read_text())
    image = next(d for d in first_image if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    applied = lab.run("apply", "-f", str(EXAMPLE)).stdout
    assert "deployment.apps/web created" in applied
    lab.apply(CLIENT)

    pods = until(lambda: settled(lab, 3, image), "3 replicas available", timeout=60)
    (rs,) = get(lab, "replicasets")
    rs_name = rs["metadata"]["name"]
    pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs_name == f"web-{pod_hash}"
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    for p in pods:
        assert p["metadata"]["name"].startswith(f"{rs_name}-")
        assert p["metadata"]["labels"]["pod-template-hash"] == pod_hash
        assert p["metadata"]["ownerReferences"][0]["name"] == rs_name
        assert p["spec"]["nodeName"] in ("node-1", "node-2") and p["status"]["podIP"]
    assert {p["spec"]["nodeName"] for p in pods} == {"node-1", "node-2"}  # spread by the scheduler

    table = lab.run("get", "deployments,replicasets", "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:4] == ["deployment.apps/web", "3/3", "3", "3"]
    rs_header = table.index("") + 1  # one table per kind, a blank line between
    assert table[rs_header].split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert table[rs_header + 1].split()[:4] == [f"replicaset.apps/{rs_name}", "3", "3", "3"]

    # a connection from a pod of the Deployment on the other node: its flows name the workload
    remote = next(p for p in pods if p["spec"]["nodeName"] == "node-2")
    name = remote["metadata"]["name"]
    assert lab.probe(f"{NS}/{name}", f"{NS}/client:8080")["connected"]

    def with_workload() -> list[dict]:
        got = [f for f in source_flows(lab, name) if f.get("source", {}).get("workloads")]
        return got if {f.get("node_name") for f in got} >= {"node-1"} else []

    flows = until(with_workload, "flows of the pod on both ends' nodes")
    for f in flows:
        assert f["source"]["workloads"] == WORKLOAD
        assert f["source"]["pod_name"] == name and f["source"]["namespace"] == NS
    # the client is a bare pod: no workload on its end
    assert all("workloads" not in f.get("destination", {}) for f in flows)

    # scale down: the pods beyond one go
    lab.apply(manifests(replicas=1))
    (kept,) = until(lambda: settled(lab, 1, image), "scaled to 1", timeout=60)
    assert kept["metadata"]["name"] in {p["metadata"]["name"] for p in pods}

    # roll to a new template: a new ReplicaSet, the old one at zero
    new_image = image.replace("2.52", "2.53")
    lab.apply(manifests(replicas=2, image=new_image))
    rolled = until(lambda: settled(lab, 2, new_image), "rolled to the new image", timeout=60)
    sets = {r["metadata"]["name"]: r for r in get(lab, "replicasets")}
    assert set(sets) >= {rs_name} and len(sets) == 2
    assert sets[rs_name]["spec"]["replicas"] == 0
    (new_rs,) = [n for n in sets if n != rs_name]
    assert all(p["metadata"]["name"].startswith(f"{new_rs}-") for p in rolled)
    (deploy,) = get(lab, "deployments")
    reasons = {c["type"]: c["reason"] for c in deploy["status"]["conditions"]}
    assert reasons == {
        "Available": "MinimumReplicasAvailable",
        "Progressing": "NewReplicaSetAvailable",
    }

    # delete: the ReplicaSets and pods go with it, the bare client stays
    assert 'deployment "web" deleted' in lab.run("delete", "deployment", "web", "-n", NS).stdout
    until(lambda: not get(lab, "replicasets") and not web_pods(lab), "ReplicaSets and pods gone")
    assert [p["metadata"]["name"] for p in get(lab, "pods")] == ["client"]
