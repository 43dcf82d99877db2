"""probes.bpfloader: compile once, many pinned instances, adoption of pinned maps."""

from __future__ import annotations

import ctypes as ct
import logging
import struct
from pathlib import Path

import pytest

from probes import libbpf
from probes.bpfloader import CompiledObject, LoaderError, ProgramSpec, _patch_map_fds
from probes.masquerade import (
    CONFIG_MAP,
    MAPS,
    NAT_MAP,
    PROGRAMS,
    SOURCE,
    MasqConfigStruct,
    compiled,
)


def _insn(code: int, src: int = 0, dst: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def test_map_fds_are_rewritten_in_ld_imm64_only() -> None:
    code = (
        _insn(0x18, src=1, dst=1, imm=5)
        + _insn(0)  # r1 = map fd 5 (two slots)
        + _insn(0xB7, dst=0, imm=5)  # r0 = 5: an ordinary immediate that must stay 5
        + _insn(0x18, src=1, dst=2, imm=6)
        + _insn(0)
        + _insn(0x95)
    )
    out = _patch_map_fds(ProgramSpec("p", code, "GPL"), {5: 40, 6: 41})
    imms = [struct.unpack_from("<BBhi", out, i)[3] for i in range(0, len(out), 8)]
    assert imms == [40, 0, 5, 41, 0, 0]


def test_unknown_maps_and_global_data_are_refused() -> None:
    with pytest.raises(LoaderError, match="references a map \\(fd 7\\) the loader was not told"):
        _patch_map_fds(ProgramSpec("p", _insn(0x18, src=1, imm=7) + _insn(0), "GPL"), {5: 40})
    with pytest.raises(LoaderError, match="global data"):
        _patch_map_fds(ProgramSpec("p", _insn(0x18, src=2, imm=5) + _insn(0), "GPL"), {5: 40})


@pytest.mark.privileged
def test_compile_happens_once_per_process() -> None:
    obj = compiled()
    assert compiled() is obj
    assert set(obj.programs) == set(PROGRAMS) and set(obj.maps) == set(MAPS)
    assert obj.compile_seconds > 0
    assert obj.maps[NAT_MAP].map_type == libbpf.BPF_MAP_TYPE_LRU_HASH
    assert obj.maps[NAT_MAP].max_entries == 65536


@pytest.mark.privileged
def test_instances_are_independent_and_pinned(pin_root: Path) -> None:
    a = compiled().instantiate(pin_root / "a", libbpf.BPF_PROG_TYPE_SCHED_CLS)
    b = compiled().instantiate(pin_root / "b", libbpf.BPF_PROG_TYPE_SCHED_CLS)
    try:
        assert {p.name for p in (pin_root / "a").iterdir()} == set(MAPS) | set(PROGRAMS)
        ids_a = {n: libbpf.map_info(m.fd).id for n, m in a.maps.items()}
        ids_b = {n: libbpf.map_info(m.fd).id for n, m in b.maps.items()}
        assert set(ids_a.values()).isdisjoint(ids_b.values())
        assert not any(m.adopted for m in a.maps.values())
    finally:
        for inst in (a, b):
            inst.unpin()
            inst.close()
    assert not (pin_root / "a").exists() and not (pin_root / "b").exists()


@pytest.mark.privileged
def test_a_reload_adopts_pinned_maps_and_their_contents(pin_root: Path) -> None:
    first = compiled().instantiate(pin_root / "n", libbpf.BPF_PROG_TYPE_SCHED_CLS)
    cfg = MasqConfigStruct(node_ip=0x0400E00A, port_min=1, port_max=2)
    libbpf.map_update(first.map_fd(CONFIG_MAP), ct.c_uint32(0), cfg)
    first.close()  # the agent exits; the pins keep everything
    second = compiled().instantiate(pin_root / "n", libbpf.BPF_PROG_TYPE_SCHED_CLS)
    try:
        assert all(m.adopted for m in second.maps.values())
        got = MasqConfigStruct()
        assert libbpf.map_lookup(second.map_fd(CONFIG_MAP), ct.c_uint32(0), got)
        assert bytes(got) == bytes(cfg)
    finally:
        second.unpin()
        second.close()


@pytest.mark.privileged
def test_a_pinned_map_of_another_shape_is_replaced_and_logged(
    pin_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small = compiled().instantiate(
        pin_root / "n", libbpf.BPF_PROG_TYPE_SCHED_CLS, max_entries={NAT_MAP: 1024}
    )
    assert libbpf.map_info(small.map_fd(NAT_MAP)).max_entries == 1024
    small.close()
    with caplog.at_level(logging.WARNING):
        full = compiled().instantiate(pin_root / "n", libbpf.BPF_PROG_TYPE_SCHED_CLS)
    try:
        assert not full.maps[NAT_MAP].adopted and full.maps[CONFIG_MAP].adopted
        assert libbpf.map_info(full.map_fd(NAT_MAP)).max_entries == 65536
        assert "has another shape" in caplog.text and "nat_v4" in caplog.text
    finally:
        full.unpin()
        full.close()


@pytest.mark.privileged
def test_bad_sizes_and_a_rejected_program_leave_nothing_pinned(pin_root: Path) -> None:
    with pytest.raises(LoaderError, match="unknown maps"):
        compiled().instantiate(pin_root / "n", libbpf.BPF_PROG_TYPE_SCHED_CLS, max_entries={"x": 1})

    bad = CompiledObject(
        source=SOURCE,
        programs={"bad": ProgramSpec("bad", _insn(0x95), "GPL")},  # exit with r0 unset
        maps={CONFIG_MAP: compiled().maps[CONFIG_MAP]},
        compile_seconds=0.0,
    )
    with pytest.raises(OSError, match="load program bad") as info:
        bad.instantiate(pin_root / "bad", libbpf.BPF_PROG_TYPE_SCHED_CLS)
    assert "R0" in str(info.value)  # the verifier's log travels with the error
    assert list((pin_root / "bad").iterdir()) == []


@pytest.mark.privileged
def test_compile_errors_are_reported(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int f(struct __sk_buff *skb) { return undeclared; }\n")
    with pytest.raises(LoaderError, match="could not compile"):
        CompiledObject.compile(src, programs=["f"], maps=[])
    with pytest.raises(LoaderError, match="not found"):
        CompiledObject.compile(tmp_path / "missing.c", programs=[], maps=[])
