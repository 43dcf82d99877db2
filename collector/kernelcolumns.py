"""The tracepoint probes' events (kernel drops, TCP state changes, retransmits) named a batch at a
time and kept as columns until someone reads them, as collector.columns does for the datapath.

A connection flood makes about four of these per connection (ESTABLISHED and CLOSE at each end),
so the collector's path does no Python work per event:
- the batch is the ring's records as one structured array (kernelevent.EVENT_DTYPE, drained with
  RingBuffer.drain_array);
- the events that say nothing new (`kernelflows.reportable`: benign drops, the datapath's own tc
  drops on an endpoint's veth) are left out by a mask: drop reasons compared as numbers, the
  datapath's devices asked once per distinct (namespace, interface) of the batch's tc drops;
- both addresses of every event are numbered by one KeyIndex of addresses; an address seen for
  the first time (or since the agent's directory changed) is named once, by the enricher's
  by_ip, and the batch keeps the names of its collection time;
- Flow objects (and their JSON lines) are built when a reader asks, once, by the same builder as
  the per-event path (kernelflows.build_kernel_flow): the flows are those of kernel_flow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from collector.columnbatch import ColumnBatch
from collector.columns import KeyIndex
from collector.enrich import Enricher
from collector.kernelflows import BENIGN_DROP_REASONS, TC_DROP_REASONS, build_kernel_flow
from dataplane.maps.kernelevent import EVENT_DTYPE, Kind, address_keys, address_of, state_name
from flowscope.flow.model import IP, Endpoint, Flow, IPVersion

_U64 = np.uint64
_SHIFT32 = _U64(32)
_DROP = np.uint8(Kind.DROP)
_FIRST_KIND, _LAST_KIND = np.uint8(min(Kind)), np.uint8(max(Kind))
_BENIGN, _TC = np.uint8(1), np.uint8(2)
# the values a flow needs, in this order (KernelBatch's rows)
ROW_FIELDS = (
    "kind",
    "ktime_ns",
    "protocol",
    "sport",
    "dport",
    "ifindex",
    "drop_reason",
    "old_state",
    "new_state",
)


class AddressName(NamedTuple):
    """An address as flows print it, and its endpoint when it was collected."""

    ip: str
    version: IPVersion
    endpoint: Endpoint


class KernelBatch(ColumnBatch):
    """One drain of the tracepoints' ring, reportable events only: the records and the names of
    both their addresses, as columns. A chunk of the flow ring (collector.ring)."""

    __slots__ = ("addresses", "destinations", "reason_names", "sources")

    ROW_FIELDS = ROW_FIELDS

    def __init__(
        self,
        events: np.ndarray,
        *,
        node: str,
        wall_offset: int,
        reason_names: Mapping[int, str],
        addresses: list[AddressName | None],
        sources: np.ndarray,
        destinations: np.ndarray,
    ) -> None:
        super().__init__(events, node, wall_offset)  # EVENT_DTYPE
        self.reason_names = reason_names
        self.addresses = addresses  # sources and destinations index this (None: no address)
        self.sources = sources
        self.destinations = destinations

    def _build(self, index: int) -> Flow:
        kind, ktime, protocol, sport, dport, ifindex, reason, old, new = self._row(index)
        source = self.addresses[self.sources[index]]
        destination = self.addresses[self.destinations[index]]
        if source is None or destination is None:
            ip, ends = None, (None, None)
        else:
            ip = IP(source.ip, destination.ip, source.version)
            ends = (source.endpoint, destination.endpoint)
        return build_kernel_flow(
            kind,
            ktime + self.wall_offset,
            ip,
            protocol,
            sport,
            dport,
            ifindex,
            ends,
            self.reason_names.get(reason) or str(reason),
            state_name(old) if kind == Kind.STATE else None,
            None if kind == Kind.DROP else state_name(new),
            self.node,
        )


class KernelNamer:
    """Names batches of the tracepoints' events for one node's collector (one per collector: it
    remembers the addresses it has named, and starts over when the agent's directory changes).

    `datapath_device(netns inode, ifindex)`: whether that interface carries the datapath's
    programs (their tc drops were reported by the datapath, with its reason)."""

    def __init__(
        self,
        enricher: Enricher,
        node: str,
        wall_offset: int,
        reason_names: Mapping[int, str],
        datapath_device: Callable[[int, int], bool] = lambda _netns, _ifindex: False,
    ) -> None:
        self.enricher = enricher
        self.node = node
        self.wall_offset = wall_offset
        self.reason_names = reason_names
        self.datapath_device = datapath_device
        # reason number -> _BENIGN, _TC or 0 (the last entry: every number past the table)
        self._reason_class = np.zeros(max(reason_names, default=0) + 2, np.uint8)
        for number, name in reason_names.items():
            if name in BENIGN_DROP_REASONS:
                self._reason_class[number] = _BENIGN
            elif name in TC_DROP_REASONS:
                self._reason_class[number] = _TC
        self._version: Any = object()
        self.addresses: KeyIndex[AddressName | None] = KeyIndex(self._address, words=3, bits=12)

    def _address(self, high: int, low: int, kind: int) -> AddressName | None:
        address = address_of(high, low, kind)
        if address is None:
            return None
        text = str(address)
        version = IPVersion.IPv4 if address.version == 4 else IPVersion.IPv6
        return AddressName(text, version, self.enricher.by_ip(text))

    def reportable(self, events: np.ndarray) -> np.ndarray:
        """kernelflows.reportable of every event, as a boolean column (events of an unknown
        kind are left out too, as kernelevent.decode does)."""
        kind = events["kind"]
        keep = (kind >= _FIRST_KIND) & (kind <= _LAST_KIND)
        drop = kind == _DROP
        if not drop.any():
            return keep
        # each reason number's class, by table (np.isin costs ~10 us a call on a small batch)
        reason = np.minimum(events["drop_reason"], len(self._reason_class) - 1)
        reason_class = self._reason_class[reason]
        keep &= ~(drop & (reason_class == _BENIGN))
        tc = np.flatnonzero(keep & drop & (reason_class == _TC))
        if len(tc):
            where = events["netns"][tc].astype(_U64) << _SHIFT32
            where |= events["ifindex"][tc]
            distinct, position = np.unique(where, return_inverse=True)
            own = np.array(
                [self.datapath_device(w >> 32, w & 0xFFFF_FFFF) for w in distinct.tolist()],
                bool,
            )
            keep[tc[own[position]]] = False
        return keep

    def batch(self, events: np.ndarray) -> KernelBatch:
        """Name the reportable `events` (EVENT_DTYPE; the batch keeps them, or a copy of the
        reportable ones: pass a copy of a reused buffer)."""
        keep = self.reportable(events)
        if not keep.all():
            events = events[keep]
        version = self.enricher.directory.version
        if version != self._version:  # names may have changed: find them again
            self.addresses.reset()
            self._version = version
        n = len(events)
        numbers = self.addresses.lookup(*address_keys(events))
        return KernelBatch(
            events,
            node=self.node,
            wall_offset=self.wall_offset,
            reason_names=self.reason_names,
            addresses=self.addresses.values,
            sources=numbers[:n],
            destinations=numbers[n:],
        )


assert EVENT_DTYPE.names is not None and set(ROW_FIELDS) <= set(EVENT_DTYPE.names)
