"""The node's on-disk spool: order across segments and restarts, the byte bound dropping only the
oldest (counted), torn-tail recovery, a real crash (SIGKILL) between append and ack, and random
operation sequences against an in-memory model."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.spool import HEADER, SEGMENT_SUFFIX, Spool, SpoolRecord, record_bytes
from flowscope.errors import FlowscopeError


def payload(i: int, size: int = 100) -> bytes:
    return (f"{i}:".encode() * size)[:size]


def drain(sp: Spool, batch: int = 37) -> list[SpoolRecord]:
    out = []
    while records := sp.read(batch):
        out += records
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


def test_order_kept_across_segments_and_restarts(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as sp:
        seqs = sp.extend(payload(i) for i in range(500))
        assert seqs == list(range(1, 501))
        assert len(segments(tmp_path)) > 10
        first = sp.read(200)
        assert [r.seq for r in first] == list(range(1, 201))
        sp.ack(150)  # 151..200 were read but not acknowledged
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as sp:
        assert sp.acked_seq == 150 and sp.last_seq == 500 and sp.pending == 350
        rest = drain(sp)
        # from the acknowledged position: at least once, never out of order
        assert [r.seq for r in rest] == list(range(151, 501))
        assert all(r.payload == payload(r.seq - 1) for r in rest)
        assert sp.append(b"after") == 501  # the sequence goes on after a restart
        sp.ack(501)
        assert segments(tmp_path) == []  # fully acknowledged segments are deleted
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as sp:
        assert sp.last_seq == 501 and sp.pending == 0 and sp.read() == []


def test_rewind_hands_out_unacknowledged_records_again(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        sp.extend(payload(i) for i in range(10))
        assert [r.seq for r in sp.read(4)] == [1, 2, 3, 4]
        sp.ack(2)
        sp.rewind()
        assert [r.seq for r in sp.read(4)] == [3, 4, 5, 6]
        assert [r.seq for r in sp.read(100, max_bytes=250)] == [7, 8]  # 2 x 116 bytes fit


def test_caller_sequence_numbers_with_gaps(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        assert sp.append(b"a", seq=10) == 10
        assert sp.append(b"b", seq=15) == 15
        with pytest.raises(ValueError, match="seq 15"):
            sp.append(b"c", seq=15)
        assert sp.append(b"d") == 16
        assert [(r.seq, r.payload) for r in sp.read()] == [(10, b"a"), (15, b"b"), (16, b"d")]
        assert sp.pending == 3


def test_bound_drops_only_the_oldest_and_counts_them(tmp_path: Path) -> None:
    max_bytes = 16384
    with Spool(tmp_path, max_bytes=max_bytes, segment_bytes=4096) as sp:
        sp.extend(payload(i) for i in range(30))
        sp.ack(5)  # acknowledged records are not losses when their segment goes
        for i in range(30, 1000):
            seq = sp.append(payload(i))
            assert sp.held_bytes <= max_bytes
            assert sp.read(0) == []  # nothing consumed
            assert sp.last_seq == seq
        drops = sp.take_drops()
        assert sp.take_drops() == []  # each reported once
        assert drops and drops[0].first_seq == 6
        # the drops are one contiguous run of the oldest: each starts after the last
        for before, after in itertools.pairwise(drops):
            assert after.first_seq == before.last_seq + 1
        dropped = sum(d.records for d in drops)
        stats = sp.stats()
        assert stats.dropped_records == dropped
        assert stats.dropped_bytes == sum(d.bytes for d in drops) == dropped * record_bytes(100)
        held = drain(sp, 1000)
        # what is held is exactly what came after the drops, the newest included
        assert [r.seq for r in held] == list(range(drops[-1].last_seq + 1, 1001))
        assert dropped + len(held) == 1000 - 5


def test_one_unacknowledged_record_dropped_is_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=8192, segment_bytes=4096) as sp:
        sp.extend([b"a" * 1000, b"b" * 1000, b"c" * 1000])  # one segment: 3 x 1016 bytes
        sp.ack(2)
        sp.extend([b"d" * 2000, b"e" * 2000, b"f" * 2000])  # the first segment must go
        assert [(d.first_seq, d.last_seq, d.records) for d in sp.take_drops()] == [(3, 3, 1)]
        assert sp.stats().dropped_records == 1
        assert [r.payload[:1] for r in drain(sp)] == [b"d", b"e", b"f"]


def test_a_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        sp.extend(payload(i) for i in range(10))
    last = segments(tmp_path)[-1]
    with open(last, "ab") as f:
        f.write(HEADER.pack(100, 0, 11)[:7])  # a crash in the middle of a header
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        assert (sp.stats().torn_records, sp.stats().torn_bytes) == (1, 7)
        assert [r.seq for r in drain(sp)] == list(range(1, 11))
        assert sp.append(b"next") == 11
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        assert sp.stats().torn_records == 0  # the cut made the file whole again
        assert [r.payload for r in drain(sp)][-1] == b"next"


def test_a_corrupt_record_ends_its_segment(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        sp.extend(payload(i) for i in range(5))
    seg = segments(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # the last record's payload: its CRC no longer matches
    seg.write_bytes(bytes(data))
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        assert sp.stats().torn_records == 1
        assert sp.stats().torn_bytes == record_bytes(100)
        assert [r.seq for r in drain(sp)] == [1, 2, 3, 4]


_CHILD = """
import sys
from collector.spool import Spool
sp = Spool(sys.argv[1], max_bytes=1 << 20, segment_bytes=4096)
for i in range(200):
    sp.append(b"x" * 50)
sp.read(120)
sp.ack(100)
print("appended", flush=True)
sys.stdin.read()  # killed here, before it could close anything
"""


def test_a_killed_process_loses_no_appended_record(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "appended"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096) as sp:
        # read up to 120 but acknowledged up to 100: 101.. come again
        assert [r.seq for r in drain(sp)] == list(range(101, 201))
        assert sp.stats().torn_records == 0


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=1 << 16), pytest.raises(FlowscopeError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 16)


def test_bad_bounds_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(FlowscopeError, match="max_bytes"):
        Spool(tmp_path, max_bytes=100)
    with pytest.raises(FlowscopeError, match="segment_bytes"):
        Spool(tmp_path, max_bytes=1 << 16, segment_bytes=1 << 16)
    with Spool(tmp_path, max_bytes=1 << 16, segment_bytes=4096) as sp:
        with pytest.raises(ValueError, match="larger than a spool segment"):
            sp.append(b"x" * 4096)
        with pytest.raises(ValueError, match="past the spool's last seq"):
            sp.ack(1)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 1500)),
        st.tuples(st.just("read"), st.integers(0, 40)),
        st.tuples(st.just("ack"), st.integers(0, 3)),
        st.tuples(st.just("rewind"), st.just(0)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    min_size=20,
    max_size=150,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_operations_match_a_model(operations: list[tuple[str, int]]) -> None:
    max_bytes, seg_bytes = 8192 * 2, 4096
    with tempfile.TemporaryDirectory(prefix="h8spool") as d:
        sp = Spool(d, max_bytes=max_bytes, segment_bytes=seg_bytes)
        held: list[tuple[int, bytes]] = []  # the model: unacknowledged, not dropped, in order
        cursor = acked = last = 0
        read_seqs: list[int] = []
        try:
            for op, arg in operations:
                if op == "append":
                    data = bytes([last % 251]) * arg
                    last = sp.append(data)
                    held.append((last, data))
                    for drop in sp.take_drops():
                        # only the oldest held records go, and the newest never
                        gone = [s for s, _ in held[: drop.records]]
                        assert gone[0] == drop.first_seq and gone[-1] == drop.last_seq
                        assert last not in gone
                        held = held[drop.records :]
                        cursor = max(cursor, drop.last_seq)
                elif op == "read":
                    got = sp.read(arg)
                    want = [r for r in held if r[0] > cursor][:arg]
                    assert [(r.seq, r.payload) for r in got] == want
                    if got:
                        cursor = got[-1].seq
                        read_seqs = [r.seq for r in got]
                elif op == "ack":
                    if read_seqs:
                        seq = read_seqs[min(arg, len(read_seqs) - 1)]
                        sp.ack(seq)
                        acked = max(acked, seq)
                        held = [r for r in held if r[0] > acked]
                        cursor = max(cursor, acked)
                elif op == "rewind":
                    sp.rewind()
                    cursor = acked
                else:
                    sp.close()
                    sp = Spool(d, max_bytes=max_bytes, segment_bytes=seg_bytes)
                    cursor = acked
                    read_seqs = []
                assert sp.held_bytes <= max_bytes
                assert sp.pending == len(held)
                assert sp.last_seq == last and sp.acked_seq == acked
        finally:
            sp.close()
