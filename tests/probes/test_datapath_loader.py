"""probes/datapath.py loading: adoption after a restart, migration of resized maps and of an
older map layout, map-of-maps handling, and argument checks."""

from __future__ import annotations

import ctypes as ct
import logging
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dataplane.maps.ctmap import CtEntry, make_key
from dataplane.maps.endpointmap import Endpoint
from dataplane.maps.ipcache import IPCacheValue
from dataplane.policy.entry import Direction, EndpointPolicy, PolicyEntry
from flowscope.errors import UsageError
from probes import datapath, libbpf
from probes.bpfloader import Migration
from probes.datapath import CT_MAP, POLICY_INNER, POLICY_MAP, CtTimeouts, Datapath

pytestmark = pytest.mark.privileged

WEB = EndpointPolicy(frozenset({PolicyEntry(Direction.INGRESS, 1001, 6, 80, 16, 3)}))


def _fill(dp: Datapath, n_conns: int = 10) -> None:
    dp.endpoints.upsert(Endpoint(12, 1000, IPv4Address("10.0.1.10")))
    dp.ipcache.upsert("10.0.1.0/24", IPCacheValue(1000, 0, IPv4Address("10.224.0.4")))
    dp.policy.set_policy(12, WEB)
    far = time.monotonic_ns() + 3600 * 10**9
    for i in range(n_conns):
        dp.ct.put(
            make_key(Direction.EGRESS, 6, "10.0.1.10", "10.0.1.11", 30000 + i, 80),
            CtEntry(expires_ns=far, packets_fwd=i, cookie=3),
        )


def _state(dp: Datapath) -> tuple:
    return (
        dp.endpoints.entries(),
        dp.ipcache.entries(),
        dp.policy.get(12),
        sorted(str(c) for c in dp.ct.entries()),
    )


def test_a_restarted_agent_adopts_every_map_and_its_entries(pin_root: Path) -> None:
    first = Datapath.load(pin_root / "n")
    _fill(first)
    before = _state(first)
    old_progs = {p: libbpf.obj_get(pin_root / "n" / p) for p in datapath.PROGRAMS}
    first.close()  # kill -9: only the pins remain
    second = Datapath.load(pin_root / "n")
    try:
        assert all(second.adopted.values()), second.adopted
        assert _state(second) == before
        assert before[2] == WEB and len(before[3]) == 10
        for name, fd in old_progs.items():  # the programs are new ones, pinned in place
            new = libbpf.obj_get(pin_root / "n" / name)
            assert _prog_id(new) != _prog_id(fd)
    finally:
        second.unpin()
        second.close()
    assert not (pin_root / "n").exists()


def _prog_id(fd: int) -> int:
    # struct bpf_prog_info starts with type (u32) and id (u32)
    info = (ct.c_uint32 * 2)()
    size = ct.c_uint32(ct.sizeof(info))
    assert libbpf._libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)) == 0
    return info[1]


def test_resized_maps_are_migrated_not_flushed(pin_root: Path) -> None:
    small = Datapath.load(pin_root / "n", ct_entries=1024, max_endpoints=16, ipcache_entries=64)
    _fill(small, n_conns=100)
    before = _state(small)
    small.close()
    big = Datapath.load(pin_root / "n", ct_entries=4096, max_endpoints=64, ipcache_entries=256)
    try:
        assert big.migrated == {"ct": 100, "policy": 1, "endpoints": 1, "ipcache": 1}
        assert _state(big) == before  # the policy's inner map moved over by id
        assert libbpf.map_info(big.map_fd(CT_MAP)).max_entries == 4096
        assert sorted(p.name for p in (pin_root / "n").iterdir()) == sorted(
            [*datapath.MAPS, *datapath.PROGRAMS]
        )  # no staging pins left behind
    finally:
        big.unpin()
        big.close()


class CtEntryV0(ct.Structure):
    """A hypothetical older ct value without the byte counters, to exercise a converter."""

    _fields_ = (
        ("expires_ns", ct.c_uint64),
        ("created_ns", ct.c_uint64),
        ("packets_fwd", ct.c_uint64),
        ("packets_rev", ct.c_uint64),
        ("cookie", ct.c_uint32),
        ("peer_identity", ct.c_uint32),
    )


def _from_v0(key: bytes, value: bytes) -> tuple[bytes, bytes]:
    old = CtEntryV0.from_buffer_copy(value)
    new = CtEntry(
        expires_ns=old.expires_ns,
        created_ns=old.created_ns,
        packets_fwd=old.packets_fwd,
        packets_rev=old.packets_rev,
        cookie=old.cookie,
        peer_identity=old.peer_identity,
    )
    return key, bytes(new)


def _pin_v0_ct(pin_dir: Path, n: int) -> None:
    pin_dir.mkdir()
    fd = libbpf.map_create(libbpf.BPF_MAP_TYPE_LRU_HASH, "ct", 16, ct.sizeof(CtEntryV0), 4096)
    far = time.monotonic_ns() + 3600 * 10**9
    for i in range(n):
        key = make_key(Direction.INGRESS, 17, "10.0.2.2", "10.0.1.10", 5000 + i, 53)
        libbpf.map_update(fd, key, CtEntryV0(expires_ns=far, packets_fwd=i + 1, cookie=9))
    libbpf.obj_pin(fd, pin_dir / "ct")


def test_an_older_layout_is_converted_by_the_map_modules_migration(
    pin_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _pin_v0_ct(pin_root / "n", 20)
    converters = {(16, ct.sizeof(CtEntryV0)): _from_v0}
    monkeypatch.setitem(datapath.MIGRATIONS, CT_MAP, Migration(converters))
    with caplog.at_level(logging.WARNING):
        dp = Datapath.load(pin_root / "n")
    try:
        assert dp.migrated == {"ct": 20}
        conns = sorted(dp.ct.entries(), key=lambda c: c.sport)
        assert [(c.sport, c.packets_fwd, c.cookie, c.bytes_fwd) for c in conns] == [
            (5000 + i, i + 1, 9, 0) for i in range(20)
        ]
        assert "migrated 20 entries" in caplog.text
    finally:
        dp.unpin()
        dp.close()


def test_an_unknown_older_layout_is_replaced_and_logged(
    pin_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _pin_v0_ct(pin_root / "n", 5)
    with caplog.at_level(logging.WARNING):
        dp = Datapath.load(pin_root / "n")
    try:
        assert not dp.adopted["ct"] and "ct" not in dp.migrated
        assert dp.ct.entries() == []
        assert "has another shape" in caplog.text
    finally:
        dp.unpin()
        dp.close()


def test_a_changed_inner_template_takes_the_policy_map_with_it(
    pin_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Datapath.load(pin_root / "n")
    first.policy.set_policy(12, WEB)
    first.close()
    # pretend the inner layout changed: the pinned template no longer matches the source's
    (pin_root / "n" / POLICY_INNER).unlink()
    fd = libbpf.map_create(libbpf.BPF_MAP_TYPE_LPM_TRIE, "policy_inner", 16, 8, 16, 1)
    libbpf.obj_pin(fd, pin_root / "n" / POLICY_INNER)
    with caplog.at_level(logging.WARNING):
        dp = Datapath.load(pin_root / "n")
    try:
        assert not dp.adopted[POLICY_INNER] and not dp.adopted[POLICY_MAP]
        assert dp.policy.get(12) is None  # the agent writes policies again after loading
        assert "inner template policy_inner changed" in caplog.text
        dp.policy.set_policy(12, WEB)
        assert dp.policy.get(12) == WEB
    finally:
        dp.unpin()
        dp.close()


def test_inner_maps_may_be_larger_than_the_template(pin_root: Path) -> None:
    dp = Datapath.load(pin_root / "n", policy_entries=100_000)
    try:
        many = EndpointPolicy(
            frozenset(PolicyEntry(Direction.INGRESS, 300 + i, 6, 80, 16, 1) for i in range(20_000))
        )
        dp.policy.set_policy(5, many)
        assert len(dp.policy.get(5).entries) == 20_000
    finally:
        dp.unpin()
        dp.close()


def test_timeouts_are_written_and_bad_arguments_refused(pin_root: Path) -> None:
    dp = Datapath.load(pin_root / "n", timeouts=CtTimeouts(ct_tcp_s=7200, ct_other_s=30))
    try:
        assert dp.timeouts() == CtTimeouts(ct_tcp_s=7200, ct_other_s=30)
    finally:
        dp.unpin()
        dp.close()
    with pytest.raises(UsageError, match="events_bytes: 5000 is not a power of two"):
        Datapath.load(pin_root / "m", events_bytes=5000)
    with pytest.raises(UsageError, match="ct_tcp_syn_s"):
        Datapath.load(pin_root / "m", timeouts=CtTimeouts(ct_tcp_syn_s=0))
    with pytest.raises(UsageError, match="ct_entries"):
        Datapath.load(pin_root / "m", ct_entries=0)
    assert not (pin_root / "m").exists()
