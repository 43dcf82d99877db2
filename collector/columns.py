"""The datapath's flow events named a batch at a time, kept as columns until someone reads them.

The collector's hot path (kernel ring -> flow ring) does no Python work per event:
- names are looked up per distinct key, not per event: each event's two endpoints are keyed by
  (address, identity, endpoint id), the policy that allowed a new connection by (cookie,
  direction), a translated connection's service by (client, backend, port, protocol). A
  `KeyIndex` numbers the keys with a few vectorised numpy passes over the batch (a hash table in
  arrays in front of an exact dict); only keys never seen before reach Python;
- a `FlowBatch` keeps the events (the kernel's records, one structured array) with an index
  column per name, pointing into lists of names found when the batch was collected: a pod that
  goes away later does not rename its old flows;
- Flow objects (and their JSON lines) are built only for the entries a reader asks for, once.

The socket LB's translations name packets of the same connection for a while after it was made
(collector.translations): each distinct connection key of a batch is looked up once, at the
batch's first event's time, and refreshed to its last event's time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from collector.columnbatch import ColumnBatch
from collector.datapath_flows import named_flow, policy_direction
from collector.enrich import Enricher
from collector.translations import Link, RecentTranslations
from dataplane.maps.flowevent import (
    EVENT_DTYPE,
    VERSION,
    CtState,
    FlowEvent,
    ObservationPoint,
    Verdict,
)
from dataplane.maps.netorder import ip_of
from flowscope.flow.model import Endpoint, Flow, Policy

V = TypeVar("V")

_U64 = np.uint64
_EMPTY = _U64(0xFFFF_FFFF_FFFF_FFFF)  # no key's last word is this: their high bits are 0
_MIX1 = _U64(0x9E37_79B9_7F4A_7C15)
_MIX2 = _U64(0xC2B2_AE3D_27D4_EB4F)
_MIX3 = _U64(0x1656_67B1_9E37_79F9)
_SHIFT32 = _U64(32)
_IPPROTO_TCP, _IPPROTO_UDP = 6, 17
# as plain numbers: numpy compares a column with an IntEnum member far slower
_FROM_ENDPOINT = np.uint8(ObservationPoint.FROM_ENDPOINT)
_FORWARDED = np.uint8(Verdict.FORWARDED)
_CT_NEW = np.uint8(CtState.NEW)
_LOW32 = 0xFFFF_FFFF
# struct flow_event as 64-bit words: src_identity and dst_identity are one, saddr and daddr
# another (little-endian: the source in the low half)
_WORDS = EVENT_DTYPE.itemsize // 8
_IDENTITIES = EVENT_DTYPE.fields["src_identity"][1] // 8
_ADDRESSES = EVENT_DTYPE.fields["saddr"][1] // 8
assert EVENT_DTYPE.fields["dst_identity"][1] == _IDENTITIES * 8 + 4
assert EVENT_DTYPE.fields["daddr"][1] == _ADDRESSES * 8 + 4
_NO_NAME = -1  # in an index column: the event has no such name (no policy, no service)

_address = functools.lru_cache(maxsize=65536)(lambda value: str(ip_of(value)))


class KeyIndex(Generic[V]):
    """Numbers for keys of a few 64-bit words, and a value made once per key.

    `lookup` answers whole columns of keys at once: a direct-mapped table of 2**bits slots
    (numpy arrays) answers the keys it holds; the others go to an exact dict, and the keys never
    seen get their value from `make(*words)`. `values[number]` is that value. `values` is only
    appended to, and replaced by a new list (never emptied) when the index starts over (past
    `limit` keys, or `reset()`), so a holder of the old list keeps its names. The last word of
    a key must be below 2**64 - 1 (that marks an empty slot)."""

    def __init__(
        self,
        make: Callable[..., V],
        *,
        words: int = 2,
        bits: int = 16,
        limit: int = 65536,
    ):
        self._make = make
        self._width = words
        self._bits = bits
        self._shift = _U64(64 - bits)
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        size = 1 << self._bits
        self._words = [np.zeros(size, _U64) for _ in range(self._width)]
        self._words[-1][:] = _EMPTY
        self._numbers = np.zeros(size, np.int32)
        self._exact: dict[tuple[int, ...], int] = {}
        self.values: list[V] = []

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, *words: np.ndarray) -> np.ndarray:
        """The number of each key (uint64 columns of equal length), as an int32 column."""
        if len(self.values) >= self.limit:
            self.reset()
        slots = _mix(words, _MIX1)
        slots >>= self._shift
        slots = slots.view(np.int64)  # numpy indexes with int64 without converting first
        numbers = self._numbers[slots]
        hit = self._words[0][slots] == words[0]
        for table, column in zip(self._words[1:], words[1:], strict=True):
            hit &= table[slots] == column
        if hit.all():
            return numbers
        missed = np.flatnonzero(~hit)
        keys = [column[missed] for column in words]
        numbers[missed] = found = self._numbers_of(keys)
        where = slots[missed]
        for table, column in zip(self._words, keys, strict=True):
            table[where] = column
        self._numbers[where] = found
        return numbers

    def _numbers_of(self, keys: list[np.ndarray]) -> np.ndarray:
        """The numbers of keys the table did not hold, from the exact dict (made if new);
        Python work per distinct key: the rows are grouped first by a second hash, checked."""
        _, first, inverse = np.unique(_mix(keys, _MIX2), return_index=True, return_inverse=True)
        if all((column[first][inverse] == column).all() for column in keys):
            distinct = zip(*(column[first].tolist() for column in keys), strict=True)
            return np.array([self._number(k) for k in distinct], np.int32)[inverse]
        # two keys of one second hash: rare enough for a row by row answer
        every = zip(*(column.tolist() for column in keys), strict=True)
        return np.array([self._number(k) for k in every], np.int32)

    def _number(self, key: tuple[int, ...]) -> int:
        number = self._exact.get(key)
        if number is None:
            number = self._exact[key] = len(self.values)
            self.values.append(self._make(*key))
        return number


def _mix(words: tuple[np.ndarray, ...] | list[np.ndarray], seed: np.uint64) -> np.ndarray:
    """A 64-bit hash of each row of key words (multiply-xor; numpy wraps uint64 products)."""
    mixed = words[0] * seed
    for column in words[1:]:
        mixed ^= column
        mixed *= _MIX3
    return mixed  # the top bits depend on every bit of every word


class Ends(NamedTuple):
    """A flow's two ends as named when its batch was collected: [0] and [1] are the source and
    destination endpoints (the columnar filters index them so), then the DNS names of their
    addresses."""

    source: Endpoint
    destination: Endpoint
    source_names: tuple[str, ...] = ()
    destination_names: tuple[str, ...] = ()


class FlowBatch(ColumnBatch):
    """One drain of the datapath's ring: the events and the names found for them, as columns.
    A chunk of the flow ring (collector.ring): `record(i)` builds entry i's Flow on demand."""

    __slots__ = ("allowed", "allowed_names", "endpoints", "ends", "link_names", "links")

    def __init__(
        self,
        events: np.ndarray,
        *,
        node: str,
        wall_offset: int,
        endpoints: list[Ends],
        ends: np.ndarray,
        allowed_names: list[tuple[Policy, ...]],
        allowed: np.ndarray,
        link_names: list[Link],
        links: np.ndarray,
    ) -> None:
        super().__init__(events, node, wall_offset)  # EVENT_DTYPE
        self.endpoints = endpoints  # (source, destination) pairs, indexed by ends
        self.ends = ends
        self.allowed_names = allowed_names  # allowed indexes these, or is _NO_NAME
        self.allowed = allowed
        self.link_names = link_names  # links indexes these, or is _NO_NAME
        self.links = links

    def event(self, index: int) -> FlowEvent:
        return FlowEvent.from_values(dict(zip(EVENT_DTYPE.names, self._row(index), strict=True)))

    def _build(self, index: int) -> Flow:
        allowed = int(self.allowed[index])
        link = int(self.links[index])
        ends = self.endpoints[self.ends[index]]
        return named_flow(
            self.event(index),
            ends.source,
            ends.destination,
            self.allowed_names[allowed] if allowed != _NO_NAME else (),
            self.link_names[link] if link != _NO_NAME else None,
            self.node,
            self.wall_offset,
            (ends.source_names, ends.destination_names),
        )


class DatapathNamer:
    """Names batches of the datapath's events for one node's collector (one per collector: it
    remembers the keys it has seen, and starts over when the agent's directory changes)."""

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
        self.translations = links
        self._version: Any = object()
        # both ends of an event at once, keyed by its identities, addresses, endpoint id and
        # observation point (which end the endpoint id belongs to)
        self.endpoints: KeyIndex[Ends] = KeyIndex(self._ends, words=3)
        self.policies: KeyIndex[tuple[Policy, ...]] = KeyIndex(self._allowed, bits=10)
        self.connections: KeyIndex[tuple[str, str, int, int]] = KeyIndex(self._connection)

    def _ends(self, identities: int, addresses: int, local: int) -> Ends:
        endpoint_id, from_endpoint = local >> 8, (local & 0xFF) == _FROM_ENDPOINT
        endpoint = self.enricher.endpoint
        source, destination = _address(addresses & _LOW32), _address(addresses >> 32)
        return Ends(
            endpoint(source, identities & _LOW32, endpoint_id if from_endpoint else 0),
            endpoint(destination, identities >> 32, 0 if from_endpoint else endpoint_id),
            self.enricher.names_of(source),
            self.enricher.names_of(destination),
        )

    def _allowed(self, cookie: int, direction: int) -> tuple[Policy, ...]:
        return self.enricher.allowed_by(cookie, policy_direction(direction))

    @staticmethod
    def _connection(client_backend: int, port_proto: int) -> tuple[str, str, int, int]:
        return (
            _address(client_backend >> 32),
            _address(client_backend & 0xFFFF_FFFF),
            port_proto >> 8,
            port_proto & 0xFF,
        )

    def batch(self, events: np.ndarray) -> FlowBatch:
        """Name `events` (EVENT_DTYPE; the batch keeps the array: pass a copy of a reused
        buffer). Raises ValueError when a record is of another version."""
        if len(events) and (events["version"] != VERSION).any():
            bad = sorted(set(events["version"][events["version"] != VERSION].tolist()))
            raise ValueError(f"flow event record versions {bad}, this reader knows {VERSION}")
        version = self.enricher.directory.version
        if version != self._version:  # names may have changed: find them again
            self.endpoints.reset()
            self.policies.reset()
            self._version = version
        n = len(events)
        # the record as 64-bit words: both identities are one word, both addresses another
        words = np.ascontiguousarray(events).view(_U64).reshape(n, _WORDS)
        local = events["endpoint_id"].astype(_U64)
        local <<= _U64(8)
        local |= events["obs_point"]
        ends = self.endpoints.lookup(words[:, _IDENTITIES], words[:, _ADDRESSES], local)
        endpoints = self.endpoints.values
        allowed = np.full(n, _NO_NAME, np.int32)
        new = (events["verdict"] == _FORWARDED) & (events["ct_state"] == _CT_NEW)
        if new.any():
            rows = np.flatnonzero(new)
            allowed[rows] = self.policies.lookup(
                events["policy_cookie"][rows].astype(_U64),
                events["traffic_direction"][rows].astype(_U64),
            )
        link_names, links = self._links(events)
        return FlowBatch(
            events,
            node=self.node,
            wall_offset=self.wall_offset,
            endpoints=endpoints,
            ends=ends,
            allowed_names=self.policies.values,
            allowed=allowed,
            link_names=link_names,
            links=links,
        )

    def _links(self, events: np.ndarray) -> tuple[list[Link], np.ndarray]:
        """The socket-LB translation of each TCP/UDP event's connection, if one is known."""
        n = len(events)
        links = np.full(n, _NO_NAME, np.int32)
        table = self.translations
        if table is None or not len(table) or not n:
            return [], links
        proto = events["proto"]
        rows = np.flatnonzero((proto == _IPPROTO_TCP) | (proto == _IPPROTO_UDP))
        if not len(rows):
            return [], links
        ev = events[rows]
        reply = ev["is_reply"] == 1  # the backend's packet: the client is its destination
        client = np.where(reply, ev["daddr"], ev["saddr"]).astype(_U64)
        backend = np.where(reply, ev["saddr"], ev["daddr"]).astype(_U64)
        port = np.where(reply, ev["sport"], ev["dport"]).astype(_U64)
        numbers = self.connections.lookup(
            (client << _SHIFT32) | backend, (port << _U64(8)) | ev["proto"].astype(_U64)
        )
        distinct, position = np.unique(numbers, return_inverse=True)
        times = ev["ktime_ns"]
        first = int(times.min()) + self.wall_offset
        last = int(times.max()) + self.wall_offset
        names: list[Link] = []
        name_of = np.full(len(distinct), _NO_NAME, np.int32)
        keys = self.connections.values
        for i, number in enumerate(distinct.tolist()):
            link = table.lookup(keys[number], first)
            if link is not None:
                table.lookup(keys[number], last)  # packets until `last` refresh it
                name_of[i] = len(names)
                names.append(link)
        links[rows] = name_of[position]
        return names, links
