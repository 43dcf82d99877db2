"""The LB maps: layouts against the compiled program, and the fake and the kernel maps held to
one contract (what upsert/delete/sync leave in the tables, ids, adoption after a restart,
capacity, bad input), plus the write order a concurrent connect relies on."""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.maps import layout, lbmap
from dataplane.maps.bpfmap import MapError
from dataplane.maps.lbmap import (
    LAYOUTS,
    Backend,
    FakeLBMaps,
    FakeTable,
    Frontend,
    KernelLBMaps,
    LBMaps,
    Proto,
    Service,
    SvcValue,
    frontend_of,
    svc_key,
)

A, B, C = Backend("10.244.1.5", 8080), Backend("10.244.1.6", 8080), Backend("10.244.2.5", 8080)
VIP = IPv4Address("10.0.0.10")
NAMES = (
    lbmap.SERVICES_MAP,
    lbmap.BACKENDS_MAP,
    lbmap.REVNAT_MAP,
    lbmap.AFFINITY_MAP,
    lbmap.SOCK_REVNAT_MAP,
)
SIZES = {lbmap.SERVICES_MAP: 16, lbmap.BACKENDS_MAP: 8, lbmap.REVNAT_MAP: 4}


@pytest.mark.privileged
def test_mirrors_match_the_compiled_program() -> None:
    from probes import socklb

    obj = socklb.compiled()
    for name, (key, value) in LAYOUTS.items():
        spec = obj.maps[name]
        layout.assert_map_layout(name, key, value, spec.key_type, spec.value_type)
    assert ct.sizeof(socklb.LBEvent) == 56


@contextlib.contextmanager
def kernel_tables() -> Iterator[dict[str, tuple[int, int]]]:
    from probes import libbpf

    fds: dict[str, tuple[int, int]] = {}
    try:
        for name in NAMES:
            key, value = LAYOUTS[name]
            kind = libbpf.BPF_MAP_TYPE_LRU_HASH if "aff" in name or "sock" in name else 1
            size = SIZES.get(name, 64)
            fd = libbpf.map_create(kind, name, ct.sizeof(key), ct.sizeof(value), size)
            fds[name] = (fd, size)
        yield fds
    finally:
        for fd, _ in fds.values():
            os.close(fd)


def small_fake() -> FakeLBMaps:
    return FakeLBMaps(
        services=SIZES[lbmap.SERVICES_MAP],
        backends=SIZES[lbmap.BACKENDS_MAP],
        revnat=SIZES[lbmap.REVNAT_MAP],
    )


@contextlib.contextmanager
def lb_maps(kind: str) -> Iterator[tuple[LBMaps, object]]:
    """An LBMaps and a way to open a second one over the same tables (a restarted agent)."""
    if kind == "fake":
        maps = small_fake()
        yield maps, lambda: FakeLBMaps(tables=maps.tables)
        return
    with kernel_tables() as fds:
        yield KernelLBMaps(fds), lambda: KernelLBMaps(fds)


KINDS = ["fake", pytest.param("kernel", marks=pytest.mark.privileged)]


def raw(maps: LBMaps) -> dict[str, list[tuple[bytes, bytes]]]:
    tables = {
        "svc": maps._svc,
        "be": maps._be,
        "rev": maps._rev,
    }
    return {n: sorted((bytes(k), bytes(v)) for k, v in t.items()) for n, t in tables.items()}


@pytest.mark.privileged
def test_fake_and_kernel_leave_the_same_bytes() -> None:
    fake = small_fake()
    steps = [
        Service(VIP, 80, "TCP", (A, B)),
        Service(VIP, 53, "UDP", (A,), affinity_timeout=10800),
        Service("10.0.0.11", 80, "TCP", (B, C)),
        Service(VIP, 80, "TCP", (C,)),
    ]
    for s in steps:
        fake.upsert_service(s)
    fake.delete_service(Frontend(VIP, 53, Proto.UDP))
    with kernel_tables() as fds:
        kernel = KernelLBMaps(fds)
        for s in steps:
            kernel.upsert_service(s)
        kernel.delete_service(Frontend(VIP, 53, Proto.UDP))
        assert raw(kernel) == raw(fake)
        assert kernel.entries() == fake.entries()


@pytest.mark.parametrize("kind", KINDS)
def test_services_read_back_with_their_ids(kind: str) -> None:
    with lb_maps(kind) as (maps, _):
        web = maps.upsert_service(Service(VIP, 80, "TCP", (A, B), affinity_timeout=60))
        dns = maps.upsert_service(Service(VIP, 53, "udp", (A,)))
        assert maps.services() == [dns.service, web.service]  # sorted by frontend
        assert web.revnat_id != dns.revnat_id
        # the same pod port over TCP and UDP: two backends; a second TCP service shares one
        assert maps.backend_id(A, "TCP") != maps.backend_id(A, "UDP")
        other = maps.upsert_service(Service("10.0.0.11", 80, Proto.TCP, (B, A)))
        assert other.backend_ids == (web.backend_ids[1], web.backend_ids[0])
        assert maps.lookup(VIP, 80, "TCP") == web
        head = maps._svc.get(svc_key(web.service.frontend))
        assert (head.count, head.flags, head.affinity_timeout) == (2, lbmap.SVC_F_AFFINITY, 60)
        assert maps.usage()[lbmap.BACKENDS_MAP][0] == 3
        assert maps.delete_service(web.service) and not maps.delete_service(web.service)
        assert maps.backend_id(A, "TCP") is not None  # still used by 10.0.0.11
        maps.delete_service(other.service.frontend)
        assert maps.backend_id(A, "TCP") is None and maps.backend_id(B, "TCP") is None
        assert maps.usage() == {
            lbmap.SERVICES_MAP: (2, SIZES[lbmap.SERVICES_MAP]),
            lbmap.BACKENDS_MAP: (1, SIZES[lbmap.BACKENDS_MAP]),
            lbmap.REVNAT_MAP: (1, SIZES[lbmap.REVNAT_MAP]),
        }
        assert len(list(maps._svc.items())) == 2 and len(list(maps._rev.items())) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_restarted_agent_adopts_services_and_ids(kind: str) -> None:
    with lb_maps(kind) as (maps, reopen):
        web = maps.upsert_service(Service(VIP, 80, "TCP", (A, B), affinity_timeout=5))
        empty = maps.upsert_service(Service(VIP, 81, "TCP", ()))
        again: LBMaps = reopen()
        assert again.entries() == maps.entries() == sorted([web, empty], key=_fe)
        assert again.repaired == 0
        # new ids do not collide with adopted ones
        new = again.upsert_service(Service("10.0.0.12", 80, "TCP", (C,)))
        assert new.revnat_id not in (web.revnat_id, empty.revnat_id)
        assert new.backend_ids[0] not in web.backend_ids


def _fe(e):
    return e.service.frontend


@pytest.mark.parametrize("kind", KINDS)
def test_adoption_removes_what_an_interrupted_update_left(kind: str) -> None:
    with lb_maps(kind) as (maps, reopen):
        web = maps.upsert_service(Service(VIP, 80, "TCP", (A, B)))
        # debris: a backend and a reverse-NAT id nothing uses, a slot beyond the count, the
        # slots of a service whose entry is gone
        maps._be.put(ct.c_uint32(77), lbmap.BackendValue(ip=1, port=2, proto=6))
        maps._rev.put(ct.c_uint16(99), lbmap.RevNatValue(vip=1, port=2, proto=6))
        maps._svc.put(svc_key(web.service.frontend, 3), SvcValue(backend_id=77))
        maps._svc.put(svc_key(Frontend("10.0.0.99", 1, Proto.TCP), 1), SvcValue(backend_id=77))
        again = reopen()
        assert again.repaired == 4
        assert again.entries() == [web]
        assert sorted(bytes(k) for k, _ in again._svc.items()) == sorted(
            bytes(svc_key(web.service.frontend, s)) for s in range(3)
        )


@pytest.mark.parametrize("kind", KINDS)
def test_full_maps_refuse_before_writing(kind: str) -> None:
    with lb_maps(kind) as (maps, _):
        many = tuple(Backend(f"10.244.3.{i}", 80) for i in range(1, 9))
        maps.upsert_service(Service(VIP, 80, "TCP", many))  # 8 backends: the backend map
        before = raw(maps)
        with pytest.raises(MapError, match="map lb_backends is full"):
            maps.upsert_service(Service(VIP, 81, "TCP", (A,)))
        with pytest.raises(MapError, match="map lb_services is full"):
            maps.upsert_service(Service(VIP, 82, "TCP", many))  # 9 more slots, 7 free
        assert raw(maps) == before
        maps.upsert_service(Service(VIP, 83, "TCP", ()))
        maps.upsert_service(Service(VIP, 84, "TCP", ()))
        maps.upsert_service(Service(VIP, 85, "TCP", ()))
        with pytest.raises(MapError, match="map lb_revnat is full"):
            maps.upsert_service(Service(VIP, 86, "TCP", ()))


def test_bad_services_name_the_field() -> None:
    maps = FakeLBMaps()
    cases = [
        (Service(VIP, 0, "TCP"), "port: 0"),
        (Service(VIP, 70000, "TCP"), "port: 70000"),
        (Service("0.0.0.0", 80, "TCP"), "vip"),
        (Service(VIP, 80, "TCP", affinity_timeout=0), "affinity_timeout: 0"),
        (Service(VIP, 80, "TCP", affinity_timeout=86401), "affinity_timeout: 86401"),
        (Service(VIP, 80, "TCP", (A, Backend("10.1.1.1", 0))), r"backends\[1\].port"),
        (Service(VIP, 80, "TCP", (A, A)), r"backends\[1\]: 10.244.1.5:8080 is listed twice"),
    ]
    for svc, message in cases:
        with pytest.raises(MapError, match=message):
            maps.upsert_service(svc)
    with pytest.raises(MapError, match="service proto: 'SCTP'"):
        Service(VIP, 80, "SCTP")
    with pytest.raises(MapError, match="service proto: 1 "):
        Service(VIP, 80, 1)
    assert maps.services() == [] and raw(maps) == {"svc": [], "be": [], "rev": []}


def test_sync_makes_the_maps_hold_exactly_the_services() -> None:
    maps = FakeLBMaps()
    maps.upsert_service(Service(VIP, 80, "TCP", (A,)))
    maps.upsert_service(Service(VIP, 81, "TCP", (A,)))
    want = [Service(VIP, 80, "TCP", (A,)), Service(VIP, 82, "UDP", (B,))]
    assert maps.sync(want) == (1, 1)
    assert maps.services() == want
    assert maps.sync(want) == (0, 0)


def test_affinity_entries_of_removed_backends_are_forgotten() -> None:
    maps = FakeLBMaps()
    web = maps.upsert_service(Service(VIP, 80, "TCP", (A, B), affinity_timeout=60))
    for client, bid in ((1, web.backend_ids[0]), (2, web.backend_ids[1])):
        maps._aff.put(
            lbmap.AffinityKey(client=client, revnat_id=web.revnat_id),
            lbmap.AffinityValue(last_used_ns=5, backend_id=bid),
        )
    maps.upsert_service(Service(VIP, 80, "TCP", (B,), affinity_timeout=60))
    assert [(a.client, a.backend_id) for a in maps.affinity()] == [(2, web.backend_ids[1])]
    maps.delete_service(web.service)
    assert maps.affinity() == []


class CheckedTable(FakeTable):
    """A fake table that checks, after every single write, what a concurrent connect sees."""

    world: LBMaps | None = None

    def put(self, key, value) -> None:
        super().put(key, value)
        self.check()

    def delete(self, key) -> bool:
        gone = super().delete(key)
        self.check()
        return gone

    def check(self) -> None:
        maps = CheckedTable.world
        if maps is None:
            return
        for k, v in maps._svc.items():
            if k.slot:
                continue
            rev = maps._rev.get(ct.c_uint16(v.revnat_id))
            assert rev is not None, "a visible service without its reverse-NAT entry"
            for slot in range(1, v.count + 1):
                got = maps._svc.get(svc_key(frontend_of(k), slot))
                assert got is not None, f"slot {slot} of {v.count} missing"
                assert maps._be.get(ct.c_uint32(got.backend_id)) is not None, "slot to nowhere"


backend_lists = st.lists(st.sampled_from([A, B, C, Backend("10.244.2.6", 9090)]), unique=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([80, 81]), backend_lists, st.booleans()), max_size=12))
def test_every_intermediate_state_is_safe_for_a_concurrent_connect(steps) -> None:
    tables = [CheckedTable(n, *LAYOUTS[n], 64) for n in NAMES]
    maps = FakeLBMaps(tables=tables)
    CheckedTable.world = maps
    try:
        for port, backends, delete in steps:
            if delete:
                maps.delete_service(Frontend(VIP, port, Proto.TCP))
            else:
                maps.upsert_service(Service(VIP, port, "TCP", backends))
        again = FakeLBMaps(tables=tables)
        assert again.entries() == maps.entries() and again.repaired == 0
    finally:
        CheckedTable.world = None
