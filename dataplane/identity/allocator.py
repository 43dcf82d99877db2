"""Cluster-wide identity numbers, allocated through the cluster store as Cilium's kvstore mode does.

Keys under `prefix` (default /flowscope/identities/):
    id/<n>              master key: {"labels": [...], "unused_since": t | null}; the identity
    labels/<l1;l2;..;>  index key: "<n>"; makes a label set's number unique without a lock
    refs/<n>/<node>     reference key: node <node> has endpoints with identity <n>

Cilium keeps master keys id -> labels and per-node slave keys labels/node -> id, and serialises
allocators with a distributed lock. Here the index key does that job instead: a new identity is
one transaction that creates master, index and reference only if neither master nor index exists,
so racing nodes converge on one number (the loser finds the index and takes a reference) and two
label sets never share one (the loser of a number retries with another). Reference keys are named
by number so that releasing and collecting one identity reads only its own references.

Every change to an identity's references also rewrites its master key, so the master key's
mod_revision versions the set of references: garbage collection deletes an identity with a
transaction that compares it, and a reference taken concurrently makes that transaction fail.
The master key records when the last reference went away (`unused_since`); gc deletes identities
unused for long enough.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Literal

from dataplane.identity.model import (
    CIDR,
    CIDR_ID_BASE,
    MAX_CIDR_ID,
    MAX_CLUSTER_ID,
    MIN_CLUSTER_ID,
    RESERVED,
    RESERVED_IDENTITIES,
    Identity,
    Labels,
    cidr_labels,
)
from flowscope.errors import FlowscopeError, UsageError
from flowscope.store.kv import KV, Compare, Delete, KeyValue, Put

DEFAULT_PREFIX = "/flowscope/identities/"

# Conflicts come from other nodes allocating at the same moment (one allocator serialises its own
# store work); each lost race makes progress for someone, so this bound is only hit when broken.
MAX_ATTEMPTS = 64

_RESERVED_BY_LABELS = {ident.labels: ident for ident in RESERVED_IDENTITIES.values()}
_RESERVED_LABELS = {label for labels in _RESERVED_BY_LABELS for label in labels}


class IdentityExhausted(FlowscopeError):
    """Every number of the range is taken. Raised at once, never retried."""


class IdentityConflict(FlowscopeError):
    """The store changed under an operation for more than MAX_ATTEMPTS attempts."""


class InvalidLabels(UsageError):
    """A label set that cannot be an identity; the message names the offending label."""


@dataclass(frozen=True)
class IdentityEvent:
    kind: Literal["added", "removed"]
    identity: Identity  # for "removed": the labels last seen (empty when never seen)
    revision: int  # the store revision of the change; watch(start_revision=revision + 1) resumes


@dataclass(frozen=True)
class _Master:
    labels: Labels
    unused_since: float | None

    def encode(self) -> bytes:
        return json.dumps(
            {"labels": sorted(self.labels), "unused_since": self.unused_since},
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def decode(raw: bytes) -> _Master:
        doc = json.loads(raw)
        return _Master(frozenset(doc["labels"]), doc.get("unused_since"))


class IdentityAllocator:
    """Identities for node `node`, consistent across every node using the same `kv` and `prefix`.

    Reference counting is local, as in Cilium: each allocate() counts one user on this node and
    each release() drops one; the node's reference key is written by the first and removed by the
    last. allocate() of a label set this node already holds costs no store round trip.
    """

    def __init__(
        self,
        kv: KV,
        node: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        min_id: int = MIN_CLUSTER_ID,
        max_id: int = MAX_CLUSTER_ID,
        min_cidr_id: int = CIDR_ID_BASE,
        max_cidr_id: int = MAX_CIDR_ID,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(node, str) or not node or "/" in node or not node.isprintable():
            raise UsageError(f"node name {node!r} is not valid", hint="a non-empty name without /")
        if not prefix.endswith("/"):
            raise UsageError(f"identity key prefix {prefix!r} must end with /")
        for name, lo, hi in (("", min_id, max_id), ("cidr_", min_cidr_id, max_cidr_id)):
            if not 0 < lo <= hi < 1 << 32:
                raise UsageError(f"identity range {name}min_id..{name}max_id = {lo}..{hi} is empty")
        if min_id < MIN_CLUSTER_ID or max_id >= min_cidr_id:
            raise UsageError(
                f"identity ranges overlap reserved or CIDR numbers: {min_id}..{max_id}, "
                f"CIDR {min_cidr_id}..{max_cidr_id}",
                hint=f"cluster identities start at {MIN_CLUSTER_ID} and end below the CIDR range",
            )
        self._kv = kv
        self.node = node
        self.prefix = prefix
        self._ranges = {False: (min_id, max_id), True: (min_cidr_id, max_cidr_id)}
        self._clock = clock
        self._lock = asyncio.Lock()
        self._held: dict[int, int] = {}  # id -> how many local users (allocate - release)
        self._by_labels: dict[Labels, Identity] = {}  # identities this node holds
        self._by_id: dict[int, Identity] = {}

    # --- keys -----------------------------------------------------------------------------------

    def _master_key(self, n: int) -> str:
        return f"{self.prefix}id/{n}"

    def _index_key(self, labels: Labels) -> str:
        return f"{self.prefix}labels/{''.join(f'{label};' for label in sorted(labels))}"

    def _refs_prefix(self, n: int) -> str:
        return f"{self.prefix}refs/{n}/"

    def _ref_key(self, n: int, node: str) -> str:
        return f"{self._refs_prefix(n)}{node}"

    def _id_of(self, key: str, kind: str) -> int:
        return int(key[len(self.prefix) + len(kind) + 1 :].split("/", 1)[0])

    # --- public API -----------------------------------------------------------------------------

    async def allocate(self, labels: Labels) -> Identity:
        """The identity of `labels` (a new number if the cluster has none), used by this node.

        Reserved label sets (e.g. {"reserved:host"}) give the reserved identity, not counted."""
        labels = _check_labels(labels)
        reserved = _RESERVED_BY_LABELS.get(labels)
        if reserved is not None:
            return reserved
        if any(label.startswith(RESERVED) for label in labels):
            raise InvalidLabels(
                f"labels {sorted(labels)} are no reserved identity's",
                hint=f"a reserved identity is one label alone: {sorted(_RESERVED_LABELS)}",
            )
        if any(label.startswith(CIDR) for label in labels):
            raise InvalidLabels(
                f"labels {sorted(labels)} hold a cidr: label",
                hint="allocate CIDR identities with allocate_cidr(prefix)",
            )
        return await self._allocate(labels, cidr=False)

    async def allocate_cidr(self, prefix: IPv4Network) -> Identity:
        """The CIDR identity of `prefix` (labels cidr:<prefix>), used by this node."""
        if not isinstance(prefix, IPv4Network):
            raise InvalidLabels(f"CIDR prefix {prefix!r} is not an IPv4Network")
        return await self._allocate(cidr_labels(prefix), cidr=True)

    async def release(self, identity_id: int) -> None:
        """One local user of `identity_id` is gone; the last one removes this node's reference.

        Releasing an identity this allocator has no count for (e.g. after a restart, before the
        endpoints were restored) removes the node's reference at once."""
        if identity_id in RESERVED_IDENTITIES:
            return
        async with self._lock:
            count = self._held.get(identity_id, 0)
            if count > 1:
                self._held[identity_id] = count - 1
                return
            # forget first: allocate()'s lock-free path must not count on a reference being
            # removed; it waits for the lock and writes a new one
            self._forget(identity_id)
            await self._drop_ref(identity_id, self.node)

    async def release_node(self, node: str) -> list[int]:
        """Remove every reference of `node` (a node that is gone); the identities it referenced."""
        kvs, _ = await self._kv.range(f"{self.prefix}refs/")
        ids = sorted(self._id_of(kv.key, "refs") for kv in kvs if kv.key.rsplit("/", 1)[1] == node)
        async with self._lock:
            for n in ids:
                if node == self.node:
                    self._forget(n)
                await self._drop_ref(n, node)
        return ids

    async def lookup(self, identity_id: int) -> Identity | None:
        reserved = RESERVED_IDENTITIES.get(identity_id)
        if reserved is not None:
            return reserved
        held = self._by_id.get(identity_id)
        if held is not None:
            return held
        got = await self._kv.get(self._master_key(identity_id))
        return Identity(identity_id, _Master.decode(got.value).labels) if got else None

    async def lookup_labels(self, labels: Labels) -> Identity | None:
        labels = _check_labels(labels)
        known = _RESERVED_BY_LABELS.get(labels) or self._by_labels.get(labels)
        if known is not None:
            return known
        got = await self._kv.get(self._index_key(labels))
        if got is None:
            return None
        return await self.lookup(int(got.value))

    async def all(self) -> dict[int, Identity]:
        """Every identity of the cluster, reserved ones included, by number."""
        out = dict(RESERVED_IDENTITIES)
        out.update((await self._list())[0])
        return out

    async def watch(self, start_revision: int | None = None) -> AsyncIterator[IdentityEvent]:
        """Informer semantics: "added" for every identity (one consistent list), then "added" and
        "removed" as they happen, with no gap. With `start_revision`, no list: changes from that
        revision on. Reserved identities are constants (RESERVED_IDENTITIES), never sent."""
        known: dict[int, Labels] = {}
        if start_revision is None:
            idents, rev = await self._list()
            for n, ident in idents.items():
                known[n] = ident.labels
                yield IdentityEvent("added", ident, rev)
            start_revision = rev + 1
        async for ev in self._kv.watch(f"{self.prefix}id/", start_revision):
            n = self._id_of(ev.kv.key, "id")
            if ev.kind == "put":
                labels = _Master.decode(ev.kv.value).labels
                # reference changes rewrite the master key too: only a new number is news
                if known.get(n) != labels:
                    known[n] = labels
                    yield IdentityEvent("added", Identity(n, labels), ev.kv.mod_revision)
            else:
                labels = known.pop(n, frozenset())
                yield IdentityEvent("removed", Identity(n, labels), ev.kv.mod_revision)

    async def gc(self, unused_for: float, now: float | None = None) -> list[int]:
        """Delete identities no node has referenced for at least `unused_for` seconds; the
        numbers deleted. An identity found unreferenced without a record of since when (its
        last node went away without releasing) is marked now and deleted on a later run."""
        now = self._clock() if now is None else now
        kvs, _ = await self._kv.range(self.prefix)  # masters, index and references at one revision
        masters: dict[int, KeyValue] = {}
        index: dict[str, KeyValue] = {}
        referenced: set[int] = set()
        for kv in kvs:
            kind = kv.key[len(self.prefix) :].split("/", 1)[0]
            if kind == "id":
                masters[self._id_of(kv.key, "id")] = kv
            elif kind == "labels":
                index[kv.key] = kv
            elif kind == "refs":
                referenced.add(self._id_of(kv.key, "refs"))
        deleted = []
        for n, kv in sorted(masters.items()):
            if n in referenced:
                continue
            master = _Master.decode(kv.value)
            compares = [Compare(kv.key, kv.mod_revision)]
            if master.unused_since is None:
                ops: list[Put | Delete] = [Put(kv.key, _Master(master.labels, now).encode())]
            elif now - master.unused_since >= unused_for:
                ops = [Delete(kv.key)]
                ikey = self._index_key(master.labels)
                ientry = index.get(ikey)
                if ientry is not None and int(ientry.value) == n:
                    compares.append(Compare(ikey, ientry.mod_revision))
                    ops.append(Delete(ikey))
            else:
                continue
            # a failed compare means someone took a reference meanwhile: keep it
            if await self._kv.txn(compares, ops) and isinstance(ops[0], Delete):
                deleted.append(n)
        return deleted

    # --- internals ------------------------------------------------------------------------------

    async def _allocate(self, labels: Labels, *, cidr: bool) -> Identity:
        held = self._by_labels.get(labels)
        if held is not None and self._held.get(held.id, 0) > 0:
            self._held[held.id] += 1  # this node's reference exists: nothing to write
            return held
        async with self._lock:
            held = self._by_labels.get(labels)
            if held is not None and self._held.get(held.id, 0) > 0:
                self._held[held.id] += 1
                return held
            ident = await self._acquire(labels, cidr)
            self._held[ident.id] = 1
            self._by_labels[labels] = ident
            self._by_id[ident.id] = ident
            return ident

    async def _acquire(self, labels: Labels, cidr: bool) -> Identity:
        """Find or create the identity of `labels` and write this node's reference, in the store."""
        ikey = self._index_key(labels)
        master = _Master(labels, None).encode()
        lost: set[int] = set()  # numbers seen taken by others since the last list
        taken: set[int] | None = None
        for attempt in range(MAX_ATTEMPTS):
            got = await self._kv.get(ikey)
            if got is not None:
                n = int(got.value)
                mkey = self._master_key(n)
                current = await self._kv.get(mkey)
                if current is None:
                    continue  # collected between the two reads: look again
                if _Master.decode(current.value).labels != labels:
                    raise IdentityConflict(
                        f"identity store damaged: {ikey} names {n}, whose labels differ",
                        hint=f"delete the keys under {self.prefix} and restart the agents",
                    )
                ops = [Put(mkey, master), Put(self._ref_key(n, self.node), b"")]
                if await self._kv.txn([Compare(mkey, current.mod_revision)], ops):
                    return Identity(n, labels)
            else:
                if taken is None or attempt % 8 == 7:
                    taken = set((await self._list())[0])
                    lost.clear()
                n = self._choose(cidr, taken | lost, attempt)
                mkey = self._master_key(n)
                compares = [Compare(mkey, 0), Compare(ikey, 0)]
                ops = [Put(mkey, master), Put(ikey, str(n).encode())]
                ops.append(Put(self._ref_key(n, self.node), b""))
                if await self._kv.txn(compares, ops):
                    return Identity(n, labels)
                lost.add(n)
            await _backoff(attempt)
        raise IdentityConflict(
            f"node {self.node}: could not allocate an identity for {sorted(labels)}: the store "
            f"changed under every one of {MAX_ATTEMPTS} attempts",
            hint="is a second agent running for this node? check `flowscope lab status`",
        )

    def _choose(self, cidr: bool, taken: set[int], attempt: int) -> int:
        lo, hi = self._ranges[cidr]
        free = []
        # the lowest free numbers; after a lost race, a random one of the first few so that
        # racing nodes spread out instead of colliding on the same number again
        want = 1 if attempt == 0 else 8
        n = lo
        while n <= hi and len(free) < want:
            if n not in taken:
                free.append(n)
            n += 1
        if not free:
            what = "CIDR identities" if cidr else "identities"
            raise IdentityExhausted(
                f"no free number for new {what}: all {hi - lo + 1} of {lo}..{hi} are allocated",
                hint="delete pods or ipBlocks with label sets no longer needed; unused identities "
                "are freed by garbage collection",
            )
        return random.choice(free)

    async def _drop_ref(self, n: int, node: str) -> None:
        """Remove `node`'s reference to `n`, recording the time when it was the last one."""
        rkey, mkey = self._ref_key(n, node), self._master_key(n)
        for attempt in range(MAX_ATTEMPTS):
            # master first: a reference added after this read changes its mod_revision
            current = await self._kv.get(mkey)
            refs, _ = await self._kv.range(self._refs_prefix(n))
            mine = next((kv for kv in refs if kv.key == rkey), None)
            if mine is None:
                return
            compares = [Compare(rkey, mine.mod_revision)]
            ops: list[Put | Delete] = [Delete(rkey)]
            if current is not None:
                master = _Master.decode(current.value)
                since = master.unused_since
                if len(refs) == 1:
                    since = self._clock()
                compares.append(Compare(mkey, current.mod_revision))
                ops.append(Put(mkey, _Master(master.labels, since).encode()))
            if await self._kv.txn(compares, ops):
                return
            await _backoff(attempt)
        raise IdentityConflict(
            f"node {self.node}: could not release identity {n} of node {node}: the store changed "
            f"under every one of {MAX_ATTEMPTS} attempts"
        )

    def _forget(self, n: int) -> None:
        self._held.pop(n, None)
        ident = self._by_id.pop(n, None)
        if ident is not None:
            self._by_labels.pop(ident.labels, None)

    async def _list(self) -> tuple[dict[int, Identity], int]:
        kvs, rev = await self._kv.range(f"{self.prefix}id/")
        out = {}
        for kv in kvs:
            n = self._id_of(kv.key, "id")
            out[n] = Identity(n, _Master.decode(kv.value).labels)
        return dict(sorted(out.items())), rev


def _check_labels(labels: Iterable[str]) -> Labels:
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise InvalidLabels(f"labels {labels!r} are not a set of strings")
    out = frozenset(labels)
    if not out:
        raise InvalidLabels("an identity needs at least one label")
    for label in out:
        if not isinstance(label, str) or ":" not in label or ";" in label or "\n" in label:
            raise InvalidLabels(
                f"label {label!r} is not valid",
                hint='labels are "source:key=value" strings without ";", e.g. "k8s:app=web"',
            )
        if label.startswith(RESERVED) and len(out) > 1:
            raise InvalidLabels(f"reserved label {label!r} cannot be combined with other labels")
    return out


async def _backoff(attempt: int) -> None:
    # random, growing pause so that allocators that collided do not collide again in lockstep
    await asyncio.sleep(random.uniform(0, 0.001 * min(2**attempt, 64)))
