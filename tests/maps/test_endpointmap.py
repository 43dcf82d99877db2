"""Endpoints map: the ctypes mirror against bcc, and one behaviour from the fake and the kernel."""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dataplane.maps import layout
from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.maps.endpointmap import (
    EP_F_AUDIT,
    MAP_NAME,
    Endpoint,
    EndpointInfo,
    EndpointMap,
    FakeEndpointMap,
    KernelEndpointMap,
)

CAPACITY = 4


@pytest.mark.privileged
def test_mirror_matches_the_compiled_program() -> None:
    from probes.datapath import compiled

    spec = compiled().maps[MAP_NAME]
    layout.assert_map_layout(MAP_NAME, ct.c_uint32, EndpointInfo, spec.key_type, spec.value_type)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.privileged)])
def epmap(request: pytest.FixtureRequest) -> Iterator[EndpointMap]:
    if request.param == "fake":
        yield FakeEndpointMap(CAPACITY)
        return
    from probes import libbpf

    fd = libbpf.map_create(libbpf.BPF_MAP_TYPE_HASH, "t_ep", 4, ct.sizeof(EndpointInfo), CAPACITY)
    try:
        yield KernelEndpointMap(BpfMap(fd, ct.c_uint32, EndpointInfo, name=MAP_NAME), CAPACITY)
    finally:
        os.close(fd)


def test_upsert_get_delete(epmap: EndpointMap) -> None:
    a = Endpoint(12, 1000, IPv4Address("10.0.1.10"))
    b = Endpoint(7, 1001, IPv4Address("10.0.1.11"), audit=True)
    epmap.upsert(a)
    epmap.upsert(b)
    assert epmap.get(12) == a and epmap.get(7) == b and epmap.get(8) is None
    assert epmap.entries() == [b, a]
    relabelled = Endpoint(12, 1005, IPv4Address("10.0.1.10"))
    epmap.upsert(relabelled)  # replace in place
    assert epmap.get(12) == relabelled
    assert epmap.delete(12) and not epmap.delete(12)
    assert epmap.entries() == [b]


def test_struct_carries_the_id_the_address_and_the_audit_flag() -> None:
    s = Endpoint(9, 4242, IPv4Address("10.1.2.3"), audit=True).to_struct()
    assert (s.endpoint_id, s.identity, s.flags) == (9, 4242, EP_F_AUDIT)
    assert bytes(s)[8:12] == IPv4Address("10.1.2.3").packed  # network order in memory
    assert Endpoint.from_struct(9, s) == Endpoint(9, 4242, IPv4Address("10.1.2.3"), True)


def test_a_full_map_names_itself_and_what_to_raise(epmap: EndpointMap) -> None:
    for i in range(CAPACITY):
        epmap.upsert(Endpoint(i + 1, 1000, IPv4Address(f"10.0.0.{i + 1}")))
    with pytest.raises(MapError, match="map endpoints is full") as err:
        epmap.upsert(Endpoint(99, 1000, IPv4Address("10.0.0.99")))
    assert "max_endpoints" in str(err.value)
    epmap.upsert(Endpoint(1, 2000, IPv4Address("10.0.0.1")))  # replacing still works
    assert len(epmap.entries()) == CAPACITY


def test_bad_values_are_refused_by_field(epmap: EndpointMap) -> None:
    with pytest.raises(MapError, match="ifindex"):
        epmap.upsert(Endpoint(0, 1, IPv4Address("10.0.0.1")))
    with pytest.raises(MapError, match="identity"):
        epmap.upsert(Endpoint(3, 2**32, IPv4Address("10.0.0.1")))
    assert epmap.entries() == []
