"""The flow ring's columnar batches as filterable columns: what makes a selective GetFlows cheap.

A full ring holds 65,535 flows, mostly in columnar batches (collector.columns.FlowBatch) whose
Flow objects are built only when read (10-40 us each): matching a filter against built flows
would cost seconds on a cold ring. Instead the Observer asks a `RingIndex` for the entries whose
columns pass a mask (flowscope.flow.protofilter.FlowSelection.prefilter plus the time window),
and builds and checks with the exact matcher only those.

`batch_columns` describes a run of chunks as one FlowColumns, with what named_flow
(collector.datapath_flows) would put in each row's Flow: Hubble's numbers, the l4 protocol, the
event type and sub-type, and the names (endpoints, services, node) as indexes into lists of the
distinct names the rows use. Records kept any other way (lost events, the tracepoints' and the
socket LB's records) are opaque rows: every mask passes them, and the exact matcher decides.

The index follows the ring by sequence numbers: the chunks appended since the last query become
one segment (columns built once, a few vectorised passes whatever the chunk sizes); segments whose
rows all left the ring are dropped, and many small segments are merged into one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from collector.columns import FlowBatch
from collector.ring import Chunk, FlowRing, RingEntry
from dataplane.maps.flowevent import EVENT_DTYPE, IS_REPLY_UNKNOWN
from flowscope.flow.model import (
    SCTP,
    TCP,
    UDP,
    EventType,
    ICMPv4,
    IPVersion,
    MessageType,
    TraceObservationPoint,
    Verdict,
)
from flowscope.flow.protofilter import (
    IS_REPLY_FALSE,
    IS_REPLY_TRUE,
    PROTOCOL_NUMBERS,
    FlowColumns,
)

MERGE_AT = 8  # segments an index keeps before merging them into one
_DROPPED = int(Verdict.DROPPED)
_POLICY_VERDICT = int(MessageType.POLICY_VERDICT)
# the protocols named_flow gives an l4 (collector.datapath_flows._l4)
_L4 = np.array([PROTOCOL_NUMBERS[c] for c in (TCP, UDP, SCTP, ICMPv4)])
_PORTED = np.array([PROTOCOL_NUMBERS[c] for c in (TCP, UDP, SCTP)])
_TCP = PROTOCOL_NUMBERS[TCP]


def _trace_sub_type(obs_point: int) -> int | None:
    """The sub-type of a trace event seen at `obs_point`, as named_flow makes it (None: a point
    the model does not know, whose flow cannot be described here)."""
    try:
        return EventType.trace(TraceObservationPoint(obs_point)).sub_type
    except ValueError:
        return None


# by the record's obs_point (a u8): the trace sub-type, and whether the point is unknown
_TRACE_SUB = np.array([_trace_sub_type(p) or 0 for p in range(256)], np.int64)
_UNKNOWN_POINT = np.array([_trace_sub_type(p) is None for p in range(256)], bool)


def batch_columns(chunks: Sequence[Chunk]) -> tuple[FlowColumns, np.ndarray]:
    """The chunks' records as one FlowColumns (in order), and each chunk's first row."""
    lengths = np.fromiter((len(c) for c in chunks), np.int64, len(chunks))
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n = int(offsets[-1])
    batches = [c for c in chunks if isinstance(c, FlowBatch)]
    is_batch = np.fromiter((isinstance(c, FlowBatch) for c in chunks), bool, len(chunks))
    described = np.repeat(is_batch, lengths)
    every = len(batches) == len(chunks)
    rows = slice(None) if every else np.flatnonzero(described)
    sizes = lengths[is_batch]

    def column(values: np.ndarray | int, dtype: type, fill: int = 0) -> np.ndarray:
        if np.isscalar(values):
            values = np.full(len(ev), values, dtype)
        if every:
            return np.asarray(values, dtype)
        out = np.full(n, fill, dtype)
        out[rows] = values
        return out

    ev = _concatenate([b.events for b in batches])
    proto = ev["proto"]
    verdict = ev["verdict"]
    dropped = verdict == _DROPPED
    has_l4 = np.isin(proto, _L4)
    ported = np.isin(proto, _PORTED)
    walls = np.repeat(np.fromiter((b.wall_offset for b in batches), np.int64, len(batches)), sizes)
    drop_reason = np.where(dropped, ev["drop_reason"], 0)
    # the event type as named_flow derives it: a drop, a policy verdict, or a trace at its point
    trace_sub = _TRACE_SUB[ev["obs_point"]]
    unknown_point = _UNKNOWN_POINT[ev["obs_point"]]
    policy = ev["event_type"] == _POLICY_VERDICT
    event_type = np.where(
        dropped, int(MessageType.DROP), np.where(policy, _POLICY_VERDICT, int(MessageType.TRACE))
    )
    sub_type = np.where(dropped, ev["drop_reason"], np.where(policy, 0, trace_sub))
    raw_reply = ev["is_reply"]
    reply = np.where(
        raw_reply == IS_REPLY_UNKNOWN,
        2,
        np.where(raw_reply == 0, IS_REPLY_FALSE, IS_REPLY_TRUE),
    )
    endpoint_lists, ends = _ends(batches, sizes)
    services, source_service, destination_service = _services(batches, sizes, raw_reply)
    nodes = sorted({b.node for b in batches})
    node = np.repeat(
        np.fromiter((nodes.index(b.node) for b in batches), np.int32, len(batches)), sizes
    )
    opaque = ~described
    if unknown_point.any():  # named_flow cannot build these: let the exact matcher see them
        opaque[np.flatnonzero(described)[unknown_point & ~dropped & ~policy]] = True
    columns = FlowColumns(
        time_ns=column(ev["ktime_ns"].astype(np.int64) + walls, np.int64),
        source_ip=column(_address(ev["saddr"]), np.uint32),
        destination_ip=column(_address(ev["daddr"]), np.uint32),
        protocol=column(np.where(has_l4, proto, 0), np.uint8),
        source_port=column(np.where(ported, ev["sport"], 0), np.uint16),
        destination_port=column(np.where(ported, ev["dport"], 0), np.uint16),
        tcp_flags=column(np.where(proto == _TCP, ev["tcp_flags"], 0), np.uint16),
        verdict=column(verdict, np.uint8),
        drop_reason=column(drop_reason, np.uint16),
        event_type=column(event_type, np.uint8),
        event_sub_type=column(sub_type, np.int64),
        traffic_direction=column(ev["traffic_direction"], np.uint8),
        ip_version=column(int(IPVersion.IPv4), np.uint8),
        is_reply=column(reply, np.uint8),
        ends=column(ends, np.int64, -1),
        endpoint_lists=endpoint_lists,
        source_service=column(source_service, np.int64, -1),
        destination_service=column(destination_service, np.int64, -1),
        services=services,
        node=column(node, np.int64, -1),
        nodes=nodes,
        opaque=opaque,
    )
    return columns, offsets[:-1]


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """Records of EVENT_DTYPE in one array: joined as bytes (numpy's concatenate of structured
    arrays checks their fields pair by pair, ~0.1 ms an array)."""
    if not arrays:
        return np.zeros(0, EVENT_DTYPE)
    # tobytes: ~0.5 us an array, where a memoryview of a structured array costs ~5
    return np.frombuffer(b"".join([a.tobytes() for a in arrays]), EVENT_DTYPE)


def _address(column: np.ndarray) -> np.ndarray:
    """Network-order u32 fields (dataplane.maps.netorder) as the addresses' numbers."""
    return column.astype("<u4").view(">u4").astype(np.uint32)


def _ends(batches: list[FlowBatch], sizes: np.ndarray) -> tuple[list, np.ndarray]:
    """The lists of (source, destination) pairs the batches index, and each row's pair as
    (list << 32 | index): batches of one namer share its growing list of pairs."""
    if not batches:
        return [], np.zeros(0, np.int64)
    held = [b.endpoints for b in batches]
    ids = list(map(id, held))
    lists = dict(zip(ids, held, strict=True))
    order = {key: i for i, key in enumerate(lists)}
    ordinal = np.fromiter(map(order.__getitem__, ids), np.int64, len(ids))
    keyed = np.repeat(ordinal << 32, sizes)
    keyed |= np.concatenate([b.ends for b in batches]).astype(np.int64)
    return list(lists.values()), keyed


def _services(
    batches: list[FlowBatch], sizes: np.ndarray, raw_reply: np.ndarray
) -> tuple[list, np.ndarray, np.ndarray]:
    """The services the rows name, and each row's source and destination service (-1: none):
    a translated connection names its service as the destination of the client's packets and
    as the source of the backend's replies (named_flow)."""
    n = int(sizes.sum()) if len(sizes) else 0
    none = np.full(n, -1, np.int64)
    if not batches:
        return [], none, none.copy()
    links = np.concatenate([b.links for b in batches]).astype(np.int64)
    linked = links >= 0
    if not linked.any():
        return [], none, none.copy()
    which = np.repeat(np.arange(len(batches), dtype=np.int64), sizes)
    keys = (which[linked] << 32) | links[linked]
    distinct, position = np.unique(keys, return_inverse=True)
    services: list = []
    number_of: dict = {}
    dense = np.full(len(distinct), -1, np.int64)
    for i, key in enumerate(distinct.tolist()):
        service = batches[key >> 32].link_names[key & 0xFFFF_FFFF].service
        if service is not None:
            if service not in number_of:
                number_of[service] = len(services)
                services.append(service)
            dense[i] = number_of[service]
    row_service = none.copy()
    row_service[linked] = dense[position.reshape(-1)]
    # named_flow: `link and not ev.is_reply` -> destination (an unknown reply counts as not)
    reply = (raw_reply != 0) & (raw_reply != IS_REPLY_UNKNOWN)
    source = np.where(reply, row_service, -1)
    destination = np.where(reply, -1, row_service)
    return services, source, destination


@dataclass(frozen=True, eq=False)
class _Segment:
    start: int  # the sequence number of its first row
    columns: FlowColumns  # no chunk: a segment keeps no record alive once the ring lets go

    @property
    def end(self) -> int:
        return self.start + len(self.columns)


class RingIndex:
    """A columnar view of a FlowRing, brought up to date at each query."""

    def __init__(self, ring: FlowRing) -> None:
        self.ring = ring
        self._segments: list[_Segment] = []
        self._upto = 0  # the sequence number after the last one indexed

    def refresh(self) -> None:
        ring = self.ring
        first = ring.first_seq
        self._segments = [s for s in self._segments if s.end > first]
        if ring.seen > self._upto:
            self._segments.append(_segment(ring.chunks_from(self._upto)))
            self._upto = ring.seen
        indexed = sum(len(s.columns) for s in self._segments)
        # many small segments cost a numpy pass each; rows long gone cost memory
        if len(self._segments) > MERGE_AT or indexed > ring.capacity * 3 // 2:
            self._segments = [_segment(ring.chunks_from(0))]

    def select(
        self, mask_of: Callable[[FlowColumns], np.ndarray], *, newest_first: bool = False
    ) -> Iterator[RingEntry]:
        """The held entries whose rows `mask_of` passes, in ring order or newest first. Reads
        the ring as it is when called: take what you need before the ring changes."""
        self.refresh()
        ring = self.ring
        first = ring.first_seq
        chunks, starts = ring.held_chunks()
        segments = reversed(self._segments) if newest_first else self._segments
        for segment in segments:
            mask = np.asarray(mask_of(segment.columns), bool)
            skip = first - segment.start
            if skip > 0:
                mask = mask.copy()
                mask[:skip] = False
            seqs = np.flatnonzero(mask) + segment.start
            if newest_first:
                seqs = seqs[::-1]
            chunk_of = np.searchsorted(starts, seqs, side="right") - 1
            for seq, k in zip(seqs.tolist(), chunk_of.tolist(), strict=True):
                yield RingEntry(chunks[k], seq - int(starts[k]))


def _segment(held: list[tuple[int, Chunk]]) -> _Segment:
    columns, _ = batch_columns([c for _, c in held])
    return _Segment(held[0][0], columns)
