"""What an identity is: a number standing for a set of security-relevant labels.

Labels are strings `source:key=value`, as Cilium prints them:
    k8s:app=web                                             a pod label
    k8s:io.kubernetes.pod.namespace=frontend                the pod's namespace
    k8s:io.cilium.k8s.namespace.labels.team=web             a label of the pod's namespace
    reserved:world, reserved:host, ...                      the reserved identities
    cidr:10.0.0.0/8                                         an ipBlock prefix
Selectors (podSelector, namespaceSelector, ipBlock) are evaluated against these labels, so a
policy selects identities, never individual pods, and pods sharing labels share an identity.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
K8S = "k8s:"
CIDR = "cidr:"
RESERVED = "reserved:"

# Cluster-wide identities for label sets (Cilium: 256..65535); CIDR identities live in their own
# range, as Cilium's locally scoped identities do (1 << 24 and up), but are allocated cluster-wide
# here so that every node and `policy trace` agree on the numbers.
MIN_CLUSTER_ID = 256
MAX_CLUSTER_ID = 65535
CIDR_ID_BASE = 1 << 24
MAX_CIDR_ID = CIDR_ID_BASE + 65535


class Reserved(enum.IntEnum):
    """Cilium's reserved identities, with Cilium's numbers."""

    UNKNOWN = 0  # also the policy map's "any identity" wildcard
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7

    @property
    def label(self) -> str:
        return f"{RESERVED}{self.name.lower().replace('_', '-')}"


Labels = frozenset[str]


@dataclass(frozen=True)
class Identity:
    id: int
    labels: Labels

    @property
    def is_reserved(self) -> bool:
        return self.id < MIN_CLUSTER_ID

    @property
    def is_cidr(self) -> bool:
        return self.id >= CIDR_ID_BASE

    def label_map(self) -> dict[str, str]:
        """The k8s: labels as a {key: value} mapping, as selectors see them."""
        return k8s_label_map(self.labels)


RESERVED_IDENTITIES: dict[int, Identity] = {
    r.value: Identity(r.value, frozenset({r.label})) for r in Reserved if r is not Reserved.UNKNOWN
}


def pod_labels(
    namespace: str, labels: Mapping[str, str], namespace_labels: Mapping[str, str]
) -> Labels:
    """The security labels of a pod: its own labels, its namespace, its namespace's labels."""
    out = {f"{K8S}{k}={v}" for k, v in labels.items()}
    out.add(f"{K8S}{POD_NAMESPACE_LABEL}={namespace}")
    out.update(f"{K8S}{NAMESPACE_LABELS_PREFIX}{k}={v}" for k, v in namespace_labels.items())
    return frozenset(out)


def cidr_labels(prefix: IPv4Network) -> Labels:
    return frozenset({f"{CIDR}{prefix}"})


def k8s_label_map(labels: Labels) -> dict[str, str]:
    out = {}
    for label in labels:
        if label.startswith(K8S):
            key, _, value = label[len(K8S) :].partition("=")
            out[key] = value
    return out


def namespace_of(labels: Labels) -> str | None:
    return k8s_label_map(labels).get(POD_NAMESPACE_LABEL)


def namespace_label_map(labels: Labels) -> dict[str, str]:
    """The labels of the pod's namespace, as a namespaceSelector sees them."""
    return {
        k[len(NAMESPACE_LABELS_PREFIX) :]: v
        for k, v in k8s_label_map(labels).items()
        if k.startswith(NAMESPACE_LABELS_PREFIX)
    }


def pod_label_map(labels: Labels) -> dict[str, str]:
    """The pod's own labels, as a podSelector sees them."""
    return {
        k: v
        for k, v in k8s_label_map(labels).items()
        if k != POD_NAMESPACE_LABEL and not k.startswith(NAMESPACE_LABELS_PREFIX)
    }


def cidr_of(labels: Labels) -> IPv4Network | None:
    for label in labels:
        if label.startswith(CIDR):
            return IPv4Network(label[len(CIDR) :])
    return None
