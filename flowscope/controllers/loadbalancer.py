"""LoadBalancer addresses from the cluster's pool, pure: which address each Service should have.

The lab's stand-in for the cloud controller (AKS: the Azure cloud provider gives a LoadBalancer
Service a frontend IP of the Azure load balancer; bare metal: MetalLB's IP pools). Every Service
of type LoadBalancer gets one IPv4 address of the pool in status.loadBalancer.ingress:
- an address it already holds stays (restarts and re-reads never move a Service);
- spec.loadBalancerIP, when set, is honoured if it is in the pool and free, else the Service
  waits (pending, with the reason logged), as cloud providers refuse an address they cannot give;
- otherwise the lowest free address (the pool's network and broadcast addresses excluded).
A Service that stops being a LoadBalancer, or names a loadBalancerClass (another implementation
owns it), gives its pool address back. Addresses are unique across the cluster: when two Services
claim one (written by hand), the first by namespace/name keeps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flowscope.apis import kinds
from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.errors import FlowscopeError, NotFound
from flowscope.store.kv import KV
from flowscope.store.mirror import PrefixMirror, json_value
from flowscope.supervise import on_change, run_together

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    """The ingress a Service's status should hold: `ip` None means none (released)."""

    service: ObjectRef
    ip: IPv4Address | None


@dataclass(frozen=True)
class Pending:
    """A LoadBalancer Service left without an address, and why."""

    service: ObjectRef
    reason: str


@dataclass(frozen=True)
class Plan:
    changes: list[Assignment]  # statuses to write: only those that differ from what is held
    pending: list[Pending]


def _spec(svc: dict[str, Any]) -> dict[str, Any]:
    return svc.get("spec") or {}


def wants_address(svc: dict[str, Any]) -> bool:
    spec = _spec(svc)
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def ingress_ips(svc: dict[str, Any]) -> list[str]:
    lb = (svc.get("status") or {}).get("loadBalancer") or {}
    return [i["ip"] for i in lb.get("ingress") or () if i.get("ip")]


def _addresses(pool: IPv4Network) -> Iterator[IPv4Address]:
    return pool.hosts() if pool.prefixlen < 31 else iter(pool)


def _in_pool(text: str, pool: IPv4Network) -> IPv4Address | None:
    try:
        ip = IPv4Address(text)
    except ValueError:
        return None
    if ip not in pool or (
        pool.prefixlen < 31 and ip in (pool.network_address, pool.broadcast_address)
    ):
        return None
    return ip


def assign(services: Iterable[dict[str, Any]], pool: IPv4Network) -> Plan:
    """What each Service's LoadBalancer ingress should become."""
    ordered = sorted(services, key=ObjectRef.of)
    taken: set[IPv4Address] = set()
    keep: dict[ObjectRef, IPv4Address] = {}
    for svc in ordered:  # first pass: addresses already held stay with their first holder
        if not wants_address(svc):
            continue
        for text in ingress_ips(svc)[:1]:
            ip = _in_pool(text, pool)
            if ip is not None and ip not in taken:
                taken.add(ip)
                keep[ObjectRef.of(svc)] = ip
    free = (ip for ip in _addresses(pool) if ip not in taken)
    changes: list[Assignment] = []
    pending: list[Pending] = []
    for svc in ordered:
        ref = ObjectRef.of(svc)
        held = ingress_ips(svc)
        want: IPv4Address | None = None
        if wants_address(svc):
            asked = _spec(svc).get("loadBalancerIP")
            if ref in keep:
                want = keep[ref]
            elif asked:
                want = _in_pool(asked, pool)
                if want is None or want in taken:
                    why = "is not in the pool" if want is None else "is taken by another Service"
                    pending.append(Pending(ref, f"spec.loadBalancerIP {asked} {why} ({pool})"))
                    want = None
            else:
                want = next(free, None)
                if want is None:
                    pending.append(Pending(ref, f"no free address left in the pool {pool}"))
            if want is not None:
                taken.add(want)
        elif not any(_in_pool(text, pool) for text in held):
            continue  # not ours: an address we never gave is left alone
        if held != ([str(want)] if want is not None else []):
            changes.append(Assignment(ref, want))
    return Plan(changes, pending)


def status_of(change: Assignment) -> dict[str, Any]:
    """The status.loadBalancer to write for a change."""
    if change.ip is None:
        return {"loadBalancer": {}}
    return {"loadBalancer": {"ingress": [{"ip": str(change.ip), "ipMode": "VIP"}]}}


class LoadBalancerIPAM:
    """Keeps every LoadBalancer Service's status holding its pool address (one writer: the
    cluster's controller). Follows the Services through a mirror of the store; each change
    makes one round of assign(); a round that fails to write is retried after RETRY seconds."""

    RETRY = 1.0

    def __init__(self, kv: KV, pool: IPv4Network) -> None:
        self.pool = pool
        self.store = ObjectStore(kv)
        self._changed = asyncio.Event()
        self.services = PrefixMirror(
            kv, kinds.get("Service").prefix(), json_value, self._changed.set
        )
        self._reported: dict[ObjectRef, str] = {}  # pending reasons already logged

    async def run(self) -> None:
        await self.services.load()
        self._changed.set()
        await run_together(
            {"mirror Service": self.services.run(), "assign": on_change(self._changed, self.round)},
            "LoadBalancer IPAM",
        )

    async def round(self) -> None:
        plan = assign(self.services.items.values(), self.pool)
        try:
            for change in plan.changes:
                ref = change.service
                try:
                    await self.store.update_status(
                        "Service", ref.namespace, ref.name, status_of(change)
                    )
                except NotFound:
                    continue  # deleted meanwhile
                log.info(
                    "service %s/%s: LoadBalancer address %s",
                    ref.namespace,
                    ref.name,
                    change.ip or "released",
                )
        except FlowscopeError as e:
            log.warning("LoadBalancer IPAM round failed: %s; retrying", e)
            await asyncio.sleep(self.RETRY)
            self._changed.set()
        pending = {p.service: p.reason for p in plan.pending}
        for ref, reason in pending.items():
            if self._reported.get(ref) != reason:
                log.warning(
                    "service %s/%s: no LoadBalancer address: %s", ref.namespace, ref.name, reason
                )
        self._reported = pending
