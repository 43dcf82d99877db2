"""The truth-table model of the Kubernetes e2e NetworkPolicy suite, evaluated through the compiler.

Namespaces x, y, z, each with pods a, b, c (labels pod=<name>), serving 80 and 81 on TCP, UDP and
SCTP with the suite's port names (serve-80-tcp, ...). A reachability matrix has one row per client
and one column per server, '.' connected and 'X' blocked, as the suite prints it; the diagonal is
loopback, which the suite ignores and which never crosses the datapath, written '-' here.

Verdicts come from EndpointPolicy.decide on both ends (egress of the client, ingress of the
server) with each peer's identity and CIDR identity, as the datapath looks them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from dataplane.identity.model import CIDR_ID_BASE, MIN_CLUSTER_ID, Labels
from dataplane.policy.compiler import (
    PROTOCOLS,
    CompiledPolicy,
    Compiler,
    ContainerPort,
    PodInfo,
    cidr_identity_of,
    required_prefixes,
    security_labels,
)
from dataplane.policy.entry import Direction
from flowscope.apis import validation
from flowscope.apis.documents import Document

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
SUBNETS = {"x": 1, "y": 2, "z": 3}  # x pods live in 10.244.1.0/24, ...
HOSTS = {"a": 10, "b": 11, "c": 12}
NODES = {"a": "node-1", "b": "node-2", "c": "node-3"}

Matrix = dict[tuple[str, str], bool]


def container_ports() -> tuple[ContainerPort, ...]:
    return tuple(
        ContainerPort(port, number, f"serve-{port}-{proto.lower()}")
        for port in (80, 81)
        for proto, number in PROTOCOLS.items()
    )


def pod_ip(namespace: str, name: str) -> IPv4Address:
    return IPv4Address(f"10.244.{SUBNETS[namespace]}.{HOSTS[name]}")


def make_pods(extra_labels: Mapping[str, Mapping[str, str]] | None = None) -> list[PodInfo]:
    """The nine pods; `extra_labels` adds labels by "ns/pod" (the suite's AddPodLabels)."""
    pods = []
    for ns in NAMESPACES:
        for name in POD_NAMES:
            labels = {"pod": name, **(extra_labels or {}).get(f"{ns}/{name}", {})}
            pods.append(
                PodInfo(
                    ns,
                    name,
                    tuple(sorted(labels.items())),
                    pod_ip(ns, name),
                    NODES[name],
                    container_ports(),
                )
            )
    return pods


def make_namespaces(
    extra_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, dict[str, str]]:
    return {
        ns: {"kubernetes.io/metadata.name": ns, "ns": ns, **(extra_labels or {}).get(ns, {})}
        for ns in NAMESPACES
    }


POD_STRINGS = tuple(f"{ns}/{name}" for ns in NAMESPACES for name in POD_NAMES)


def stored(policies: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Policies as the cluster store holds them: validated and defaulted by flowscope.apis."""
    docs = []
    for i, p in enumerate(policies, 1):
        obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **p}
        docs.append(Document("case", i, obj))
    return [c.obj for c in validation.check(docs)]


def netpol(
    namespace: str,
    name: str,
    pod_selector: Mapping[str, Any] | None = None,
    *,
    ingress: Sequence[Mapping[str, Any]] | None = None,
    egress: Sequence[Mapping[str, Any]] | None = None,
    types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A NetworkPolicy manifest; ingress/egress None leaves the field out."""
    spec: dict[str, Any] = {"podSelector": dict(pod_selector or {})}
    if ingress is not None:
        spec["ingress"] = list(ingress)
    if egress is not None:
        spec["egress"] = list(egress)
    if types is not None:
        spec["policyTypes"] = list(types)
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


def allocate(
    pods: Iterable[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    prefixes: Iterable[IPv4Network],
    *,
    offset: int = 0,
) -> tuple[dict[Labels, int], dict[IPv4Network, int]]:
    """Identity numbers, as an allocator would hand them out (`offset` shuffles the numbering)."""
    sets = sorted({security_labels(p, namespaces) for p in pods}, key=sorted)
    ids = {lbls: MIN_CLUSTER_ID + offset + i for i, lbls in enumerate(sets)}
    cidrs = {p: CIDR_ID_BASE + offset + i for i, p in enumerate(sorted(prefixes))}
    return ids, cidrs


class Cluster:
    """Pods, namespaces and policies compiled once; asks the compiled entries for verdicts."""

    def __init__(
        self,
        policies: Iterable[Mapping[str, Any]],
        pods: Sequence[PodInfo] | None = None,
        namespaces: Mapping[str, Mapping[str, str]] | None = None,
        *,
        validate: bool = True,
    ) -> None:
        self.policies = stored(policies) if validate else [dict(p) for p in policies]
        self.pods = list(pods if pods is not None else make_pods())
        self.namespaces = dict(namespaces if namespaces is not None else make_namespaces())
        self.identities, self.cidrs = allocate(
            self.pods, self.namespaces, required_prefixes(self.policies)
        )
        self.compiled: CompiledPolicy = Compiler().compile(
            self.policies, self.pods, self.namespaces, self.identities, self.cidrs
        )
        self.by_name = {str(p): p for p in self.pods}

    def identity(self, pod: PodInfo) -> int:
        return self.identities[security_labels(pod, self.namespaces)]

    def cidr_identity(self, address: IPv4Address | None) -> int:
        return cidr_identity_of(address, self.cidrs) if address is not None else 0

    def egress(
        self, src: PodInfo, peer_id: int, peer_ip: IPv4Address | None, port: int, protocol: str
    ) -> bool:
        policy = self.compiled.endpoints[src.key]
        cidr = self.cidr_identity(peer_ip)
        return policy.decide(Direction.EGRESS, peer_id, cidr, PROTOCOLS[protocol], port) is not None

    def ingress(
        self, dst: PodInfo, peer_id: int, peer_ip: IPv4Address | None, port: int, protocol: str
    ) -> bool:
        policy = self.compiled.endpoints[dst.key]
        cidr = self.cidr_identity(peer_ip)
        return (
            policy.decide(Direction.INGRESS, peer_id, cidr, PROTOCOLS[protocol], port) is not None
        )

    def connected(self, src: PodInfo, dst: PodInfo, port: int, protocol: str) -> bool:
        return self.egress(src, self.identity(dst), dst.ip, port, protocol) and self.ingress(
            dst, self.identity(src), src.ip, port, protocol
        )

    def matrix(self, port: int, protocol: str = "TCP") -> Matrix:
        return {
            (str(s), str(d)): self.connected(s, d, port, protocol)
            for s in self.pods
            for d in self.pods
            if s is not d
        }


def parse_matrix(text: str) -> Matrix:
    """The suite's printed table: a header of servers, then one row per client."""
    lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
    header, rows = lines[0], lines[1:]
    if header[0] == "-":
        header = header[1:]
    out: Matrix = {}
    for row in rows:
        src, cells = row[0], row[1:]
        assert len(cells) == len(header), f"row {src}: {len(cells)} cells for {len(header)} pods"
        for dst, cell in zip(header, cells, strict=True):
            assert cell in ".X-", f"row {src}, column {dst}: {cell!r} is not '.', 'X' or '-'"
            if src == dst:
                assert cell == "-", f"loopback {src} must be written '-'"
                continue
            out[(src, dst)] = cell == "."
    return out


def render_matrix(m: Matrix, pods: Sequence[str] = POD_STRINGS) -> str:
    lines = ["-   " + " ".join(pods)]
    for s in pods:
        cells = ["-" if s == d else ("." if m[(s, d)] else "X") for d in pods]
        lines.append(f"{s} " + "   ".join(cells))
    return "\n".join(lines)


def assert_matrix(actual: Matrix, expected_text: str) -> None:
    expected = parse_matrix(expected_text)
    assert expected.keys() == actual.keys(), "the expected table must cover every pod pair"
    wrong = sorted(k for k in expected if expected[k] != actual[k])
    assert not wrong, (
        f"{len(wrong)} wrong cell(s): "
        + ", ".join(f"{s}->{d} expected {'.' if expected[(s, d)] else 'X'}" for s, d in wrong)
        + f"\nactual:\n{render_matrix(actual)}\nexpected:\n{expected_text.strip()}"
    )
