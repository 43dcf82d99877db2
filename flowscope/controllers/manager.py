"""The controller manager: informers for what the controllers read, and one level-triggered loop.

Every change to a watched kind marks the world dirty; the loop then runs every controller's pure
decision function over the caches and writes what differs. Writes show up as watch events again,
and the next round finds nothing to do: the loop converges. The workload controllers
(Deployments, ReplicaSets) skip an owner until the caches show its last writes (expectations),
and the loop also wakes when a pod becomes available after minReadySeconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime
from typing import Any

from flowscope.apis.objectstore import ObjectStore, now
from flowscope.apis.refs import ObjectRef
from flowscope.controllers import deployments, endpointslices, garbage, replicasets, scheduler
from flowscope.controllers.expectations import Expectations
from flowscope.errors import FlowscopeError, NotFound
from flowscope.store.kv import KV

log = logging.getLogger(__name__)

WATCHED = ("Node", "Pod", "Service", "EndpointSlice", "Deployment", "ReplicaSet")
_DEBOUNCE = 0.02  # seconds: let a burst of events (an apply of many pods) land before a round
_RETRY = 0.5  # seconds before retrying a round that failed to write
_MAX_RETRY = 10.0  # ... doubling while it keeps failing, up to this
IDENTITY_GC_INTERVAL = 60.0  # seconds between identity GC rounds
IDENTITY_UNUSED_FOR = 900.0  # an identity unused this long is deleted (Cilium: 15 min)


class Informers:
    """Caches of every watched kind, kept current by watches; `dirty` set on each change."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.objects: dict[str, dict[ObjectRef, dict[str, Any]]] = {k: {} for k in WATCHED}
        self.dirty = asyncio.Event()
        self.expectations = Expectations()
        self.wake_in: float | None = None  # a round wants to run again this soon, events or not
        self._tasks: list[asyncio.Task] = []

    def list(self, kind: str) -> list[dict[str, Any]]:
        return list(self.objects[kind].values())

    async def start(self) -> None:
        """List every kind (so the first round sees the whole world), then watch each."""
        for kind in WATCHED:
            objs, rev = await self.store.list_with_revision(kind)
            self.objects[kind] = {ObjectRef.of(o): o for o in objs}
            self._tasks.append(
                asyncio.create_task(self._watch(kind, rev + 1), name=f"watch {kind}")
            )
        self.dirty.set()

    async def _watch(self, kind: str, start: int) -> None:
        while True:
            try:
                known = list(self.objects[kind].values())
                async for ev in self.store.watch(kind, start_revision=start, known=known):
                    ref = ObjectRef.of(ev.object)
                    if ev.type == "DELETED":
                        self.objects[kind].pop(ref, None)
                    else:
                        self.objects[kind][ref] = ev.object
                    self.expectations.observe(ref, deleted=ev.type == "DELETED")
                    start = ev.revision + 1
                    self.dirty.set()
                return
            except FlowscopeError as e:
                # e.g. history compacted: list again, and watch from that list
                log.warning("watch %s failed (%s); listing again", kind, e)
                await asyncio.sleep(_RETRY)
                objs, rev = await self.store.list_with_revision(kind)
                self.objects[kind] = {ObjectRef.of(o): o for o in objs}
                start = rev + 1
                self.dirty.set()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def run_scheduler_round(store: ObjectStore, informers: Informers) -> int:
    decisions = scheduler.schedule(informers.list("Pod"), informers.list("Node"))
    for d in decisions:
        cond = scheduler.scheduled_condition(d, now())

        def mutate(pod: dict[str, Any], d=d, cond=cond) -> dict[str, Any]:
            spec = pod.setdefault("spec", {})
            if isinstance(d, scheduler.Binding) and not spec.get("nodeName"):
                spec["nodeName"] = d.node
            status = pod.setdefault("status", {})
            status.setdefault("phase", "Pending")
            others = [c for c in status.get("conditions") or () if c.get("type") != "PodScheduled"]
            status["conditions"] = [*others, cond]
            return pod

        try:
            await store.update("Pod", d.namespace, d.name, mutate)
        except NotFound:
            continue  # deleted meanwhile
        if isinstance(d, scheduler.Binding):
            log.info("bound pod %s/%s to node %s", d.namespace, d.name, d.node)
        else:
            log.info("pod %s/%s unschedulable: %s", d.namespace, d.name, d.message)
    return len(decisions)


async def run_endpointslice_round(store: ObjectStore, informers: Informers) -> int:
    changes = endpointslices.reconcile(
        informers.list("Service"), informers.list("Pod"), informers.list("EndpointSlice")
    )
    if changes.delete:
        await store.delete(changes.delete, ignore_not_found=True)
    if changes.apply:
        await store.apply(changes.apply, internal=True)
    if changes:
        log.info("endpointslices: %d written, %d deleted", len(changes.apply), len(changes.delete))
    return len(changes.apply) + len(changes.delete)


async def run_deployment_round(store: ObjectStore, informers: Informers) -> int:
    waiting = informers.expectations.waiting(informers.objects)
    changes = deployments.reconcile(
        informers.list("Deployment"), informers.list("ReplicaSet"), now(), skip=waiting
    )
    failed: list[str] = []
    for rs in changes.create:
        # one at a time: a ReplicaSet that cannot be written holds up no other Deployment
        informers.expectations.expect(_owner(rs), present=[ObjectRef.of(rs)])
        try:
            await store.apply([rs], internal=True)
        except FlowscopeError as e:
            informers.expectations.forget(_owner(rs))
            failed.append(f"{_owner(rs).display()}: {e}")
    for scale in changes.scale:

        def mutate(rs: dict[str, Any], scale=scale) -> dict[str, Any]:
            rs.setdefault("spec", {})["replicas"] = scale.replicas
            if scale.revision is not None:
                annotations = rs["metadata"].setdefault("annotations", {})
                annotations[deployments.REVISION_ANNOTATION] = scale.revision
            return rs

        try:
            rs = await store.update("ReplicaSet", scale.ref.namespace, scale.ref.name, mutate)
        except NotFound:
            continue
        generation = int(rs["metadata"].get("generation") or 1)
        informers.expectations.expect(_owner(rs), generations={scale.ref: generation})
        log.info(
            "scaled replicaset %s/%s to %d", scale.ref.namespace, scale.ref.name, scale.replicas
        )
    if changes.delete:
        await store.delete(changes.delete, ignore_not_found=True)
    for ref, status in changes.status.items():
        try:
            await store.update_status("Deployment", ref.namespace, ref.name, status)
        except NotFound:
            continue
    if failed:
        raise FlowscopeError("cannot create ReplicaSets: " + "; ".join(failed))
    return len(changes.create) + len(changes.scale) + len(changes.delete) + len(changes.status)


def _owner(obj: dict[str, Any]) -> ObjectRef:
    """The controller of an object a workload controller wrote, as an ObjectRef."""
    ref = next(r for r in obj["metadata"]["ownerReferences"] if r.get("controller"))
    return ObjectRef(ref["kind"], obj["metadata"].get("namespace") or "default", ref["name"])


_rand = random.SystemRandom()


async def run_replicaset_round(store: ObjectStore, informers: Informers) -> int:
    waiting = informers.expectations.waiting(informers.objects)
    changes = replicasets.reconcile(
        informers.list("ReplicaSet"),
        informers.list("Pod"),
        datetime.now(UTC),
        _rand,
        skip=waiting,
    )
    for owner, refs in changes.creating.items():
        informers.expectations.expect(owner, present=refs)
    for owner, refs in changes.deleting.items():
        informers.expectations.expect(owner, absent=refs)
    failed: list[str] = []
    for owner, refs in changes.creating.items():
        made = [p for p in changes.create if ObjectRef.of(p) in set(refs)]
        try:  # each ReplicaSet's pods on their own: one that cannot be written holds up no other
            await store.apply(made)
        except FlowscopeError as e:
            informers.expectations.forget(owner)
            failed.append(f"{owner.display()}: {e}")
    if changes.delete:
        await store.delete(changes.delete, ignore_not_found=True)
    for ref, status in changes.status.items():
        try:
            await store.update_status("ReplicaSet", ref.namespace, ref.name, status)
        except NotFound:
            continue
    if changes.create or changes.delete:
        log.info(
            "replicasets: %d pods created, %d deleted", len(changes.create), len(changes.delete)
        )
    informers.wake_in = changes.wake_in
    if failed:
        raise FlowscopeError("cannot create pods: " + "; ".join(failed))
    return len(changes.create) + len(changes.delete) + len(changes.status)


async def run_garbage_round(store: ObjectStore, informers: Informers) -> int:
    """Delete what lost its owners (confirmed against the store: the caches may lag)."""
    doomed = []
    for orphan in garbage.orphans({k: informers.list(k) for k in informers.objects}):
        alive = False
        for ref, uid in orphan.owners:
            owner = await store.get(ref.kind, ref.namespace, ref.name)
            if owner is not None and owner["metadata"].get("uid") == uid:
                alive = True
                break
        if not alive:
            doomed.append(orphan.dependent)
    if doomed:
        await store.delete(doomed, ignore_not_found=True)
        log.info("garbage collector: deleted %s", ", ".join(r.display() for r in doomed))
    return len(doomed)


async def collect_identities(kv: KV, every: float, unused_for: float) -> None:
    """Delete identities no node has used for `unused_for` seconds (Cilium's identity GC).

    One place runs it, as Cilium's operator does: the agents only take and drop references."""
    from dataplane.identity.allocator import IdentityAllocator

    allocator = IdentityAllocator(kv, "controller")
    while True:
        await asyncio.sleep(every)
        try:
            deleted = await allocator.gc(unused_for)
        except FlowscopeError as e:
            log.warning("identity gc failed: %s; next round in %.0fs", e, every)
            continue
        if deleted:
            log.info("identity gc: deleted %s", ", ".join(map(str, deleted)))


ROUNDS = (
    ("deployment", run_deployment_round),
    ("replicaset", run_replicaset_round),
    ("garbage collector", run_garbage_round),
    ("scheduler", run_scheduler_round),
    ("endpointslice", run_endpointslice_round),
)


def _next_wake(informers: Informers) -> float | None:
    waits = [
        w for w in (informers.wake_in, informers.expectations.next_deadline()) if w is not None
    ]
    return min(waits) + _DEBOUNCE if waits else None


async def run_controllers(kv: KV, stop_event: asyncio.Event) -> None:
    """Run the workload controllers (Deployments, ReplicaSets, garbage collection), the
    scheduler, the EndpointSlice controller and identity GC until `stop_event`."""
    store = ObjectStore(kv)
    informers = Informers(store)
    await informers.start()
    identity_gc = asyncio.create_task(
        collect_identities(kv, IDENTITY_GC_INTERVAL, IDENTITY_UNUSED_FOR), name="identity-gc"
    )
    retry = _RETRY
    try:
        while not stop_event.is_set():
            stop = asyncio.ensure_future(stop_event.wait())
            dirty = asyncio.ensure_future(informers.dirty.wait())
            await asyncio.wait(
                {stop, dirty}, timeout=_next_wake(informers), return_when=asyncio.FIRST_COMPLETED
            )
            stop.cancel()
            dirty.cancel()
            if stop_event.is_set():
                break
            await asyncio.sleep(_DEBOUNCE)
            informers.dirty.clear()
            failed = False
            for name, run_round in ROUNDS:
                try:
                    await run_round(store, informers)
                except FlowscopeError as e:
                    # a conflict, a namespace deleted under us, an object that cannot be written:
                    # the other controllers go on; this one tries again, backing off while it fails
                    log.warning("%s round failed: %s; retrying in %.1fs", name, e, retry)
                    failed = True
            if failed:
                await asyncio.sleep(retry)
                retry = min(retry * 2, _MAX_RETRY)
                informers.dirty.set()
            else:
                retry = _RETRY
    finally:
        identity_gc.cancel()
        await informers.stop()
