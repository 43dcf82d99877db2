"""Pure arithmetic on address pools: which node CIDR, block or address is free next.

No store, no I/O: given what is taken, say what to hand out. Addresses are handled as ints inside
so that scanning a /24 or a /16 of blocks stays cheap.

Choice rules (deterministic, so two agents that see the same state pick the same thing and the
loser of the CAS race simply recomputes):
- node CIDRs (overlay): the lowest free one. They are long-lived, so packing them low keeps the
  layout predictable.
- blocks (vnet): the first free block after the last one claimed, wrapping around; addresses in a
  pool: the first free address after the last one handed out, wrapping around. This is what
  Kubernetes' host-local IPAM does, and for the same reason: an address (or a whole block) that was
  just released may still sit in peers' conntrack entries, neighbour caches, endpoint slices and
  the policy identity cache; handing it straight to a new pod would let traffic and verdicts meant
  for the dead pod reach the new one. Rotating delays reuse until the pool has gone round once.
  (A vnet node fills free addresses of the blocks it holds before it claims another block, so in
  a full block a hole is refilled on the next ADD: blocks are scarce, addresses inside them not.)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network


class _Intervals:
    """Inclusive int ranges (merged and sorted) with a fast overlap test."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, end) - 1
        return i >= 0 and self._ends[i] >= start


def _span(net: IPv4Network) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


def _rotated(count: int, after_index: int | None) -> Iterator[int]:
    """Indexes 0..count-1, starting just after `after_index` and wrapping around."""
    start = 0 if after_index is None else (after_index + 1) % count
    yield from range(start, count)
    yield from range(0, start)


# --- overlay: node CIDRs ------------------------------------------------------------------------


def next_node_cidr(
    pod_cidr: IPv4Network, node_mask: int, claimed: Iterable[IPv4Network]
) -> IPv4Network | None:
    """The lowest /node_mask of `pod_cidr` that overlaps nothing in `claimed`, or None when full."""
    taken = _Intervals(_span(c) for c in claimed)
    size = 1 << (32 - node_mask)
    base = int(pod_cidr.network_address)
    for i in range(pod_cidr.num_addresses // size):
        start = base + i * size
        if not taken.overlaps(start, start + size - 1):
            return IPv4Network((start, node_mask))
    return None


def node_cidr_capacity(pod_cidr: IPv4Network, node_mask: int) -> int:
    """How many nodes `pod_cidr` can serve with one /node_mask each."""
    return pod_cidr.num_addresses >> (32 - node_mask)


def overlay_reserved(pool: IPv4Network) -> frozenset[IPv4Address]:
    """Addresses of a node CIDR never handed to pods: network, first (node gateway), broadcast."""
    return frozenset({pool.network_address, pool.network_address + 1, pool.broadcast_address})


def overlay_capacity(pool: IPv4Network) -> int:
    """Pod addresses in a node CIDR (its size minus the three reserved ones)."""
    return pool.num_addresses - len(overlay_reserved(pool))


# --- vnet: blocks -------------------------------------------------------------------------------


def block_prefixlen(block_size: int) -> int:
    return 32 - (block_size.bit_length() - 1)


def subnet_reserved(
    subnet: IPv4Network, reserved: Iterable[IPv4Network]
) -> tuple[IPv4Network, ...]:
    """What no block of `subnet` may contain: its network and broadcast address, and `reserved`."""
    edges = {IPv4Network((subnet.network_address, 32)), IPv4Network((subnet.broadcast_address, 32))}
    return tuple(sorted(edges | {r for r in reserved if r.overlaps(subnet)}))


def next_block(
    subnet: IPv4Network,
    block_size: int,
    reserved: Iterable[IPv4Network],
    used: Iterable[IPv4Network],
    after: IPv4Network | None = None,
) -> IPv4Network | None:
    """The first block of `block_size` addresses (aligned) of `subnet` after `after` (wrapping)
    that overlaps neither a reserved range nor a used block; None when there is none.

    `reserved` must already include the subnet's own network/broadcast (see subnet_reserved)."""
    blocked = _Intervals([*(_span(r) for r in reserved), *(_span(u) for u in used)])
    count = subnet.num_addresses // block_size
    base = int(subnet.network_address)
    after_index = None
    if after is not None and after.subnet_of(subnet):
        after_index = (int(after.network_address) - base) // block_size
    plen = block_prefixlen(block_size)
    for i in _rotated(count, after_index):
        start = base + i * block_size
        if not blocked.overlaps(start, start + block_size - 1):
            return IPv4Network((start, plen))
    return None


def block_capacity(subnet: IPv4Network, block_size: int, reserved: Iterable[IPv4Network]) -> int:
    """How many blocks of `subnet` contain no reserved address."""
    blocked = _Intervals(_span(r) for r in reserved)
    base = int(subnet.network_address)
    return sum(
        1
        for i in range(subnet.num_addresses // block_size)
        if not blocked.overlaps(base + i * block_size, base + (i + 1) * block_size - 1)
    )


# --- addresses in a pool ------------------------------------------------------------------------


def next_address(
    pool: IPv4Network,
    used: Iterable[IPv4Address],
    *,
    after: IPv4Address | None = None,
    excluded: Iterable[IPv4Address] = (),
) -> IPv4Address | None:
    """The first address of `pool` after `after` (wrapping) that is neither used nor excluded."""
    taken = {int(a) for a in used} | {int(a) for a in excluded}
    base = int(pool.network_address)
    after_index = int(after) - base if after is not None and after in pool else None
    for i in _rotated(pool.num_addresses, after_index):
        if base + i not in taken:
            return IPv4Address(base + i)
    return None
