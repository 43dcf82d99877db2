"""plan_ipcache and diff_ipcache: pure, checked against a brute-force longest-prefix search."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.identity.ipcache import (
    WORLD_PREFIX,
    IPCacheConflict,
    IPCacheEntry,
    PodAddress,
    diff_ipcache,
    plan_ipcache,
)
from dataplane.identity.model import CIDR_ID_BASE, Reserved

A = IPv4Address
N = IPv4Network
NODES = {"n1": A("10.224.0.4"), "n2": A("10.224.0.5")}


def brute_cidr_identity(prefix: IPv4Network, cidrs: dict[IPv4Network, int]) -> int:
    covering = [c for c in cidrs if prefix.subnet_of(c)]
    return cidrs[max(covering, key=lambda c: c.prefixlen)] if covering else 0


def brute_lookup(cache: dict[IPv4Network, IPCacheEntry], ip: IPv4Address) -> IPCacheEntry:
    """What the kernel's LPM lookup of one address returns."""
    return cache[max((p for p in cache if ip in p), key=lambda p: p.prefixlen)]


def test_entries_for_pods_nodes_cidrs_and_world() -> None:
    pods = [
        PodAddress(A("10.244.1.10"), 300, NODES["n1"]),
        (A("10.244.2.10"), 301, NODES["n2"]),  # a plain tuple works too
    ]
    cidrs = {N("10.244.0.0/16"): CIDR_ID_BASE, N("10.244.2.0/24"): CIDR_ID_BASE + 1}
    cache = plan_ipcache(pods, NODES, cidrs, "n1")
    assert cache == {
        N("10.244.1.10/32"): IPCacheEntry(300, CIDR_ID_BASE, NODES["n1"]),
        N("10.244.2.10/32"): IPCacheEntry(301, CIDR_ID_BASE + 1, NODES["n2"]),
        N("10.224.0.4/32"): IPCacheEntry(Reserved.HOST, 0, NODES["n1"]),
        N("10.224.0.5/32"): IPCacheEntry(Reserved.REMOTE_NODE, 0, NODES["n2"]),
        N("10.244.0.0/16"): IPCacheEntry(CIDR_ID_BASE, CIDR_ID_BASE, None),
        N("10.244.2.0/24"): IPCacheEntry(CIDR_ID_BASE + 1, CIDR_ID_BASE + 1, None),
        WORLD_PREFIX: IPCacheEntry(Reserved.WORLD, 0, None),
    }
    # the other node's view differs only in which node is the host
    other = plan_ipcache(pods, NODES, cidrs, "n2")
    assert other[N("10.224.0.4/32")].identity == Reserved.REMOTE_NODE
    assert other[N("10.224.0.5/32")].identity == Reserved.HOST


def test_cidr_identity_for_the_whole_internet_stays_world() -> None:
    cidrs = {N("0.0.0.0/0"): CIDR_ID_BASE + 7, N("10.0.0.0/8"): CIDR_ID_BASE + 8}
    cache = plan_ipcache([], NODES, cidrs, "n1")
    assert cache[WORLD_PREFIX] == IPCacheEntry(Reserved.WORLD, CIDR_ID_BASE + 7, None)
    assert cache[N("10.224.0.4/32")].cidr_identity == CIDR_ID_BASE + 8
    assert brute_lookup(cache, A("8.8.8.8")) == IPCacheEntry(Reserved.WORLD, CIDR_ID_BASE + 7, None)


def test_pod_and_node_win_over_a_cidr_of_the_same_address() -> None:
    pod_ip = A("10.244.1.10")
    cidrs = {N("10.244.1.10/32"): CIDR_ID_BASE, N("10.224.0.5/32"): CIDR_ID_BASE + 1}
    cache = plan_ipcache([(pod_ip, 300, NODES["n1"])], NODES, cidrs, "n1")
    assert cache[N(pod_ip)] == IPCacheEntry(300, CIDR_ID_BASE, NODES["n1"])
    assert cache[N("10.224.0.5/32")] == IPCacheEntry(
        Reserved.REMOTE_NODE, CIDR_ID_BASE + 1, NODES["n2"]
    )


def test_an_address_claimed_twice_is_refused() -> None:
    with pytest.raises(IPCacheConflict, match=r"10\.244\.1\.10"):
        plan_ipcache([(A("10.244.1.10"), 300, None), (A("10.244.1.10"), 301, None)], {}, {}, "n1")
    with pytest.raises(IPCacheConflict, match="node n2"):
        plan_ipcache([(NODES["n2"], 300, None)], NODES, {}, "n1")


prefixes = st.builds(
    lambda addr, length: IPv4Network((addr, length), strict=False),
    # a small address space so that prefixes overlap and nest often
    st.integers(0, 2**32 - 1).map(lambda a: a & 0xFF0F00FF | 0x0A000000),
    st.integers(0, 32),
)


@settings(max_examples=200, deadline=None)
@given(
    pod_ips=st.sets(st.integers(0, 0xFFFF).map(lambda a: A(0x0A000000 | a)), max_size=30),
    cidrs=st.dictionaries(prefixes, st.integers(CIDR_ID_BASE, CIDR_ID_BASE + 999), max_size=20),
    node_ips=st.sets(st.integers(0, 0xFF).map(lambda a: A(0x0A010000 | a)), max_size=3),
)
def test_cidr_identity_is_the_longest_covering_cidr(pod_ips, cidrs, node_ips) -> None:
    nodes = {f"n{i}": ip for i, ip in enumerate(sorted(node_ips))}
    pods = [(ip, 256 + i, None) for i, ip in enumerate(sorted(pod_ips - node_ips))]
    cache = plan_ipcache(pods, nodes, cidrs, "n0")
    assert set(cache) == (
        {N(ip) for ip, _, _ in pods}
        | {N(ip) for ip in nodes.values()}
        | set(cidrs)
        | {WORLD_PREFIX}
    )
    for prefix, entry in cache.items():
        assert entry.cidr_identity == brute_cidr_identity(prefix, cidrs), prefix
    for ip, identity, _ in pods:
        assert cache[N(ip)].identity == identity
    for prefix, identity in cidrs.items():
        if prefix.prefixlen < 32 or prefix.network_address not in {*pod_ips, *node_ips}:
            expected = Reserved.WORLD if prefix == WORLD_PREFIX else identity
            assert cache[prefix].identity == expected
    # any address, looked up as the kernel does, carries the longest CIDR covering it
    for prefix in list(cidrs)[:5]:
        for ip in (prefix.network_address, prefix.broadcast_address):
            assert brute_lookup(cache, ip).cidr_identity == brute_cidr_identity(N(ip), cidrs)


entries = st.builds(
    IPCacheEntry,
    st.integers(1, 400),
    st.integers(0, 3),
    st.none() | st.just(A("10.224.0.4")),
)
caches = st.dictionaries(prefixes, entries, max_size=15)


@given(old=caches, new=caches)
def test_diff_turns_old_into_new(old, new) -> None:
    upserts, deletes = diff_ipcache(old, new)
    applied = dict(old)
    applied.update(upserts)
    for prefix in deletes:
        del applied[prefix]
    assert applied == new
    assert all(old.get(p) != e for p, e in upserts.items()), "only real changes are written"
    assert not set(deletes) & set(new)
    assert diff_ipcache(new, new) == ({}, [])


def test_plan_is_fast_for_10000_pods_and_1000_cidrs() -> None:
    nodes = {f"n{i}": A(0x0AE00000 + i) for i in range(50)}
    pods = [
        PodAddress(A(0x0AF40000 + i), 256 + i % 500, A(0x0AE00000 + i % 50)) for i in range(10_000)
    ]
    cidrs = {N((0x0AF40000 + (i << 6), 26)): CIDR_ID_BASE + i for i in range(1000)}
    cidrs[N("10.244.0.0/16")] = CIDR_ID_BASE + 5000
    t0 = time.perf_counter()
    cache = plan_ipcache(pods, nodes, cidrs, "n0")
    elapsed = time.perf_counter() - t0
    assert len(cache) == 10_000 + 50 + 1001 + 1
    # pod i lies in /26 number i >> 6; nodes lie outside every CIDR
    for i in (0, 70, 4097, 9999):
        assert cache[N(A(0x0AF40000 + i))].cidr_identity == CIDR_ID_BASE + (i >> 6)
    assert cache[N("10.224.0.7/32")] == IPCacheEntry(Reserved.REMOTE_NODE, 0, A("10.224.0.7"))
    assert cache[N("10.244.0.0/16")].cidr_identity == CIDR_ID_BASE + 5000
    assert elapsed < 1.0, f"{elapsed:.3f}s"
