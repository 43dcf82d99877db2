"""Validation of manifests: every kind of bad input gets the document, the field and the reason."""

from __future__ import annotations

import pytest

from flowscope.apis import documents, validation
from flowscope.apis.documents import InvalidManifest


def problems(text: str, source: str = "pods.yaml", **kw) -> list[str]:
    docs, parse_problems = documents.parse_text(source, text)
    assert parse_problems == []
    try:
        validation.check(docs, **kw)
    except InvalidManifest as e:
        return [str(p) for p in e.problems]
    return []


def pod(name: str = "web", ports: str = "[{containerPort: 80}]", extra: str = "") -> str:
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  containers:
  - name: main
    image: agnhost
    ports: {ports}
{extra}"""


def service(ports: str, extra: str = "") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: {ports}
{extra}"""


def netpol(spec: str) -> str:
    return f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: np, namespace: frontend}}
spec:
{spec}"""


def test_valid_objects_pass_and_get_defaults() -> None:
    text = pod() + "---\n" + service("[{port: 80, targetPort: 8080}]")
    docs, _ = documents.parse_text("ok.yaml", text)
    checked = validation.check(docs)
    p, s = (c.obj for c in checked)
    assert p["metadata"]["namespace"] == "default"
    assert p["spec"]["containers"][0]["ports"][0]["protocol"] == "TCP"
    assert s["spec"]["type"] == "ClusterIP"
    assert s["spec"]["ports"][0]["protocol"] == "TCP"


def test_container_port_out_of_range_names_document_object_field_and_reason() -> None:
    text = pod("other") + "---\n" + pod(ports="[{containerPort: 70000}]")
    assert problems(text) == [
        "pods.yaml document 2 (Pod default/web): spec.containers[0].ports[0].containerPort: "
        "Invalid value: 70000: must be between 1 and 65535, inclusive"
    ]


def test_unknown_field_is_an_error_as_with_validate_strict() -> None:
    out = problems(pod(ports="[{containerPort: 80, prot: UDP}]"))
    assert out == [
        (
            "pods.yaml document 1 (Pod default/web):"
            ' spec.containers[0].ports[0].prot: unknown field "prot"'
        )
    ]


def test_wrong_type_is_an_error() -> None:
    out = problems(pod(ports='[{containerPort: "eighty"}]'))
    assert out == [
        "pods.yaml document 1 (Pod default/web): spec.containers[0].ports[0].containerPort: "
        'Invalid value: "eighty": must be of type integer'
    ]


def test_unknown_kind_lists_the_supported_ones() -> None:
    out = problems("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: d}\n")
    assert len(out) == 1
    assert out[0].startswith(
        'pods.yaml document 1 (StatefulSet d): no matches for kind "StatefulSet" in version '
        '"apps/v1"'
    )
    assert "supported kinds: Namespace (v1), Node (v1), Pod (v1), Service (v1), " in out[0]
    assert "NetworkPolicy (networking.k8s.io/v1)" in out[0]
    assert "Deployment (apps/v1), ReplicaSet (apps/v1)" in out[0]


def test_known_kind_in_the_wrong_version() -> None:
    out = problems("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: d}\n")
    assert out == [
        'pods.yaml document 1 (NetworkPolicy default/d): no matches for kind "NetworkPolicy" in '
        'version "extensions/v1beta1"; NetworkPolicy is served as networking.k8s.io/v1'
    ]


def test_missing_apiversion_and_kind_and_non_objects() -> None:
    assert problems("metadata: {name: x}\n") == [
        "pods.yaml document 1: error validating data: [apiVersion not set, kind not set]"
    ]
    assert problems("- just\n- a list\n") == [
        "pods.yaml document 1: expected a Kubernetes object (a mapping with apiVersion, kind, "
        "metadata), got a list"
    ]


def test_endpointslices_are_refused_with_the_reason() -> None:
    out = problems(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\n"
        "addressType: IPv4\nendpoints: []\n"
    )
    assert len(out) == 1 and "EndpointSlice cannot be applied: EndpointSlices are derived" in out[0]


def test_duplicate_objects_in_one_apply() -> None:
    out = problems(pod() + "---\n" + pod("other") + "---\n" + pod())
    assert out == [
        "pods.yaml document 3 (Pod default/web): duplicate object: Pod default/web is also "
        "defined in pods.yaml document 1"
    ]


def test_same_name_in_other_namespace_or_kind_is_no_duplicate() -> None:
    text = pod() + "---\n" + pod().replace("name: web", "name: web\n  namespace: other")
    text += "---\n" + service("[{port: 80}]")
    assert problems(text) == []


def test_names_and_labels_syntax() -> None:
    out = problems(pod("Web_1", extra="").replace("{app: web}", '{"app": "-x-", "bad key": "v"}'))
    assert any(
        'metadata.name: Invalid value: "Web_1": a lowercase RFC 1123 subdomain' in p for p in out
    )
    assert any('metadata.labels[app]: Invalid value: "-x-"' in p for p in out)
    assert any('metadata.labels: Invalid value: "bad key"' in p for p in out)
    svc = service("[{port: 80}]").replace("name: web", "name: 1web")
    assert any("a DNS-1035 label must consist of" in p for p in problems(svc))


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (
            "[{containerPort: 0}]",
            "ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            "[{containerPort: 53, protocol: ICMP}]",
            'ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"',
        ),
        (
            "[{containerPort: 80, name: a-very-long-port-name}]",
            (
                'ports[0].name: Invalid value: "a-very-long-port-name": must'
                " be no more than 15 characters"
            ),
        ),
        (
            "[{containerPort: 80, name: http}, {containerPort: 81, name: http}]",
            'ports[1].name: Duplicate value: "http"',
        ),
        (
            "[{containerPort: 80, name: '8080'}]",
            'ports[0].name: Invalid value: "8080": must contain at least one letter (a-z)',
        ),
    ],
)
def test_pod_port_checks(ports: str, expected: str) -> None:
    out = problems(pod(ports=ports))
    assert f"pods.yaml document 1 (Pod default/web): spec.containers[0].{expected}" in out


def test_pod_needs_containers_with_name_and_image() -> None:
    text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c}]\n"
    assert problems(text) == [
        "pods.yaml document 1 (Pod default/p): spec.containers[0].image: Required value"
    ]
    text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: []\n"
    assert problems(text) == [
        "pods.yaml document 1 (Pod default/p): spec.containers: Required value"
    ]


@pytest.mark.parametrize(
    ("ports", "extra", "expected"),
    [
        ("[{port: 80}, {port: 81}]", "", "spec.ports[0].name: Required value"),
        (
            "[{name: a, port: 80}, {name: a, port: 81}]",
            "",
            'spec.ports[1].name: Duplicate value: "a"',
        ),
        (
            "[{port: 0}]",
            "",
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            "[{port: 80, nodePort: 30080}]",
            "",
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
        ),
        (
            "[{port: 80, nodePort: 80}]",
            "  type: NodePort",
            (
                "spec.ports[0].nodePort: Invalid value: 80: provided port is"
                " not in the valid range. The range of valid ports is"
                " 30000-32767"
            ),
        ),
        (
            "[{port: 80}]",
            "  type: ExternalName",
            (
                'spec.type: Unsupported value: "ExternalName": supported'
                ' values: "ClusterIP", "NodePort", "LoadBalancer"'
            ),
        ),
        (
            "[{port: 80, targetPort: 0}]",
            "",
            "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            "[{port: 80}]",
            "  clusterIP: 10.0.0.300",
            (
                'spec.clusterIP: Invalid value: "10.0.0.300": must be a'
                ' valid IPv4 address or "None" (headless)'
            ),
        ),
        (
            "[{name: a, port: 80}, {name: b, port: 80}]",
            "",
            'spec.ports[1]: Duplicate value: {"port":80,"protocol":"TCP"}',
        ),
        (
            "[{port: 65536}]",
            "",
            "spec.ports[0].port: Invalid value: 65536: must be between 1 and 65535, inclusive",
        ),
        (
            "[{port: 80, targetPort: 70000}]",
            "",
            "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, "
            "inclusive",
        ),
        (
            "[{port: 80, targetPort: Http}]",
            "",
            'spec.ports[0].targetPort: Invalid value: "Http": must contain only alpha-numeric '
            "characters (a-z, 0-9), and hyphens (-)",
        ),
        (
            "[{port: 80, targetPort: web-server-https}]",
            "",
            'spec.ports[0].targetPort: Invalid value: "web-server-https": must be no more than '
            "15 characters",
        ),
        (
            "[{port: 80, targetPort: h--p}]",
            "",
            'spec.ports[0].targetPort: Invalid value: "h--p": must not contain consecutive hyphens',
        ),
        (
            "[{port: 80, targetPort: '8080'}]",
            "",
            'spec.ports[0].targetPort: Invalid value: "8080": must be a number or a port name, '
            "not a numeric string",
        ),
        (
            "[{port: 80, protocol: ICMP}]",
            "",
            'spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", '
            '"SCTP"',
        ),
        (
            "[{port: 80, nodePort: 32768}]",
            "  type: NodePort",
            "spec.ports[0].nodePort: Invalid value: 32768: provided port is not in the valid "
            "range. The range of valid ports is 30000-32767",
        ),
        (
            "[{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]",
            "  type: NodePort",
            "spec.ports[1].nodePort: Duplicate value: 30080",
        ),
    ],
)
def test_service_checks(ports: str, extra: str, expected: str) -> None:
    assert f"pods.yaml document 1 (Service default/web): {expected}" in problems(
        service(ports, extra)
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "  podSelector: {}\n  policyTypes: [Ingress, Sideways]",
            (
                'spec.policyTypes[1]: Unsupported value: "Sideways":'
                ' supported values: "Ingress", "Egress"'
            ),
        ),
        (
            "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 79}]}]",
            (
                "spec.ingress[0].ports[0].endPort: Invalid value: 79: must"
                " be greater than or equal to `port`"
            ),
        ),
        (
            "  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 90}]}]",
            (
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may"
                " not be specified when `port` is non-numeric"
            ),
        ),
        (
            "  podSelector: {}\n  egress: [{ports: [{endPort: 90}]}]",
            (
                "spec.egress[0].ports[0].port: Required value: must be"
                " specified when `endPort` is specified"
            ),
        ),
        (
            "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
            (
                "spec.egress[0].to[0].ipBlock.cidr: Invalid value:"
                ' "10.0.0.0/33": must be a valid CIDR value, (e.g.'
                " 10.9.8.0/24 or 2001:db8::/64)"
            ),
        ),
        (
            (
                "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr:"
                " 10.0.0.0/8, except: [10.0.0.0/8]}}]}]"
            ),
            (
                "spec.egress[0].to[0].ipBlock.except[0]: Invalid value:"
                ' "10.0.0.0/8": must be a strict subset of `cidr`'
            ),
        ),
        (
            (
                "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr:"
                " 10.0.0.0/8, except: [11.0.0.0/16]}}]}]"
            ),
            (
                "spec.egress[0].to[0].ipBlock.except[0]: Invalid value:"
                ' "11.0.0.0/16": must be a strict subset of `cidr`'
            ),
        ),
        (
            (
                "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr:"
                " 10.0.0.0/8}, podSelector: {}}]}]"
            ),
            "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer",
        ),
        (
            "  podSelector: {matchExpressions: [{key: a, operator: Like, values: [x]}]}",
            (
                "spec.podSelector.matchExpressions[0].operator: Unsupported"
                ' value: "Like": supported values: "In", "NotIn", "Exists",'
                ' "DoesNotExist"'
            ),
        ),
        (
            "  podSelector: {}\n  ingress: [{ports: [{port: 53, protocol: ICMP}]}]",
            (
                "spec.ingress[0].ports[0].protocol: Unsupported value:"
                ' "ICMP": supported values: "TCP", "UDP", "SCTP"'
            ),
        ),
    ],
)
def test_network_policy_checks(spec: str, expected: str) -> None:
    assert f"pods.yaml document 1 (NetworkPolicy frontend/np): {expected}" in problems(netpol(spec))


def test_network_policy_defaults_policy_types() -> None:
    docs, _ = documents.parse_text("np.yaml", netpol("  podSelector: {}\n  egress: [{}]"))
    (c,) = validation.check(docs)
    assert c.obj["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_namespace_flag_mismatch_and_cluster_scoped_namespace_dropped() -> None:
    text = pod().replace("name: web", "name: web\n  namespace: a")
    out = problems(text, namespace="b", enforce_namespace=True)
    assert out == [
        'pods.yaml document 1 (Pod a/web): metadata.namespace: Invalid value: "a": does not '
        'match the namespace "b" given with -n; pass --namespace=a or remove -n'
    ]
    docs, _ = documents.parse_text(
        "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, namespace: y}\n"
    )
    (c,) = validation.check(docs)
    assert "namespace" not in c.obj["metadata"]


def test_every_bad_document_is_reported_in_one_run() -> None:
    text = (
        pod(ports="[{containerPort: 0}]") + "---\napiVersion: v9\nkind: Pod\nmetadata: {name: b}\n"
    )
    out = problems(text)
    assert [p.split(":")[0] for p in out] == [
        "pods.yaml document 1 (Pod default/web)",
        "pods.yaml document 2 (Pod default/b)",
    ]


def test_server_fields_of_a_copied_object_are_not_desired_state() -> None:
    text = (
        pod().replace(
            "labels: {app: web}",
            (
                "labels: {app: web}\n  uid: abc\n  resourceVersion: '7'\n "
                " creationTimestamp: '2024-01-01T00:00:00Z'"
            ),
        )
        + "status: {phase: Running}\n"
    )
    docs, _ = documents.parse_text("copy.yaml", text)
    (c,) = validation.check(docs)
    assert "uid" not in c.obj["metadata"] and "status" not in c.obj
    assert c.resource_version == "7"
