"""ctypes bindings for the BPF syscalls flowscope needs beyond bcc's Python API.

bcc compiles and owns its own maps; flowscope also creates maps and loads programs itself (one
compile, many per-node instances), pins them, opens pinned objects after a restart and runs
programs on crafted packets. Those calls come from the system's libbpf (libbpf.so.1, a dependency
of Debian's bcc) and, for loading with a verifier log, libbcc. Both are loaded on first use, so
importing this module needs neither.

Every function raises OSError with the errno and a message naming the object on failure.
"""

from __future__ import annotations

import ctypes as ct
import errno as errno_mod
import functools
import os
from dataclasses import dataclass
from pathlib import Path

# enum bpf_prog_type / bpf_map_type values used by flowscope (uapi/linux/bpf.h)
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = frozenset(
    {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}
)

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_OBJ_NAME_LEN = 16

# enum bpf_attach_type values of the cgroup socket hooks flowscope uses
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_INET4_GETPEERNAME = 29
# cgroup attach flags
BPF_F_ALLOW_OVERRIDE = 1 << 0
BPF_F_ALLOW_MULTI = 1 << 1


class _BpfMapInfo(ct.Structure):
    # struct bpf_map_info's leading fields; the kernel fills what fits in the length we pass
    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * BPF_OBJ_NAME_LEN),
    )


class _BpfMapCreateOpts(ct.Structure):
    # struct bpf_map_create_opts (libbpf 1.x); `sz` tells libbpf which fields we know
    _fields_ = (
        ("sz", ct.c_size_t),
        ("btf_fd", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("map_extra", ct.c_uint64),
        ("numa_node", ct.c_uint32),
        ("map_ifindex", ct.c_uint32),
    )


class _BpfTestRunOpts(ct.Structure):
    # struct bpf_test_run_opts (libbpf 1.x); `sz` tells libbpf which fields we know
    _fields_ = (
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    )


class _BpfProgLoadOpts(ct.Structure):
    # struct bpf_prog_load_opts as libbpf 1.1 knows it (up to log_buf); `sz` says how much
    _fields_ = (
        ("sz", ct.c_size_t),
        ("attempts", ct.c_int),
        ("expected_attach_type", ct.c_uint32),
        ("prog_btf_fd", ct.c_uint32),
        ("prog_flags", ct.c_uint32),
        ("prog_ifindex", ct.c_uint32),
        ("kern_version", ct.c_uint32),
        ("attach_btf_id", ct.c_uint32),
        ("attach_prog_fd", ct.c_uint32),
        ("attach_btf_obj_fd", ct.c_uint32),
        ("fd_array", ct.c_void_p),
        ("func_info", ct.c_void_p),
        ("func_info_cnt", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32),
        ("line_info", ct.c_void_p),
        ("line_info_cnt", ct.c_uint32),
        ("line_info_rec_size", ct.c_uint32),
        ("log_level", ct.c_uint32),
        ("log_size", ct.c_uint32),
        ("log_buf", ct.c_char_p),
    )


class _BpfProgInfo(ct.Structure):
    # struct bpf_prog_info's leading fields, up to the name
    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * BPF_OBJ_NAME_LEN),
    )


@functools.cache
def _libbpf() -> ct.CDLL:
    lib = ct.CDLL("libbpf.so.1", use_errno=True)
    sigs: dict[str, tuple[list[type], type]] = {
        "bpf_obj_pin": ([ct.c_int, ct.c_char_p], ct.c_int),
        "bpf_obj_get": ([ct.c_char_p], ct.c_int),
        "bpf_obj_get_info_by_fd": ([ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)], ct.c_int),
        "bpf_map_lookup_elem": ([ct.c_int, ct.c_void_p, ct.c_void_p], ct.c_int),
        "bpf_map_update_elem": ([ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64], ct.c_int),
        "bpf_map_delete_elem": ([ct.c_int, ct.c_void_p], ct.c_int),
        "bpf_map_get_next_key": ([ct.c_int, ct.c_void_p, ct.c_void_p], ct.c_int),
        "bpf_map_lookup_batch": (
            [ct.c_int, *[ct.c_void_p] * 4, ct.POINTER(ct.c_uint32), ct.c_void_p],
            ct.c_int,
        ),
        "bpf_map_delete_batch": (
            [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32), ct.c_void_p],
            ct.c_int,
        ),
        "bpf_prog_test_run_opts": ([ct.c_int, ct.POINTER(_BpfTestRunOpts)], ct.c_int),
        "bpf_map_create": (
            [ct.c_int, ct.c_char_p, ct.c_uint32, ct.c_uint32, ct.c_uint32, ct.c_void_p],
            ct.c_int,
        ),
        "bpf_map_get_fd_by_id": ([ct.c_uint32], ct.c_int),
        "bpf_prog_load": (
            [
                ct.c_int,
                ct.c_char_p,
                ct.c_char_p,
                ct.c_void_p,
                ct.c_size_t,
                ct.POINTER(_BpfProgLoadOpts),
            ],
            ct.c_int,
        ),
        "bpf_prog_attach": ([ct.c_int, ct.c_int, ct.c_int, ct.c_uint], ct.c_int),
        "bpf_prog_detach2": ([ct.c_int, ct.c_int, ct.c_int], ct.c_int),
        "bpf_prog_query": (
            [
                ct.c_int,
                ct.c_int,
                ct.c_uint32,
                ct.POINTER(ct.c_uint32),
                ct.POINTER(ct.c_uint32),
                ct.POINTER(ct.c_uint32),
            ],
            ct.c_int,
        ),
        "bpf_prog_get_fd_by_id": ([ct.c_uint32], ct.c_int),
    }
    for name, (argtypes, restype) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


@functools.cache
def _libbcc() -> ct.CDLL:
    lib = ct.CDLL("libbcc.so.0", use_errno=True)
    lib.bcc_create_map.argtypes = [ct.c_int, ct.c_char_p, ct.c_int, ct.c_int, ct.c_int, ct.c_int]
    lib.bcc_create_map.restype = ct.c_int
    lib.bcc_prog_load.argtypes = [
        ct.c_int,  # prog_type
        ct.c_char_p,  # name
        ct.c_void_p,  # insns
        ct.c_int,  # prog_len in bytes
        ct.c_char_p,  # license
        ct.c_uint,  # kern_version
        ct.c_int,  # log_level
        ct.c_char_p,  # log_buf
        ct.c_uint,  # log_buf_size
    ]
    lib.bcc_prog_load.restype = ct.c_int
    lib.bpf_attach_tracepoint.argtypes = [ct.c_int, ct.c_char_p, ct.c_char_p]
    lib.bpf_attach_tracepoint.restype = ct.c_int
    return lib


def _errno_of(ret: int) -> int:
    """libbpf 1.x returns -errno; older paths return -1 with errno set."""
    return (ct.get_errno() or errno_mod.EPERM) if ret == -1 else -ret


def _check(ret: int, what: str) -> int:
    if ret >= 0:
        return ret
    err = _errno_of(ret)
    raise OSError(err, f"{what}: {os.strerror(err)}")


def obj_pin(fd: int, path: Path) -> None:
    _check(_libbpf().bpf_obj_pin(fd, os.fsencode(path)), f"pin {path}")


def obj_get(path: Path) -> int:
    """Open a pinned map or program; the caller owns (closes) the returned fd."""
    return _check(_libbpf().bpf_obj_get(os.fsencode(path)), f"open pinned {path}")


@dataclass(frozen=True)
class MapInfo:
    map_type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = _BpfMapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "map info")
    return MapInfo(
        map_type=info.type,
        id=info.id,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        flags=info.map_flags,
        name=info.name.decode(errors="replace"),
    )


def map_create(
    map_type: int,
    name: str,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int = 0,
    *,
    inner_map_fd: int | None = None,
) -> int:
    """Create a map. Maps of maps need `inner_map_fd`: a map whose type, key/value sizes and
    flags every inner map must share (the kernel keeps only that shape, not the map)."""
    short = name[: BPF_OBJ_NAME_LEN - 1].encode()
    if inner_map_fd is None:
        fd = _libbcc().bcc_create_map(map_type, short, key_size, value_size, max_entries, flags)
    else:
        opts = _BpfMapCreateOpts(
            sz=ct.sizeof(_BpfMapCreateOpts), inner_map_fd=inner_map_fd, map_flags=flags
        )
        fd = _libbpf().bpf_map_create(
            map_type, short, key_size, value_size, max_entries, ct.byref(opts)
        )
    return _check(fd, f"create map {name}")


def map_fd_by_id(map_id: int) -> int:
    """Open a map by its kernel id (a map of maps' lookups return inner map ids)."""
    return _check(_libbpf().bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")


def prog_load(prog_type: int, name: str, insns: bytes, license: str) -> int:
    """Load bytecode; on failure the OSError message carries the verifier's log."""
    lib = _libbcc()
    buf = ct.create_string_buffer(len(insns))
    ct.memmove(buf, insns, len(insns))
    fd = lib.bcc_prog_load(
        prog_type, name.encode(), buf, len(insns), license.encode(), 0, 0, None, 0
    )
    if fd >= 0:
        return fd
    err = ct.get_errno() or errno_mod.EINVAL
    log = ct.create_string_buffer(1 << 20)
    fd = lib.bcc_prog_load(
        prog_type, name.encode(), buf, len(insns), license.encode(), 0, 1, log, len(log)
    )
    if fd >= 0:  # loaded the second time (a transient failure): keep it
        return fd
    tail = log.value.decode(errors="replace")[-4000:]
    raise OSError(err, f"load program {name}: {os.strerror(err)}\n{tail}")


def prog_load_attach_type(
    prog_type: int, name: str, insns: bytes, license: str, expected_attach_type: int
) -> int:
    """Load bytecode for a program type that needs its attach type at load time (cgroup
    sock_addr programs: the verifier checks ctx accesses and return codes per hook). On
    failure the OSError message carries the verifier's log."""
    lib = _libbpf()
    buf = ct.create_string_buffer(insns, len(insns))
    count = len(insns) // 8
    opts = _BpfProgLoadOpts(
        sz=ct.sizeof(_BpfProgLoadOpts), expected_attach_type=expected_attach_type
    )
    fd = lib.bpf_prog_load(prog_type, name.encode(), license.encode(), buf, count, ct.byref(opts))
    if fd >= 0:
        return fd
    err = _errno_of(fd)
    log = ct.create_string_buffer(1 << 20)
    opts.log_level, opts.log_size, opts.log_buf = 1, len(log), ct.cast(log, ct.c_char_p)
    fd = lib.bpf_prog_load(prog_type, name.encode(), license.encode(), buf, count, ct.byref(opts))
    if fd >= 0:
        return fd
    tail = log.value.decode(errors="replace")[-4000:]
    raise OSError(err, f"load program {name}: {os.strerror(err)}\n{tail}")


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> None:
    """BPF_PROG_ATTACH (e.g. a cgroup program to a cgroup directory's fd). The attachment
    lasts until detached or the cgroup is removed, whoever holds the fds."""
    _check(
        _libbpf().bpf_prog_attach(prog_fd, target_fd, attach_type, flags),
        f"attach program (attach type {attach_type})",
    )


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH of one program (the one `prog_fd` refers to)."""
    _check(
        _libbpf().bpf_prog_detach2(prog_fd, target_fd, attach_type),
        f"detach program (attach type {attach_type})",
    )


def prog_query(target_fd: int, attach_type: int, capacity: int = 64) -> list[int]:
    """Ids of the programs attached to `target_fd` itself (not inherited) for `attach_type`."""
    ids = (ct.c_uint32 * capacity)()
    count = ct.c_uint32(capacity)
    flags = ct.c_uint32(0)
    _check(
        _libbpf().bpf_prog_query(target_fd, attach_type, 0, ct.byref(flags), ids, ct.byref(count)),
        f"query programs (attach type {attach_type})",
    )
    return list(ids[: count.value])


def prog_fd_by_id(prog_id: int) -> int:
    return _check(_libbpf().bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


@dataclass(frozen=True)
class ProgInfo:
    prog_type: int
    id: int
    name: str


def prog_info(fd: int) -> ProgInfo:
    info = _BpfProgInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(_libbpf().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "program info")
    return ProgInfo(info.type, info.id, info.name.decode(errors="replace"))


def attach_tracepoint(prog_fd: int, category: str, event: str) -> int:
    """Attach a BPF_PROG_TYPE_TRACEPOINT program to tracefs event category:event.

    libbcc opens a perf event for the tracepoint (perf_event_open, PERF_TYPE_TRACEPOINT, one
    event on CPU 0: a tracepoint's BPF programs run on every CPU whichever CPU the perf event is
    bound to), sets the program on it (PERF_EVENT_IOC_SET_BPF) and enables it. Returns the perf
    event fd: the attachment lasts exactly as long as that fd is open (close it to detach), so a
    process that dies leaves nothing attached. No kprobes, fentry or bpf_link support needed.
    """
    fd = _libbcc().bpf_attach_tracepoint(prog_fd, category.encode(), event.encode())
    if fd < 0:
        err = ct.get_errno() or errno_mod.EINVAL
        raise OSError(err, f"attach tracepoint {category}:{event}: {os.strerror(err)}")
    return fd


def map_lookup(fd: int, key: ct.Array | ct.Structure | ct._SimpleCData, value) -> bool:
    ret = _libbpf().bpf_map_lookup_elem(fd, ct.byref(key), ct.byref(value))
    if ret == -errno_mod.ENOENT:
        return False
    _check(ret, "map lookup")
    return True


def map_update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _check(_libbpf().bpf_map_update_elem(fd, ct.byref(key), ct.byref(value), flags), "map update")


def map_delete(fd: int, key) -> bool:
    ret = _libbpf().bpf_map_delete_elem(fd, ct.byref(key))
    if ret == -errno_mod.ENOENT:
        return False
    _check(ret, "map delete")
    return True


def map_next_key(fd: int, key, next_key) -> bool:
    """Fill next_key with the key after `key` (None: the first). False at the end."""
    ret = _libbpf().bpf_map_get_next_key(
        fd, None if key is None else ct.byref(key), ct.byref(next_key)
    )
    if ret == -errno_mod.ENOENT:
        return False
    _check(ret, "map next key")
    return True


def map_lookup_batch(
    fd: int, in_batch, out_batch, keys: ct.Array, values: ct.Array, count: int
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH call: (entries copied, whether the map is exhausted)."""
    n = ct.c_uint32(count)
    ret = _libbpf().bpf_map_lookup_batch(
        fd,
        None if in_batch is None else ct.byref(in_batch),
        ct.byref(out_batch),
        ct.byref(keys),
        ct.byref(values),
        ct.byref(n),
        None,
    )
    if ret == -errno_mod.ENOENT:
        return n.value, True
    _check(ret, "map lookup batch")
    return n.value, False


def map_delete_batch(fd: int, keys: ct.Array, count: int) -> tuple[int, int]:
    """One BPF_MAP_DELETE_BATCH call: (keys deleted before it stopped, 0 or the errno)."""
    n = ct.c_uint32(count)
    ret = _libbpf().bpf_map_delete_batch(fd, ct.byref(keys), ct.byref(n), None)
    if ret == 0:
        return n.value, 0
    return n.value, _errno_of(ret)


@dataclass(frozen=True)
class TestRun:
    retval: int  # the program's return value, as the u32 the kernel reports
    data: bytes  # the packet after the program ran
    duration_ns: int


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, *, ctx: bytes = b"") -> TestRun:
    """Run a loaded program once on `data` with BPF_PROG_TEST_RUN (no attachment needed).

    ctx: an optional context to start from (for tc programs a struct __sk_buff, of which the
    kernel reads only some fields, e.g. ifindex)."""
    data_in = ct.create_string_buffer(data, len(data))
    data_out = ct.create_string_buffer(len(data) + 512)
    ctx_in = ct.create_string_buffer(ctx, len(ctx)) if ctx else None
    opts = _BpfTestRunOpts(
        sz=ct.sizeof(_BpfTestRunOpts),
        data_in=ct.cast(data_in, ct.c_void_p),
        data_out=ct.cast(data_out, ct.c_void_p),
        data_size_in=len(data),
        data_size_out=len(data_out),
        ctx_in=ct.cast(ctx_in, ct.c_void_p) if ctx_in is not None else None,
        ctx_size_in=len(ctx),
        repeat=repeat,
    )
    _check(_libbpf().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)), "test run")
    return TestRun(
        retval=opts.retval,
        data=data_out.raw[: opts.data_size_out],
        duration_ns=opts.duration,
    )


@functools.cache
def possible_cpus() -> int:
    """How many value slots a per-CPU map has (the kernel's possible CPUs, not online ones)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count
