"""Offsets of kernel struct fields in the running kernel, from its BTF (/sys/kernel/btf/vmlinux).

bcc compiles against the headers installed (Debian's 6.1 ones), not the running kernel's, so a
program that reads kernel memory (`skb->dev`, `sk->__sk_common.skc_net`) with the headers' struct
layouts would read the wrong bytes on another kernel. Tracepoint probes therefore never use the
headers' layouts: the loader asks this module for each field's byte offset and hands the numbers
to the compiler as -D constants, the same relocation CO-RE does, done once per process.

Paths read like C member access (`__sk_common.skc_net.net`) and look through anonymous structs
and unions (`sk_buff.dev` sits in two nested anonymous unions), as the C compiler does.
"""

from __future__ import annotations

import ctypes as ct
import functools

from flowscope.errors import FlowscopeError

BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5


class BtfError(FlowscopeError):
    pass


class _BtfType(ct.Structure):
    _fields_ = (("name_off", ct.c_uint32), ("info", ct.c_uint32), ("size_or_type", ct.c_uint32))


class _BtfMember(ct.Structure):
    _fields_ = (("name_off", ct.c_uint32), ("type", ct.c_uint32), ("offset", ct.c_uint32))


@functools.cache
def _lib() -> ct.CDLL:
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    lib.btf__load_vmlinux_btf.argtypes = []
    lib.btf__load_vmlinux_btf.restype = ct.c_void_p
    lib.btf__find_by_name_kind.argtypes = [ct.c_void_p, ct.c_char_p, ct.c_uint32]
    lib.btf__find_by_name_kind.restype = ct.c_int32
    lib.btf__type_by_id.argtypes = [ct.c_void_p, ct.c_uint32]
    lib.btf__type_by_id.restype = ct.POINTER(_BtfType)
    lib.btf__name_by_offset.argtypes = [ct.c_void_p, ct.c_uint32]
    lib.btf__name_by_offset.restype = ct.c_char_p
    lib.btf__resolve_type.argtypes = [ct.c_void_p, ct.c_uint32]
    lib.btf__resolve_type.restype = ct.c_int32
    return lib


@functools.cache
def _vmlinux() -> int:
    """The running kernel's BTF, loaded once and kept for the process."""
    handle = _lib().btf__load_vmlinux_btf()
    if not handle:
        raise BtfError(
            "cannot load the kernel's BTF from /sys/kernel/btf/vmlinux",
            hint="tracepoint probes need a kernel built with CONFIG_DEBUG_INFO_BTF",
        )
    return handle


def _kind(t: _BtfType) -> int:
    return (t.info >> 24) & 0x1F


def _members(btf: int, type_id: int) -> list[tuple[str, int, int, int]]:
    """(name, type id, bit offset, bitfield width or 0) of each member of a struct or union."""
    lib = _lib()
    ptr = lib.btf__type_by_id(btf, type_id)
    t = ptr.contents
    vlen = t.info & 0xFFFF
    kflag = t.info >> 31
    members = ct.cast(
        ct.cast(ptr, ct.c_void_p).value + ct.sizeof(_BtfType), ct.POINTER(_BtfMember * vlen)
    ).contents
    out = []
    for m in members:
        name = lib.btf__name_by_offset(btf, m.name_off) or b""
        bits = m.offset & 0xFFFFFF if kflag else m.offset
        width = m.offset >> 24 if kflag else 0
        out.append((name.decode(), m.type, bits, width))
    return out


def _find_member(btf: int, type_id: int, name: str) -> tuple[int, int, int] | None:
    """(type id, bit offset, bitfield width) of `name` in a struct/union, looking through
    anonymous members."""
    lib = _lib()
    for member, mtype, bits, width in _members(btf, type_id):
        if member == name:
            return mtype, bits, width
        if not member:
            inner = lib.btf__resolve_type(btf, mtype)
            if inner > 0 and _kind(lib.btf__type_by_id(btf, inner).contents) in (
                BTF_KIND_STRUCT,
                BTF_KIND_UNION,
            ):
                found = _find_member(btf, inner, name)
                if found is not None:
                    return found[0], found[1] + bits, found[2]
    return None


@functools.cache
def field_offset(struct: str, path: str) -> int:
    """Byte offset of `path` (e.g. "__sk_common.skc_net.net") in `struct <struct>` as the running
    kernel lays it out. Raises BtfError naming the missing struct or member."""
    btf = _vmlinux()
    lib = _lib()
    type_id = lib.btf__find_by_name_kind(btf, struct.encode(), BTF_KIND_STRUCT)
    if type_id < 0:
        raise BtfError(f"struct {struct} is not in the kernel's BTF")
    total = 0
    current = type_id
    for i, name in enumerate(path.split(".")):
        found = _find_member(btf, current, name)
        if found is None:
            where = ".".join([struct, *path.split(".")[:i]])
            raise BtfError(f"{where} has no member {name!r} in the running kernel")
        mtype, bits, width = found
        if width or bits % 8:
            raise BtfError(f"{struct}.{path} is a bitfield; only byte-aligned fields are read")
        total += bits // 8
        current = lib.btf__resolve_type(btf, mtype)
    return total
