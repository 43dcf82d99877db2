"""A node's bounded on-disk spool: records that could not be published (the broker is down or
slow) wait here, and replay in order, oldest first, when it is back.

Layout: a directory of append-only segment files `<first seq, 20 digits>.seg`, each a run of

    length u32 | crc32 u32 | seq u64 | payload (length bytes)        (little endian)

where the CRC covers length, seq and payload, plus a file `ack` holding the highest acknowledged
sequence number (replaced atomically). Sequence numbers are the node's, strictly increasing
(the caller's, or the next one): a consumer that sees a record twice drops the duplicate by it.

Delivery is at least once: `read` hands out records from a cursor, the caller publishes them and
then calls `ack(seq)`; a crash between the two replays them after the restart (the cursor starts
again at the acknowledged position), and so does `rewind()` after a failed publish.

The bound (`max_bytes`, all segment files together) is kept by deleting the oldest segment, so
only the oldest records are ever dropped, never the one being appended. Every drop of records
not yet acknowledged is counted and reported as a `Dropped` range (`take_drops`), which the
publisher turns into a lost-event record. A record torn by a crash (short, or a CRC that does
not match) ends its segment: the file is cut there on open and the cut is counted.

Each append is one write(2) of the whole record, unbuffered, so a crash of the process loses no
acknowledged-to-the-caller record (an OS crash may; the spool does not fsync, by design: it is a
buffer for a broker outage, not a database). All calls are synchronous and small (one record's
write, or one batch's read), fine to call from the event loop; replaying a large batch can go
through asyncio.to_thread.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import os
import struct
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flowscope.errors import FlowscopeError

HEADER = struct.Struct("<IIQ")  # length, crc32, seq
_CRC_PREFIX = struct.Struct("<IQ")  # what the CRC covers before the payload: length, seq
_ACK = struct.Struct("<QQI")  # acked seq, last seq ever appended, crc32 of the two
SEGMENT_SUFFIX = ".seg"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MIN_SEGMENT_BYTES = 4096


@dataclass(frozen=True)
class SpoolRecord:
    seq: int
    payload: bytes


@dataclass(frozen=True)
class Dropped:
    """Records the bound pushed out before they were published: seqs first..last (the node's
    sequence may have gaps of records published directly, so `records` counts them)."""

    first_seq: int
    last_seq: int
    records: int
    bytes: int


@dataclass(frozen=True)
class SpoolStats:
    held_records: int  # appended, not yet acknowledged, not dropped
    held_bytes: int  # the segment files' size on disk
    max_bytes: int
    acked_seq: int
    last_seq: int
    dropped_records: int  # since this process opened the spool
    dropped_bytes: int
    torn_records: int  # cut off on open: torn or corrupt records (one per cut segment)
    torn_bytes: int


def record_bytes(payload_len: int) -> int:
    """What one record takes on disk."""
    return HEADER.size + payload_len


def encode(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(len(payload), seq)))
    return HEADER.pack(len(payload), crc, seq) + payload


@dataclass
class _Segment:
    path: Path
    seqs: array = field(default_factory=lambda: array("Q"))
    offsets: array = field(default_factory=lambda: array("Q"))
    size: int = 0

    @property
    def first_seq(self) -> int:
        return self.seqs[0]

    @property
    def last_seq(self) -> int:
        return self.seqs[-1]

    def unacked(self, acked: int) -> tuple[int, int, int, int]:
        """(records, bytes, first seq, last seq) of the records after `acked`."""
        i = bisect.bisect_right(self.seqs, acked)
        n = len(self.seqs) - i
        if n == 0:
            return 0, 0, 0, 0
        return n, self.size - self.offsets[i], self.seqs[i], self.seqs[-1]


def _scan(path: Path) -> tuple[_Segment, int]:
    """The segment's valid records, and how many bytes after them were cut (torn or corrupt)."""
    data = path.read_bytes()
    seg = _Segment(path)
    pos, prev = 0, -1
    while pos + HEADER.size <= len(data):
        length, crc, seq = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if end > len(data) or seq <= prev:
            break
        payload = data[pos + HEADER.size : end]
        if zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(length, seq))) != crc:
            break
        seg.seqs.append(seq)
        seg.offsets.append(pos)
        pos, prev = end, seq
    seg.size = pos
    return seg, len(data) - pos


class Spool:
    """One node's spool in `directory` (created if absent; one process at a time holds it)."""

    def __init__(
        self,
        directory: Path | str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int | None = None,
    ) -> None:
        if max_bytes < 2 * MIN_SEGMENT_BYTES:
            raise FlowscopeError(
                f"spool max_bytes: {max_bytes} is too small",
                hint=f"use at least {2 * MIN_SEGMENT_BYTES} bytes",
            )
        # 16 segments: a drop at the bound loses about 1/16 of the spool, not all of it
        segment_bytes = segment_bytes or max(MIN_SEGMENT_BYTES, max_bytes // 16)
        if not MIN_SEGMENT_BYTES <= segment_bytes <= max_bytes // 2:
            raise FlowscopeError(
                f"spool segment_bytes: {segment_bytes} is out of range",
                hint=f"use {MIN_SEGMENT_BYTES}..{max_bytes // 2} (at most half of max_bytes)",
            )
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the last segment's, for appends
        self._acked = 0
        self._last = 0
        self._cursor = 0  # the last seq handed out by read()
        self._drops: list[Dropped] = []
        self._dropped_records = self._dropped_bytes = 0
        self._torn_records = self._torn_bytes = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise FlowscopeError(
                f"spool {self.directory} is in use by another process",
                hint="each node's agent has a spool of its own; stop the other agent first",
            ) from None
        self._recover()

    # --- opening -------------------------------------------------------------------------------

    def _recover(self) -> None:
        self._acked, self._last = self._read_ack()
        paths = sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}"))
        for path in paths:
            seg, cut = _scan(path)
            if cut:
                self._torn_records += 1
                self._torn_bytes += cut
                with open(path, "r+b") as f:
                    f.truncate(seg.size)
            if self._segments and seg.seqs and seg.first_seq <= self._segments[-1].last_seq:
                self._torn_records += len(seg.seqs)  # out of order: not a file this spool wrote
                self._torn_bytes += seg.size
                seg.seqs = array("Q")
            if not seg.seqs:
                path.unlink()
                continue
            self._segments.append(seg)
        if self._segments:
            self._last = max(self._last, self._segments[-1].last_seq)
        self._cursor = self._acked
        self._collect_acked()

    def _read_ack(self) -> tuple[int, int]:
        try:
            raw = (self.directory / "ack").read_bytes()
            acked, last, crc = _ACK.unpack(raw)
        except (FileNotFoundError, struct.error):
            return 0, 0
        if zlib.crc32(raw[:16]) != crc:
            return 0, 0  # replay everything again: at least once
        return acked, last

    def _write_ack(self) -> None:
        body = struct.pack("<QQ", self._acked, self._last)
        tmp = self.directory / "ack.tmp"
        tmp.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
        os.replace(tmp, self.directory / "ack")

    # --- writing -------------------------------------------------------------------------------

    def append(self, payload: bytes, seq: int | None = None) -> int:
        """Keep one record; returns its sequence number (`seq`, or the next one)."""
        seq = self._last + 1 if seq is None else seq
        if seq <= self._last:
            raise ValueError(f"seq {seq} is not after the spool's last seq {self._last}")
        size = record_bytes(len(payload))
        if size > self.segment_bytes:
            raise ValueError(
                f"a record of {size} bytes is larger than a spool segment ({self.segment_bytes})"
            )
        self._make_room(size)
        seg = self._segments[-1] if self._fd is not None else None
        if seg is None or seg.size + size > self.segment_bytes:
            seg = self._new_segment(seq)
        assert self._fd is not None
        os.write(self._fd, encode(seq, payload))
        seg.seqs.append(seq)
        seg.offsets.append(seg.size)
        seg.size += size
        self._last = seq
        return seq

    def extend(self, payloads: Iterable[bytes]) -> list[int]:
        return [self.append(p) for p in payloads]

    def _new_segment(self, first_seq: int) -> _Segment:
        self._close_fd()
        path = self.directory / f"{first_seq:020d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        seg = _Segment(path)
        self._segments.append(seg)
        return seg

    def _make_room(self, size: int) -> None:
        """Drop the oldest segments until `size` more bytes fit within the bound."""
        while self._segments and self.held_bytes + size > self.max_bytes:
            oldest = self._segments.pop(0)
            if not self._segments:
                self._close_fd()  # the appends' segment itself: the next append opens anew
            n, nbytes, first, last = oldest.unacked(self._acked)
            if n:
                self._drops.append(Dropped(first, last, n, nbytes))
                self._dropped_records += n
                self._dropped_bytes += nbytes
            self._cursor = max(self._cursor, oldest.last_seq)
            oldest.path.unlink(missing_ok=True)

    # --- replaying -----------------------------------------------------------------------------

    def read(self, max_records: int = 1000, max_bytes: int = 4 * 1024 * 1024) -> list[SpoolRecord]:
        """The next records after the cursor, oldest first (at least one if any is held, even
        when it alone exceeds `max_bytes`); moves the cursor past them."""
        out: list[SpoolRecord] = []
        total = 0
        for seg in self._segments:
            if seg.last_seq <= self._cursor:
                continue
            n = len(seg.seqs)
            i = j = bisect.bisect_right(seg.seqs, self._cursor)
            while j < n and len(out) + (j - i) < max_records:
                size = (seg.offsets[j + 1] if j + 1 < n else seg.size) - seg.offsets[j]
                if (out or j > i) and total + size > max_bytes:
                    break
                total += size
                j += 1
            if j == i:
                break  # a limit was reached at this segment's first record
            stop = seg.offsets[j] if j < n else seg.size
            with open(seg.path, "rb") as f:
                f.seek(seg.offsets[i])
                data = f.read(stop - seg.offsets[i])
            pos = 0
            while pos < len(data):
                length, _crc, seq = HEADER.unpack_from(data, pos)
                out.append(SpoolRecord(seq, data[pos + HEADER.size : pos + HEADER.size + length]))
                pos += HEADER.size + length
            self._cursor = out[-1].seq
            if j < n:
                break  # a limit was reached inside this segment
        return out

    def rewind(self) -> None:
        """Hand out again everything not acknowledged (after a failed publish)."""
        self._cursor = self._acked

    def ack(self, seq: int) -> None:
        """Every record up to `seq` is published: it will not be replayed again."""
        if seq > self._last:
            raise ValueError(f"ack {seq} is past the spool's last seq {self._last}")
        if seq <= self._acked:
            return
        self._acked = seq
        self._cursor = max(self._cursor, seq)
        self._collect_acked()
        self._write_ack()

    def _collect_acked(self) -> None:
        """Delete the segments every record of which is acknowledged."""
        while self._segments and self._segments[0].last_seq <= self._acked:
            seg = self._segments.pop(0)
            if not self._segments:
                self._close_fd()
            seg.path.unlink(missing_ok=True)

    # --- what it holds ------------------------------------------------------------------------

    def take_drops(self) -> list[Dropped]:
        """The drops since the last call (each once), for lost-event records."""
        drops, self._drops = self._drops, []
        return drops

    @property
    def held_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged."""
        return sum(s.unacked(self._acked)[0] for s in self._segments)

    @property
    def last_seq(self) -> int:
        """The last seq ever appended here (kept across restarts)."""
        return self._last

    @property
    def acked_seq(self) -> int:
        return self._acked

    def stats(self) -> SpoolStats:
        return SpoolStats(
            held_records=self.pending,
            held_bytes=self.held_bytes,
            max_bytes=self.max_bytes,
            acked_seq=self._acked,
            last_seq=self._last,
            dropped_records=self._dropped_records,
            dropped_bytes=self._dropped_bytes,
            torn_records=self._torn_records,
            torn_bytes=self._torn_bytes,
        )

    # --- closing -------------------------------------------------------------------------------

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        with contextlib.suppress(OSError):
            self._write_ack()  # keeps last_seq when every segment is gone
        if self._lock >= 0:
            os.close(self._lock)  # releases the flock
            self._lock = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
