"""Keep one node's datapath maps equal to what the cluster's state asks for.

Inputs, each a PrefixMirror of the store (or the allocator's watch): namespaces, pods,
NetworkPolicies, CiliumNetworkPolicies, the ipcache records every agent publishes for its pods,
identities, and the `applied` marks of the other agents; and the node's DNS cache (what DNS
answered: the addresses toFQDNs selectors stand for, dataplane.fqdn). Outputs, through the
datapath's map modules: the ipcache, each local endpoint's policy, and the endpoint map
(identity, IP, audit mode).

A reconcile recomputes everything from the mirrors (pure functions: dataplane.policy.compiler,
dataplane.identity.ipcache) and writes only the differences. Changes are coalesced: however many
arrive while a reconcile runs, one more follows it.

Two orderings carry the issue's promises:
- A new endpoint: its programs are attached while its veth is still down (host_link_created;
  with no endpoint entry they drop everything), and its identity, ipcache entry, policy and
  endpoint entry are written before CNI ADD returns (endpoint_added). Then the ADD waits, for a
  bounded time, until every other live agent has applied the ipcache record of the new pod, so
  that the pod's first packet to any peer meets a peer that knows who it is.
- A restarted agent reads what its maps hold before writing anything, and writes nothing until
  every mirror has loaded: it never passes through a state with fewer rules than the cluster's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Generic, Protocol, TypeVar

from dataplane.agent import ipcache_records
from dataplane.agent.ipcache_records import IPRecord
from dataplane.endpoint.endpoint import GATEWAY, Endpoint
from dataplane.endpoint.registry import EndpointRegistry
from dataplane.fqdn.cache import DNSCache
from dataplane.identity.allocator import IdentityAllocator
from dataplane.identity.ipcache import IPCacheEntry, PodAddress, diff_ipcache, plan_ipcache
from dataplane.identity.model import RESERVED_IDENTITIES, Identity, Labels, Reserved
from dataplane.policy.cnp import CNP, CNPError, fqdn_selectors, parse_cnp, to_policy
from dataplane.policy.compiler import (
    CompiledPolicy,
    Compiler,
    PodInfo,
    Policy,
    RuleRef,
    namespace_labels,
    pod_info,
    required_prefixes,
    security_labels,
)
from dataplane.policy.entry import EndpointPolicy
from flowscope.apis import kinds
from flowscope.apis.owners import workload_of
from flowscope.clusterinfo import ClusterInfo
from flowscope.errors import FlowscopeError
from flowscope.store.kv import KV
from flowscope.store.mirror import PrefixMirror, json_value
from flowscope.supervise import on_change, run_together

log = logging.getLogger(__name__)
T = TypeVar("T")

AUDIT_ANNOTATION = "policy.flowscope.io/audit-mode"
APPLIED_PREFIX = "/flowscope/agents/"
# How long CNI ADD waits for the other agents to learn a new pod's identity. Bounded: an agent
# that is down must not stop pods from starting (its node's pods cannot be reached meanwhile
# only if a policy there selects the new pod's identity).
PROPAGATION_TIMEOUT = 2.0
STORE_CONCURRENCY = 32  # store requests in flight at once for a batch (CIDR identities)
SLOW_RECONCILE_MS = 200.0  # longer reconciles are logged
GATEWAY_PREFIX = IPv4Network(f"{GATEWAY}/32")


class DatapathMaps(Protocol):
    """What enforcement needs of the node's datapath (probes.datapath.Datapath provides it)."""

    async def attach_endpoint(self, host_ifname: str) -> None: ...
    def ipcache_entries(self) -> dict[IPv4Network, IPCacheEntry]: ...
    def ipcache_update(self, upserts: Mapping[IPv4Network, IPCacheEntry]) -> None: ...
    def ipcache_delete(self, prefixes: list[IPv4Network]) -> None: ...
    def policy_get(self, endpoint_id: int) -> EndpointPolicy | None: ...
    def policy_set(self, endpoint_id: int, policy: EndpointPolicy) -> None: ...
    def policy_delete(self, endpoint_id: int) -> None: ...
    def endpoint_set(
        self, ifindex: int, endpoint_id: int, identity: int, ip: IPv4Address, audit: bool
    ) -> None: ...
    def endpoint_delete(self, ifindex: int) -> None: ...


@dataclass(frozen=True)
class LocalEndpoint:
    endpoint: Endpoint
    identity: Identity

    @property
    def pod_key(self) -> tuple[str, str]:
        return (self.endpoint.pod_namespace, self.endpoint.pod_name)

    @property
    def id(self) -> int:
        """The endpoint id: its host veth's ifindex, unique on the node."""
        return self.endpoint.host_ifindex


def _applied(_key: str, value: bytes) -> int | None:
    try:
        return int(json.loads(value)["revision"])
    except (ValueError, KeyError, TypeError):
        return None


class PerObject(Generic[T]):
    """What is derived from each object of a mirror, derived again only for objects that
    changed: a mirror decodes a new object for every change, so identity tells."""

    def __init__(self, derive: Callable[[Any], T]) -> None:
        self._derive = derive
        self._cache: dict[str, tuple[Any, T]] = {}

    def values(self, items: Mapping[str, Any]) -> list[T]:
        cache = {}
        for key, obj in items.items():
            hit = self._cache.get(key)
            cache[key] = hit if hit is not None and hit[0] is obj else (obj, self._derive(obj))
        self._cache = cache
        return [derived for _, derived in cache.values()]


class Enforcement:
    def __init__(
        self,
        info: ClusterInfo,
        node: str,
        kv: KV,
        datapath: DatapathMaps,
        allocator: IdentityAllocator,
    ) -> None:
        self.info = info
        self.node = node
        self.kv = kv
        self.datapath = datapath
        self.allocator = allocator
        self._changed = asyncio.Event()
        mirror = self._mirror
        self.namespaces = mirror(kinds.get("Namespace").prefix(), json_value)
        self.pods = mirror(kinds.get("Pod").prefix(), json_value)
        self.policies = mirror(kinds.get("NetworkPolicy").prefix(), json_value)
        self.cnp_objects = mirror(kinds.get("CiliumNetworkPolicy").prefix(), json_value)
        self.dns_cache = DNSCache()
        self._cnps = PerObject(_parse_cnp)
        self._cnp_policies: dict[int, tuple[tuple, Policy]] = {}  # id(CNP) -> (addresses, policy)
        self._fqdn_applied = -1  # the DNS cache version the maps hold
        self._fqdn_waiters: set[asyncio.Event] = set()
        # the cluster DNS address and who answers there (the node's DNS proxy, on kube-dns's
        # behalf): pods' policy must see kube-dns's identity at that address
        self.dns_service_ip: IPv4Address | None = None
        self.records = mirror(ipcache_records.PREFIX, ipcache_records.decode)
        self._mark_waiters: set[asyncio.Event] = set()
        self.applied_marks = PrefixMirror(kv, APPLIED_PREFIX, _applied, self._marks_changed)
        self.identities: dict[int, Identity] = {}
        self.local: dict[str, LocalEndpoint] = {}  # Endpoint.key -> ...
        self.cidr_identities: dict[IPv4Network, int] = {}
        self.compiler = Compiler()  # keeps its caches between reconciles
        self._pod_infos = PerObject(pod_info)
        self._policy_prefixes = PerObject(lambda obj: required_prefixes([obj]))
        self._cidr_version = 0
        self._ipcache_inputs: tuple | None = None
        self.compiled: CompiledPolicy | None = None
        self._ipcache: dict[IPv4Network, IPCacheEntry] = {}
        self._policies: dict[int, EndpointPolicy] = {}
        self._endpoint_rows: dict[int, tuple] = {}
        self._lock = asyncio.Lock()
        self.problems: dict[str, str] = {}  # what could not be programmed -> why
        self._applied_rev = 0
        self._identity_rev = 0
        self.reconciles = 0
        self._local_changes = 0  # endpoints added or forgotten, for the directory's version
        self.last_reconcile_ms = 0.0

    def _mirror(self, prefix: str, decode: Callable[[str, bytes], Any]) -> PrefixMirror:
        return PrefixMirror(self.kv, prefix, decode, self._changed.set)

    def _mirrors(self) -> tuple[PrefixMirror, ...]:
        return (
            self.namespaces,
            self.pods,
            self.policies,
            self.cnp_objects,
            self.records,
            self.applied_marks,
        )

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every input, adopt what the maps hold, restore local endpoints, reconcile once."""
        for m in self._mirrors():
            await m.load()
        self.identities = await self.allocator.all()
        _, self._identity_rev = await self.kv.range("/flowscope/identities/id/")
        self._ipcache = await asyncio.to_thread(self.datapath.ipcache_entries)
        for ep in await EndpointRegistry(self.kv, self.node).list():
            pod = self._pod(ep)
            labels = (
                security_labels(pod, namespace_labels(self.namespaces.items.values()))
                if pod
                else None
            )
            if labels is None:
                # the pod object is gone (a DEL is on its way): keep what its record says
                record = self.records.items.get(str(ep.ip))
                identity = self.identities.get(record.identity) if record else None
                if identity is None:
                    continue
                identity = await self.allocator.allocate(identity.labels)
            else:
                identity = await self.allocator.allocate(labels)
            self.local[ep.key] = LocalEndpoint(ep, identity)
            current = self.datapath.policy_get(ep.host_ifindex)
            if current is not None:
                self._policies[ep.host_ifindex] = current
        await self.reconcile()
        # the programs of this run replace the previous run's on every veth, atomically, on the
        # same maps: no packet meets an unfiltered veth or emptier maps in between
        for local in self.local.values():
            try:
                await self.datapath.attach_endpoint(local.endpoint.host_ifname)
            except FlowscopeError as e:
                log.warning("endpoint %s: cannot re-attach: %s", local.endpoint.key, e)

    async def run(self) -> None:
        """Follow every input and reconcile on change, until cancelled."""
        await run_together(
            {
                **{f"mirror {m.prefix}": m.run() for m in self._mirrors()},
                "identities": self._follow_identities(),
                "reconcile": on_change(self._changed, self.reconcile),
            },
            "enforcement",
        )

    async def _follow_identities(self) -> None:
        async for event in self.allocator.watch(self._identity_rev + 1):
            if event.kind == "added":
                self.identities[event.identity.id] = event.identity
            else:
                self.identities.pop(event.identity.id, None)
            self._changed.set()

    # -- CNI hooks ------------------------------------------------------------------------------
    async def host_link_created(self, host_ifname: str) -> None:
        await self.datapath.attach_endpoint(host_ifname)

    async def endpoint_added(self, endpoint: Endpoint) -> None:
        pod, pod_obj = await self._fetch_pod(endpoint)
        ns_labels = namespace_labels(self.namespaces.items.values())
        identity = await self.allocator.allocate(security_labels(pod, ns_labels))
        self.identities[identity.id] = identity
        record = self._record(endpoint, identity, pod_obj)
        revision = await ipcache_records.publish(self.kv, record)
        async with self._lock:
            self.local[endpoint.key] = LocalEndpoint(endpoint, identity)
            self._local_changes += 1
            await self._apply(extra_pods={pod.key: pod})
            failed = [
                self.problems[what]
                for what in (f"policy of {endpoint.key}", f"endpoint {endpoint.key}")
                if what in self.problems
            ]
            if failed:  # CNI ADD fails and rolls back: a pod never runs half-programmed
                self._forget(endpoint)
                await self.allocator.release(identity.id)
                await ipcache_records.withdraw(self.kv, endpoint.ip)
                raise FlowscopeError(f"endpoint {endpoint.key}: {'; '.join(failed)}")
        await self._wait_propagated(revision)

    async def endpoint_removed(self, endpoint: Endpoint) -> None:
        async with self._lock:
            local = self._forget(endpoint)
        record = self.records.items.get(str(endpoint.ip))
        if record is None or record.node == self.node:
            await ipcache_records.withdraw(self.kv, endpoint.ip)
        if local is not None:
            await self.allocator.release(local.identity.id)

    def _forget(self, endpoint: Endpoint) -> LocalEndpoint | None:
        """Everything this node holds for an endpoint, gone: a later veth may reuse its ifindex."""
        local = self.local.pop(endpoint.key, None)
        self._local_changes += 1
        self.datapath.endpoint_delete(endpoint.host_ifindex)
        self._endpoint_rows.pop(endpoint.host_ifindex, None)
        self.datapath.policy_delete(endpoint.host_ifindex)
        self._policies.pop(endpoint.host_ifindex, None)
        for what in (f"policy of {endpoint.key}", f"endpoint {endpoint.key}"):
            self.problems.pop(what, None)
        return local

    # -- reconciling ----------------------------------------------------------------------------
    async def reconcile(self) -> None:
        async with self._lock:
            await self._apply()

    async def _apply(self, extra_pods: Mapping[tuple[str, str], PodInfo] | None = None) -> None:
        started = time.perf_counter()
        records_rev = self.records.revision
        fqdn_version = self.dns_cache.version
        ns_labels = namespace_labels(self.namespaces.items.values())
        pods = {p.key: p for p in self._pod_infos.values(self.pods.items)}
        pods.update(extra_pods or {})
        policies = self._all_policies()
        await self._relabel_local(pods, ns_labels)
        await self._sync_cidr_identities(policies)
        await self._sync_ipcache()
        self._sync_policies(policies, pods, ns_labels)
        self._sync_endpoints()
        self._fqdn_applied = fqdn_version
        for waiter in self._fqdn_waiters:
            waiter.set()
        self.reconciles += 1
        self.last_reconcile_ms = (time.perf_counter() - started) * 1000
        if self.last_reconcile_ms > SLOW_RECONCILE_MS:
            log.info(
                "reconcile took %.0f ms (%d policies, %d pods, %d local endpoints)",
                self.last_reconcile_ms,
                len(self.policies.items),
                len(pods),
                len(self.local),
            )
        if records_rev > self._applied_rev:
            self._applied_rev = records_rev
            await self.kv.put(
                f"{APPLIED_PREFIX}{self.node}", json.dumps({"revision": records_rev}).encode()
            )

    async def _relabel_local(self, pods: Mapping, ns_labels: Mapping) -> None:
        """A local pod (or its namespace) relabelled: a new identity, record and release."""
        for key, local in list(self.local.items()):
            pod = pods.get(local.pod_key)
            if pod is None:
                continue
            labels = security_labels(pod, ns_labels)
            if labels == local.identity.labels:
                continue
            identity = await self.allocator.allocate(labels)
            self.identities[identity.id] = identity
            await ipcache_records.publish(self.kv, self._record(local.endpoint, identity))
            self.local[key] = LocalEndpoint(local.endpoint, identity)
            await self.allocator.release(local.identity.id)
            log.info(
                "%s/%s relabelled: identity %d -> %d",
                *local.pod_key,
                local.identity.id,
                identity.id,
            )

    def cnps(self) -> list[CNP]:
        """The CiliumNetworkPolicies, parsed (a stored one that does not parse is skipped)."""
        return [c for c in self._cnps.values(self.cnp_objects.items) if c is not None]

    def _all_policies(self) -> list[Any]:
        """NetworkPolicies (stored objects) and CNPs (as compiler Policies, their FQDN peers
        being the addresses the DNS cache holds now). A CNP whose addresses did not change keeps
        its Policy object, so the compiler's caches keep hitting."""
        out: list[Any] = list(self.policies.items.values())
        kept: dict[int, tuple[tuple, Policy]] = {}
        for cnp in self.cnps():
            addresses = tuple(
                sorted(str(ip) for s in fqdn_selectors([cnp]) for ip in self.dns_cache.ips_for(s))
            )
            hit = self._cnp_policies.get(id(cnp))
            if hit is None or hit[0] != addresses:
                hit = (addresses, to_policy(cnp, self.dns_cache.ips_for))
            kept[id(cnp)] = hit
            out.append(hit[1])
        self._cnp_policies = kept
        return out

    def fqdn_learned(self) -> None:
        """The DNS cache grew with addresses a toFQDNs selector wants: reconcile."""
        self._changed.set()

    async def wait_fqdn_applied(self, version: int, timeout: float) -> bool:
        """Until the maps hold DNS cache version `version` (True), or `timeout` (False)."""
        deadline = time.monotonic() + timeout
        event = asyncio.Event()
        self._fqdn_waiters.add(event)
        try:
            while self._fqdn_applied < version:
                event.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
            return True
        finally:
            self._fqdn_waiters.discard(event)

    def expire_fqdns(self, now: float) -> None:
        if self.dns_cache.expire(now):
            self._changed.set()

    async def _sync_cidr_identities(self, policies: list[Any]) -> None:
        wanted: set[IPv4Network] = set().union(*self._policy_prefixes.values(self.policies.items))
        wanted |= required_prefixes(p for p in policies if isinstance(p, Policy))
        for what in [w for w in self.problems if w.startswith("CIDR identity of ")]:
            if IPv4Network(what.removeprefix("CIDR identity of ")) not in wanted:
                self.problems.pop(what)  # no policy needs it any more
        if wanted == self.cidr_identities.keys():
            return
        self._cidr_version += 1
        limit = asyncio.Semaphore(STORE_CONCURRENCY)

        async def allocate(prefix: IPv4Network) -> None:
            # a prefix left without an identity (the CIDR range is full) is reported and tried
            # again on the next reconcile; meanwhile an ipBlock cidr lacking one selects nothing,
            # and an except lacking one carves no hole out of its cidr
            with self._reporting(f"CIDR identity of {prefix}"):
                async with limit:
                    identity = await self.allocator.allocate_cidr(prefix)
                self.identities[identity.id] = identity
                self.cidr_identities[prefix] = identity.id

        async def release(prefix: IPv4Network) -> None:
            async with limit:
                await self.allocator.release(self.cidr_identities.pop(prefix))

        # a thousand ipBlocks are a thousand store round trips: in parallel, not in a row
        await asyncio.gather(*map(allocate, wanted - self.cidr_identities.keys()))
        await asyncio.gather(*map(release, self.cidr_identities.keys() - wanted))

    async def _sync_ipcache(self) -> None:
        inputs = (
            self.records.version,
            self._cidr_version,
            frozenset((local.endpoint.ip, local.identity.id) for local in self.local.values()),
            self._dns_identity(),
        )
        if inputs == self._ipcache_inputs:
            return  # a policy change: the ipcache stays what it is
        complete = True  # every record's identity known: the plan holds until an input changes
        pods: dict[IPv4Address, PodAddress] = {}
        for record in self.records.items.values():
            if record.identity not in self.identities:
                found = await self.allocator.lookup(record.identity)
                if found is None:
                    complete = False
                    continue  # the identity is being deleted: the record will follow
                self.identities[found.id] = found
            pods[record.ip] = PodAddress(record.ip, record.identity, record.host_ip)
        for local in self.local.values():  # ours are authoritative, even before the watch
            ep = local.endpoint
            pods[ep.ip] = PodAddress(ep.ip, local.identity.id, self.info.node(self.node).ip)
        nodes = {n.name: n.ip for n in self.info.nodes}
        pods = {ip: p for ip, p in pods.items() if ip not in set(nodes.values())}
        plan = plan_ipcache(pods.values(), nodes, self.cidr_identities, self.node)
        # the pods' gateway address: what the node's own traffic to a pod may carry as source
        plan[GATEWAY_PREFIX] = IPCacheEntry(int(Reserved.HOST), 0, self.info.node(self.node).ip)
        dns_identity = inputs[-1]
        if self.dns_service_ip is not None and dns_identity is not None:
            node_ip = self.info.node(self.node).ip
            plan[IPv4Network(f"{self.dns_service_ip}/32")] = IPCacheEntry(dns_identity, 0, node_ip)
        upserts, deletes = diff_ipcache(self._ipcache, plan)
        with self._reporting("ipcache"):
            if upserts:
                self.datapath.ipcache_update(upserts)
            if deletes:
                self.datapath.ipcache_delete(deletes)
            self._ipcache = plan  # only once written: a failed write is retried next round
            self._ipcache_inputs = inputs if complete else None

    def _sync_policies(self, policies: list[Any], pods: Mapping, ns_labels: Mapping) -> None:
        by_labels: dict[Labels, int] = {
            i.labels: i.id for i in self.identities.values() if not i.is_reserved and not i.is_cidr
        }
        local_keys = {local.pod_key for local in self.local.values()}
        self.compiled = self.compiler.compile(
            policies,
            pods.values(),
            ns_labels,
            by_labels,
            self.cidr_identities,
            local=lambda p: p.key in local_keys,
        )
        for local in self.local.values():
            policy = self.compiled.endpoints.get(local.pod_key)
            if policy is None:
                continue  # the pod object is gone: keep the last policy until CNI DEL
            current = self._policies.get(local.id)
            if current is not policy and current != policy:
                # on failure the endpoint keeps its previous, whole policy (the swap is atomic)
                with self._reporting(f"policy of {local.endpoint.key}"):
                    self.datapath.policy_set(local.id, policy)
                    self._policies[local.id] = policy

    def _sync_endpoints(self) -> None:
        for local in self.local.values():
            ep = local.endpoint
            row = (local.id, local.identity.id, ep.ip, self._audit(ep.pod_namespace))
            if self._endpoint_rows.get(ep.host_ifindex) != row:
                with self._reporting(f"endpoint {ep.key}"):
                    self.datapath.endpoint_set(ep.host_ifindex, *row)
                    self._endpoint_rows[ep.host_ifindex] = row

    @contextlib.contextmanager
    def _reporting(self, what: str) -> Iterator[None]:
        """A map write that fails (a full map, above all) is logged and kept in `problems`,
        never silent; the next reconcile tries again, and a success clears it."""
        try:
            yield
        except FlowscopeError as e:
            if self.problems.get(what) != str(e):
                log.error("cannot program %s: %s%s", what, e, f" ({e.hint})" if e.hint else "")
            self.problems[what] = f"{e}" + (f" ({e.hint})" if e.hint else "")
        else:
            self.problems.pop(what, None)

    def _dns_identity(self) -> int | None:
        """The identity of the cluster DNS pods (kube-system, k8s-app=kube-dns), if any runs."""
        for record in self.records.items.values():
            pod = self.pods.items.get(f"{record.namespace}/{record.pod}")
            labels = ((pod or {}).get("metadata") or {}).get("labels") or {}
            if record.namespace == "kube-system" and labels.get("k8s-app") == "kube-dns":
                return record.identity
        return None

    # -- the directory the collector reads (collector.enrich.Directory) ------------------------
    @property
    def version(self) -> tuple[int, int, int, int, int]:
        """Changes whenever a name the directory gives may have changed."""
        return (
            self.reconciles,
            self.records.version,
            len(self.identities),
            self._local_changes,
            self.dns_cache.version,  # the names addresses are known by
        )

    def local_at(self, ip: str) -> LocalEndpoint | None:
        """This node's endpoint with that address, if any."""
        for local in self.local.values():
            if str(local.endpoint.ip) == ip:
                return local
        return None

    def record(self, ip: str) -> IPRecord | None:
        local = self.local_at(ip)  # ours first: the record mirror may lag a new pod
        if local is not None:
            return self._record(local.endpoint, local.identity)
        return self.records.items.get(ip)

    def identity(self, identity_id: int) -> Identity | None:
        return self.identities.get(identity_id) or RESERVED_IDENTITIES.get(identity_id)

    def has_ifindex(self, ifindex: int) -> bool:
        """Whether a local endpoint's host veth has this ifindex (in the node's namespace)."""
        return ifindex in self._endpoint_rows

    def rule(self, cookie: int) -> RuleRef | None:
        return self.compiled.cookies.get(cookie) if self.compiled else None

    # -- helpers --------------------------------------------------------------------------------
    def _audit(self, namespace: str) -> bool:
        if self.info.policy_audit_mode:
            return True
        ns = self.namespaces.items.get(namespace) or {}
        value = ((ns.get("metadata") or {}).get("annotations") or {}).get(AUDIT_ANNOTATION, "")
        return value.lower() in ("true", "enabled")

    def _pod(self, ep: Endpoint) -> PodInfo | None:
        obj = self.pods.items.get(f"{ep.pod_namespace}/{ep.pod_name}")
        return pod_info(obj) if obj else None

    async def _fetch_pod(self, ep: Endpoint) -> tuple[PodInfo, dict[str, Any] | None]:
        """The pod behind a new endpoint (and its object), read from the store itself (the
        mirror may lag)."""
        kv = await self.kv.get(kinds.get("Pod").key(ep.pod_namespace, ep.pod_name))
        if kv is None:
            # a runtime without the Kubernetes args: the pod is known by namespace only
            info = PodInfo(namespace=ep.pod_namespace or "default", name=ep.pod_name, ip=ep.ip)
            return info, None
        obj = json.loads(kv.value)
        return pod_info(obj), obj

    def _record(
        self, ep: Endpoint, identity: Identity, pod: dict[str, Any] | None = None
    ) -> IPRecord:
        if pod is None:
            pod = self.pods.items.get(f"{ep.pod_namespace}/{ep.pod_name}")
        return IPRecord(
            ip=ep.ip,
            identity=identity.id,
            node=self.node,
            host_ip=self.info.node(self.node).ip,
            namespace=ep.pod_namespace,
            pod=ep.pod_name,
            workload=workload_of(pod) if pod else None,
        )

    async def _wait_propagated(self, revision: int) -> None:
        """Until every other agent that has applied anything has applied `revision`."""
        deadline = time.monotonic() + PROPAGATION_TIMEOUT
        changed = asyncio.Event()
        self._mark_waiters.add(changed)
        try:
            while True:
                changed.clear()  # before the check: a change after it wakes the wait below
                behind = [
                    node
                    for node, applied in self.applied_marks.items.items()
                    if node != self.node and applied < revision
                ]
                if not behind:
                    return
                if time.monotonic() > deadline:
                    log.warning(
                        "agents of %s have not applied ipcache revision %d after %.1fs",
                        ", ".join(behind),
                        revision,
                        PROPAGATION_TIMEOUT,
                    )
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
        finally:
            self._mark_waiters.discard(changed)

    def _marks_changed(self) -> None:
        for event in self._mark_waiters:
            event.set()


def _parse_cnp(obj: Mapping[str, Any]) -> CNP | None:
    try:
        return parse_cnp(obj)
    except CNPError as e:  # apply validates; an object written around it is skipped, loudly
        meta = obj.get("metadata") or {}
        log.error(
            "CiliumNetworkPolicy %s/%s ignored: %s", meta.get("namespace"), meta.get("name"), e
        )
        return None
