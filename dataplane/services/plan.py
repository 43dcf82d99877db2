"""The load balancer's view of the cluster, pure: Services + EndpointSlices -> frontends with
their backends, as one node's datapath should hold them (kube-proxy's / Cilium's semantics).

- One frontend per service port and address: ClusterIP:port/proto; for NodePort and
  LoadBalancer services also NODE_ANY:nodePort/proto (any address of this node: the datapath
  matches it on the node's own IPs) and each status.loadBalancer.ingress IP:port/proto.
- Backends: the endpoints whose ready condition is true (absent counts as true); when none is
  ready, the serving+terminating ones (kube-proxy's terminating fallback). The backend port is
  the slice's port of the same name and protocol, so a named targetPort is resolved per pod by
  the EndpointSlice controller; for a slice lacking it, the pod (when given) or a numeric
  targetPort resolves it.
- internalTrafficPolicy Local: ClusterIP frontends keep only backends on this node;
  externalTrafficPolicy Local: NodePort/LoadBalancer frontends keep only backends on this node.
- A frontend with no backends is kept (no_endpoints) so the datapath refuses at once.
- sessionAffinity ClientIP: affinity_timeout = timeoutSeconds (default 10800), else 0.
- algorithm: "random" or "maglev" (annotation service.cilium.io/lb-algorithm, as Cilium names
  it, else the caller's default); the datapath builds the Maglev table from backend_names().
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flowscope.controllers.endpointslices import SERVICE_NAME_LABEL, resolve_ports

FrontendKind = Literal["ClusterIP", "NodePort", "LoadBalancer"]
Algorithm = Literal["random", "maglev"]
NODE_ANY = "0.0.0.0"  # a NodePort frontend's address: every address of the node
DEFAULT_AFFINITY_TIMEOUT = 10800
ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"
ALGORITHMS: tuple[Algorithm, ...] = ("random", "maglev")


@dataclass(frozen=True, order=True)
class Backend:
    ip: str
    port: int
    node: str | None = None  # the endpoint's nodeName
    pod: str | None = None  # "namespace/name" of the endpoint's targetRef
    terminating: bool = False  # chosen only because no endpoint was ready

    @property
    def name(self) -> str:
        """A stable name, e.g. for Maglev: "10.1.0.5:8080"."""
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, order=True)
class FrontendKey:
    address: str  # IPv4; NODE_ANY for NodePort
    port: int
    protocol: str  # TCP | UDP | SCTP
    kind: FrontendKind

    def __str__(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Frontend:
    key: FrontendKey
    service: str  # "namespace/name"
    port_name: str  # the service port's name ("" when unnamed)
    backends: tuple[Backend, ...]  # sorted; already filtered by readiness and traffic policy
    affinity_timeout: int = 0  # seconds; 0: no session affinity
    local_only: bool = False  # a Local traffic policy applied to this frontend
    algorithm: Algorithm = "random"

    @property
    def no_endpoints(self) -> bool:
        return not self.backends

    def backend_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.backends)


@dataclass(frozen=True)
class Plan:
    frontends: tuple[Frontend, ...]  # sorted by key, keys unique

    def by_key(self) -> dict[FrontendKey, Frontend]:
        return {f.key: f for f in self.frontends}

    def for_service(self, service: str) -> tuple[Frontend, ...]:
        return tuple(f for f in self.frontends if f.service == service)


@dataclass(frozen=True)
class PlanDiff:
    upsert: tuple[Frontend, ...]  # new frontends, or changed in backends or any setting
    delete: tuple[FrontendKey, ...]  # frontends that are no more

    def __bool__(self) -> bool:
        return bool(self.upsert or self.delete)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _ref(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def _ready(ep: Mapping[str, Any]) -> bool:
    return (ep.get("conditions") or {}).get("ready") is not False


def _serving_terminating(ep: Mapping[str, Any]) -> bool:
    cond = ep.get("conditions") or {}
    return bool(cond.get("serving")) and bool(cond.get("terminating"))


def _slice_port(slice_: Mapping[str, Any], name: str, protocol: str) -> int | None:
    for p in slice_.get("ports") or ():
        if (p.get("name") or "") == name and (p.get("protocol") or "TCP") == protocol:
            return p.get("port")
    return None


def _backend_port(
    service: Mapping[str, Any],
    sport: Mapping[str, Any],
    slice_: Mapping[str, Any],
    ep: Mapping[str, Any],
    pods: Mapping[str, Mapping[str, Any]],
) -> int | None:
    name, protocol = sport.get("name") or "", sport.get("protocol") or "TCP"
    number = _slice_port(slice_, name, protocol)
    if number is not None:
        return number
    ref = ep.get("targetRef") or {}
    pod = pods.get(f"{ref.get('namespace') or 'default'}/{ref.get('name')}")
    if pod is not None:
        for p in resolve_ports(dict(service), dict(pod)):
            if p["name"] == name and p["protocol"] == protocol:
                return p["port"]
        return None
    target = sport.get("targetPort", sport.get("port"))
    return target if isinstance(target, int) else None


def _backends(
    service: Mapping[str, Any],
    sport: Mapping[str, Any],
    slices: Iterable[Mapping[str, Any]],
    pods: Mapping[str, Mapping[str, Any]],
) -> tuple[Backend, ...]:
    ready: set[Backend] = set()
    fallback: set[Backend] = set()
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        for ep in s.get("endpoints") or ():
            port = _backend_port(service, sport, s, ep, pods)
            if port is None:
                continue  # this pod does not serve the named port
            ref = ep.get("targetRef") or {}
            pod = f"{ref.get('namespace') or 'default'}/{ref['name']}" if ref.get("name") else None
            for ip in ep.get("addresses") or ():
                if _ready(ep):
                    ready.add(Backend(ip, port, ep.get("nodeName"), pod))
                elif _serving_terminating(ep):
                    fallback.add(Backend(ip, port, ep.get("nodeName"), pod, terminating=True))
    return tuple(sorted(ready or fallback))


def _local(backends: tuple[Backend, ...], node: str | None) -> tuple[Backend, ...]:
    return tuple(b for b in backends if b.node == node)


def _algorithm(service: Mapping[str, Any], default: Algorithm) -> Algorithm:
    value = (_meta(service).get("annotations") or {}).get(ALGORITHM_ANNOTATION)
    return value if value in ALGORITHMS else default  # type: ignore[return-value]


def service_frontends(
    service: Mapping[str, Any],
    slices: Iterable[Mapping[str, Any]],
    node: str | None,
    *,
    pods: Mapping[str, Mapping[str, Any]] | None = None,
    default_algorithm: Algorithm = "random",
) -> list[Frontend]:
    """The frontends of one Service, given its EndpointSlices, as node `node` should hold them."""
    spec = service.get("spec") or {}
    slices = list(slices)
    stype = spec.get("type") or "ClusterIP"
    cluster_ip = spec.get("clusterIP")
    has_vip = bool(cluster_ip) and cluster_ip != "None"
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        client_ip = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        affinity = int(client_ip.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
    internal_local = spec.get("internalTrafficPolicy") == "Local"
    external_local = spec.get("externalTrafficPolicy") == "Local"
    external = stype in ("NodePort", "LoadBalancer")
    ingress = [
        i["ip"]
        for i in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
        if i.get("ip")
    ]
    algorithm = _algorithm(service, default_algorithm)
    svc = _ref(service)
    out: list[Frontend] = []
    for sport in spec.get("ports") or ():
        protocol = sport.get("protocol") or "TCP"
        all_backends = _backends(service, sport, slices, pods or {})

        def frontend(
            address: str,
            number: int,
            kind: FrontendKind,
            local: bool,
            sport: Mapping[str, Any] = sport,
            protocol: str = protocol,
            all_backends: tuple[Backend, ...] = all_backends,
        ) -> Frontend:
            return Frontend(
                FrontendKey(address, number, protocol, kind),
                svc,
                sport.get("name") or "",
                _local(all_backends, node) if local else all_backends,
                affinity,
                local,
                algorithm,
            )

        if has_vip:
            out.append(frontend(cluster_ip, sport["port"], "ClusterIP", internal_local))
        if external and sport.get("nodePort"):
            out.append(frontend(NODE_ANY, sport["nodePort"], "NodePort", external_local))
        if stype == "LoadBalancer":
            for ip in ingress:
                out.append(frontend(ip, sport["port"], "LoadBalancer", external_local))
    return out


def plan(
    services: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    node: str | None,
    *,
    pods: Iterable[Mapping[str, Any]] = (),
    default_algorithm: Algorithm = "random",
) -> Plan:
    """The frontends of every Service for node `node` (the node agent's own node name).

    `slices` are matched to their Service by the kubernetes.io/service-name label; `pods` are
    needed only for slices that do not carry resolved ports (not the ones our controller writes).
    Two services claiming one frontend (a ClusterIP requested twice cannot happen through the
    store; a LoadBalancer ingress IP could): the first by service name wins.
    """
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for s in slices:
        owner = (_meta(s).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            ns = _meta(s).get("namespace") or "default"
            by_service.setdefault(f"{ns}/{owner}", []).append(s)
    pods_by_ref = {_ref(p): p for p in pods}
    frontends: dict[FrontendKey, Frontend] = {}
    for svc in sorted(services, key=_ref):
        for f in service_frontends(
            svc,
            by_service.get(_ref(svc), ()),
            node,
            pods=pods_by_ref,
            default_algorithm=default_algorithm,
        ):
            frontends.setdefault(f.key, f)
    return Plan(tuple(frontends[k] for k in sorted(frontends)))


def diff(old: Plan, new: Plan) -> PlanDiff:
    """What to write to go from `old` to `new`: frontends to upsert (new or changed in any
    way) and keys to delete. Applying upserts before deletes never leaves a live key empty."""
    before, after = old.by_key(), new.by_key()
    upsert = tuple(f for k, f in after.items() if before.get(k) != f)
    delete = tuple(k for k in before if k not in after)
    return PlanDiff(upsert, delete)
