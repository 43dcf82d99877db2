"""The kinds of object the cluster stores, and everything known about each: one place to add one.

A later kind (e.g. Cilium's CiliumNetworkPolicy) is one more `Kind(...)` in KINDS, with its schema
(a kubernetes-validate schema name, or a JSON schema file of our own) and its semantic checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowscope.apis import checks, defaults, names
from flowscope.apis.fields import FieldError
from flowscope.errors import FlowscopeError, UsageError

Checks = Callable[[dict[str, Any]], list[FieldError]]


@dataclass(frozen=True)
class Kind:
    kind: str  # "Pod"
    group: str  # "" for the core group
    version: str  # "v1"
    plural: str  # "pods": the resource name of `get` and of the storage key
    short_names: tuple[str, ...]
    namespaced: bool
    name_syntax: Callable[[str], list[str]]  # reasons a metadata.name is invalid
    checks: Checks  # the apiserver's semantic validation of a whole object
    # kubernetes-validate's schema file stem ("pod-v1"); None: no OpenAPI schema for this kind
    schema: str | None
    # fills in what the apiserver defaults (in place), so stored objects are complete
    defaults: Callable[[dict[str, Any]], None] | None = None
    # None: users may apply it; else why not (objects derived by a controller, ...)
    refused: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """`pods`, `networkpolicies.networking.k8s.io`: kubectl's name for the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def key(self, namespace: str | None, name: str) -> str:
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.kind} {name!r} needs a namespace")
            return f"/registry/{self.plural}/{namespace}/{name}"
        return f"/registry/{self.plural}/{name}"

    def prefix(self, namespace: str | None = None) -> str:
        """The key prefix of all objects of this kind (in `namespace`, when namespaced)."""
        if self.namespaced and namespace:
            return f"/registry/{self.plural}/{namespace}/"
        return f"/registry/{self.plural}/"


KINDS: tuple[Kind, ...] = (
    Kind(
        "Namespace",
        "",
        "v1",
        "namespaces",
        ("ns",),
        namespaced=False,
        name_syntax=names.dns1123_label,
        checks=checks.namespace,
        schema="namespace-v1",
        defaults=defaults.namespace,
    ),
    Kind(
        "Node",
        "",
        "v1",
        "nodes",
        ("no",),
        namespaced=False,
        name_syntax=names.dns1123_subdomain,
        checks=checks.node,
        schema="node-v1",
    ),
    Kind(
        "Pod",
        "",
        "v1",
        "pods",
        ("po",),
        namespaced=True,
        name_syntax=names.dns1123_subdomain,
        checks=checks.pod,
        schema="pod-v1",
        defaults=defaults.pod,
    ),
    Kind(
        "Service",
        "",
        "v1",
        "services",
        ("svc",),
        namespaced=True,
        name_syntax=names.dns1035_label,
        checks=checks.service,
        schema="service-v1",
        defaults=defaults.service,
    ),
    Kind(
        "NetworkPolicy",
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        ("netpol",),
        namespaced=True,
        name_syntax=names.dns1123_subdomain,
        checks=checks.network_policy,
        schema="networkpolicy-networking-v1",
        defaults=defaults.network_policy,
    ),
    Kind(
        "Deployment",
        "apps",
        "v1",
        "deployments",
        ("deploy",),
        namespaced=True,
        name_syntax=names.dns1123_subdomain,
        checks=checks.deployment,
        schema="deployment-apps-v1",
        defaults=defaults.deployment,
    ),
    Kind(
        "ReplicaSet",
        "apps",
        "v1",
        "replicasets",
        ("rs",),
        namespaced=True,
        name_syntax=names.dns1123_subdomain,
        checks=checks.replica_set,
        schema="replicaset-apps-v1",
        defaults=defaults.replica_set,
    ),
    Kind(
        "EndpointSlice",
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        ("endpointslice",),
        namespaced=True,
        name_syntax=names.dns1123_subdomain,
        checks=checks.endpoint_slice,
        schema="endpointslice-discovery-v1",
        refused=(
            "EndpointSlices are derived from Services and Pods by the EndpointSlice controller; "
            "apply the Service (with a selector) and its Pods instead"
        ),
    ),
)



def _cnp_checks(obj: dict[str, Any]) -> list[FieldError]:
    # the CNP's own parser is its validator (every field is structural); imported here, late,
    # because it lives with the policy compiler it feeds
    from dataplane.policy.cnp import check

    return check(obj)


KINDS += (
    Kind(
        "CiliumNetworkPolicy",
        "cilium.io",
        "v2",
        "ciliumnetworkpolicies",
        ("cnp", "ciliumnp"),
        namespaced=True,
        name_syntax=names.dns1123_subdomain,
        checks=_cnp_checks,
        schema=None,
    ),
)

_BY_KIND = {k.kind: k for k in KINDS}


def supported() -> str:
    return ", ".join(f"{k.kind} ({k.api_version})" for k in KINDS)


def get(kind: str) -> Kind:
    """The Kind named exactly `kind` ("Pod"); KeyError when unknown."""
    return _BY_KIND[kind]


def for_object(api_version: str | None, kind: str | None) -> Kind:
    """The Kind of a manifest, by its apiVersion and kind; FlowscopeError when not supported."""
    k = _BY_KIND.get(kind or "")
    if k is None:
        raise FlowscopeError(
            f'no matches for kind "{kind}" in version "{api_version}"; '
            f"supported kinds: {supported()}"
        )
    if api_version != k.api_version:
        raise FlowscopeError(
            f'no matches for kind "{kind}" in version "{api_version}"; '
            f"{kind} is served as {k.api_version}"
        )
    return k


def lookup(resource: str) -> Kind:
    """A kind by any name kubectl accepts: pods, pod, po, Pod, networkpolicies.networking.k8s.io."""
    wanted = resource.strip()
    lower = wanted.lower()
    for k in KINDS:
        spellings = {k.plural, k.singular, *k.short_names, k.resource}
        if k.group:
            spellings |= {f"{k.singular}.{k.group}", f"{k.plural}.{k.version}.{k.group}"}
        if lower in spellings or wanted == k.kind:
            return k
    raise UsageError(
        f'the server doesn\'t have a resource type "{resource}"',
        hint="supported: " + ", ".join(f"{k.plural} ({', '.join(k.short_names)})" for k in KINDS),
    )
