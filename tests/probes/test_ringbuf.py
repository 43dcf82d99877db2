"""probes/ringbuf.py against a real kernel ring buffer, fed by a program run with PROG_TEST_RUN."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from probes.bpfloader import CompiledObject
from probes.ringbuf import RingBuffer
from tests.probes.ringprog import emit, loaded_ring, lost

pytestmark = pytest.mark.privileged

SOURCE = Path(__file__).parent / "bpf" / "ringbuf_emit.c"
RECORD = struct.Struct("<IIQ")  # struct rec: len, seq, pad
RING_BYTES = 4096  # BPF_RINGBUF_OUTPUT(events, 1): one page
SLOT = RECORD.size + 8  # payload + the 8-byte record header


@pytest.fixture(scope="module")
def compiled() -> CompiledObject:
    return CompiledObject.compile(SOURCE, programs=["emit"], maps=["events", "lost"])


@pytest.fixture
def loaded(compiled, pin_root):
    with loaded_ring(compiled, pin_root / "rb") as both:
        yield both


def test_records_come_out_in_order_across_wraparound(loaded):
    inst, ring = loaded
    got: list[int] = []
    # 1,000 records through a ring that holds 170: the data area wraps about six times
    for batch in range(10):
        for i in range(100):
            emit(inst, 60 + (batch * 100 + i) % 1000)
        got.extend(RECORD.unpack(r)[0] for r in ring.drain())
    assert got == [60 + n % 1000 for n in range(1000)]
    assert ring.pending_bytes() == 0
    assert lost(inst) == 0


def test_a_full_ring_refuses_and_the_program_counts_the_loss(loaded):
    inst, ring = loaded
    for _ in range(300):
        emit(inst, 64)
    kept = ring.drain()
    assert len(kept) == RING_BYTES // SLOT
    assert len(kept) + lost(inst) == 300
    emit(inst, 99)  # space is free again
    assert [RECORD.unpack(r)[0] for r in ring.drain()] == [99]


def test_drain_respects_max_records(loaded):
    inst, ring = loaded
    for n in range(10):
        emit(inst, 70 + n)
    first = ring.drain(max_records=4)
    rest = ring.drain()
    assert [RECORD.unpack(r)[0] for r in first + rest] == list(range(70, 80))


async def test_wait_readable_wakes_on_data(loaded):
    inst, ring = loaded
    assert await ring.wait_readable(timeout=0.05) is False
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, emit, inst, 64)
    assert await ring.wait_readable(timeout=5) is True
    assert len(ring.drain()) == 1


def test_refuses_a_map_that_is_not_a_ring(loaded):
    inst, _ = loaded
    with pytest.raises(ValueError, match="not a ring buffer"):
        RingBuffer(inst.map_fd("lost"))
