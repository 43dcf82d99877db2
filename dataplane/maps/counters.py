"""Per-CPU counter arrays (BPF_PERCPU_ARRAY of u64), as the probes keep their statistics.

Each program counts on its own CPU without atomics; a reader sums the CPUs' slots. One place for
that sum, shared by every probe's `stats()` and `lost_events()`.
"""

from __future__ import annotations

import ctypes as ct
import enum

from dataplane.maps.bpfmap import BpfMap


def counter(stats: BpfMap, index: int) -> int:
    """Slot `index` summed over CPUs (0 when the array has no such slot)."""
    per_cpu = stats.lookup(ct.c_uint32(index))
    return sum(per_cpu) if per_cpu is not None else 0


def counters(stats: BpfMap, names: type[enum.IntEnum]) -> dict[str, int]:
    """Every slot `names` lists, summed over CPUs, by lower-case member name."""
    return {stat.name.lower(): counter(stats, stat) for stat in names}
