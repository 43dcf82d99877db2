"""What a controller has just written and its caches must show before it decides again.

The informers see a controller's own writes a moment later; deciding from the caches before
then would create a ReplicaSet's pods twice (kube-controller-manager's "expectations"). An
owner with writes not yet seen is skipped. Creations and deletions are met when the informer
reports them (a pod created and deleted again before the cache caught up still counts as seen),
updates when the cached object has reached the written generation. An expectation not met in
`timeout` is dropped (the write may have failed), and the owner decides from the caches again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowscope.apis.refs import ObjectRef

Caches = Mapping[str, Mapping[ObjectRef, dict[str, Any]]]


@dataclass
class _Expected:
    deadline: float
    present: set[ObjectRef] = field(default_factory=set)
    absent: set[ObjectRef] = field(default_factory=set)
    generations: dict[ObjectRef, int] = field(default_factory=dict)  # updates to show

    def met(self, caches: Caches) -> bool:
        if self.present or self.absent:
            return False
        for ref, generation in self.generations.items():
            obj = caches.get(ref.kind, {}).get(ref)
            if (
                obj is not None
                and int((obj.get("metadata") or {}).get("generation") or 0) < generation
            ):
                return False
        return True


class Expectations:
    def __init__(self, timeout: float = 10.0, clock=time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._by_owner: dict[ObjectRef, _Expected] = {}

    def expect(
        self,
        owner: ObjectRef,
        *,
        present: Iterable[ObjectRef] = (),
        absent: Iterable[ObjectRef] = (),
        generations: Mapping[ObjectRef, int] | None = None,
    ) -> None:
        e = self._by_owner.setdefault(owner, _Expected(self.clock() + self.timeout))
        e.deadline = self.clock() + self.timeout
        e.present.update(present)
        e.absent.update(absent)
        e.generations.update(generations or {})

    def forget(self, owner: ObjectRef) -> None:
        """The owner's writes failed: nothing of them is coming."""
        self._by_owner.pop(owner, None)

    def observe(self, ref: ObjectRef, *, deleted: bool) -> None:
        """The informer saw `ref` created (or changed) or deleted."""
        for e in self._by_owner.values():
            (e.absent if deleted else e.present).discard(ref)

    def waiting(self, caches: Caches) -> set[ObjectRef]:
        """Owners whose writes the caches do not show yet (met or expired ones are dropped)."""
        now = self.clock()
        for owner, e in list(self._by_owner.items()):
            if e.met(caches) or now > e.deadline:
                del self._by_owner[owner]
        return set(self._by_owner)

    def next_deadline(self) -> float | None:
        """Seconds until the earliest expectation expires, None when there is none."""
        if not self._by_owner:
            return None
        return max(0.0, min(e.deadline for e in self._by_owner.values()) - self.clock())
