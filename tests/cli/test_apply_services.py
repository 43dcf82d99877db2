"""Bad Services through the real `flowscope apply` (subprocess, real etcd): each offending field
named, a non-zero exit, and nothing of a failing apply written - neither its objects (the valid
ones beside the bad included) nor any ClusterIP or NodePort allocation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.fakecluster import CLI, write_cluster

pytestmark = pytest.mark.etcd


@pytest.fixture
def cli(tmp_path: Path, etcd_url: str) -> CLI:
    """A cluster.json (under a run root of the test's own) pointing at the test etcd."""
    cluster = unique("h5c")
    write_cluster(tmp_path, cluster, etcd_url=etcd_url, service_cidr="10.0.0.0/16")
    return CLI(tmp_path, cluster)


def svc(ns: str, name: str, ports: str, type_: str = "NodePort") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  type: {type_}
  selector: {{app: {name}}}
  ports: {ports}
"""


def services(cli: CLI, ns: str) -> dict[str, dict]:
    r = cli("get", "services", "-n", ns, "-o", "json")
    assert r.returncode == 0, r.stderr
    return {s["metadata"]["name"]: s for s in json.loads(r.stdout)["items"]}


def test_every_bad_service_is_named_and_nothing_is_written(cli: CLI) -> None:
    ns = unique("h5ns")
    docs = [
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n",
        svc(ns, "fine", "[{port: 80}]"),
        svc(ns, "bad-port", "[{port: 70000}]"),
        svc(ns, "bad-target", "[{port: 80, targetPort: Web_Port}]"),
        svc(ns, "out-of-range", "[{port: 80, nodePort: 40000}]"),
        svc(ns, "dup-names", "[{name: a, port: 80}, {name: a, port: 81}]"),
        svc(
            ns,
            "dup-node-port",
            "[{name: a, port: 80, nodePort: 30500}, {name: b, port: 81, nodePort: 30500}]",
        ),
    ]
    r = cli("apply", "-f", "-", stdin="---\n".join(docs))
    assert r.returncode != 0
    for expected in (
        f"Service {ns}/bad-port): spec.ports[0].port: Invalid value: 70000",
        f'Service {ns}/bad-target): spec.ports[0].targetPort: Invalid value: "Web_Port"',
        f"Service {ns}/out-of-range): spec.ports[0].nodePort: Invalid value: 40000",
        f'Service {ns}/dup-names): spec.ports[1].name: Duplicate value: "a"',
        f"Service {ns}/dup-node-port): spec.ports[1].nodePort: Duplicate value: 30500",
    ):
        assert expected in r.stderr, r.stderr
    assert "fine" not in r.stderr  # the valid one is not blamed ...
    ns_get = cli("get", "namespace", ns)
    assert ns_get.returncode != 0  # ... and not written either: nothing of the apply is
    # the same apply without the bad documents goes through
    assert cli("apply", "-f", "-", stdin="---\n".join(docs[:2])).returncode == 0
    assert list(services(cli, ns)) == ["fine"]


def test_a_node_port_taken_fails_the_whole_apply(cli: CLI) -> None:
    ns = unique("h5ns")
    namespace = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    first = cli("apply", "-f", "-", stdin=namespace + "---\n" + svc(ns, "a", "[{port: 80}]"))
    assert first.returncode == 0, first.stderr
    a = services(cli, ns)["a"]
    taken = a["spec"]["ports"][0]["nodePort"]
    second = "---\n".join(
        [
            svc(ns, "b", "[{port: 80}]"),  # legal alone: would get an address and a port
            svc(ns, "c", f"[{{port: 80, nodePort: {taken}}}]"),
        ]
    )
    r = cli("apply", "-f", "-", stdin=second)
    assert r.returncode != 0
    assert (
        f"Service {ns}/c): spec.ports[0].nodePort: Invalid value: {taken}: "
        "provided port is already allocated" in r.stderr
    ), r.stderr
    assert list(services(cli, ns)) == ["a"]  # b was not created, a untouched
    assert services(cli, ns)["a"]["spec"] == a["spec"]
    # b's would-be allocations were not kept: applying b alone now succeeds, and a third apply
    # naming a's port in another service still fails the same way
    assert cli("apply", "-f", "-", stdin=svc(ns, "b", "[{port: 80}]")).returncode == 0
    b = services(cli, ns)["b"]
    assert b["spec"]["clusterIP"] != a["spec"]["clusterIP"]
    assert b["spec"]["ports"][0]["nodePort"] != taken
