"""The ring-buffer tests' feeder: a test program (tests/probes/bpf/ringbuf_*.c) with an `emit`
program writing one record per run, an `events` ring and a per-CPU `lost` counter."""

from __future__ import annotations

import contextlib
import ctypes as ct
from collections.abc import Iterator
from pathlib import Path

from probes import libbpf
from probes.bpfloader import CompiledObject, LoadedObject
from probes.ringbuf import RingBuffer


@contextlib.contextmanager
def loaded_ring(
    compiled: CompiledObject, pin_dir: Path
) -> Iterator[tuple[LoadedObject, RingBuffer]]:
    """The program instantiated under `pin_dir` and a reader of its ring; both closed after."""
    inst = compiled.instantiate(pin_dir, libbpf.BPF_PROG_TYPE_SCHED_CLS)
    ring = RingBuffer(inst.map_fd("events"))
    try:
        yield inst, ring
    finally:
        ring.close()
        inst.close()


def emit(inst: LoadedObject, length: int) -> None:
    """One run of `emit` on a zero packet of `length` bytes (the record says the length)."""
    libbpf.prog_test_run(inst.prog_fd("emit"), b"\0" * length)


def lost(inst: LoadedObject) -> int:
    """Records the kernel could not queue, over every CPU."""
    value = (ct.c_uint64 * libbpf.possible_cpus())()
    libbpf.map_lookup(inst.map_fd("lost"), ct.c_uint32(0), value)
    return sum(value)
