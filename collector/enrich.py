"""Give the datapath's numbers names: IPs and identities become pods, namespaces and labels;
policy cookies become the policies that allowed a flow (Hubble's *_allowed_by).

The directory behind it is the node agent's view of the cluster (dataplane.agent.enforcement),
read, never written: data flows from the dataplane to the collector only.
"""

from __future__ import annotations

from typing import Protocol

from dataplane.agent.ipcache_records import IPRecord
from dataplane.identity.model import RESERVED_IDENTITIES, Identity, namespace_of
from dataplane.policy.compiler import RuleRef
from dataplane.policy.entry import COOKIE_HOST, COOKIE_NO_POLICY, Direction
from flowscope.flow.model import Endpoint, Policy


class Directory(Protocol):
    def record(self, ip: str) -> IPRecord | None: ...
    def identity(self, identity_id: int) -> Identity | None: ...
    def rule(self, cookie: int) -> RuleRef | None: ...


class Enricher:
    def __init__(self, directory: Directory, cluster: str) -> None:
        self.directory = directory
        self.cluster = cluster

    def endpoint(self, ip: str, identity_id: int, endpoint_id: int = 0) -> Endpoint:
        """The Hubble endpoint of an address seen with this identity."""
        identity = self.directory.identity(identity_id) or RESERVED_IDENTITIES.get(identity_id)
        labels = tuple(sorted(identity.labels)) if identity else ()
        record = self.directory.record(ip)
        if record is not None and record.identity == identity_id:
            return Endpoint(
                id=endpoint_id,
                identity=identity_id,
                namespace=record.namespace,
                labels=labels,
                pod_name=record.pod,
                cluster_name=self.cluster,
            )
        return Endpoint(
            id=endpoint_id,
            identity=identity_id,
            namespace=namespace_of(identity.labels) or "" if identity else "",
            labels=labels,
        )

    def by_ip(self, ip: str) -> Endpoint:
        """The endpoint of an address when only the address is known (kernel events)."""
        record = self.directory.record(ip)
        if record is None:
            return Endpoint()
        return self.endpoint(ip, record.identity)

    def allowed_by(self, cookie: int, direction: Direction) -> tuple[Policy, ...]:
        """The policy behind an allow entry; none when no policy selected the endpoint."""
        if cookie in (COOKIE_NO_POLICY, COOKIE_HOST):
            return ()
        rule = self.directory.rule(cookie)
        if rule is None or rule.direction != direction:
            return ()
        return (Policy(name=rule.policy, namespace=rule.namespace),)
