"""Cluster objects on the KV store, with the apiserver's write semantics.

- apply: validate everything first, then write every object in ONE transaction whose compares
  pin each key's revision, so an apply is all-or-nothing and never half-written; on a conflict
  (someone wrote meanwhile) it reads again and retries.
- objects are stored as JSON at Kind.key(); metadata.resourceVersion is never stored but filled
  in on read from the key's mod_revision, so it always says which version one is looking at.
- watch: informer semantics (list, then every change from the list's revision + 1: no gap).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from flowscope.apis import checks, fields, kinds, labels, schema, validation
from flowscope.apis.documents import Document, InvalidManifest, Problem
from flowscope.apis.kinds import Kind
from flowscope.apis.labels import Selector
from flowscope.apis.refs import ObjectRef
from flowscope.errors import FlowscopeError, NotFound
from flowscope.store.kv import KV, Compare, Delete, KeyValue, Put

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
# Allocation markers, CAS-safe: one key per block of 256 items (JSON {item: "ns/name"}), so that an
# apply of 10,000 services writes ~50 marker keys beside its objects and stays under etcd's
# --max-txn-ops (20000, counted per list: compares and puts), where one key per item would not.
_SERVICE_IPS = "/registry/serviceips/"  # blocks keyed by the block's first address
_NODE_PORTS = "/registry/servicenodeports/"  # blocks keyed by the block's first port number
_BLOCK = 256
NODE_PORT_RANGE = checks.NODE_PORT_RANGE
_NODE_PORT_TYPES = ("NodePort", "LoadBalancer")
_MAX_ATTEMPTS = 50  # a conflict means another writer won; read again and retry this many times

# Pod spec fields an update may change (the apiserver's list); everything else is immutable.
_POD_MUTABLE_CONTAINER_FIELDS = ("image",)
_POD_MUTABLE_SPEC_FIELDS = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")
_POD_IMMUTABLE_MESSAGE = (
    "pod updates may not change fields other than `spec.containers[*].image`, "
    "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
    "(only additions to existing tolerations), `spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)"
)

ResourceKind = str | Kind
# apps/v1 made the workloads' selectors immutable: a changed one would orphan the pods
_IMMUTABLE_SELECTOR = ("Deployment", "ReplicaSet")


@dataclass(frozen=True)
class ApplyResult:
    ref: ObjectRef
    action: Literal["created", "configured", "unchanged"]

    def __str__(self) -> str:
        return f"{qualified(self.ref)} {self.action}"  # kubectl: pod/web created


@dataclass(frozen=True)
class DeleteResult:
    ref: ObjectRef

    def __str__(self) -> str:
        return f'{self.ref.kind.lower()} "{self.ref.name}" deleted'  # kubectl: pod "web" deleted


@dataclass(frozen=True)
class ObjectEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    object: dict[str, Any]  # for DELETED: the last state seen
    revision: int


class Conflict(FlowscopeError):
    pass


def qualified(ref: ObjectRef) -> str:
    """kubectl's name of an object: pod/web, networkpolicy.networking.k8s.io/deny-all."""
    kind = kinds.get(ref.kind)
    prefix = f"{kind.singular}.{kind.group}" if kind.group else kind.singular
    return f"{prefix}/{ref.name}"


def not_found(kind: Kind, name: str) -> NotFound:
    # kubectl: Error from server (NotFound): pods "web" not found
    return NotFound(f'{kind.plural} "{name}" not found')


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kind(kind: ResourceKind) -> Kind:
    return kind if isinstance(kind, Kind) else kinds.lookup(kind)


def encode(obj: dict[str, Any]) -> bytes:
    stored = copy.deepcopy(obj)
    stored.get("metadata", {}).pop("resourceVersion", None)
    return json.dumps(stored, separators=(",", ":"), sort_keys=True).encode()


def decode(kv: KeyValue) -> dict[str, Any]:
    obj = json.loads(kv.value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
    return obj


def _without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    return out


def _pod_comparable_spec(spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    for f in _POD_MUTABLE_SPEC_FIELDS:
        out.pop(f, None)
    for key in ("containers", "initContainers"):
        for c in out.get(key) or ():
            for f in _POD_MUTABLE_CONTAINER_FIELDS:
                c.pop(f, None)
    return out


def merge_status(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s keys replace `old`'s; conditions merge by type (each writer owns its own types)."""
    out = dict(old or {})
    for key, value in new.items():
        if key == "conditions" and value is not None:
            merged = {c["type"]: c for c in out.get("conditions") or ()}
            for cond in value:
                merged[cond["type"]] = cond
            out["conditions"] = list(merged.values())
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The path of the first place `a` and `b` differ (".ports[0].containerPort"), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{path}.{key}")
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
        return None
    return None if a == b else path


class _Allocations:
    """One allocator's markers as read (items: an IP or a port number, as text; owner ns/name).

    `take`/`release` change the working copy; `write` adds a compare-and-put (or delete, once
    empty) of every changed block to the transaction, so allocation is all-or-nothing with the
    objects and a concurrent allocator's write makes the transaction fail and the apply retry.
    """

    def __init__(
        self, prefix: str, current: dict[str, KeyValue], block_of: Callable[[str], str]
    ) -> None:
        self.prefix = prefix
        self.block_of = block_of
        self.owners: dict[str, str] = {}
        self.revisions: dict[str, int] = {}
        self.dirty: set[str] = set()
        self._cursor = 0
        for key, kv in current.items():
            if key.startswith(prefix):
                block = key[len(prefix) :]
                self.revisions[block] = kv.mod_revision
                self.owners.update(json.loads(kv.value))

    def owner(self, item: str) -> str | None:
        return self.owners.get(item)

    def held_by(self, owner: str) -> set[str]:
        return {item for item, o in self.owners.items() if o == owner}

    def take(self, item: str, owner: str) -> None:
        if self.owners.get(item) != owner:
            self.owners[item] = owner
            self.dirty.add(self.block_of(item))

    def release(self, item: str, owner: str) -> None:
        if self.owners.get(item) == owner:
            del self.owners[item]
            self.dirty.add(self.block_of(item))

    def next_free(
        self,
        candidates: Sequence[int],
        render: Callable[[int], str] = str,
        also_taken: Iterable[str] = (),
    ) -> str | None:
        """The first free candidate at or after the cursor (candidates in order; one scan per
        plan however many services allocate, where a scan from the start each time was O(n^2)).
        `also_taken`: items the caller is about to take itself (ports requested by number)."""
        skip = set(also_taken)
        while self._cursor < len(candidates):
            item = render(candidates[self._cursor])
            self._cursor += 1
            if item not in self.owners and item not in skip:
                return item
        return None

    def write(self, compares: dict[str, int], ops: dict[str, Put | Delete]) -> None:
        blocks: dict[str, dict[str, str]] = {b: {} for b in self.dirty}
        for item, owner in self.owners.items():
            block = self.block_of(item)
            if block in blocks:
                blocks[block][item] = owner
        for block, entries in blocks.items():
            key = self.prefix + block
            compares[key] = self.revisions.get(block, 0)
            ops[key] = (
                Put(key, json.dumps(entries, sort_keys=True, separators=(",", ":")).encode())
                if entries
                else Delete(key)
            )


def _ip_block(ip: str) -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(ip)) & ~(_BLOCK - 1)))


def _port_block(port: str) -> str:
    return str(int(port) - int(port) % _BLOCK)


def _assign_node_ports(
    ref: ObjectRef, old: dict[str, Any] | None, new: dict[str, Any], allocated: _Allocations
) -> list[fields.FieldError]:
    """Give every port of a NodePort/LoadBalancer Service a nodePort, as the apiserver does.

    A requested nodePort is honoured if no other Service holds it (the apiserver allocates port
    numbers whatever the protocol); a port re-applied without one already got the one it had
    from _carry_over (matched by port and protocol, as kubectl apply's merge keeps it); ports
    of one Service with the same port number (53/TCP and 53/UDP) share one nodePort; anything
    no longer used is released, all of them when the type goes back to ClusterIP.
    """
    spec = new["spec"]
    owner = f"{ref.namespace}/{ref.name}"
    ports: list[dict[str, Any]] = spec.get("ports") or []
    held = allocated.held_by(owner)
    stype = spec.get("type") or "ClusterIP"
    if stype not in _NODE_PORT_TYPES:
        for p in ports:
            p.pop("nodePort", None)
        for item in held:
            allocated.release(item, owner)
        return []
    auto = not (stype == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is False)
    errs: list[fields.FieldError] = []
    requested = [str(p["nodePort"]) for p in ports if p.get("nodePort")]
    for i, p in enumerate(ports):
        node_port = p.get("nodePort")
        if node_port and allocated.owner(str(node_port)) not in (None, owner):
            errs.append(
                fields.invalid(
                    f"spec.ports[{i}].nodePort", node_port, "provided port is already allocated"
                )
            )
    if errs:
        return errs
    by_port: dict[int, int] = {p["port"]: p["nodePort"] for p in ports if p.get("nodePort")}
    for i, p in enumerate(ports):
        if p.get("nodePort") or not auto:
            continue
        if p.get("port") in by_port:
            p["nodePort"] = by_port[p["port"]]
        else:
            lo, hi = NODE_PORT_RANGE
            found = allocated.next_free(range(lo, hi + 1), also_taken=requested)
            if found is None:
                return [
                    fields.invalid(
                        f"spec.ports[{i}].nodePort",
                        0,
                        f"failed to allocate a nodePort: range {lo}-{hi} is full",
                    )
                ]
            p["nodePort"] = int(found)
        requested.append(str(p["nodePort"]))
        by_port.setdefault(p["port"], p["nodePort"])
    wanted = {str(p["nodePort"]) for p in ports if p.get("nodePort")}
    for item in held - wanted:
        allocated.release(item, owner)
    for item in wanted:
        allocated.take(item, owner)
    return []


def _allocations(current: dict[str, KeyValue]) -> tuple[_Allocations, _Allocations]:
    return (
        _Allocations(_SERVICE_IPS, current, _ip_block),
        _Allocations(_NODE_PORTS, current, _port_block),
    )


@dataclass
class _Plan:
    compares: dict[str, int]
    ops: dict[str, Put | Delete]
    results: list[ApplyResult]
    problems: list[Problem]


class ObjectStore:
    def __init__(self, kv: KV, *, service_cidr: ipaddress.IPv4Network | str | None = None) -> None:
        self.kv = kv
        self.service_cidr = ipaddress.IPv4Network(service_cidr) if service_cidr else None

    # --- reading ---

    async def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict | None:
        """The object, or None when there is none."""
        k = _kind(kind)
        kv = await self.kv.get(k.key(namespace or DEFAULT_NAMESPACE, name))
        return decode(kv) if kv is not None else None

    async def list_with_revision(
        self, kind: ResourceKind, namespace: str | None = None
    ) -> tuple[list[dict], int]:
        """All objects of `kind` (in `namespace`; None: all), sorted, and the revision read at."""
        k = _kind(kind)
        items, rev = await self.kv.range(k.prefix(namespace))
        return [decode(kv) for kv in items], rev

    async def list(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        label_selector: Selector | str | None = None,
    ) -> list[dict]:
        objs, _ = await self.list_with_revision(kind, namespace)
        if label_selector is None:
            return objs
        sel = labels.parse(label_selector) if isinstance(label_selector, str) else label_selector
        return [o for o in objs if sel.matches((o.get("metadata") or {}).get("labels"))]

    async def namespace_exists(self, name: str) -> bool:
        if name == DEFAULT_NAMESPACE:
            return True
        return await self.kv.get(kinds.get("Namespace").key(None, name)) is not None

    # --- apply ---

    async def ensure_default_namespace(self) -> None:
        """Create Namespace "default" if absent (the lab calls it once; it is implied anyway)."""
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEFAULT_NAMESPACE}}
        if await self.get("Namespace", None, DEFAULT_NAMESPACE) is None:
            await self.apply([ns])

    async def apply(
        self,
        objs: Sequence[Document | dict[str, Any]],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        enforce_namespace: bool = False,
        internal: bool = False,
    ) -> list[ApplyResult]:
        """Create or update every object, all or nothing; InvalidManifest lists every problem.

        `namespace` is the namespace of objects that name none (kubectl's -n); with
        `enforce_namespace`, an object naming another namespace is an error (as with -n).
        `internal`: a controller writes derived kinds (EndpointSlices) users may not apply.
        """
        docs = [
            o if isinstance(o, Document) else Document("<input>", i + 1, o)
            for i, o in enumerate(objs)
        ]
        checked = validation.check(
            docs, namespace, enforce_namespace=enforce_namespace, internal=internal
        )
        for _ in range(_MAX_ATTEMPTS):
            plan = await self._plan(checked)
            if plan.problems:
                raise InvalidManifest(
                    plan.problems,
                    hint="fix the manifest and run the command again; nothing was changed",
                )
            if not plan.ops:
                return plan.results
            compares = [Compare(k, rev) for k, rev in plan.compares.items()]
            if await self.kv.txn(compares, list(plan.ops.values())):
                return plan.results
            log.debug("apply: conflict with a concurrent writer, retrying")
        raise Conflict(
            "the objects kept changing while applying them",
            hint="another client is writing the same objects; try again",
        )

    async def _read(self, prefixes: Iterable[str]) -> dict[str, KeyValue]:
        current: dict[str, KeyValue] = {}
        for prefix in sorted(set(prefixes)):
            items, _ = await self.kv.range(prefix)
            current.update((kv.key, kv) for kv in items)
        return current

    async def _plan(self, checked: Sequence[validation.Checked]) -> _Plan:
        ns_kind = kinds.get("Namespace")
        prefixes = {c.kind.prefix() for c in checked} | {ns_kind.prefix()}
        if any(c.kind.kind == "Service" for c in checked):
            prefixes |= {_SERVICE_IPS, _NODE_PORTS}
        current = await self._read(prefixes)
        plan = _Plan({}, {}, [], [])
        created_namespaces: set[str] = set()
        cluster_ips, node_ports = _allocations(current)
        stamp = now()

        for c in checked:
            ref, kind = c.ref, c.kind
            where = c.where()
            key = kind.key(ref.namespace, ref.name)
            old_kv = current.get(key)
            old = decode(old_kv) if old_kv else None

            if kind.namespaced:
                ns_key = ns_kind.key(None, ref.namespace or "")
                ns_kv = current.get(ns_key)
                if ns_kv is not None:
                    plan.compares[ns_key] = ns_kv.mod_revision  # a concurrent delete aborts us
                elif ref.namespace != DEFAULT_NAMESPACE and ref.namespace not in created_namespaces:
                    plan.problems.append(Problem(where, f'namespaces "{ref.namespace}" not found'))
                    continue
            if kind.kind == "Namespace":
                created_namespaces.add(ref.name)

            if c.resource_version is not None:
                if old is None:
                    plan.problems.append(
                        Problem(where, "resourceVersion should not be set on objects to be created")
                    )
                    continue
                if c.resource_version != old["metadata"]["resourceVersion"]:
                    plan.problems.append(
                        Problem(
                            where,
                            f'Operation cannot be fulfilled on {kind.resource} "{ref.name}": the '
                            "object has been modified; please apply your changes to the latest "
                            "version and try again",
                        )
                    )
                    continue

            new = copy.deepcopy(c.obj)
            errs: list[fields.FieldError] = []
            if old is None:
                meta = new["metadata"]
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = stamp
                meta["generation"] = 1
                status = self._initial_status(kind)
                if status is not None:
                    new["status"] = status
            else:
                new = self._carry_over(kind, old, new, errs)
            if kind.kind == "Service" and not errs:
                errs += self._assign_cluster_ip(ref, old, new, cluster_ips)
                if not errs:
                    errs += _assign_node_ports(ref, old, new, node_ports)
            if errs:
                plan.problems += [Problem(where, str(e)) for e in errs]
                continue
            if old is not None and new == _without_rv(old):
                plan.results.append(ApplyResult(ref, "unchanged"))
                continue
            plan.compares[key] = old_kv.mod_revision if old_kv else 0
            plan.ops[key] = Put(key, encode(new))
            plan.results.append(ApplyResult(ref, "configured" if old else "created"))
        if not plan.problems:
            cluster_ips.write(plan.compares, plan.ops)
            node_ports.write(plan.compares, plan.ops)
        return plan

    @staticmethod
    def _initial_status(kind: Kind) -> dict[str, Any] | None:
        return {
            "Namespace": {"phase": "Active"},
            "Pod": {"phase": "Pending"},
            "Service": {"loadBalancer": {}},
        }.get(kind.kind)

    @staticmethod
    def _carry_over(
        kind: Kind, old: dict[str, Any], new: dict[str, Any], errs: list[fields.FieldError]
    ) -> dict[str, Any]:
        """The update of `old` by the desired `new`: server fields kept, immutables enforced."""
        old_meta, meta = old["metadata"], new["metadata"]
        for f in ("uid", "creationTimestamp", "generation"):
            if f in old_meta:
                meta[f] = old_meta[f]
        if "status" in old:
            new["status"] = old["status"]
        spec, old_spec = new.get("spec"), old.get("spec") or {}
        if kind.kind == "Pod" and spec is not None:
            if not spec.get("nodeName") and old_spec.get("nodeName"):
                spec["nodeName"] = old_spec["nodeName"]  # bound by the scheduler
            changed = first_difference(_pod_comparable_spec(old_spec), _pod_comparable_spec(spec))
            if changed is not None:
                errs.append(
                    fields.forbidden("spec", f"{_POD_IMMUTABLE_MESSAGE} (changed: spec{changed})")
                )
        if kind.kind == "Service" and spec is not None and not spec.get("clusterIP"):
            for f in ("clusterIP", "clusterIPs"):  # allocated at creation
                if old_spec.get(f):
                    spec[f] = old_spec[f]
        if kind.kind == "Service" and spec is not None and spec.get("type") in _NODE_PORT_TYPES:
            had = {
                (p.get("port"), p.get("protocol")): p["nodePort"]
                for p in old_spec.get("ports") or ()
                if p.get("nodePort")
            }
            for p in spec.get("ports") or ():  # allocated at creation, as kubectl apply keeps them
                kept = had.get((p.get("port"), p.get("protocol")))
                if kept and not p.get("nodePort"):
                    p["nodePort"] = kept
        selector = (spec or {}).get("selector")
        if kind.kind in _IMMUTABLE_SELECTOR and selector != old_spec.get("selector"):
            errs.append(fields.invalid("spec.selector", selector, "field is immutable"))
        if spec is not None and spec != old_spec:
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
        return new

    def _assign_cluster_ip(
        self,
        ref: ObjectRef,
        old: dict[str, Any] | None,
        new: dict[str, Any],
        allocated: _Allocations,
    ) -> list[fields.FieldError]:
        spec = new["spec"]
        owner = f"{ref.namespace}/{ref.name}"
        wanted = spec.get("clusterIP") or None
        if old is not None:
            old_ip = (old.get("spec") or {}).get("clusterIP")
            if wanted is None:
                wanted = old_ip
            if wanted != old_ip:
                return [fields.invalid("spec.clusterIP", wanted, "field is immutable")]
            if wanted:
                spec["clusterIP"] = wanted
                spec["clusterIPs"] = [wanted]
            return []
        if wanted == "None":
            spec["clusterIPs"] = ["None"]
            return []
        if self.service_cidr is None:
            return []  # no allocator configured (unit tests); the ClusterIP stays unset
        if wanted is not None:
            ip = ipaddress.IPv4Address(wanted)
            if ip not in self.service_cidr:
                return [
                    fields.invalid(
                        "spec.clusterIP",
                        wanted,
                        f"provided IP is not in the valid range. The range of valid IPs is "
                        f"{self.service_cidr}",
                    )
                ]
            if allocated.owner(wanted) not in (None, owner):
                return [
                    fields.invalid("spec.clusterIP", wanted, "provided IP is already allocated")
                ]
        else:
            first = int(self.service_cidr.network_address)
            # .1 is the `kubernetes` Service's by convention; the broadcast address is no host
            candidates = range(first + 2, first + self.service_cidr.num_addresses - 1)
            found = allocated.next_free(candidates, lambda n: str(ipaddress.IPv4Address(n)))
            if found is None:
                return [
                    fields.invalid(
                        "spec.clusterIP",
                        "",
                        f"failed to allocate a serviceIP: range {self.service_cidr} is full",
                    )
                ]
            wanted = found
        allocated.take(wanted, owner)
        spec["clusterIP"] = wanted
        spec["clusterIPs"] = [wanted]
        return []

    # --- delete ---

    async def delete(
        self, refs: Sequence[ObjectRef], *, ignore_not_found: bool = False
    ) -> list[DeleteResult]:
        """Delete every object (a Namespace with everything in it), all or nothing.

        An absent object is a NotFound error (nothing is deleted) unless `ignore_not_found`.
        """
        for _ in range(_MAX_ATTEMPTS):
            compares: dict[str, int] = {}
            ops: dict[str, Put | Delete] = {}
            results: list[DeleteResult] = []
            missing: list[str] = []
            for ref in dict.fromkeys(refs):
                kind = kinds.get(ref.kind)
                if kind.kind == "Namespace" and ref.name == DEFAULT_NAMESPACE:
                    raise FlowscopeError(
                        'namespaces "default" is forbidden: this namespace may not be deleted'
                    )
                key = kind.key(ref.namespace, ref.name)
                kv = await self.kv.get(key)
                if kv is None:
                    if key not in ops:  # not already going with its namespace
                        missing.append(str(not_found(kind, ref.name)))
                    continue
                compares[key] = kv.mod_revision
                ops[key] = Delete(key)
                results.append(DeleteResult(ref))
                for extra in await self._dependents(kind, ref, kv):
                    compares[extra.key] = extra.mod_revision
                    ops[extra.key] = Delete(extra.key)
            svc_prefix = kinds.get("Service").prefix()
            # keys are /registry/services/NS/NAME: the owner names the markers carry
            deleted_services = {k[len(svc_prefix) :] for k in ops if k.startswith(svc_prefix)}
            if deleted_services:
                current = await self._read((_SERVICE_IPS, _NODE_PORTS))
                for allocations in _allocations(current):
                    for item, owner in list(allocations.owners.items()):
                        if owner in deleted_services:
                            allocations.release(item, owner)
                    allocations.write(compares, ops)
            if missing and not ignore_not_found:
                raise NotFound(
                    "\nerror: ".join(missing),
                    hint="nothing was deleted; pass --ignore-not-found to delete the others",
                )
            if not ops:
                return results
            if await self.kv.txn([Compare(k, r) for k, r in compares.items()], list(ops.values())):
                return results
        raise Conflict("the objects kept changing while deleting them", hint="try again")

    async def _dependents(self, kind: Kind, ref: ObjectRef, kv: KeyValue) -> list[KeyValue]:
        """What goes with an object: a namespace's contents. (A Service's ClusterIP and nodePorts
        are released by `delete` itself, block by block, for every Service deleted.)"""
        if kind.kind == "Namespace":
            out = []
            for k in kinds.KINDS:
                if k.namespaced:
                    items, _ = await self.kv.range(k.prefix(ref.name))
                    out += items
            return out
        return []

    # --- updates by controllers and agents ---

    async def update(
        self,
        kind: ResourceKind,
        namespace: str | None,
        name: str,
        mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
    ) -> dict[str, Any]:
        """Read, `mutate` (a copy; return the new object, or None for no change), write with CAS.

        Retried on conflict, so `mutate` must be a pure function of the object it gets.
        Returns the object as written (without resourceVersion). NotFound when absent.
        """
        k = _kind(kind)
        key = k.key((namespace or DEFAULT_NAMESPACE) if k.namespaced else None, name)
        for _ in range(_MAX_ATTEMPTS):
            kv = await self.kv.get(key)
            if kv is None:
                raise not_found(k, name)
            old = decode(kv)
            new = mutate(copy.deepcopy(old))
            if new is None:
                return old
            new = _without_rv(new)
            if new == _without_rv(old):
                return old
            for f in ("kind", "apiVersion"):
                if new.get(f) != old.get(f):
                    raise FlowscopeError(f"update of {k.kind} {name!r} may not change {f}")
            for f in ("name", "namespace", "uid"):
                if new["metadata"].get(f) != old["metadata"].get(f):
                    raise FlowscopeError(f"update of {k.kind} {name!r} may not change metadata.{f}")
            if (new.get("spec") or {}) != (old.get("spec") or {}):
                new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
            if k.schema is not None:
                # status is the writer's own report: its shape is checked, not its completeness
                errs = [
                    e
                    for e in schema.errors(new, k.schema)
                    if not (e.type == "Required value" and e.path.startswith("status."))
                ]
                if errs:
                    raise FlowscopeError(
                        f"invalid update of {k.kind} {namespace}/{name}: "
                        + "; ".join(str(e) for e in errs)
                    )
            if await self.kv.txn([Compare(key, kv.mod_revision)], [Put(key, encode(new))]):
                return new
            await asyncio.sleep(0)
        raise Conflict(f"{k.kind} {namespace}/{name} kept changing while updating it")

    async def update_status(
        self, kind: ResourceKind, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge `status` into the object's status (see merge_status), with CAS and retries."""

        def mutate(obj: dict[str, Any]) -> dict[str, Any]:
            obj["status"] = merge_status(obj.get("status"), status)
            return obj

        return await self.update(kind, namespace, name, mutate)

    async def register_node(
        self,
        name: str,
        internal_ip: str,
        *,
        pod_cidr: str | None = None,
        node_labels: dict[str, str] | None = None,
        ready: bool = True,
    ) -> dict[str, Any]:
        """Create or update Node `name` and set its status (addresses, Ready), as a kubelet does."""
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    **(node_labels or {}),
                },
            },
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]} if pod_cidr else {},
        }
        await self.apply([node])
        return await self.update_status(
            "Node",
            None,
            name,
            {
                "addresses": [
                    {"type": "InternalIP", "address": str(internal_ip)},
                    {"type": "Hostname", "address": name},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": "KubeletReady" if ready else "KubeletNotReady",
                        "lastTransitionTime": now(),
                    }
                ],
                "nodeInfo": {"kubeletVersion": "flowscope", "operatingSystem": "linux"},
            },
        )

    # --- watch ---

    async def watch(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        *,
        start_revision: int | None = None,
        known: Iterable[dict[str, Any]] = (),
    ) -> AsyncIterator[ObjectEvent]:
        """Informer semantics: ADDED for every existing object (one consistent list), then
        ADDED/MODIFIED/DELETED as they happen, from the list's revision + 1 (no gap).

        With `start_revision`, no list: changes from that revision on, `known` (objects the
        caller already has, e.g. from list_with_revision) telling MODIFIED from ADDED.
        """
        k = _kind(kind)
        prefix = k.prefix(namespace)
        cache: dict[str, dict[str, Any]] = {}
        if start_revision is None:
            items, rev = await self.kv.range(prefix)
            for kv in items:
                obj = decode(kv)
                cache[kv.key] = obj
                yield ObjectEvent("ADDED", obj, kv.mod_revision)
            start_revision = rev + 1
        else:
            for obj in known:
                ref = ObjectRef.of(obj)
                cache[k.key(ref.namespace, ref.name)] = obj
        async for ev in self.kv.watch(prefix, start_revision):
            if ev.kind == "put":
                obj = decode(ev.kv)
                kind_ = "MODIFIED" if ev.kv.key in cache else "ADDED"
                cache[ev.kv.key] = obj
                yield ObjectEvent(kind_, obj, ev.kv.mod_revision)
            else:
                last = cache.pop(ev.kv.key, None)
                if last is None:
                    last = self._stub(k, ev.kv.key)
                yield ObjectEvent("DELETED", last, ev.kv.mod_revision)

    @staticmethod
    def _stub(kind: Kind, key: str) -> dict[str, Any]:
        """What is known of a deleted object never seen: its identity, from its key."""
        parts = key[len(kind.prefix()) :].split("/")
        meta = {"name": parts[-1]}
        if kind.namespaced and len(parts) == 2:
            meta["namespace"] = parts[0]
        return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}
