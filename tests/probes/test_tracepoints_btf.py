"""Kernel field offsets from BTF (probes/btf.py), which the tracepoint probes are compiled with."""

from __future__ import annotations

import pytest

from probes import btf, tracepoints

pytestmark = (
    pytest.mark.privileged
)  # /sys/kernel/btf/vmlinux is readable by root only on some hosts


def test_wire_format_structs_have_their_wire_offsets() -> None:
    # iphdr and tcphdr mirror the packet, so their offsets are known independently of the
    # kernel; in 6.x kernels iphdr's addresses sit inside an anonymous union (struct_group)
    assert btf.field_offset("iphdr", "saddr") == 12
    assert btf.field_offset("iphdr", "daddr") == 16
    assert btf.field_offset("iphdr", "protocol") == 9
    assert btf.field_offset("tcphdr", "dest") == 2
    assert btf.field_offset("udphdr", "len") == 4


def test_nested_paths_add_up() -> None:
    whole = btf.field_offset("sock", "__sk_common.skc_net")
    assert btf.field_offset("sock", "__sk_common") == 0  # struct sock starts with sock_common
    assert whole == btf.field_offset("sock_common", "skc_net")
    assert btf.field_offset("sock", "__sk_common.skc_net.net") == whole  # possible_net_t.net
    assert btf.field_offset("net", "ns.inum") == btf.field_offset("net", "ns") + btf.field_offset(
        "ns_common", "inum"
    )


def test_every_field_the_probes_read_resolves() -> None:
    flags = tracepoints.cflags()
    for macro, (struct, path) in tracepoints.KERNEL_FIELDS.items():
        assert f"-D{macro}={btf.field_offset(struct, path)}" in flags
    # pointer fields are 8-byte aligned, as the kernel lays them out
    for macro in ("OFF_SKB_DEV", "OFF_SKB_SK", "OFF_SKB_HEAD", "OFF_DEV_NET", "OFF_SOCK_NET"):
        struct, path = tracepoints.KERNEL_FIELDS[macro]
        assert btf.field_offset(struct, path) % 8 == 0, macro


def test_errors_name_what_is_missing() -> None:
    with pytest.raises(btf.BtfError, match="struct no_such_struct is not in the kernel's BTF"):
        btf.field_offset("no_such_struct", "x")
    with pytest.raises(btf.BtfError, match=r"sock\.__sk_common has no member 'nope'"):
        btf.field_offset("sock", "__sk_common.nope")
    with pytest.raises(btf.BtfError, match="bitfield"):
        btf.field_offset("iphdr", "version")
    with pytest.raises(btf.BtfError, match="bitfield"):
        btf.field_offset("iphdr", "ihl")  # byte-aligned, still only 4 bits
