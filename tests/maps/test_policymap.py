"""Per-endpoint policy maps: the key encoding, the canonical form, and the fake and the kernel
(a real hash of LPM tries) agreeing on set/get/delete/decide, with the swap being one update."""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
import time
from collections.abc import Iterator

import pytest

from dataplane.maps import layout
from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.maps.policymap import (
    INNER_TEMPLATE,
    MAP_NAME,
    FakePolicyMap,
    KernelPolicyMap,
    PolicyKey,
    PolicyMap,
    PolicyValue,
    canonical_policy,
    entry_of,
    make_key,
)
from dataplane.policy.entry import Direction, EndpointPolicy, PolicyEntry, entries_for_ports

EG, IN = Direction.EGRESS, Direction.INGRESS
INNER_ENTRIES = 8
MAX_ENDPOINTS = 3


def pol(*entries: PolicyEntry) -> EndpointPolicy:
    return EndpointPolicy(frozenset(entries))


@pytest.mark.privileged
def test_inner_mirror_matches_the_compiled_program() -> None:
    from probes import libbpf
    from probes.datapath import compiled

    obj = compiled()
    inner = obj.maps[INNER_TEMPLATE]
    layout.assert_map_layout(
        INNER_TEMPLATE, PolicyKey, PolicyValue, inner.key_type, inner.value_type
    )
    outer = obj.maps[MAP_NAME]
    assert outer.map_type == libbpf.BPF_MAP_TYPE_HASH_OF_MAPS
    assert (outer.key_size, outer.value_size, outer.inner_map) == (4, 4, INNER_TEMPLATE)


def test_key_prefix_covers_identity_direction_then_protocol_then_port_bits() -> None:
    port80 = make_key(PolicyEntry(EG, 1001, 6, 80, 16, 1))
    assert (port80.prefixlen, port80.identity, port80.direction, port80.protocol) == (
        64,
        1001,
        1,
        6,
    )
    assert bytes(port80)[10:12] == (80).to_bytes(2, "big")  # the port's high bits come first
    assert make_key(PolicyEntry(IN, 0, 6, 8000, 10, 1)).prefixlen == 58
    assert make_key(PolicyEntry(IN, 0, 17, 0, 0, 1)).prefixlen == 48  # any UDP port
    anyproto = make_key(PolicyEntry(IN, 5, 0, 1234, 16, 1))
    assert (anyproto.prefixlen, anyproto.dport) == (40, 0)


def test_canonical_form_keeps_the_lowest_cookie_per_key() -> None:
    entries = canonical_policy(
        pol(
            PolicyEntry(EG, 7, 6, 80, 16, 30),
            PolicyEntry(EG, 7, 6, 80, 16, 12),  # same key: 12 wins, as decide() would pick
            PolicyEntry(EG, 7, 6, 8001, 8, 40),  # host bits of a prefix do not matter
            PolicyEntry(EG, 7, 6, 8100, 8, 41),
            PolicyEntry(EG, 7, 0, 99, 16, 50),  # any protocol: no port
        )
    ).values()
    assert sorted(entries) == sorted(
        [
            PolicyEntry(EG, 7, 6, 80, 16, 12),
            PolicyEntry(EG, 7, 6, 7936, 8, 40),
            PolicyEntry(EG, 7, 0, 0, 0, 50),
        ]
    )
    for e in entries:
        assert entry_of(make_key(e), PolicyValue(cookie=e.cookie)) == e


def test_out_of_range_entries_name_the_field() -> None:
    for bad, field in [
        (PolicyEntry(EG, 2**32, 6, 80, 16, 1), "identity"),
        (PolicyEntry(EG, 1, 256, 80, 16, 1), "protocol"),
        (PolicyEntry(EG, 1, 6, 70000, 16, 1), "port"),
        (PolicyEntry(EG, 1, 6, 80, 17, 1), "prefix_len"),
        (PolicyEntry(EG, 1, 6, 80, 16, -1), "cookie"),
    ]:
        with pytest.raises(MapError, match=f"policy entry {field}"):
            canonical_policy(pol(bad))


@contextlib.contextmanager
def kernel_policy_map() -> Iterator[KernelPolicyMap]:
    from probes import libbpf

    no_prealloc = 1
    # the template is bigger than the inner maps: the kernel compares shapes, not sizes
    template = libbpf.map_create(
        libbpf.BPF_MAP_TYPE_LPM_TRIE, "t_pol_in", 12, 8, 16384, no_prealloc
    )
    outer = libbpf.map_create(
        libbpf.BPF_MAP_TYPE_HASH_OF_MAPS, "t_pol", 4, 4, MAX_ENDPOINTS, inner_map_fd=template
    )
    try:
        yield KernelPolicyMap(
            BpfMap(outer, ct.c_uint32, ct.c_uint32, name=MAP_NAME),
            inner_flags=no_prealloc,
            inner_entries=INNER_ENTRIES,
            max_endpoints=MAX_ENDPOINTS,
        )
    finally:
        os.close(outer)
        os.close(template)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.privileged)])
def pmap(request: pytest.FixtureRequest) -> Iterator[PolicyMap]:
    if request.param == "fake":
        yield FakePolicyMap(inner_entries=INNER_ENTRIES, max_endpoints=MAX_ENDPOINTS)
        return
    with kernel_policy_map() as m:
        yield m


def test_set_get_delete_and_decide(pmap: PolicyMap) -> None:
    web = pol(
        *entries_for_ports(IN, 1001, 6, [(8000, 8099)], cookie=5),
        PolicyEntry(IN, 0, 17, 53, 16, 6),
        PolicyEntry(EG, 0, 0, 0, 0, 0xFFFFFFFF),
    )
    pmap.set_policy(12, web)
    assert pmap.get(12) == web and pmap.get(13) is None
    assert pmap.endpoints() == [12]
    assert pmap.decide(12, IN, 1001, 0, 6, 8050).cookie == 5
    assert not pmap.decide(12, IN, 1002, 0, 6, 8050).allowed
    assert pmap.decide(12, IN, 1002, 0, 17, 53).cookie == 6
    assert pmap.decide(12, EG, 2, 0, 1, 8).cookie == 0xFFFFFFFF
    v = pmap.decide(13, IN, 1001, 0, 6, 8050)
    assert (v.allowed, v.no_policy) == (False, True)

    pmap.set_policy(12, pol())  # deny all: an empty map, still a policy
    assert pmap.get(12) == pol()
    assert not pmap.decide(12, EG, 2, 0, 1, 8).no_policy
    assert pmap.delete(12) and not pmap.delete(12)
    assert pmap.endpoints() == []


def test_limits_are_errors_that_say_what_to_raise(pmap: PolicyMap) -> None:
    big = pol(*(PolicyEntry(IN, 2000 + i, 6, 80, 16, 1) for i in range(INNER_ENTRIES + 1)))
    with pytest.raises(MapError, match="endpoint 4 needs 9 entries") as err:
        pmap.set_policy(4, big)
    assert "--policy-map-entries" in str(err.value)
    assert pmap.get(4) is None  # nothing half-written
    for ep in range(MAX_ENDPOINTS):
        pmap.set_policy(ep + 1, pol())
    with pytest.raises(MapError, match="map policy is full") as err:
        pmap.set_policy(99, pol())
    assert "max_endpoints" in str(err.value)


@pytest.mark.privileged
def test_the_swap_replaces_the_inner_map_and_frees_the_old_one() -> None:
    with kernel_policy_map() as pmap:
        _swap_and_free(pmap)


def _swap_and_free(pmap: KernelPolicyMap) -> None:
    from probes import libbpf

    pmap.set_policy(1, pol(PolicyEntry(IN, 5, 6, 80, 16, 1)))
    old_id = pmap.map.lookup(ct.c_uint32(1)).value
    pmap.set_policy(1, pol(PolicyEntry(IN, 6, 6, 80, 16, 2)))
    new_id = pmap.map.lookup(ct.c_uint32(1)).value
    assert new_id != old_id
    assert pmap.get(1) == pol(PolicyEntry(IN, 6, 6, 80, 16, 2))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # freed after an RCU grace period
        try:
            os.close(libbpf.map_fd_by_id(old_id))
        except OSError as e:
            assert e.errno == errno.ENOENT
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the replaced inner map {old_id} is still alive")
