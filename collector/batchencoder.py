"""GetFlowsResponse bytes for a whole columnar batch (collector.columns.FlowBatch), without
building its Flow objects: the Kafka publisher's hot path.

A batch's flows repeat themselves: the same two endpoints, verdict, event type, policy,
service, interface... and differ in their time and their ports (and TCP flags). So:
- the rows are grouped by everything but time and ports (one `np.unique` over a key of the
  columns the flow is made of, plus the batch's name indexes); per distinct group a template is
  made once (and kept across batches, keyed by the names themselves): the Flow message's bytes
  without its time and l4, made by protoconv from the group's first row's Flow (the only Flow
  built, and only when the template is new);
- per row, only what varies (the Timestamp twice, the Layer4 with ports and flags, the lengths
  that enclose them) is written, vectorised: every row's head is a run of bytes in one numpy
  matrix, written a field at a time for all rows at once;
- a row is its head followed by its template: one `b"".join` over the batch.

Protobuf lets fields come in any order and merges a message field that comes twice, so a row
is not byte-for-byte what protoconv serialises, but decodes to exactly the same message
(tests/collector/test_batchencoder.py checks it on random batches). Rows whose l4 is ICMP (or
none) keep their l4 in the template; rows with a time before 1970 go through
collector.flowencoder, one Flow at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from collector.columns import FlowBatch
from collector.flowencoder import DEFAULT_TEMPLATES, ResponseEncoder, varint
from flowscope.flow.model import TCPFlags
from flowscope.flow.protoconv import flow_to_proto

_NO_NAME = -1
_TCP, _UDP, _SCTP = 6, 17, 132
# Layer4's oneof field tags (flow.proto): TCP 1, UDP 2, SCTP 5, length-delimited
_L4_TAG = np.zeros(256, np.uint8)
_L4_TAG[_TCP], _L4_TAG[_UDP], _L4_TAG[_SCTP] = 0x0A, 0x12, 0x2A
_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")  # TCPFlags 1..9
_NS = 1_000_000_000
_RESPONSE_TIME = varint((1001 << 3) | 2)  # GetFlowsResponse.time
_KEY = np.dtype(
    [
        ("ends", "<i4"),
        ("allowed", "<i4"),
        ("links", "<i4"),
        ("ifindex", "<u4"),
        ("policy_cookie", "<u4"),
        ("saddr", "<u4"),  # the endpoints' key holds them too; cheap to be sure
        ("daddr", "<u4"),
        ("drop_reason", "<u2"),
        ("event_type", "u1"),
        ("verdict", "u1"),
        ("traffic_direction", "u1"),
        ("obs_point", "u1"),
        ("is_reply", "u1"),
        ("proto", "u1"),
        ("tcp_flags", "u1"),
        ("icmp_type", "u1"),
        ("icmp_code", "u1"),
    ]
)
_EVENT_KEY_FIELDS = _KEY.names[3:]


def _flag_bytes(bits: int) -> bytes:
    flags = TCPFlags.from_bits(bits)
    return b"".join(
        bytes(((i << 3), 1)) for i, name in enumerate(_FLAG_NAMES, 1) if getattr(flags, name)
    )


# TCP.flags' body per value of the kernel's flag byte, as a padded matrix and lengths
_FLAGS = [_flag_bytes(bits) for bits in range(256)]
_FLAGS_WIDTH = max(len(f) for f in _FLAGS)
_FLAGS_MATRIX = np.zeros((256, max(_FLAGS_WIDTH, 1)), np.uint8)
for _bits, _body in enumerate(_FLAGS):
    _FLAGS_MATRIX[_bits, : len(_body)] = np.frombuffer(_body, np.uint8)
_FLAGS_LEN = np.array([len(f) for f in _FLAGS], np.int64)


@dataclass(frozen=True)
class EncodedRows:
    """Rows of a batch as GetFlowsResponse bytes, back to back in `data` (each preceded by the
    tag and length of the enclosing message's field when encoded `framed`). Row i is
    data[offsets[i]:offsets[i + 1]]."""

    data: bytes
    offsets: np.ndarray  # int64, len(rows) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, index: int) -> bytes:
        return self.data[int(self.offsets[index]) : int(self.offsets[index + 1])]


class BatchEncoder:
    """`encode(batch, start, stop)`: rows start..stop of a FlowBatch as GetFlowsResponses.

    `field`: frame each row as that field of an enclosing message (the Kafka FlowBatch's
    `responses`), so the rows can be copied into it as they are. Templates (at most
    `max_templates`, forgotten all at once when full) are kept across batches."""

    def __init__(self, max_templates: int = DEFAULT_TEMPLATES, field: int | None = None) -> None:
        self.max_templates = max_templates
        self._frame = varint((field << 3) | 2) if field is not None else b""
        self._templates: dict[tuple, bytes] = {}
        self._nodes: dict[str, bytes] = {}
        self._single = ResponseEncoder(max_templates)
        self.hits = self.misses = 0

    def encode(self, batch: FlowBatch, start: int = 0, stop: int | None = None) -> EncodedRows:
        stop = len(batch) if stop is None else stop
        n = stop - start
        if n <= 0:
            return EncodedRows(b"", np.zeros(1, np.int64))
        ev = batch.events[start:stop]
        times = ev["ktime_ns"].astype(np.int64) + batch.wall_offset
        if (times < 0).any() or (ev["ktime_ns"] > np.uint64(2**62)).any():
            return self._one_by_one(batch, start, stop)
        proto = ev["proto"]
        ported = (proto == _TCP) | (proto == _UDP) | (proto == _SCTP)
        tcp = proto == _TCP

        # --- templates: one per distinct rest-of-the-flow ------------------------------------
        key = np.zeros(n, _KEY)
        key["ends"] = batch.ends[start:stop]
        key["allowed"] = batch.allowed[start:stop]
        key["links"] = batch.links[start:stop]
        for name in _EVENT_KEY_FIELDS:
            key[name] = ev[name]
        # what does not reach the flow: flags of other protocols (the summary names TCP's);
        # ICMP's type and code of ported protocols (their l4 is written per row)
        key["tcp_flags"][~tcp] = 0
        key["icmp_type"][ported] = 0
        key["icmp_code"][ported] = 0
        _, first, inverse = np.unique(
            key.view(np.dtype((np.void, _KEY.itemsize))), return_index=True, return_inverse=True
        )
        inverse = inverse.reshape(-1)
        templates = [self._template(batch, start + int(i), key[int(i)]) for i in first.tolist()]
        template_len = np.array([len(t) for t in templates], np.int64)[inverse]

        # --- the varying fields, all rows at once --------------------------------------------
        seconds, nanos = np.divmod(times, _NS)
        seconds, nanos = seconds.astype(np.uint64), nanos.astype(np.uint64)
        # Timestamp.seconds (field 1) and .nanos (field 2), each left out when 0, as proto3 does
        sec, sec_len = _field(0x08, seconds, 5)  # 2**35 s: the year 3058
        nano, nano_len = _field(0x10, nanos, 5)
        sec_len *= seconds > 0
        nano_len *= nanos > 0
        when_len = sec_len + nano_len  # < 128: its length is one byte
        sport, dport, flags = ev["sport"], ev["dport"], ev["tcp_flags"]
        sport_len = _SPORT_LEN[sport] * ported
        dport_len = _DPORT_LEN[dport] * ported
        flags_len = _FLAGS_FIELD_LEN[flags] * tcp
        # TCP/UDP/SCTP's body (< 128 bytes) in its Layer4 oneof field, in Flow.l4
        inner_len = sport_len + dport_len + flags_len
        l4_head = np.empty((n, 4), np.uint8)
        l4_head[:, 0] = 0x32  # Flow.l4
        l4_head[:, 1] = inner_len + 2
        l4_head[:, 2] = _L4_TAG[proto]
        l4_head[:, 3] = inner_len
        l4_len = (inner_len + 4) * ported
        body_len = 2 + when_len + l4_len + template_len
        body, body_varint_len = _varints(body_len.astype(np.uint64), 4)
        node = self._node(batch.node)
        response_len = len(node) + len(_RESPONSE_TIME) + 1 + when_len
        response_len += 1 + body_varint_len + body_len
        pieces = _Pieces(n, 120 + len(node))
        if self._frame:
            pieces.const(self._frame)
            pieces.add(*_varints(response_len.astype(np.uint64), 4))
        pieces.const(node + _RESPONSE_TIME)
        pieces.byte(when_len)
        pieces.add(sec, sec_len)
        pieces.add(nano, nano_len)
        pieces.const(b"\x0a")  # GetFlowsResponse.flow
        pieces.add(body, body_varint_len)
        pieces.const(b"\x0a")  # Flow.time
        pieces.byte(when_len)
        pieces.add(sec, sec_len)
        pieces.add(nano, nano_len)
        pieces.add(l4_head, 4 * ported)
        pieces.add(_SPORT_FIELD[sport], sport_len)
        pieces.add(_DPORT_FIELD[dport], dport_len)
        pieces.add(_FLAGS_FIELD[flags], flags_len)

        # --- rows: head, then template ----------------------------------------------------
        heads, head_len = pieces.packed()
        bounds = np.zeros(n + 1, np.int64)
        np.cumsum(head_len, out=bounds[1:])
        edges = bounds.tolist()
        parts: list[bytes] = [b""] * (2 * n)
        parts[0::2] = [heads[a:b] for a, b in itertools.pairwise(edges)]
        parts[1::2] = [templates[k] for k in inverse.tolist()]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(head_len + template_len, out=offsets[1:])
        return EncodedRows(b"".join(parts), offsets)

    def _template(self, batch: FlowBatch, row: int, key: np.void) -> bytes:
        e, a, link = int(key["ends"]), int(key["allowed"]), int(key["links"])
        names = (
            batch.node,
            batch.endpoints[e],
            batch.allowed_names[a] if a != _NO_NAME else None,
            batch.link_names[link] if link != _NO_NAME else None,
            key.tobytes()[12:],  # the event's own columns (the indexes are per batch)
        )
        template = self._templates.get(names)
        if template is not None:
            self.hits += 1
            return template
        self.misses += 1
        flow = batch.record(row)
        ported = int(key["proto"]) in (_TCP, _UDP, _SCTP)
        bare = dataclasses.replace(flow, time_ns=0, uuid="", l4=None if ported else flow.l4)
        template = flow_to_proto(bare).SerializeToString()
        if len(self._templates) >= self.max_templates:
            self._templates.clear()
        self._templates[names] = template
        return template

    def _node(self, node: str) -> bytes:
        found = self._nodes.get(node)
        if found is None:
            data = node.encode()
            # GetFlowsResponse.node_name (1000), absent when empty as protobuf leaves it
            found = varint((1000 << 3) | 2) + varint(len(data)) + data if data else b""
            self._nodes[node] = found
        return found

    def _one_by_one(self, batch: FlowBatch, start: int, stop: int) -> EncodedRows:
        rows = []
        for i in range(start, stop):
            data = self._single.encode(batch.record(i))
            rows.append(self._frame + varint(len(data)) + data if self._frame else data)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        return EncodedRows(b"".join(rows), offsets)


def _varints(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each value's varint (uint64 column, values < 2**(7 * width)) as a row of a padded
    (n, width) matrix, and each one's length (at least 1: the varint of 0 is one byte)."""
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = values[:, None] >> shifts
    length = np.maximum((groups > 0).sum(axis=1), 1)
    more = np.arange(width) < (length - 1)[:, None]
    matrix = ((groups & np.uint64(0x7F)) | (more.astype(np.uint64) << np.uint64(7))).astype(
        np.uint8
    )
    return matrix, length


def _field(tag: int, values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A varint field per row: its tag (one byte) and the value's varint, padded; lengths."""
    matrix = np.empty((len(values), width + 1), np.uint8)
    matrix[:, 0] = tag
    matrix[:, 1:], length = _varints(values, width)
    return matrix, length + 1


def _table(tag: int) -> tuple[np.ndarray, np.ndarray]:
    """The varint field `tag` of every 16-bit number (a port), left out for 0."""
    matrix, length = _field(tag, np.arange(65536, dtype=np.uint64), 3)
    length[0] = 0
    return matrix, length


_SPORT_FIELD, _SPORT_LEN = _table(0x08)  # TCP/UDP/SCTP.source_port
_DPORT_FIELD, _DPORT_LEN = _table(0x10)  # .destination_port
# TCP.flags (field 3) per value of the kernel's flag byte: tag, length, TCPFlags' body
_FLAGS_FIELD = np.zeros((256, 2 + _FLAGS_MATRIX.shape[1]), np.uint8)
_FLAGS_FIELD[:, 0] = 0x1A
_FLAGS_FIELD[:, 1] = _FLAGS_LEN
_FLAGS_FIELD[:, 2:] = _FLAGS_MATRIX
_FLAGS_FIELD_LEN = _FLAGS_LEN + 2


class _Pieces:
    """Every row's head as pieces of bytes, each a padded (n, width) block of one matrix with a
    length per row; `packed()` keeps each piece's first bytes of each row, all rows back to
    back, with one boolean mask over the matrix (numpy keeps row-major order)."""

    def __init__(self, n: int, width: int) -> None:
        self.n = n
        self.matrix = np.empty((n, width), np.uint8)
        self.used = 0
        self.widths: list[int] = []
        self.lengths: list[np.ndarray] = []

    def add(self, matrix: np.ndarray, lengths: np.ndarray) -> None:
        width = matrix.shape[1]
        self.matrix[:, self.used : self.used + width] = matrix
        self.used += width
        self.widths.append(width)
        self.lengths.append(lengths)

    def const(self, data: bytes) -> None:
        self.add(np.frombuffer(data, np.uint8)[None, :], np.full(self.n, len(data)))

    def byte(self, values: np.ndarray) -> None:
        """One byte per row (values < 256)."""
        self.add(values[:, None], np.ones(self.n, np.int64))

    def packed(self) -> tuple[bytes, np.ndarray]:
        """The rows' bytes back to back, and each row's length."""
        lengths = np.stack(self.lengths, axis=1)
        piece = np.repeat(np.arange(len(self.widths)), self.widths)
        column = np.concatenate([np.arange(w) for w in self.widths])
        mask = column < lengths[:, piece]
        return self.matrix[:, : self.used][mask].tobytes(), lengths.sum(axis=1)


def merged_runs(items: list, max_rows: int) -> list:
    """`items` (a follower's take_runs(): entries, missed counts, (chunk, start, stop) runs)
    with consecutive runs of columnar batches named from the same lists (one collector's
    drains) joined into one batch of up to about `max_rows` rows: encoding pays a fixed price per
    call, and the collector publishes a small batch every few milliseconds. Order is kept."""
    out: list = []
    group: list[tuple[FlowBatch, int, int]] = []
    rows = 0

    def flush() -> None:
        nonlocal rows
        if len(group) == 1:
            out.append(group[0])
        elif group:
            batch = _joined(group)
            out.append((batch, 0, len(batch)))
        group.clear()
        rows = 0

    for item in items:
        if isinstance(item, tuple) and isinstance(item[0], FlowBatch):
            batch = item[0]
            if group and (rows >= max_rows or not _same_names(group[0][0], batch)):
                flush()
            group.append(item)
            rows += item[2] - item[1]
        else:
            flush()
            out.append(item)
    flush()
    return out


def _same_names(a: FlowBatch, b: FlowBatch) -> bool:
    return (
        a.endpoints is b.endpoints
        and a.allowed_names is b.allowed_names
        and a.node == b.node
        and a.wall_offset == b.wall_offset
    )


def _joined(runs: list[tuple[FlowBatch, int, int]]) -> FlowBatch:
    """One batch of the runs' rows (batches of the same endpoint and policy lists): the
    translations' names, one list per batch, are put end to end and the indexes moved."""
    first = runs[0][0]
    link_names: list = []
    links = []
    for batch, start, stop in runs:
        column = batch.links[start:stop]
        links.append(np.where(column >= 0, column + len(link_names), column).astype(np.int32))
        link_names.extend(batch.link_names)
    return FlowBatch(
        np.concatenate([b.events[s:e] for b, s, e in runs]),
        node=first.node,
        wall_offset=first.wall_offset,
        endpoints=first.endpoints,
        ends=np.concatenate([b.ends[s:e] for b, s, e in runs]),
        allowed_names=first.allowed_names,
        allowed=np.concatenate([b.allowed[s:e] for b, s, e in runs]),
        link_names=link_names,
        links=np.concatenate(links),
    )
