"""GetFlowsResponse bytes for a whole columnar batch of the flow ring (the datapath's
collector.columns.FlowBatch, the tracepoints' collector.kernelcolumns.KernelBatch, the socket
LB's collector.translationcolumns.TranslationBatch), without building its Flow objects: the
Kafka publisher's hot path.

A batch's flows repeat themselves: the same two endpoints, verdict, event type, policy,
service, interface... and differ in a few fields: always the time, and per batch type the ports
and TCP flags (the datapath's and the tracepoints' l4) or the socket cookie (a translation). A
`_Layout` per batch type says which columns group the rows, what names a group's template and
which fields vary (`_Slot`s, by field number); the encoder does the rest for every type:
- the rows are grouped by everything but what varies (one `np.unique` over the layout's key);
  per distinct group a template is made once (and kept across batches, keyed by the names
  themselves): the Flow message's bytes without the varying fields, made by protoconv from the
  group's first row's Flow (the only Flow built, and only when the template is new), cut where
  the varying fields go;
- per row, only what varies (the Timestamp twice, the slots, the lengths that enclose them) is
  written, vectorised: each run of bytes between two template pieces is one numpy matrix for
  all rows, written a field at a time;
- a row is those runs and its template's pieces in turn: one `b"".join` over the batch.

Fields come in field-number order, as protobuf serialises them, so a row is byte for byte
protoconv's record_to_response(batch.record(i)).SerializeToString()
(tests/collector/test_batchencoder.py checks it on random batches of each type). Rows with a
time before 1970 go through protoconv, one Flow at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from collector.columnbatch import ColumnBatch
from collector.columns import FlowBatch
from collector.flowencoder import DEFAULT_TEMPLATES, varint
from collector.kernelcolumns import KernelBatch
from collector.translationcolumns import TranslationBatch
from dataplane.maps.kernelevent import Kind
from flowscope.flow.model import SCTP, TCP, UDP, Flow, TCPFlags
from flowscope.flow.protoconv import flow_to_proto, record_to_response

_NO_NAME = -1
_TCP, _UDP, _SCTP = 6, 17, 132
# Layer4's oneof field tags (flow.proto): TCP 1, UDP 2, SCTP 5, length-delimited
_L4_TAG = np.zeros(256, np.uint8)
_L4_TAG[_TCP], _L4_TAG[_UDP], _L4_TAG[_SCTP] = 0x0A, 0x12, 0x2A
_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")  # TCPFlags 1..9
_NS = 1_000_000_000
_FLOW_TIME, _FLOW_L4, _FLOW_SOCKET_COOKIE = 1, 6, 32  # Flow's field numbers (flow.proto)
_RESPONSE_TIME = varint((1001 << 3) | 2)  # GetFlowsResponse.time
_EMPTY_TIME = b"\x0a\x00"  # Flow.time of a template's flow (time 0): cut off
_INLINE = 64  # template pieces at most this long are copied with the varying bytes


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


class _Slot:
    """A field of Flow that varies row by row (its number is in the layout's `numbers`): pieces
    of bytes per row (padded matrices, a length per row; a row of length 0 has no such field)."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.pieces = pieces

    def length(self) -> np.ndarray:
        return sum((lengths for _, lengths in self.pieces), np.int64(0))


class _Layout:
    """What varies in one batch type's flows and what groups its rows.

    `key`: a structured array, one row per event, equal for rows whose flows differ only in
    the slots' fields (and the time); `names`: what a group's template is made of, by value
    (kept across batches: a batch's indexes are its own); `bare`: a row's Flow without the
    slots' fields and time; `slots`: the varying fields, in field-number order."""

    numbers: tuple[int, ...] = ()  # the slots' field numbers

    def key(self, batch, ev: np.ndarray, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def names(self, batch, key: np.void) -> tuple:
        raise NotImplementedError

    def bare(self, flow: Flow) -> Flow:
        raise NotImplementedError

    def slots(self, ev: np.ndarray) -> list[_Slot]:
        raise NotImplementedError


_PORTED = (TCP, UDP, SCTP)  # the l4 types with ports, written per row


def _ported(proto: np.ndarray) -> np.ndarray:
    return (proto == _TCP) | (proto == _UDP) | (proto == _SCTP)


def _l4_slot(proto: np.ndarray, sport: np.ndarray, dport: np.ndarray, flags=None) -> _Slot:
    """Flow.l4 of TCP/UDP/SCTP rows: the ports, and TCP's flags when given (the kernel's flag
    byte); other rows keep their l4 (ICMP's, or none) in the template."""
    ported = _ported(proto)
    sport_len = _SPORT_LEN[sport] * ported
    dport_len = _DPORT_LEN[dport] * ported
    inner_len = sport_len + dport_len
    pieces = [(_SPORT_FIELD[sport], sport_len), (_DPORT_FIELD[dport], dport_len)]
    if flags is not None:
        flags_len = _FLAGS_FIELD_LEN[flags] * (proto == _TCP)
        inner_len = inner_len + flags_len
        pieces.append((_FLAGS_FIELD[flags], flags_len))
    # TCP/UDP/SCTP's body (< 128 bytes) in its Layer4 oneof field, in Flow.l4
    head = np.empty((len(proto), 4), np.uint8)
    head[:, 0] = (_FLOW_L4 << 3) | 2
    head[:, 1] = inner_len + 2
    head[:, 2] = _L4_TAG[proto]
    head[:, 3] = inner_len
    return _Slot([(head, 4 * ported), *pieces])


_FLOW_KEY = np.dtype(
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
_FLOW_EVENT_FIELDS = _FLOW_KEY.names[3:]
_FLOW_INDEXES = 12  # bytes of the key that are the batch's own indexes (ends, allowed, links)


class _FlowLayout(_Layout):
    """The datapath's events: time, ports and TCP flags vary."""

    numbers = (_FLOW_L4,)

    def key(self, batch: FlowBatch, ev: np.ndarray, start: int, stop: int) -> np.ndarray:
        key = np.zeros(len(ev), _FLOW_KEY)
        key["ends"] = batch.ends[start:stop]
        key["allowed"] = batch.allowed[start:stop]
        key["links"] = batch.links[start:stop]
        for name in _FLOW_EVENT_FIELDS:
            key[name] = ev[name]
        # what does not reach the flow: flags of other protocols (the summary names TCP's);
        # ICMP's type and code of ported protocols (their l4 is written per row)
        ported = _ported(ev["proto"])
        key["tcp_flags"][ev["proto"] != _TCP] = 0
        key["icmp_type"][ported] = 0
        key["icmp_code"][ported] = 0
        return key

    def names(self, batch: FlowBatch, key: np.void) -> tuple:
        a, link = int(key["allowed"]), int(key["links"])
        return (
            batch.endpoints[int(key["ends"])],
            batch.allowed_names[a] if a != _NO_NAME else None,
            batch.link_names[link] if link != _NO_NAME else None,
            key.tobytes()[_FLOW_INDEXES:],
        )

    def bare(self, flow: Flow) -> Flow:
        l4 = None if isinstance(flow.l4, _PORTED) else flow.l4
        return dataclasses.replace(flow, time_ns=0, uuid="", l4=l4)

    def slots(self, ev: np.ndarray) -> list[_Slot]:
        return [_l4_slot(ev["proto"], ev["sport"], ev["dport"], ev["tcp_flags"])]


_KERNEL_KEY = np.dtype(
    [
        ("sources", "<i4"),
        ("destinations", "<i4"),
        ("ifindex", "<u4"),
        ("drop_reason", "<u4"),
        ("kind", "u1"),
        ("protocol", "u1"),
        ("old_state", "u1"),
        ("new_state", "u1"),
    ]
)
_KERNEL_INDEXES = 8  # sources, destinations
_DROP, _STATE = np.uint8(Kind.DROP), np.uint8(Kind.STATE)


class _KernelLayout(_Layout):
    """The tracepoints' events: time and ports vary (their TCP l4 has no flags)."""

    numbers = (_FLOW_L4,)

    def key(self, batch: KernelBatch, ev: np.ndarray, start: int, stop: int) -> np.ndarray:
        key = np.zeros(len(ev), _KERNEL_KEY)
        key["sources"] = batch.sources[start:stop]
        key["destinations"] = batch.destinations[start:stop]
        for name in _KERNEL_KEY.names[2:]:
            key[name] = ev[name]
        # what does not reach the flow (kernelflows.build_kernel_flow): a drop's reason is
        # named in drops only, the old state in state changes only, the new state not in drops
        kind = ev["kind"]
        key["drop_reason"][kind != _DROP] = 0
        key["old_state"][kind != _STATE] = 0
        key["new_state"][kind == _DROP] = 0
        return key

    def names(self, batch: KernelBatch, key: np.void) -> tuple:
        reason = int(key["drop_reason"])
        return (
            batch.addresses[int(key["sources"])],
            batch.addresses[int(key["destinations"])],
            batch.reason_names.get(reason) if int(key["kind"]) == Kind.DROP else None,
            key.tobytes()[_KERNEL_INDEXES:],
        )

    def bare(self, flow: Flow) -> Flow:
        l4 = None if isinstance(flow.l4, _PORTED) else flow.l4
        return dataclasses.replace(flow, time_ns=0, l4=l4)

    def slots(self, ev: np.ndarray) -> list[_Slot]:
        return [_l4_slot(ev["protocol"], ev["sport"], ev["dport"])]


_TRANSLATION_KEY = np.dtype([("keys", "<i8"), ("cgroup_id", "<u8")])
_COOKIE_TAG = varint((_FLOW_SOCKET_COOKIE << 3) | 0)


class _TranslationLayout(_Layout):
    """The socket LB's TRANSLATED events: time and socket cookie vary."""

    numbers = (_FLOW_SOCKET_COOKIE,)

    def key(self, batch: TranslationBatch, ev: np.ndarray, start: int, stop: int) -> np.ndarray:
        key = np.empty(len(ev), _TRANSLATION_KEY)
        key["keys"] = batch.keys[start:stop]
        key["cgroup_id"] = ev["cgroup_id"]
        return key

    def names(self, batch: TranslationBatch, key: np.void) -> tuple:
        return batch.names[int(key["keys"])], int(key["cgroup_id"])

    def bare(self, flow: Flow) -> Flow:
        return dataclasses.replace(flow, time_ns=0, socket_cookie=0)

    def slots(self, ev: np.ndarray) -> list[_Slot]:
        cookie = ev["sock_cookie"].astype(np.uint64)
        field = np.empty((len(ev), len(_COOKIE_TAG) + 10), np.uint8)
        field[:, : len(_COOKIE_TAG)] = np.frombuffer(_COOKIE_TAG, np.uint8)
        field[:, len(_COOKIE_TAG) :], length = _varints(cookie, 10)
        return [_Slot([(field, (length + len(_COOKIE_TAG)) * (cookie > 0))])]


_LAYOUTS: dict[type, _Layout] = {
    FlowBatch: _FlowLayout(),
    KernelBatch: _KernelLayout(),
    TranslationBatch: _TranslationLayout(),
}
COLUMNAR = tuple(_LAYOUTS)  # the batch types BatchEncoder encodes from their columns


class BatchEncoder:
    """`encode(batch, start, stop)`: rows start..stop of a FlowBatch, KernelBatch or
    TranslationBatch as GetFlowsResponses.

    `field`: frame each row as that field of an enclosing message (the Kafka FlowBatch's
    `responses`), so the rows can be copied into it as they are. Templates (at most
    `max_templates`, forgotten all at once when full) are kept across batches."""

    def __init__(self, max_templates: int = DEFAULT_TEMPLATES, field: int | None = None) -> None:
        self.max_templates = max_templates
        self._frame = varint((field << 3) | 2) if field is not None else b""
        self._templates: dict[tuple, tuple[bytes, ...]] = {}
        self._nodes: dict[str, bytes] = {}
        self.hits = self.misses = 0

    def encode(self, batch: ColumnBatch, start: int = 0, stop: int | None = None) -> EncodedRows:
        layout = _LAYOUTS.get(type(batch))
        if layout is None:
            raise TypeError(f"not a columnar batch BatchEncoder knows: {type(batch).__name__}")
        stop = len(batch) if stop is None else stop
        n = stop - start
        if n <= 0:
            return EncodedRows(b"", np.zeros(1, np.int64))
        ev = batch.events[start:stop]
        times = ev["ktime_ns"].astype(np.int64) + batch.wall_offset
        if (times < 0).any() or (ev["ktime_ns"] > np.uint64(2**62)).any():
            return self._one_by_one(batch, start, stop)

        # --- templates: one per distinct rest-of-the-flow, cut where the slots go ------------
        key = layout.key(batch, ev, start, stop)
        _, first, inverse = np.unique(
            key.view(np.dtype((np.void, key.dtype.itemsize))),
            return_index=True,
            return_inverse=True,
        )
        inverse = inverse.reshape(-1)
        templates = [
            self._template(layout, batch, start + int(i), key[int(i)]) for i in first.tolist()
        ]
        template_len = np.array([sum(map(len, t)) for t in templates], np.int64)[inverse]

        # --- the varying fields, all rows at once --------------------------------------------
        seconds, nanos = np.divmod(times, _NS)
        seconds, nanos = seconds.astype(np.uint64), nanos.astype(np.uint64)
        # Timestamp.seconds (field 1) and .nanos (field 2), each left out when 0, as proto3 does
        sec, sec_len = _field(0x08, seconds, 5)  # 2**35 s: the year 3058
        nano, nano_len = _field(0x10, nanos, 5)
        sec_len *= seconds > 0
        nano_len *= nanos > 0
        when_len = sec_len + nano_len  # < 128: its length is one byte
        slots = layout.slots(ev)
        flow_len = 2 + when_len + template_len
        for slot in slots:
            flow_len += slot.length()
        flow_varint, flow_varint_len = _varints(flow_len.astype(np.uint64), 4)
        node = self._node(batch.node)
        tail_len = len(node) + len(_RESPONSE_TIME) + 1 + when_len

        # a row: its head (with Flow.time), the template's pieces and the slots in turn, its
        # tail; written as runs of numpy-made bytes between the long template pieces (a piece
        # short in every group is copied into the run's matrix too), the first run of a row
        # beginning with the previous row's tail: the fewer pieces a row, the cheaper its join
        response_len = 1 + flow_varint_len + flow_len + tail_len
        run = _Pieces(n, glued=True)
        run.const(node + _RESPONSE_TIME, shift=1)  # GetFlowsResponse.node_name, .time
        run.byte(when_len, shift=1)
        run.add(sec, sec_len, shift=1)
        run.add(nano, nano_len, shift=1)
        row_len = response_len
        if self._frame:
            frame_varint, frame_varint_len = _varints(response_len.astype(np.uint64), 4)
            run.const(self._frame)
            run.add(frame_varint, frame_varint_len)
            row_len = row_len + len(self._frame) + frame_varint_len
        run.const(b"\x0a")  # GetFlowsResponse.flow
        run.add(flow_varint, flow_varint_len)
        run.const(b"\x0a")  # Flow.time
        run.byte(when_len)
        run.add(sec, sec_len)
        run.add(nano, nano_len)
        runs: list[_Pieces | list[bytes]] = []
        for j in range(len(slots) + 1):
            if j:
                for matrix, lengths in slots[j - 1].pieces:
                    run.add(matrix, lengths)
            piece = [t[j] for t in templates]
            width = max(map(len, piece))
            if width <= _INLINE:
                matrix = np.zeros((len(piece), width), np.uint8)
                for g, data in enumerate(piece):
                    matrix[g, : len(data)] = np.frombuffer(data, np.uint8)
                run.add(matrix[inverse], np.array([len(d) for d in piece], np.int64)[inverse])
            else:
                found = np.empty(len(piece), object)
                found[:] = piece
                runs += [run, found[inverse].tolist()]
                run = _Pieces(n)
        runs.append(run)

        # --- rows: the runs' slices and the long pieces, interleaved ------------------------
        columns: list[list[bytes]] = []
        last = b""  # the last row's tail
        for part in runs:
            if isinstance(part, list):
                columns.append(part)
            elif part.blocks:
                data, lengths = part.packed()
                bounds = np.zeros(len(lengths) + 1, np.int64)
                np.cumsum(lengths, out=bounds[1:])
                sliced = [data[a:b] for a, b in itertools.pairwise(bounds.tolist())]
                if part.glued:
                    last = sliced.pop()
                columns.append(sliced)
        stride = len(columns)
        parts: list[bytes] = [b""] * (stride * n + 1)
        for c, column in enumerate(columns):
            parts[c : stride * n : stride] = column
        parts[-1] = last
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(row_len, out=offsets[1:])
        return EncodedRows(b"".join(parts), offsets)

    def _template(
        self, layout: _Layout, batch: ColumnBatch, row: int, key: np.void
    ) -> tuple[bytes, ...]:
        names = (layout, batch.node, *layout.names(batch, key))
        template = self._templates.get(names)
        if template is not None:
            self.hits += 1
            return template
        self.misses += 1
        data = flow_to_proto(layout.bare(batch.record(row))).SerializeToString()
        template = _cut(data, layout.numbers)
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

    def _one_by_one(self, batch: ColumnBatch, start: int, stop: int) -> EncodedRows:
        rows = []
        for i in range(start, stop):
            data = record_to_response(batch.record(i)).SerializeToString()
            rows.append(self._frame + varint(len(data)) + data if self._frame else data)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        return EncodedRows(b"".join(rows), offsets)


def _cut(data: bytes, numbers: tuple[int, ...]) -> tuple[bytes, ...]:
    """A template (a Flow's bytes at time 0, without the slots' fields) without its empty
    Flow.time, cut before the first field past each of `numbers`: its fields are in
    field-number order, so the slots' fields go in the cuts."""
    if not data.startswith(_EMPTY_TIME):
        raise AssertionError(f"a template's flow starts with {data[:4]!r}, not an empty time")
    at, cuts, pending = len(_EMPTY_TIME), [], list(numbers)
    while at < len(data) and pending:
        tag, end = _read_varint(data, at)
        if tag >> 3 > pending[0]:
            cuts.append(at)
            pending.pop(0)
            continue
        wire = tag & 7
        if wire == 0:
            _, end = _read_varint(data, end)
        elif wire == 1:
            end += 8
        elif wire == 2:
            size, end = _read_varint(data, end)
            end += size
        elif wire == 5:
            end += 4
        else:
            raise AssertionError(f"wire type {wire} in a template")
        at = end
    cuts.extend([len(data)] * len(pending))
    edges = [len(_EMPTY_TIME), *cuts, len(data)]
    return tuple(data[a:b] for a, b in itertools.pairwise(edges))


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _varints(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each value's varint (uint64 column, values < 2**(7 * width)) as a row of a padded
    (n, width) matrix, and each one's length (at least 1: the varint of 0 is one byte)."""
    if width >= 3 and int(values.max(initial=0)) < 65536:
        # lengths, mostly: looked up (the arithmetic is a dozen numpy calls)
        matrix = np.zeros((len(values), width), np.uint8)
        matrix[:, :3] = _VARINT16[values]
        return matrix, _VARINT16_LEN[values]
    return _computed_varints(values, width)


def _computed_varints(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = values[:, None] >> shifts
    length = np.maximum((groups > 0).sum(axis=1), 1)
    more = np.arange(width) < (length - 1)[:, None]
    matrix = ((groups & np.uint64(0x7F)) | (more.astype(np.uint64) << np.uint64(7))).astype(
        np.uint8
    )
    return matrix, length


_VARINT16, _VARINT16_LEN = _computed_varints(np.arange(65536, dtype=np.uint64), 3)


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
    """A run of every row's bytes as pieces, each a padded (n, width) block (or one row for
    all) with a length per row; `packed()` keeps each piece's first bytes of each row, all rows
    back to back, with one boolean mask over one matrix (numpy keeps row-major order).

    `glued`: n + 1 rows, and a piece added with shift=1 goes in the next row (the rows' tails,
    each in front of the next row's head; the last one alone in row n)."""

    def __init__(self, n: int, glued: bool = False) -> None:
        self.n = n
        self.glued = glued
        self.blocks: list[tuple[np.ndarray, np.ndarray, int]] = []

    def add(self, matrix: np.ndarray, lengths: np.ndarray, shift: int = 0) -> None:
        self.blocks.append((matrix, lengths, shift))

    def const(self, data: bytes, shift: int = 0) -> None:
        if data:
            block = np.frombuffer(data, np.uint8)[None, :]
            self.add(block, np.full(self.n, len(data), np.int64), shift)

    def byte(self, values: np.ndarray, shift: int = 0) -> None:
        """One byte per row (values < 256)."""
        self.add(values[:, None], np.ones(self.n, np.int64), shift)

    def packed(self) -> tuple[bytes, np.ndarray]:
        """The rows' bytes back to back, and each row's length."""
        n, rows = self.n, self.n + self.glued
        widths = tuple(block.shape[1] for block, _, _ in self.blocks)
        matrix = np.empty((rows, sum(widths)), np.uint8)
        lengths = np.zeros((rows, len(widths)), np.int64)
        at = 0
        for p, (block, length, shift) in enumerate(self.blocks):
            matrix[shift : shift + n, at : at + widths[p]] = block
            lengths[shift : shift + n, p] = length
            at += widths[p]
        piece, column = _piece_columns(widths)
        mask = column < lengths[:, piece]
        return matrix[mask].tobytes(), lengths.sum(axis=1)


_COLUMNS: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}


def _piece_columns(widths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For a matrix of pieces `widths` wide: each column's piece, and its column in the piece."""
    found = _COLUMNS.get(widths)
    if found is None:
        piece = np.repeat(np.arange(len(widths)), widths)
        column = np.concatenate([np.arange(w) for w in widths])
        if len(_COLUMNS) >= 1024:
            _COLUMNS.clear()
        found = _COLUMNS[widths] = (piece, column)
    return found


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
