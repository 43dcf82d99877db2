"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of M slots (M prime),
each naming a backend, such that every backend owns about M/N slots and removing one backend
moves little more than its own slots.

Each backend's preference list is a permutation of the slots, offset = h1(name) % M,
skip = h2(name) % (M - 1) + 1 (M prime makes every skip generate all slots); backends take turns
claiming their next unclaimed preferred slot until the table is full. Weights: a backend with
weight w takes w / max_weight turns per round on average (credits carried between rounds), so
equal weights give exactly the paper's algorithm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_TABLE_SIZE = 16381  # Cilium's default; a prime
_SEEDS = (b"flowscope-maglev-offset", b"flowscope-maglev-skip")


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _hash(name: str, seed: bytes) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8, key=seed).digest()
    return int.from_bytes(digest, "little")


def permutation_params(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of `name`'s preference list in a table of `size` slots."""
    return _hash(name, _SEEDS[0]) % size, _hash(name, _SEEDS[1]) % (size - 1) + 1


def lookup_table(
    backends: Sequence[str],
    weights: Sequence[int] | None = None,
    size: int = DEFAULT_TABLE_SIZE,
) -> tuple[int, ...]:
    """The table: slot -> index into `backends` (`size` entries; () when there are no backends).

    `backends` are stable names (e.g. "10.1.0.5:8080"); the table depends on the names, not on
    their order, except that indices refer to positions in `backends`. A weight 0 backend gets
    no slot. ValueError when `size` is not a prime or there are more backends than slots.
    """
    if not is_prime(size):
        raise ValueError(f"maglev table size {size} is not a prime (e.g. 16381, 65521)")
    if weights is None:
        weights = [1] * len(backends)
    if len(weights) != len(backends):
        raise ValueError(f"{len(weights)} weights for {len(backends)} backends")
    if any(w < 0 for w in weights):
        raise ValueError(f"maglev weights must be >= 0, got {list(weights)}")
    if len(set(backends)) != len(backends):
        raise ValueError("maglev backend names must be unique")
    live = [i for i, w in enumerate(weights) if w > 0]
    if not live:
        return ()
    if len(live) > size:
        raise ValueError(f"{len(live)} backends do not fit a maglev table of {size} slots")
    # Fill in the order of the names so the table does not depend on the caller's order.
    live.sort(key=lambda i: backends[i])
    params = [permutation_params(backends[i], size) for i in live]
    position = [offset for offset, _ in params]  # each backend's next preferred slot
    top = max(weights[i] for i in live)
    credit = [0.0] * len(live)
    table = [-1] * size
    filled = 0
    while filled < size:
        for k, i in enumerate(live):
            credit[k] += weights[i] / top
            while credit[k] >= 1.0 and filled < size:
                credit[k] -= 1.0
                skip = params[k][1]
                slot = position[k]
                while table[slot] >= 0:
                    slot = (slot + skip) % size
                table[slot] = i
                position[k] = (slot + skip) % size
                filled += 1
            if filled == size:
                break
    return tuple(table)
