"""The L7 redirect maps: layouts against the compiled program, sync's exactness, the original
destination read once; the fake and the kernel maps held to the same behaviour."""

from __future__ import annotations

import ctypes as ct
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dataplane.maps import l7map, layout
from dataplane.maps.l7map import (
    FakeL7Maps,
    L7MapFull,
    L7Maps,
    OriginalDst,
    Redirect,
    orig_value,
    port_key,
)
from flowscope.errors import UsageError
from tests.conftest import unique


def r(ip: str, port: int) -> Redirect:
    return Redirect(IPv4Address(ip), port)


ORIG = OriginalDst(IPv4Address("10.96.0.10"), 8080, IPv4Address("10.244.1.5"), 80)


@pytest.mark.privileged
def test_mirrors_match_the_compiled_program() -> None:
    from probes import socklb

    obj = socklb.compiled()
    for name, (key, value) in l7map.LAYOUTS.items():
        spec = obj.maps[name]
        layout.assert_map_layout(name, key, value, spec.key_type, spec.value_type)
    assert {n: ct.sizeof(v) for n, (_, v) in l7map.LAYOUTS.items()} == {
        l7map.REDIRECT_MAP: 4,
        l7map.ORIG_SOCK_MAP: 16,
        l7map.ORIG_PORT_MAP: 16,
    }
    assert ct.sizeof(l7map.L7PortKey) == 16 and ct.sizeof(l7map.L7Key) == 8


def test_values_are_in_network_order_as_the_program_reads_them() -> None:
    key = l7map.redirect_key(r("10.244.1.5", 80))
    assert bytes(key) == bytes([10, 244, 1, 5, 0, 80, 0, 0])
    assert bytes(l7map.redirect_value(15080)) == (15080).to_bytes(2, "big") + b"\0\0"
    raw = bytes(orig_value(ORIG))
    assert raw[:8] == bytes([10, 96, 0, 10, 10, 244, 1, 5])
    assert raw[8:12] == (8080).to_bytes(2, "big") + (80).to_bytes(2, "big")
    # the local port as sock_ops gives it: host order
    assert bytes(port_key(7, 40000))[8:10] == (40000).to_bytes(2, "little")
    assert l7map.decode_orig(orig_value(ORIG)) == ORIG
    assert ORIG.backend == ("10.244.1.5", 80)


def test_bad_ports_name_the_field() -> None:
    with pytest.raises(UsageError, match="port: 0"):
        r("10.0.0.1", 0)
    with pytest.raises(UsageError, match="proxy_port: 70000"):
        l7map.redirect_value(70000)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.privileged)])
def maps(request) -> Iterator[L7Maps]:
    if request.param == "fake":
        yield FakeL7Maps(capacity=4)
        return
    from probes.socklb import SocketLB

    pin_dir = Path("/sys/fs/bpf") / unique("fsl7m")
    lb = SocketLB.load(pin_dir, l7_redirect=4, l7_orig=8)
    try:
        yield lb.l7
    finally:
        lb.unpin()
        lb.close()
        shutil.rmtree(pin_dir, ignore_errors=True)


def test_sync_makes_the_map_hold_exactly_the_set(maps: L7Maps) -> None:
    a, b, c = r("10.244.1.5", 80), r("10.244.1.5", 8080), r("10.244.2.9", 80)
    assert maps.sync({a: 15080, b: 15080}) == (2, 0)
    assert maps.redirects() == {a: 15080, b: 15080}
    assert maps.sync({a: 15080, b: 15080}) == (0, 0)  # nothing to do
    assert maps.sync({b: 15081, c: 15080}) == (2, 1)
    assert maps.redirects() == {b: 15081, c: 15080}
    assert maps.sync({}) == (0, 2)
    assert maps.redirects() == {}


def test_a_set_larger_than_the_map_is_refused_before_writing(maps: L7Maps) -> None:
    keep = {r("10.244.1.1", 80): 15080}
    maps.sync(keep)
    too_many = {r(f"10.244.1.{i}", 80): 15080 for i in range(2, 8)}
    with pytest.raises(L7MapFull, match="6 pod ports with HTTP rules, room for 4"):
        maps.sync(too_many)
    assert maps.redirects() == keep


def test_an_original_destination_is_taken_once() -> None:
    fake = FakeL7Maps()
    fake.record(123, 40000, ORIG)
    assert fake.take_original(123, 41000) is None  # another port
    assert fake.take_original(124, 40000) is None  # another namespace
    assert fake.take_original(123, 40000) == ORIG
    assert fake.take_original(123, 40000) is None


@pytest.mark.privileged
def test_the_kernel_map_gives_what_was_recorded_once() -> None:
    from probes.socklb import SocketLB

    pin_dir = Path("/sys/fs/bpf") / unique("fsl7m")
    lb = SocketLB.load(pin_dir, l7_orig=8)
    try:
        # what fs_l7_sockops writes, written here
        lb.l7._orig_port.update(port_key(99, 40001), orig_value(ORIG))
        assert lb.l7.take_original(99, 40001) == ORIG
        assert lb.l7.take_original(99, 40001) is None
    finally:
        lb.unpin()
        lb.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
