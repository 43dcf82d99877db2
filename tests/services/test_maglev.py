"""Maglev lookup tables: full, balanced, and disrupted little by a backend change."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.services.maglev import (
    DEFAULT_TABLE_SIZE,
    is_prime,
    lookup_table,
    permutation_params,
)


def names(n: int, salt: str = "") -> list[str]:
    return [f"10.{i // 250}.{i % 250}.{len(salt)}:80" for i in range(n)]


def owners(table: tuple[int, ...], backends: list[str]) -> list[str]:
    return [backends[i] for i in table]


def test_default_size_is_a_prime_and_permutations_cover_every_slot() -> None:
    assert is_prime(DEFAULT_TABLE_SIZE) and DEFAULT_TABLE_SIZE == 16381
    offset, skip = permutation_params("10.1.0.5:80", 251)
    assert 0 <= offset < 251 and 1 <= skip < 251
    assert len({(offset + j * skip) % 251 for j in range(251)}) == 251


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50, 300])
def test_full_and_balanced(n: int) -> None:
    backends = names(n)
    table = lookup_table(backends)
    assert len(table) == DEFAULT_TABLE_SIZE and min(table) >= 0 and max(table) < n
    counts = Counter(table)
    assert len(counts) == n  # every backend gets slots
    ideal = DEFAULT_TABLE_SIZE / n
    # the paper's algorithm gives every backend floor or ceil of M/N (turns are round-robin)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(abs(c - ideal) <= 1 for c in counts.values())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=40),
    removed=st.integers(min_value=0, max_value=39),
    size=st.sampled_from([4093, 16381]),
)
def test_removing_one_backend_moves_about_one_nth(n: int, removed: int, size: int) -> None:
    # the paper's regime: M >= 100 N (with M ~ 20 N a removal moves up to ~3/N of the slots)
    backends = names(n)
    removed %= n
    before = owners(lookup_table(backends, size=size), backends)
    rest = backends[:removed] + backends[removed + 1 :]
    after = owners(lookup_table(rest, size=size), rest)
    changed = sum(1 for x, y in zip(before, after, strict=True) if x != y)
    # the removed backend's own ~1/N of the slots must move; others may shift a little
    lost = sum(1 for x in before if x == backends[removed])
    assert changed >= lost
    assert changed / size <= 1.5 / n + 0.02, (changed, size, n)


def test_table_depends_on_names_not_their_order() -> None:
    backends = names(20)
    table = owners(lookup_table(backends), backends)
    reordered = list(reversed(backends))
    assert owners(lookup_table(reordered), reordered) == table


def test_weights_share_slots_in_proportion() -> None:
    backends = names(3)
    counts = Counter(lookup_table(backends, weights=[1, 2, 1], size=16381))
    assert abs(counts[1] / 16381 - 0.5) < 0.01
    assert abs(counts[0] / 16381 - 0.25) < 0.01
    assert 2 not in Counter(lookup_table(backends, weights=[1, 1, 0]))


def test_bad_input() -> None:
    assert lookup_table([]) == ()
    with pytest.raises(ValueError, match="16380 is not a prime"):
        lookup_table(names(2), size=16380)
    with pytest.raises(ValueError, match="do not fit"):
        lookup_table(names(20), size=13)
    with pytest.raises(ValueError, match="unique"):
        lookup_table(["a", "a"])
    with pytest.raises(ValueError, match="2 weights for 3"):
        lookup_table(names(3), weights=[1, 1])
