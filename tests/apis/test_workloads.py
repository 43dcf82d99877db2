"""apps/v1 Deployment and ReplicaSet: schema and semantic checks naming the field, defaults,
names kubectl accepts, the immutable selector, and `get`'s columns."""

from __future__ import annotations

import pytest
import yaml

from flowscope.apis import kinds, validation
from flowscope.apis.documents import Document, InvalidManifest
from flowscope.apis.objectstore import ObjectStore
from flowscope.cli.resources import table
from flowscope.store.kv import KV

GOOD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: fe}}
    spec:
      containers: [{name: web, image: agnhost, ports: [{containerPort: 80}]}]
"""


def doc(text: str, **changes: object) -> dict:
    obj = yaml.safe_load(text)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = obj
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


def problems(obj: dict) -> list[str]:
    checked, found = validation.check_document(Document("d.yaml", 1, obj))
    assert checked is None, "expected the document to be refused"
    return [p.message for p in found]


def test_defaults_of_a_deployment() -> None:
    checked, found = validation.check_document(Document("d.yaml", 1, doc(GOOD)))
    assert checked is not None, found
    spec = checked.obj["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert spec["revisionHistoryLimit"] == 10
    assert spec["progressDeadlineSeconds"] == 600
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Always"
    assert pod_spec["containers"][0]["ports"][0]["protocol"] == "TCP"


def test_recreate_gets_no_rolling_parameters_and_a_replicaset_gets_one_replica() -> None:
    obj = doc(GOOD, spec__strategy={"type": "Recreate"})
    checked, found = validation.check_document(Document("d.yaml", 1, obj))
    assert checked is not None, found
    assert checked.obj["spec"]["strategy"] == {"type": "Recreate"}
    rs = doc(GOOD, kind="ReplicaSet", spec__strategy=None)
    checked, found = validation.check_document(Document("d.yaml", 1, rs))
    assert checked is not None, found
    assert checked.obj["spec"]["replicas"] == 1 and "strategy" not in checked.obj["spec"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"spec__replicas": -1},
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            {"spec__selector": {"matchLabels": {"app": "api"}}},
            'spec.template.metadata.labels: Invalid value: {"app":"web","tier":"fe"}: '
            "`selector` does not match template `labels`",
        ),
        ({"spec__template": None}, "spec.template: Required value"),
        ({"spec__selector": None}, "spec.selector: Required value"),
        (
            {"spec__selector": {}},
            "spec.selector: Invalid value: {}: empty selector is invalid for deployment",
        ),
        (
            {"spec__strategy": {"type": "BlueGreen"}},
            'spec.strategy.type: Unsupported value: "BlueGreen": supported values: '
            '"RollingUpdate", "Recreate"',
        ),
        (
            {"spec__strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}},
            "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` "
            "is 'Recreate'",
        ),
        (
            {"spec__strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}},
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when "
            "`maxSurge` is 0",
        ),
        (
            {"spec__strategy": {"rollingUpdate": {"maxSurge": "ten"}}},
            'spec.strategy.rollingUpdate.maxSurge: Invalid value: "ten": a valid percent '
            "string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%')",
        ),
        (
            {"spec__strategy": {"rollingUpdate": {"maxUnavailable": "150%"}}},
            'spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "150%": must not be '
            "greater than 100%",
        ),
        (
            {"spec__revisionHistoryLimit": -2},
            "spec.revisionHistoryLimit: Invalid value: -2: must be greater than or equal to 0",
        ),
        (
            {"spec__minReadySeconds": 700},
            "spec.progressDeadlineSeconds: Invalid value: 600: must be greater than "
            "minReadySeconds",
        ),
        ({"spec__replicas": "3"}, 'spec.replicas: Invalid value: "3": must be of type integer'),
        ({"spec__replcas": 3}, 'spec.replcas: unknown field "replcas"'),
    ],
)
def test_bad_deployments_name_the_field(changes: dict, expected: str) -> None:
    found = problems(doc(GOOD, **changes))
    assert any(expected in m for m in found), found


def test_the_pod_template_is_checked_as_a_pod() -> None:
    obj = doc(GOOD)
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    obj["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    found = problems(obj)
    assert any("spec.template.spec.containers[0].image: Required value" in m for m in found)
    assert any(
        'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: '
        '"Always"' in m
        for m in found
    ), found


def test_a_replicaset_is_checked_the_same_way() -> None:
    found = problems(doc(GOOD, kind="ReplicaSet", spec__replicas=-1, spec__template=None))
    assert any("spec.replicas: Invalid value: -1" in m for m in found)
    assert any("spec.template: Required value" in m for m in found)
    assert any(
        "empty selector is invalid for replicaset" in m
        for m in problems(doc(GOOD, kind="ReplicaSet", spec__selector={}))
    )


def test_names_kubectl_accepts() -> None:
    for name in ("deployments", "deployment", "deploy", "deployments.apps", "Deployment"):
        assert kinds.lookup(name).kind == "Deployment"
    for name in ("replicasets", "replicaset", "rs", "replicasets.apps"):
        assert kinds.lookup(name).kind == "ReplicaSet"
    assert kinds.get("Deployment").api_version == "apps/v1"


async def test_apply_says_deployment_apps_and_keeps_the_selector(kv: KV) -> None:
    store = ObjectStore(kv)
    (result,) = await store.apply([doc(GOOD)])
    assert str(result) == "deployment.apps/web created"
    (again,) = await store.apply([doc(GOOD, spec__replicas=3)])
    assert str(again) == "deployment.apps/web configured"
    stored = await store.get("Deployment", "default", "web")
    assert stored is not None and stored["metadata"]["generation"] == 2
    changed = doc(GOOD, spec__selector={"matchLabels": {"tier": "fe"}})
    with pytest.raises(InvalidManifest) as e:
        await store.apply([changed])
    assert 'spec.selector: Invalid value: {"matchLabels":{"tier":"fe"}}: field is immutable' in str(
        e.value
    )


def test_get_columns_as_kubectl_shows_them() -> None:
    deploy = doc(GOOD, spec__replicas=3)
    deploy["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    deploy["status"] = {
        "replicas": 3,
        "readyReplicas": 2,
        "updatedReplicas": 3,
        "availableReplicas": 2,
    }
    rs = doc(GOOD, kind="ReplicaSet", spec__replicas=3)
    rs["metadata"].update(name="web-7d9c", creationTimestamp="2020-01-01T00:00:00Z")
    rs["status"] = {"replicas": 3, "readyReplicas": 2}
    lines = table(kinds.get("Deployment"), [deploy], wide=False, all_ns=False, prefix=False)
    assert [line.split() for line in lines.splitlines()] == [
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ["web", "2/3", "3", "2", lines.split()[-1]],
    ]
    lines = table(kinds.get("ReplicaSet"), [rs], wide=True, all_ns=False, prefix=True)
    header, row = (line.split() for line in lines.splitlines())
    assert header == [
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ]
    assert row[:4] == ["replicaset.apps/web-7d9c", "3", "3", "2"]
    assert row[5:] == ["web", "agnhost", "app=web"]


KUBECTL_CREATE = """
apiVersion: apps/v1
kind: Deployment
metadata:
  creationTimestamp: null
  labels:
    app: web
  name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  strategy: {}
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: web
    spec:
      containers:
      - image: nginx
        name: nginx
        resources: {}
status: {}
"""


async def test_what_kubectl_create_deployment_writes_applies(kv: KV) -> None:
    """`kubectl create deployment web --image=nginx --dry-run=client -o yaml`, as it prints it."""
    (result,) = await ObjectStore(kv).apply([yaml.safe_load(KUBECTL_CREATE)])
    assert str(result) == "deployment.apps/web created"
    stored = await ObjectStore(kv).get("Deployment", "default", "web")
    assert stored is not None and stored["spec"]["strategy"]["type"] == "RollingUpdate"
