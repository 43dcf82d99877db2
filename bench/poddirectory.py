"""A node agent's view of a cluster of made-up pods (collector.enrich.Directory), for the
benchmarks that name synthetic flow events without a lab."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import NamedTuple

from dataplane.agent.ipcache_records import IPRecord
from dataplane.identity.model import Identity, pod_labels
from dataplane.policy.compiler import RuleRef

NODE_IP = IPv4Address("10.224.0.4")


class Pod(NamedTuple):
    ip: IPv4Address
    identity: int
    namespace: str
    name: str
    labels: dict[str, str]


class PodDirectory:
    """Every pod on node-1; no policy rules. Pods sharing an identity share its labels."""

    version = 0

    def __init__(self, pods: Iterable[Pod]) -> None:
        self.records: dict[str, IPRecord] = {}
        self.identities: dict[int, Identity] = {}
        for pod in pods:
            record = IPRecord(pod.ip, pod.identity, "node-1", NODE_IP, pod.namespace, pod.name)
            self.records[str(pod.ip)] = record
            labels = pod_labels(pod.namespace, pod.labels, {})
            self.identities[pod.identity] = Identity(pod.identity, labels)

    def record(self, ip: str) -> IPRecord | None:
        return self.records.get(ip)

    def identity(self, identity_id: int) -> Identity | None:
        return self.identities.get(identity_id)

    def rule(self, cookie: int) -> RuleRef | None:
        return None
