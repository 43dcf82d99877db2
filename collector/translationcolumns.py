"""The socket LB's TRANSLATED events named a batch at a time and kept as columns until someone
reads them (as collector.columns does for the datapath's events).

One connect() makes one event; a connection flood makes thousands a second that share a few
(client cgroup, frontend, backend) keys. Per batch:
- each distinct key of the batch is named once (client pod by cgroup, the frontend's Service, both
  endpoints: socklb_flows.translation_names), or taken from the names of earlier batches: those
  are kept while the agent's directory and the Services index stay as they were, and only when
  the cgroup named a pod (an unknown cgroup may become a new pod's);
- each distinct key's link is remembered in the RecentTranslations table at once, in the order
  of the key's last event and at that event's time: the table ends as it would after one
  remember per event, before the datapath's next batch is named (collector.node drains this ring
  first);
- Flow objects are built when a reader asks, once, by the per-event path's builder
  (socklb_flows.named_translation_flow).
"""

from __future__ import annotations

import numpy as np

from collector.columnbatch import ColumnBatch
from collector.enrich import Enricher
from collector.socklb_flows import TranslationNames, named_translation_flow, translation_names
from collector.translations import RecentTranslations
from dataplane.maps.netorder import ip_of
from flowscope.flow.model import Flow
from probes.socklb import EVENT_DTYPE

_U64 = np.uint64
_FEW = 8  # distinct keys in a batch found one by one; past that, by sorting
_MAX_KNOWN = 4096  # names kept across batches; past that they start over


class TranslationBatch(ColumnBatch):
    """One drain of the socket LB's ring: the records and the names of their keys, as columns.
    A chunk of the flow ring (collector.ring)."""

    __slots__ = ("keys", "names")

    ROW_FIELDS = ("ktime_ns", "sock_cookie", "cgroup_id")

    def __init__(
        self,
        events: np.ndarray,
        *,
        node: str,
        wall_offset: int,
        names: list[TranslationNames],
        keys: np.ndarray,
    ) -> None:
        super().__init__(events, node, wall_offset)  # probes.socklb.EVENT_DTYPE
        self.names = names  # keys indexes this
        self.keys = keys

    def _build(self, index: int) -> Flow:
        ktime, cookie, cgroup = self._row(index)
        return named_translation_flow(
            self.names[self.keys[index]], ktime + self.wall_offset, cookie, cgroup, self.node
        )


class TranslationNamer:
    """Names batches of TRANSLATED events for one node's collector and records their links."""

    def __init__(
        self,
        enricher: Enricher,
        node: str,
        wall_offset: int,
        links: RecentTranslations | None = None,
    ) -> None:
        self.enricher = enricher
        self.node = node
        self.wall_offset = wall_offset
        self.links = links
        self._known: dict[tuple[int, int, int], TranslationNames] = {}
        self._known_version: object = object()
        self._known_owners: object = None

    def _names(self, cgroup: int, addresses: int, ports: int) -> TranslationNames:
        key = (cgroup, addresses, ports)
        found = self._known.get(key)
        if found is None:
            found = self._find(*key)
            if found.client is not None:
                if len(self._known) >= _MAX_KNOWN:
                    self._known.clear()
                self._known[key] = found
        return found

    def _find(self, cgroup: int, addresses: int, ports: int) -> TranslationNames:
        return translation_names(
            self.enricher,
            cgroup,
            str(ip_of(addresses >> 32)),
            ports >> 32,
            str(ip_of(addresses & 0xFFFF_FFFF)),
            (ports >> 16) & 0xFFFF,
            ports & 0xFF,
        )

    def batch(self, events: np.ndarray) -> TranslationBatch:
        """Name `events` (probes.socklb.EVENT_DTYPE; the batch keeps the array: pass a copy of a
        reused buffer) and remember their links."""
        n = len(events)
        addresses = events["vip"].astype(_U64) << _U64(32)
        addresses |= events["backend_ip"]
        ports = events["vport"].astype(_U64) << _U64(32)
        ports |= events["backend_port"].astype(_U64) << _U64(16)
        ports |= events["proto"]
        keys = np.stack((events["cgroup_id"].astype(_U64), addresses, ports), axis=1)
        distinct, numbers = _distinct_rows(keys)
        services = self.enricher.services
        # what the names come from: the directory (its version), the Services (their owner
        # table, a new object when they change)
        version = self.enricher.directory.version
        owners = services.owners() if services else None
        if version != self._known_version or owners is not self._known_owners:
            self._known.clear()
            self._known_version, self._known_owners = version, owners
        names = [self._names(*key) for key in distinct.tolist()]
        if self.links is not None and n:
            self._remember(events, names, numbers)
        return TranslationBatch(
            events, node=self.node, wall_offset=self.wall_offset, names=names, keys=numbers
        )

    def _remember(
        self, events: np.ndarray, names: list[TranslationNames], keys: np.ndarray
    ) -> None:
        assert self.links is not None
        n = len(keys)
        if len(names) <= _FEW:
            last = np.array([n - 1 - int(np.argmax(keys[::-1] == k)) for k in range(len(names))])
            distinct = np.arange(len(names))
        else:
            distinct, from_end = np.unique(keys[::-1], return_index=True)
            last = n - 1 - from_end  # each key's last event
        order = np.argsort(last)
        times = events["ktime_ns"][last[order]].tolist()
        for key, time in zip(distinct[order].tolist(), times, strict=True):
            found = names[key]
            if found.link_key is not None:
                self.links.remember(found.link_key, found.link, time + self.wall_offset)


def _distinct_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of a 2-D key array and each row's number among them. A batch holds a
    few distinct keys (clients x services x backends): compared a key at a time while they are
    few (np.unique of rows sorts, ~50 us even on a small batch)."""
    n = len(keys)
    numbers = np.full(n, -1, np.intp)
    distinct: list[np.ndarray] = []
    left = 0  # the first row not numbered yet
    while left < n and len(distinct) < _FEW:
        row = keys[left]
        numbers[(keys == row).all(axis=1)] = len(distinct)
        distinct.append(row)
        unnumbered = np.flatnonzero(numbers < 0)
        left = int(unnumbered[0]) if len(unnumbered) else n
    if left < n:  # many: sort them all
        rows, numbers = np.unique(keys, axis=0, return_inverse=True)
        return rows, numbers.reshape(n)
    return np.array(distinct, _U64).reshape(len(distinct), keys.shape[1]), numbers


assert EVENT_DTYPE.names is not None and set(TranslationBatch.ROW_FIELDS) <= set(EVENT_DTYPE.names)
