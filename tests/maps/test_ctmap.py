"""Conntrack map: mirror against bcc; decoding, expiry and GC from the fake and the kernel."""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dataplane.maps import layout
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.ctmap import (
    CT_F_CLOSING,
    CT_F_REPLY_SEEN,
    MAP_NAME,
    CtEntry,
    CtKey,
    CtMap,
    FakeCtMap,
    KernelCtMap,
    make_key,
)
from dataplane.policy.entry import Direction


@pytest.mark.privileged
def test_mirror_matches_the_compiled_program() -> None:
    from probes.datapath import compiled

    spec = compiled().maps[MAP_NAME]
    layout.assert_map_layout(MAP_NAME, CtKey, CtEntry, spec.key_type, spec.value_type)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.privileged)])
def ctm(request: pytest.FixtureRequest) -> Iterator[CtMap]:
    if request.param == "fake":
        yield FakeCtMap()
        return
    from probes import libbpf

    fd = libbpf.map_create(
        libbpf.BPF_MAP_TYPE_LRU_HASH, "t_ct", ct.sizeof(CtKey), ct.sizeof(CtEntry), 4096
    )
    try:
        yield KernelCtMap(BpfMap(fd, CtKey, CtEntry, name=MAP_NAME))
    finally:
        os.close(fd)


def _put(ctm: CtMap, i: int, expires: int, scope=Direction.EGRESS, flags: int = 0) -> None:
    ctm.put(
        make_key(scope, 6, "10.0.1.10", f"10.0.2.{i % 250}", 30000 + i, 80),
        CtEntry(expires_ns=expires, created_ns=1, packets_fwd=i, cookie=7, flags=flags),
    )


def test_entries_decode_with_host_order_ports(ctm: CtMap) -> None:
    _put(ctm, 3, 500, Direction.INGRESS, CT_F_REPLY_SEEN | CT_F_CLOSING)
    (c,) = ctm.entries()
    assert (c.scope, c.proto_name, c.saddr, c.daddr, c.sport, c.dport) == (
        Direction.INGRESS,
        "TCP",
        IPv4Address("10.0.1.10"),
        IPv4Address("10.0.2.3"),
        30003,
        80,
    )
    assert (c.expires_ns, c.packets_fwd, c.cookie) == (500, 3, 7)
    assert c.reply_seen and c.closing and not c.audit
    assert bytes(c.key()) == bytes(ctm.dump()[0][0].tobytes())
    assert "ingress TCP 10.0.1.10:30003 > 10.0.2.3:80" in str(c)


def test_gc_deletes_exactly_the_expired_entries(ctm: CtMap) -> None:
    for i in range(300):
        _put(ctm, i, 1000 if i % 3 else 2000)
    assert ctm.gc(now_ns=1000) == 200  # expires_ns <= now counts as expired, as in the kernel
    left = ctm.entries()
    assert len(left) == 100 and all(c.expires_ns == 2000 for c in left)
    assert ctm.gc(now_ns=1500) == 0
    assert ctm.flush() == 100 and ctm.count() == 0


def test_icmp_echo_keys_put_the_id_on_the_request_side() -> None:
    key = make_key(Direction.EGRESS, 1, "10.0.1.10", "192.0.2.7", 77, 0)
    assert bytes(key)[8:10] == (77).to_bytes(2, "big") and key.dport == 0
