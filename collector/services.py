"""Which Service owns a frontend address: ClusterIP:port/proto (and LoadBalancer ingress
IP:port/proto, NodePort *:nodePort/proto) -> the Service's namespace and name, as Hubble's
destination_service names it.

Built from the Service objects the node agent already mirrors (dataplane.agent.services), with
the same frontend rules as the datapath's plan (dataplane.services.plan), so a flow is named by
exactly the frontends the maps were programmed with. Rebuilt only when the mirror's version moves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dataplane.services.plan import NODE_ANY, service_frontends
from flowscope.flow.model import Service

_PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}


FrontendKey = tuple[str, int, str]  # address, port, "TCP"|"UDP"|"SCTP"


def frontend_owners(
    services: Iterable[Mapping[str, Any]],
) -> dict[FrontendKey, tuple[Service, str]]:
    """Frontend -> (its Service, the frontend's kind: ClusterIP, NodePort, LoadBalancer);
    NodePorts under address NODE_ANY."""
    owners: dict[FrontendKey, tuple[Service, str]] = {}
    for svc in services:
        # no slices: only the frontends' keys are wanted, not their backends
        for fe in service_frontends(svc, (), None):
            ns, _, name = fe.service.partition("/")
            key = (fe.key.address, fe.key.port, fe.key.protocol)
            owners.setdefault(key, (Service(name, ns), fe.key.kind))
    return owners


class ServiceIndex:
    """Frontend -> Service over a changing set of Service objects.

    `services()` returns the current objects, `version()` anything that changes when they do
    (a PrefixMirror's version; by default they never change); both are called from the
    collector's thread only."""

    def __init__(
        self,
        services: Callable[[], Iterable[Mapping[str, Any]]],
        version: Callable[[], object] = lambda: 0,
    ) -> None:
        self._services = services
        self._version_of = version
        self._version: object = object()  # matches no version: the first lookup builds
        self._owners: dict[FrontendKey, Service] = {}

    @classmethod
    def of(cls, services: Iterable[Mapping[str, Any]]) -> ServiceIndex:
        """A fixed index (tests, one-shot commands)."""
        fixed = list(services)
        return cls(lambda: fixed)

    def owners(self) -> dict[FrontendKey, Service]:
        version = self._version_of()
        if version != self._version:
            self._owners = {k: svc for k, (svc, _) in frontend_owners(self._services()).items()}
            self._version = version
        return self._owners

    def service_at(self, ip: str, port: int, proto: int | str) -> Service | None:
        """The Service whose frontend is ip:port/proto (proto a number or a name), or None."""
        name = _PROTOCOLS.get(proto, "") if isinstance(proto, int) else proto.upper()
        return self.owners().get((str(ip), port, name))

    def node_port(self, port: int, proto: int | str) -> Service | None:
        """The Service of a NodePort (reached at any node address)."""
        return self.service_at(NODE_ANY, port, proto)
