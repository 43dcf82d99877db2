"""ipcache map: mirror against bcc; the fake and the kernel LPM trie agree on every operation."""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.maps import layout
from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.maps.ipcache import (
    MAP_NAME,
    FakeIPCacheMap,
    IPCacheInfo,
    IPCacheKey,
    IPCacheMap,
    IPCacheValue,
    KernelIPCacheMap,
    make_key,
)

CAPACITY = 8
N = IPv4Network


@pytest.mark.privileged
def test_mirror_matches_the_compiled_program() -> None:
    from probes.datapath import compiled

    spec = compiled().maps[MAP_NAME]
    layout.assert_map_layout(MAP_NAME, IPCacheKey, IPCacheInfo, spec.key_type, spec.value_type)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.privileged)])
def ipc(request: pytest.FixtureRequest) -> Iterator[IPCacheMap]:
    if request.param == "fake":
        yield FakeIPCacheMap(CAPACITY)
        return
    from probes import libbpf

    no_prealloc = 1  # BPF_F_NO_PREALLOC, which LPM tries require
    fd = libbpf.map_create(
        libbpf.BPF_MAP_TYPE_LPM_TRIE,
        "t_ipc",
        ct.sizeof(IPCacheKey),
        ct.sizeof(IPCacheInfo),
        CAPACITY,
        no_prealloc,
    )
    try:
        yield KernelIPCacheMap(BpfMap(fd, IPCacheKey, IPCacheInfo, name=MAP_NAME), CAPACITY)
    finally:
        os.close(fd)


def test_longest_prefix_wins_and_misses_are_none(ipc: IPCacheMap) -> None:
    ipc.upsert("10.0.0.0/8", IPCacheValue(16777217, 16777217))
    ipc.upsert("10.0.2.0/24", IPCacheValue(16777218, 16777218))
    ipc.upsert("10.0.2.5/32", IPCacheValue(1002, 16777218, IPv4Address("10.224.0.5")))
    assert ipc.lookup("10.0.2.5") == IPCacheValue(1002, 16777218, IPv4Address("10.224.0.5"))
    assert ipc.lookup("10.0.2.6").identity == 16777218
    assert ipc.lookup("10.9.9.9").identity == 16777217
    assert ipc.lookup("192.0.2.1") is None  # the datapath reads a miss as WORLD
    assert ipc.get("10.0.2.0/24") == IPCacheValue(16777218, 16777218)
    assert ipc.get("10.0.3.0/24") is None  # exact prefixes only
    assert ipc.delete("10.0.2.0/24") and not ipc.delete("10.0.2.0/24")
    assert ipc.lookup("10.0.2.6").identity == 16777217


def test_sync_writes_before_it_deletes_and_reports_counts(ipc: IPCacheMap) -> None:
    ipc.upsert("10.0.1.10/32", IPCacheValue(1000))
    ipc.upsert("10.0.1.11/32", IPCacheValue(1001))

    @dataclass(frozen=True)
    class PlanEntry:  # what dataplane.identity's plan hands over: duck-typed
        identity: int
        cidr_identity: int
        node_ip: IPv4Address | None

    plan = {
        N("10.0.1.10/32"): PlanEntry(1000, 0, None),  # unchanged
        N("10.0.1.12/32"): PlanEntry(1003, 0, IPv4Address("10.224.0.4")),
        N("0.0.0.0/0"): PlanEntry(2, 0, None),
    }
    assert ipc.sync(plan) == (2, 1)
    assert ipc.entries() == {
        N("10.0.1.10/32"): IPCacheValue(1000),
        N("10.0.1.12/32"): IPCacheValue(1003, 0, IPv4Address("10.224.0.4")),
        N("0.0.0.0/0"): IPCacheValue(2),
    }
    assert ipc.sync(plan) == (0, 0)
    assert ipc.lookup("10.0.1.11").identity == 2  # gone: the world prefix answers


def test_keys_are_network_order_and_normalised() -> None:
    key = make_key("10.1.2.3/16")
    assert key.prefixlen == 16 and bytes(key)[4:] == bytes([10, 1, 0, 0])


def test_a_full_map_and_bad_values_are_errors(ipc: IPCacheMap) -> None:
    for i in range(CAPACITY):
        ipc.upsert(f"10.0.0.{i}/32", IPCacheValue(1000 + i))
    with pytest.raises(MapError, match="map ipcache is full") as err:
        ipc.upsert("10.0.1.1/32", IPCacheValue(1))
    assert "ipcache_entries" in str(err.value)
    ipc.upsert("10.0.0.0/32", IPCacheValue(7))  # replacing still works
    with pytest.raises(MapError, match="cidr_identity"):
        ipc.upsert("10.0.0.1/32", IPCacheValue(1, cidr_identity=-1))
    with pytest.raises(MapError, match=r"ipcache prefix '10\.0\.0\.1/8'.*host bits"):
        ipc.upsert("10.0.0.1/8", IPCacheValue(1))
    assert ipc.lookup("10.0.0.1").identity == 1001
