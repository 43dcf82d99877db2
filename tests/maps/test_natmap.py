"""NAT map mirror: the same behaviour from the dict-backed fake and the real kernel map."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.natmap import (
    ENTRY_DTYPE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    KEY_DTYPE,
    NAT_DIR_IN,
    NAT_DIR_OUT,
    NAT_F_CLOSING,
    FakeNatMap,
    KernelNatMap,
    NatEntry,
    NatKey,
    NatMap,
    expired,
    make_entry,
    make_key,
)

Put = Callable[[NatKey, NatEntry], None]


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.privileged)])
def natmap(request: pytest.FixtureRequest) -> Iterator[tuple[NatMap, Put]]:
    if request.param == "fake":
        fake = FakeNatMap()
        yield fake, fake.put
        return
    from probes import libbpf

    fd = libbpf.map_create(
        libbpf.BPF_MAP_TYPE_LRU_HASH, "t_nat", ct.sizeof(NatKey), ct.sizeof(NatEntry), 32768
    )
    try:
        bpfmap = BpfMap(fd, NatKey, NatEntry, name="t_nat")
        yield KernelNatMap(bpfmap), bpfmap.update
    finally:
        os.close(fd)


def _pair(put: Put, i: int, expires: int, proto: int = IPPROTO_TCP) -> None:
    pod, remote, node = f"10.244.1.{i % 250 + 1}", "10.224.0.100", "10.224.0.4"
    pod_port, nat_port = 40000 + i, 61000 + i
    put(
        make_key(NAT_DIR_OUT, proto, pod, remote, pod_port, 80),
        make_entry(node, nat_port, created_ns=1, expires_ns=expires),
    )
    put(
        make_key(NAT_DIR_IN, proto, remote, node, 80, nat_port),
        make_entry(pod, pod_port, created_ns=1, expires_ns=expires, flags=NAT_F_CLOSING),
    )


def test_mirror_dtypes_have_the_c_sizes() -> None:
    assert KEY_DTYPE.itemsize == ct.sizeof(NatKey) == 16
    assert ENTRY_DTYPE.itemsize == ct.sizeof(NatEntry) == 24


def test_entries_decode_addresses_ports_and_flags(natmap: tuple[NatMap, Put]) -> None:
    m, put = natmap
    _pair(put, 4, expires=500, proto=IPPROTO_UDP)
    got = sorted(m.entries(), key=lambda e: e.direction)
    assert len(got) == 2
    out, back = got
    assert (out.direction, out.proto_name) == (NAT_DIR_OUT, "UDP")
    assert (str(out.saddr), out.sport, str(out.daddr), out.dport) == (
        "10.244.1.5",
        40004,
        "10.224.0.100",
        80,
    )
    assert (str(out.to_addr), out.to_port, out.closing) == ("10.224.0.4", 61004, False)
    assert (str(back.saddr), back.sport, str(back.daddr), back.dport) == (
        "10.224.0.100",
        80,
        "10.224.0.4",
        61004,
    )
    assert (back.to_addr, back.to_port, back.closing) == (
        ipaddress.IPv4Address("10.244.1.5"),
        40004,
        True,
    )
    assert back.expires_ns == 500
    assert str(out) == "UDP 10.244.1.5:40004 > 10.224.0.100:80 -> 10.224.0.4:61004"
    assert bytes(out.key()) == bytes(
        make_key(NAT_DIR_OUT, IPPROTO_UDP, "10.244.1.5", "10.224.0.100", 40004, 80)
    )


def test_gc_deletes_exactly_the_expired_entries(natmap: tuple[NatMap, Put]) -> None:
    m, put = natmap
    for i in range(10):
        _pair(put, i, expires=1000 if i % 2 else 3000)
    assert m.count() == 20
    assert m.gc(now_ns=999) == 0
    assert m.gc(now_ns=2000) == 10
    left = m.entries()
    assert len(left) == 10
    assert all(e.expires_ns == 3000 for e in left)
    assert m.gc(now_ns=3001) == 10
    assert m.count() == 0


def test_gc_skips_keys_removed_meanwhile(natmap: tuple[NatMap, Put]) -> None:
    m, put = natmap
    for i in range(6):
        _pair(put, i, expires=10)
    keys, values = m.dump()
    # something else (the kernel's LRU, another GC) removes a few of the doomed keys first
    assert m.delete_keys(keys[[1, 4]]) == 2
    assert m.delete_keys(keys[expired(values, 11)]) == 10
    assert m.count() == 0


def test_dump_spans_many_batches(natmap: tuple[NatMap, Put]) -> None:
    m, put = natmap
    for i in range(6000):
        put(
            make_key(NAT_DIR_OUT, IPPROTO_TCP, "10.244.1.5", "10.224.0.100", i + 1, 443),
            make_entry("10.224.0.4", i + 1, created_ns=0, expires_ns=i),
        )
    keys, values = m.dump()
    assert len(keys) == len(values) == 6000
    assert sorted(socket.ntohs(int(p)) for p in keys["sport"]) == list(range(1, 6001))
    assert m.gc(now_ns=3000) == 3000
