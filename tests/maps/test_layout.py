"""dataplane.maps.layout: pure checks on hand-made types, then the real mirrors against bcc."""

from __future__ import annotations

import ctypes as ct

import pytest

from dataplane.maps import layout
from dataplane.maps.natmap import NatEntry, NatKey


class Inner(ct.Structure):
    _fields_ = (("a", ct.c_uint16), ("b", ct.c_uint16))


class Outer(ct.Structure):
    _fields_ = (("x", ct.c_uint32), ("inner", Inner * 2), ("tag", ct.c_uint8 * 4))


def test_identical_layouts_have_no_differences() -> None:
    class Twin(ct.Structure):
        _fields_ = (("x", ct.c_uint32), ("inner", Inner * 2), ("tag", ct.c_uint8 * 4))

    assert layout.differences(Twin, Outer) == []
    layout.assert_same_layout("twin", Twin, Outer)


def test_flatten_recurses_into_nested_structs_and_arrays() -> None:
    leaves = layout.flatten(Outer)
    assert [(x.path, x.offset, x.size, x.kind) for x in leaves] == [
        ("x", 0, 4, "u32"),
        ("inner[0].a", 4, 2, "u16"),
        ("inner[0].b", 6, 2, "u16"),
        ("inner[1].a", 8, 2, "u16"),
        ("inner[1].b", 10, 2, "u16"),
        ("tag", 12, 4, "u8[4]"),
    ]


def test_each_kind_of_mismatch_is_reported() -> None:
    class InnerSigned(ct.Structure):
        _fields_ = (("a", ct.c_int16), ("b", ct.c_uint16))

    class Wrong(ct.Structure):
        _fields_ = (("x", ct.c_uint64), ("inner", InnerSigned * 2), ("flag", ct.c_uint8 * 4))

    problems = layout.differences(Wrong, Outer)
    text = "\n".join(problems)
    assert "size 24 != compiled 16" in text
    assert "field x: size 8 != compiled 4" in text
    assert "field inner[0].a: offset 8 != compiled 4" in text
    assert "field inner[0].a: kind i16 != compiled u16" in text
    assert "missing field tag" in text
    assert "extra field flag" in text
    with pytest.raises(layout.LayoutMismatch, match="Wrong does not match"):
        layout.assert_same_layout("wrong", Wrong, Outer)


def test_same_size_but_swapped_fields_is_caught() -> None:
    class Swapped(ct.Structure):
        _fields_ = (
            ("daddr", ct.c_uint32),
            ("saddr", ct.c_uint32),
            ("sport", ct.c_uint16),
            ("dport", ct.c_uint16),
            ("proto", ct.c_uint8),
            ("dir", ct.c_uint8),
            ("pad", ct.c_uint8 * 2),
        )

    assert ct.sizeof(Swapped) == ct.sizeof(NatKey)
    problems = layout.differences(Swapped, NatKey)
    assert "field saddr: offset 4 != compiled 0" in problems
    assert "field daddr: offset 0 != compiled 4" in problems


def test_bcc_inserted_padding_is_skipped_but_size_still_checked() -> None:
    class Generated(ct.Structure):
        _fields_ = (("a", ct.c_uint8), ("__pad_0", ct.c_uint8 * 3), ("b", ct.c_uint32))

    class Mirror(ct.Structure):
        _fields_ = (("a", ct.c_uint8), ("b", ct.c_uint32))  # C's implicit padding

    assert layout.differences(Mirror, Generated) == []


def test_per_cpu_values_compare_one_cpu_slot() -> None:
    layout.assert_map_layout(
        "stats",
        ct.c_uint32,
        ct.c_uint64,
        ct.c_uint32,
        ct.c_uint64 * 2,
        percpu=True,
    )
    with pytest.raises(layout.LayoutMismatch, match="value: size 4 != compiled 8"):
        layout.assert_map_layout(
            "stats", ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.c_uint64 * 2, percpu=True
        )


@pytest.mark.privileged
def test_nat_map_mirror_matches_the_compiled_program() -> None:
    from probes.masquerade import NAT_MAP, compiled

    spec = compiled().maps[NAT_MAP]
    layout.assert_map_layout(NAT_MAP, NatKey, NatEntry, spec.key_type, spec.value_type)


@pytest.mark.privileged
def test_masquerade_config_and_stats_mirrors_match() -> None:
    from probes.masquerade import CONFIG_MAP, STATS_MAP, MasqConfigStruct, MasqStat, compiled

    obj = compiled()
    cfg, stats = obj.maps[CONFIG_MAP], obj.maps[STATS_MAP]
    # bcc declares array keys as int; the mirror uses u32 like the kernel's array index
    assert ct.sizeof(cfg.key_type) == ct.sizeof(ct.c_uint32)
    layout.assert_same_layout(CONFIG_MAP, MasqConfigStruct, cfg.value_type)
    layout.assert_map_layout(
        STATS_MAP, ct.c_int, ct.c_uint64, stats.key_type, stats.value_type, percpu=True
    )
    assert stats.max_entries == len(MasqStat)


@pytest.mark.privileged
def test_a_wrong_nat_mirror_is_caught_against_the_compiled_program() -> None:
    from probes.masquerade import NAT_MAP, compiled

    class NatEntryWrongOrder(ct.Structure):  # created/expires swapped: same size, wrong meaning
        _fields_ = (
            ("addr", ct.c_uint32),
            ("port", ct.c_uint16),
            ("flags", ct.c_uint8),
            ("pad", ct.c_uint8),
            ("expires_ns", ct.c_uint64),
            ("created_ns", ct.c_uint64),
        )

    class NatKeyNoPad(ct.Structure):  # forgot the explicit padding
        _fields_ = NatKey._fields_[:-1]

    spec = compiled().maps[NAT_MAP]
    with pytest.raises(layout.LayoutMismatch) as info:
        layout.assert_map_layout(
            NAT_MAP, NatKeyNoPad, NatEntryWrongOrder, spec.key_type, spec.value_type
        )
    msg = str(info.value)
    assert "key: missing field pad" in msg
    assert "value: field expires_ns: offset 8 != compiled 16" in msg
    assert "value: field created_ns: offset 16 != compiled 8" in msg
