"""`flowscope apply | get | delete` end to end: the real CLI in a subprocess, the real etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flowscope.cli.resources import age
from tests.conftest import unique
from tests.fakecluster import CLI, REPO, write_cluster

pytestmark = pytest.mark.etcd

EXAMPLES = REPO / "examples"


@pytest.fixture
def cli(tmp_path: Path, etcd_url: str) -> CLI:
    """A cluster.json (under a run root of the test's own) pointing at the test etcd."""
    cluster = unique("c")
    write_cluster(tmp_path, cluster, etcd_url=etcd_url)
    assert (tmp_path / cluster / "cluster.json").exists()
    return CLI(tmp_path, cluster, module="flowscope.cli.main")


def manifest(ns: str) -> str:
    """The examples, moved into namespaces of this test's own (the etcd is shared)."""
    text = "---\n".join(p.read_text() for p in sorted(EXAMPLES.glob("*.yaml")))
    return text.replace("frontend", f"{ns}-fe").replace("backend", f"{ns}-be")


def test_apply_get_delete_round_trip(cli: CLI) -> None:
    ns = unique("t")
    docs = list(yaml.safe_load_all(manifest(ns)))
    text = "\n---\n".join(yaml.safe_dump(d) for d in docs if d)

    r = cli("apply", "-f", "-", stdin=text)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"namespace/{ns}-fe created",
        f"namespace/{ns}-be created",
        "networkpolicy.networking.k8s.io/default-deny-ingress created",
        "networkpolicy.networking.k8s.io/api-from-web created",
        "pod/web-1 created",
        "pod/web-2 created",
        "pod/api-1 created",
        "service/web created",
    ]
    again = cli("apply", "-f", "-", stdin=text)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 8

    pods = cli("get", "pods", "-n", f"{ns}-fe")
    lines = pods.stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["web-1", "0/1", "Pending", "0"],
        ["web-2", "0/1", "Pending", "0"],
    ]
    wide = cli("get", "po", "-A", "-o", "wide", "-l", "app in (api,web)")
    header = wide.stdout.splitlines()[0].split()
    assert header == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    mine = [line.split() for line in wide.stdout.splitlines()[1:] if line.startswith(ns)]
    assert [(row[0], row[1], row[-2], row[-1]) for row in mine] == [
        (f"{ns}-be", "api-1", "<none>", "<none>"),
        (f"{ns}-fe", "web-1", "<none>", "<none>"),
        (f"{ns}-fe", "web-2", "<none>", "<none>"),
    ]

    svc = cli("get", "svc", "web", "-n", f"{ns}-fe")
    assert svc.stdout.splitlines()[0].split() == [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ]
    row = svc.stdout.splitlines()[1].split()
    assert (
        row[:2] == ["web", "NodePort"]
        and row[2].startswith("10.96.")
        and row[3:5] == ["<none>", "80:30080/TCP"]  # kubectl's port:nodePort/protocol
    )

    as_json = json.loads(cli("get", "pod", "api-1", "-n", f"{ns}-be", "-o", "json").stdout)
    assert as_json["kind"] == "Pod" and as_json["metadata"]["resourceVersion"].isdigit()
    ports = as_json["spec"]["containers"][0]["ports"]
    assert {(p["containerPort"], p["protocol"]) for p in ports} == {(8080, "TCP"), (5353, "UDP")}
    as_yaml = yaml.safe_load(cli("get", "ns", "-o", "yaml").stdout)
    assert as_yaml["kind"] == "List"
    assert {f"{ns}-fe", f"{ns}-be"} <= {i["metadata"]["name"] for i in as_yaml["items"]}
    names = cli("get", "pods,svc", "-n", f"{ns}-fe", "-o", "name").stdout.split()
    assert names == ["pod/web-1", "pod/web-2", "service/web"]

    gone = cli("delete", "ns", f"{ns}-fe", f"{ns}-be")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.splitlines() == [
        f'namespace "{ns}-fe" deleted',
        f'namespace "{ns}-be" deleted',
    ]
    empty = cli("get", "pods", "-n", f"{ns}-fe")
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr.strip() == f"No resources found in {ns}-fe namespace."


def test_bad_document_fails_the_whole_apply(cli: CLI, tmp_path: Path) -> None:
    ns = unique("t")
    bad = manifest(ns).replace("containerPort: 8080", "containerPort: 70000")
    path = tmp_path / "pods.yaml"
    path.write_text(bad)
    r = cli("apply", "-f", str(path))
    assert r.returncode == 1
    doc = bad.split("\n---\n").index(next(d for d in bad.split("\n---\n") if "70000" in d)) + 1
    assert (
        f"error: {path} document {doc} (Pod {ns}-be/api-1): spec.containers[0].ports[0]"
        ".containerPort: Invalid value: 70000: must be between 1 and 65535"
    ) in r.stderr
    assert r.stdout == ""
    listed = cli("get", "ns", "-o", "name")
    assert f"{ns}-fe" not in listed.stdout  # nothing of it was written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: Pod\napiVersion: v1\nmetadata: {name: x\n",
            "STDIN document 1: invalid YAML: line 4",
        ),
        (
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: d}\n",
            'no matches for kind "StatefulSet" in version "apps/v1"; supported kinds: Namespace',
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: dup}\nspec: {finalizerz: []}\n",
            'spec.finalizerz: unknown field "finalizerz"',
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: dup}\n---\n"
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: dup}\n",
            "STDIN document 2 (Namespace dup): duplicate object: Namespace dup is also defined in "
            "STDIN document 1",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: nowhere-x}\n"
            "spec: {containers: [{name: c, image: i}]}\n",
            'STDIN document 1 (Pod nowhere-x/p): namespaces "nowhere-x" not found',
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_nonzero_exit(cli: CLI, text: str, message: str) -> None:
    r = cli("apply", "-f", "-", stdin=text)
    assert r.returncode != 0
    assert message in r.stderr
    assert r.stderr.startswith("error: ")


def test_not_found_messages_like_kubectl(cli: CLI) -> None:
    r = cli("delete", "pod", "nope", "-n", "default")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == 'Error from server (NotFound): pods "nope" not found'
    ok = cli("delete", "pod", "nope", "--ignore-not-found")
    assert ok.returncode == 0 and ok.stdout == ""
    g = cli("get", "svc", "nope")
    assert g.returncode == 1
    assert g.stderr.strip() == 'Error from server (NotFound): services "nope" not found'
    k = cli("get", "statefulsets")
    assert (
        k.returncode == 2 and 'the server doesn\'t have a resource type "statefulsets"' in k.stderr
    )


def test_delete_by_manifest(cli: CLI, tmp_path: Path) -> None:
    ns = unique("t")
    path = tmp_path / "all.yaml"
    path.write_text(manifest(ns))
    assert cli("apply", "-f", str(path)).returncode == 0
    r = cli("delete", "-f", str(path))
    assert r.returncode == 0, r.stderr
    assert f'namespace "{ns}-fe" deleted' in r.stdout and 'service "web" deleted' in r.stdout
    again = cli("delete", "-f", str(path))
    assert again.returncode == 1 and "Error from server (NotFound)" in again.stderr
    assert cli("delete", "-f", str(path), "--ignore-not-found").returncode == 0


def test_cluster_not_up(tmp_path: Path) -> None:
    r = CLI(tmp_path, "nosuch")("get", "pods")
    assert r.returncode == 1
    assert "no lab cluster 'nosuch' is up" in r.stderr and "flowscope lab up" in r.stderr


def test_age_like_kubectl() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 10, tzinfo=UTC)

    def ago(**kw) -> str:
        return age((now - timedelta(**kw)).strftime("%Y-%m-%dT%H:%M:%SZ"), now)

    assert [ago(seconds=5), ago(seconds=200), ago(minutes=45), ago(hours=5, minutes=3)] == [
        "5s",
        "3m20s",
        "45m",
        "5h3m",
    ]
    assert [ago(hours=30), ago(days=3, hours=4), ago(days=40)] == ["30h", "3d4h", "40d"]


def test_the_deployment_example_applies(cli: CLI) -> None:
    ns = unique("shop")
    text = "---\n".join(p.read_text() for p in sorted((EXAMPLES / "deployments").glob("*.yaml")))
    r = cli("apply", "-f", "-", stdin=text.replace("shop", ns))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"namespace/{ns} created",
        "deployment.apps/web created",
        "service/web created",
    ]
    svc = json.loads(cli("get", "service", "web", "-n", ns, "-o", "json").stdout)
    assert svc["spec"]["type"] == "LoadBalancer"
