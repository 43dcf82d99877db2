"""`flowscope policy trace` end to end: the real CLI in a subprocess, objects in the real etcd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import unique
from tests.fakecluster import CLI, write_cluster

pytestmark = pytest.mark.etcd


@pytest.fixture
def lab(tmp_path: Path, etcd_url: str):
    """A cluster.json pointing at the test etcd, with namespaces of this test's own
    (the etcd is shared, so every name is unique) holding a server, a client and a stranger."""
    cluster = unique("pc")
    write_cluster(tmp_path, cluster, etcd_url=etcd_url)
    cli = CLI(tmp_path, cluster, module="flowscope.cli.main")
    back, front = unique("back"), unique("front")

    def pod(ns: str, name: str, labels: dict) -> dict:
        container = {
            "name": "c",
            "image": "agnhost",
            "ports": [{"containerPort": 8080, "name": "http"}],
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"containers": [container]},
        }

    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": back}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": front}},
        pod(back, "db", {"app": "db"}),
        pod(front, "web", {"app": "web"}),
        pod(front, "stranger", {"app": "other"}),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": back, "name": "db-from-web"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": front}
                                },
                                "podSelector": {"matchLabels": {"app": "web"}},
                            }
                        ],
                        "ports": [{"port": "http"}],
                    }
                ],
            },
        },
    ]
    applied = cli("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    assert applied.returncode == 0, applied.stderr
    yield cli, back, front
    cli("delete", "ns", back, front, "--ignore-not-found")


def test_allowed_exits_0_and_names_the_rule(lab) -> None:
    cli, back, front = lab
    r = cli(
        "policy",
        "trace",
        "--from",
        f"{front}/web",
        "--to",
        f"{back}/db",
        "--port",
        "8080",
    )
    assert r.returncode == 0, r.stderr
    assert "Final verdict: ALLOWED" in r.stdout
    assert f"{back}/db-from-web ingress rule 0" in r.stdout


def test_denied_exits_1_with_json(lab) -> None:
    cli, back, front = lab
    r = cli(
        "policy",
        "trace",
        "--from",
        f"{front}/stranger",
        "--to",
        f"{back}/db",
        "--port",
        "8080",
        "-o",
        "json",
    )
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "DENIED" and doc["ingress"]["selected_by"] == [f"{back}/db-from-web"]
    r = cli(
        "policy",
        "trace",
        "--from",
        f"{front}/web",
        "--to",
        f"{back}/db",
        "--port",
        "8080",
        "--protocol",
        "udp",
    )
    assert r.returncode == 1 and "Final verdict: DENIED" in r.stdout


def test_unknown_pod_and_bad_input_exit_2(lab) -> None:
    cli, back, front = lab
    r = cli(
        "policy",
        "trace",
        "--from",
        f"{front}/nope",
        "--to",
        f"{back}/db",
        "--port",
        "80",
    )
    assert r.returncode == 2
    assert f'pod "nope" not found in namespace "{front}"' in r.stderr
    r = cli("policy", "trace", "--from", "web", "--to", f"{back}/db", "--port", "80")
    assert r.returncode == 2 and "NAMESPACE/POD" in r.stderr
    r = cli(
        "policy",
        "trace",
        "--from",
        f"{front}/web",
        "--to",
        f"{back}/db",
        "--port",
        "70000",
    )
    assert r.returncode == 2 and "out of range" in r.stderr
    r = CLI(cli.run_root, "no-such-cluster", module=cli.module)(
        "policy",
        "trace",
        "--from",
        f"{front}/web",
        "--to",
        f"{back}/db",
        "--port",
        "80",
    )
    assert r.returncode == 2 and "lab up" in r.stderr
