"""NodePort maps: ctypes mirrors against what bcc compiled, and NodePortMaps held to one contract
on dict-backed tables and on real kernel maps (slots, Maglev tables rebuilt only when backends
change, adoption after a restart, capacity and bad input)."""

from __future__ import annotations

import ctypes as ct
import os
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dataplane.maps import layout, maglevmap, nodeportmap, npaffinity, npctmap
from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.maps.lbmap import FakeTable, KernelTable, Proto
from dataplane.maps.maglevmap import MAGLEV_MAP, TABLE_SIZE
from dataplane.maps.nodeportmap import (
    NODE_ADDRESS,
    SERVICES_MAP,
    NodePortBackend,
    NodePortMaps,
    NodePortService,
    svc_key,
)
from dataplane.maps.npctmap import DIR_FWD, FakeNpCtMap, NpCtEntry, make_key

LAYOUTS = {
    SERVICES_MAP: nodeportmap.LAYOUT,
    MAGLEV_MAP: maglevmap.LAYOUT,
    npctmap.CT_MAP: npctmap.LAYOUT,
    npaffinity.AFFINITY_MAP: npaffinity.LAYOUT,
}


@pytest.mark.privileged
def test_mirrors_match_the_compiled_program() -> None:
    from probes import nodeport

    compiled = nodeport.compiled()
    for name, (key, value) in LAYOUTS.items():
        spec = compiled.maps[name]
        layout.assert_map_layout(name, key, value, spec.key_type, spec.value_type)
    spec = compiled.maps[nodeport.CONFIG_MAP]
    layout.assert_map_layout(
        nodeport.CONFIG_MAP, ct.c_int32, nodeport.NpConfigStruct, spec.key_type, spec.value_type
    )


def _tables(kind: str, services: int, maglev: int) -> tuple[list, list[int]]:
    if kind == "fake":
        return [
            FakeTable(SERVICES_MAP, *nodeportmap.LAYOUT, services),
            FakeTable(MAGLEV_MAP, *maglevmap.LAYOUT, maglev),
        ], []
    from probes import libbpf

    fds = [
        libbpf.map_create(
            libbpf.BPF_MAP_TYPE_HASH,
            "t_np_svc",
            ct.sizeof(nodeportmap.NpSvcKey),
            ct.sizeof(nodeportmap.NpSvcValue),
            services,
        ),
        libbpf.map_create(
            libbpf.BPF_MAP_TYPE_HASH, "t_np_mag", 4, ct.sizeof(maglevmap.MaglevTable), maglev, 1
        ),
    ]
    tables = [
        KernelTable(BpfMap(fds[0], *nodeportmap.LAYOUT, name=SERVICES_MAP), services),
        KernelTable(BpfMap(fds[1], *maglevmap.LAYOUT, name=MAGLEV_MAP), maglev),
    ]
    return tables, fds


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.privileged)])
def tables(request: pytest.FixtureRequest) -> Iterator:
    """A factory of (services, maglev) tables; the same tables can be adopted twice."""
    made: list[int] = []

    def make(services: int = 64, maglev: int = 8) -> list:
        t, fds = _tables(request.param, services, maglev)
        made.extend(fds)
        return t

    try:
        yield make
    finally:
        for fd in made:
            os.close(fd)


def backends(*hosts: int, remote: bool = False) -> tuple[NodePortBackend, ...]:
    return tuple(NodePortBackend(f"10.244.1.{h}", 80, remote) for h in hosts)


def test_slots_hold_the_backends_and_the_head_their_count(tables) -> None:
    svc_t, mag_t = tables()
    maps = NodePortMaps(svc_t, mag_t)
    svc = NodePortService(30080, "TCP", backends(1, 2) + backends(3, remote=True), local=False)
    entry = maps.upsert(svc)
    head = svc_t.get(svc_key(NODE_ADDRESS, 30080, Proto.TCP))
    assert (head.count, head.id, head.flags) == (3, entry.id, 0)
    third = svc_t.get(svc_key(NODE_ADDRESS, 30080, Proto.TCP, 3))
    assert (third.port, third.flags) == (socket.htons(80), nodeportmap.BE_F_REMOTE)
    maps.upsert(NodePortService(30080, "TCP", backends(1)))
    assert (
        svc_t.get(svc_key(NODE_ADDRESS, 30080, Proto.TCP, 2)) is None
    )  # slots beyond the count go
    assert maps.lookup(30080, "tcp").id == entry.id  # the id is stable across updates
    assert maps.usage()[SERVICES_MAP][0] == 2
    assert maps.delete(30080, "TCP") and svc_t.get(svc_key(NODE_ADDRESS, 30080, Proto.TCP)) is None
    assert list(svc_t.items()) == []


def test_a_loadbalancer_address_and_a_nodeport_of_the_same_port_are_two_frontends(tables) -> None:
    svc_t, mag_t = tables()
    maps = NodePortMaps(svc_t, mag_t)
    node_port = NodePortService(30080, "TCP", backends(1))
    lb = NodePortService(30080, "TCP", backends(2, 3), address="10.225.0.7")
    maps.sync([node_port, lb])
    assert svc_t.get(svc_key(IPv4Address("10.225.0.7"), 30080, Proto.TCP)).count == 2
    assert svc_t.get(svc_key(NODE_ADDRESS, 30080, Proto.TCP)).count == 1
    assert maps.lookup(30080, "TCP", "10.225.0.7").service == lb
    assert str(lb) == "LoadBalancer 10.225.0.7:30080/TCP"
    maps.sync([node_port])
    assert svc_t.get(svc_key(IPv4Address("10.225.0.7"), 30080, Proto.TCP)) is None
    assert maps.lookup(30080, "TCP").service == node_port


def test_maglev_table_is_rebuilt_only_when_backends_change(tables) -> None:
    maps = NodePortMaps(*tables())
    svc = NodePortService(30081, "TCP", backends(1, 2, 3), maglev=True)
    entry = maps.upsert(svc)
    slots = maps.maglev.get(entry.id)
    assert slots is not None and len(slots) == TABLE_SIZE and set(slots) == {1, 2, 3}
    assert maps.maglev_builds == 1
    maps.sync([svc, NodePortService(30082, "UDP", backends(4))])  # another service changes
    maps.sync([NodePortService(30081, "TCP", backends(1, 2, 3), maglev=True, affinity_timeout=5)])
    assert maps.maglev_builds == 1
    maps.sync([NodePortService(30081, "TCP", backends(1, 3), maglev=True)])
    assert maps.maglev_builds == 2 and set(maps.maglev.get(entry.id)) == {1, 2}
    maps.sync([NodePortService(30081, "TCP", backends(1, 3))])  # Maglev switched off
    assert maps.maglev.get(entry.id) is None


def test_a_restarted_agent_adopts_services_and_drops_debris(tables) -> None:
    svc_t, mag_t = tables()
    first = NodePortMaps(svc_t, mag_t)
    want = [
        NodePortService(30080, "TCP", backends(1, 2, remote=True), affinity_timeout=60),
        NodePortService(30081, "TCP", backends(3), maglev=True, local=True),
        NodePortService(30081, "TCP", backends(4), address="10.225.0.7"),  # a LoadBalancer
    ]
    first.sync(want)
    ids = {e.service.frontend: e.id for e in first.entries()}
    svc_t.put(
        svc_key(NODE_ADDRESS, 30090, Proto.TCP, 4), nodeportmap.NpSvcValue()
    )  # slot of no service
    mag_t.put(ct.c_uint32(999), maglevmap.MaglevTable())  # table of no service

    again = NodePortMaps(svc_t, mag_t)
    assert sorted(again.services(), key=lambda s: s.frontend) == sorted(
        want, key=lambda s: s.frontend
    )
    assert {e.service.frontend: e.id for e in again.entries()} == ids
    assert again.repaired == 2
    assert again.sync(want) == (0, 0)  # nothing to write, no Maglev rebuild
    assert again.maglev_builds == 0


def test_bad_input_names_the_field_and_writes_nothing(tables) -> None:
    svc_t, mag_t = tables()
    maps = NodePortMaps(svc_t, mag_t)
    for bad, field in (
        (NodePortService(0, "TCP"), "port"),
        (NodePortService(30080, "TCP", backends(1, 1)), "listed twice"),
        (NodePortService(30080, "TCP", (NodePortBackend("0.0.0.0", 80),)), "backends\\[0\\].ip"),
        (NodePortService(30080, "TCP", affinity_timeout=86401), "affinity_timeout"),
    ):
        with pytest.raises(MapError, match=field):
            maps.sync([bad])
    assert list(svc_t.items()) == []
    with pytest.raises(MapError, match="SCTP"):
        NodePortService(30080, "SCTP")


def test_a_full_map_refuses_before_writing(tables) -> None:
    svc_t, mag_t = tables(services=4)
    maps = NodePortMaps(svc_t, mag_t)
    maps.upsert(NodePortService(30080, "TCP", backends(1, 2)))
    with pytest.raises(MapError, match="full"):
        maps.upsert(NodePortService(30081, "TCP", backends(3, 4)))
    assert maps.lookup(30081, "TCP") is None and len(list(svc_t.items())) == 3


def test_maglev_value_rejects_a_table_of_another_size() -> None:
    with pytest.raises(MapError, match="16381"):
        maglevmap.table_value([0] * 7)
    value = maglevmap.table_value([0, 1] * (TABLE_SIZE // 2) + [0])
    assert value.slot[0] == 1 and value.slot[1] == 2  # stored as 1-based slots


def test_ct_gc_deletes_only_expired_entries() -> None:
    ct_map = FakeNpCtMap()
    for i, expires in enumerate((100, 200, 300)):
        key = make_key(DIR_FWD, 6, "10.224.0.254", "10.224.0.4", 40000 + i, 30080)
        ct_map.put(key, NpCtEntry(expires_ns=expires))
    assert ct_map.gc(250) == 2
    (left,) = ct_map.entries()
    assert (left.sport, left.dport, left.expires_ns) == (40002, 30080, 300)
