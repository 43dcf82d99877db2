"""RingBuffer.drain_array (fixed-size records, one numpy copy per batch) against a real kernel
ring buffer, fed by a program run with PROG_TEST_RUN (tests/probes/bpf/ringbuf_fixed.c)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from probes import libbpf
from probes.bpfloader import CompiledObject
from probes.ringbuf import RingBuffer
from tests.probes.ringprog import emit, loaded_ring, lost

pytestmark = pytest.mark.privileged

SOURCE = Path(__file__).parent / "bpf" / "ringbuf_fixed.c"
REC = np.dtype([("len", "<u4"), ("seq", "<u4"), ("pad", "<u8")])  # struct rec
SLOT = REC.itemsize + 8  # with the record header
CAPACITY = 4096 // SLOT  # BPF_RINGBUF_OUTPUT(events, 1): one page
BUSY_LEN, DISCARD_LEN = 999, 1000


@pytest.fixture(scope="module")
def compiled() -> CompiledObject:
    return CompiledObject.compile(SOURCE, programs=["emit"], maps=["events", "lost", "scratch"])


@pytest.fixture
def loaded(compiled, pin_root):
    with loaded_ring(compiled, pin_root / "rbf") as both:
        yield both


def test_records_come_out_as_one_array_in_order_across_wraparound(loaded):
    inst, ring = loaded
    got: list[int] = []
    # 1,000 records through a ring that holds 170: the data area wraps about six times, and
    # batches of 100 start at every offset of the ring
    for batch in range(10):
        for i in range(100):
            emit(inst, 60 + (batch * 100 + i) % 900)  # below BUSY_LEN
        arr = ring.drain_array(REC)
        assert arr.dtype == REC and (arr["seq"] == 7).all()
        got.extend(arr["len"].tolist())
    assert got == [60 + n % 900 for n in range(1000)]
    assert ring.pending_bytes() == 0
    assert lost(inst) == 0


def test_discarded_records_are_left_out_and_their_space_freed(loaded):
    inst, ring = loaded
    lengths = [64, DISCARD_LEN, 65, DISCARD_LEN + 1, DISCARD_LEN + 2, 66]
    for n in lengths:
        emit(inst, n)
    assert ring.drain_array(REC)["len"].tolist() == [64, 65, 66]
    assert ring.pending_bytes() == 0
    for _ in range(5):  # only discarded records: an empty batch, the ring emptied all the same
        emit(inst, DISCARD_LEN)
    assert len(ring.drain_array(REC)) == 0 and ring.pending_bytes() == 0


def test_a_full_ring_refuses_and_every_record_is_kept_or_counted(loaded):
    inst, ring = loaded
    for _ in range(300):
        emit(inst, 64)
    kept = ring.drain_array(REC)
    assert len(kept) == CAPACITY
    assert len(kept) + lost(inst) == 300
    emit(inst, 99)  # space is free again
    assert ring.drain_array(REC)["len"].tolist() == [99]


def test_max_records_bounds_a_batch_and_the_rest_follows(loaded):
    inst, ring = loaded
    for n in range(10):
        emit(inst, 70 + n)
    first = ring.drain_array(REC, max_records=4)["len"].tolist()  # copied before the next
    rest = ring.drain_array(REC, max_records=4)["len"].tolist()
    last = ring.drain_array(REC, max_records=4)["len"].tolist()
    assert first + rest + last == list(range(70, 80))
    assert len(ring.drain_array(REC, max_records=4)) == 0


def test_a_busy_record_stops_the_batch_until_it_is_committed(loaded):
    """A record reserved but not yet committed (the program is still running on another CPU)
    holds back the records committed after it, so that the batch keeps the kernel's order."""
    inst, ring = loaded
    for _attempt in range(50):
        emit(inst, 64)
        slow = threading.Thread(target=emit, args=(inst, BUSY_LEN))
        slow.start()
        deadline = time.monotonic() + 5
        while ring.pending_bytes() < 2 * SLOT and time.monotonic() < deadline:
            pass  # until the slow run has reserved its record
        emit(inst, 65)  # committed after the busy one
        during = ring.drain_array(REC)["len"].tolist()
        slow.join()
        after = ring.drain_array(REC)["len"].tolist()
        # never [64, 65]: a record committed after a busy one waits for it
        assert (during, after) in (([64], [BUSY_LEN, 65]), ([64, BUSY_LEN, 65], []))
        if during == [64]:
            return  # met it busy
    pytest.fail("the slow program never stayed busy through a drain (machine too loaded?)")


def test_records_of_another_size_are_refused_by_name(loaded):
    inst, ring = loaded
    emit(inst, 64)
    with pytest.raises(ValueError, match="16 bytes where 8-byte records"):
        ring.drain_array(np.dtype("<u8"))


def test_a_reader_draining_while_the_kernel_writes_never_makes_it_refuse(compiled, pin_root):
    """The consumer position is stored as one 64-bit word: written byte by byte, the kernel
    could read a torn, far-behind position, take the ring for full and refuse records (it
    did: ~3 per million with a ring nowhere near full)."""
    inst = compiled.instantiate(
        pin_root / "rbw", libbpf.BPF_PROG_TYPE_SCHED_CLS, max_entries={"events": 1 << 22}
    )
    ring = RingBuffer(inst.map_fd("events"))
    try:
        runs, per_run = 1000, 1000

        def produce() -> None:
            for _ in range(runs):
                # the ring is kept under half full whatever the machine's load (a reader
                # descheduled for long would otherwise fill it): a refusal is then the bug
                while ring.pending_bytes() > ring.size // 2:
                    time.sleep(0.001)
                libbpf.prog_test_run(inst.prog_fd("emit"), b"\0" * 64, repeat=per_run)

        producer = threading.Thread(target=produce)
        producer.start()
        taken = 0
        while producer.is_alive() or ring.pending_bytes():
            taken += len(ring.drain_array(REC))
        producer.join()
        assert lost(inst) == 0
        assert taken == runs * per_run
    finally:
        ring.close()
        inst.close()
