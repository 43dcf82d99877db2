"""Give the datapath's numbers names: IPs and identities become pods, namespaces, labels and
workloads (the pod's Deployment or ReplicaSet, from the pod's ipcache record);
policy cookies become the policies that allowed a flow (Hubble's *_allowed_by); service
frontends become the Services they belong to (destination_service); cgroup ids become the
pods that own them (the socket LB's client).

The directory behind it is the node agent's view of the cluster (dataplane.agent.enforcement),
read, never written: data flows from the dataplane to the collector only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dataplane.agent.ipcache_records import IPRecord
from dataplane.identity.model import RESERVED_IDENTITIES, Identity, namespace_of
from dataplane.policy.compiler import RuleRef
from dataplane.policy.entry import COOKIE_HOST, COOKIE_NO_POLICY, Direction
from flowscope.flow.model import Endpoint, Policy, Service

if TYPE_CHECKING:
    from collector.podcgroups import PodCgroups
    from collector.services import ServiceIndex

MAX_REMEMBERED = 65536  # endpoints named at once; past that the memory starts over


class Directory(Protocol):
    version: object  # changes whenever what the methods below answer may have changed

    def record(self, ip: str) -> IPRecord | None: ...
    def identity(self, identity_id: int) -> Identity | None: ...
    def rule(self, cookie: int) -> RuleRef | None: ...


class Enricher:
    def __init__(
        self,
        directory: Directory,
        cluster: str,
        *,
        services: ServiceIndex | None = None,
        pods: PodCgroups | None = None,
        names: Callable[[str], tuple[str, ...]] | None = None,
    ) -> None:
        self.directory = directory
        self.cluster = cluster
        self.services = services
        self.pods = pods
        self.names = names  # address -> the DNS names it is known by (the node's DNS cache)
        self._version: object = None
        self._endpoints: dict[tuple[str, int, int], Endpoint] = {}

    def endpoint(self, ip: str, identity_id: int, endpoint_id: int = 0) -> Endpoint:
        """The Hubble endpoint of an address seen with this identity (remembered until the
        directory changes: the same few endpoints appear in every batch)."""
        version = self.directory.version
        if version != self._version:
            self._endpoints.clear()
            self._version = version
        key = (ip, identity_id, endpoint_id)
        found = self._endpoints.get(key)
        if found is None:
            if len(self._endpoints) >= MAX_REMEMBERED:
                self._endpoints.clear()
            found = self._endpoints[key] = self._endpoint(ip, identity_id, endpoint_id)
        return found

    def _endpoint(self, ip: str, identity_id: int, endpoint_id: int) -> Endpoint:
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
                workloads=(record.workload,) if record.workload else (),
                cluster_name=self.cluster,
            )
        return Endpoint(
            id=endpoint_id,
            identity=identity_id,
            namespace=namespace_of(identity.labels) or "" if identity else "",
            labels=labels,
        )

    def names_of(self, ip: str) -> tuple[str, ...]:
        return self.names(ip) if self.names is not None else ()

    def by_ip(self, ip: str) -> Endpoint:
        """The endpoint of an address when only the address is known (kernel events)."""
        return self.known_endpoint(ip) or Endpoint()

    def known_endpoint(self, ip: str) -> Endpoint | None:
        """The endpoint of an address the directory knows a record of; None otherwise (the L7
        proxies' flows leave such an end out)."""
        record = self.directory.record(ip)
        return self.endpoint(ip, record.identity) if record else None

    def allowed_by(self, cookie: int, direction: Direction) -> tuple[Policy, ...]:
        """The policy behind an allow entry; none when no policy selected the endpoint."""
        if cookie in (COOKIE_NO_POLICY, COOKIE_HOST):
            return ()
        rule = self.directory.rule(cookie)
        if rule is None or rule.direction != direction:
            return ()
        return (Policy(name=rule.policy, namespace=rule.namespace),)

    def service_at(self, ip: str, port: int, proto: int) -> Service | None:
        """The Service whose frontend is ip:port/proto (proto: the IP protocol number)."""
        return self.services.service_at(ip, port, proto) if self.services else None

    def node_port(self, port: int, proto: int) -> Service | None:
        """The Service of a NodePort, at whatever node address it was reached."""
        return self.services.node_port(port, proto) if self.services else None

    def pod_ip(self, cgroup_id: int) -> str | None:
        """The IP of the local pod whose cgroup this is (None: no pod's, or not known)."""
        return self.pods.ip_of(cgroup_id) if self.pods else None
