"""Compile a bcc program once, then load it as many times as there are nodes, with pinned maps.

bcc compiles C to bytecode and creates the maps the source declares, baking their file
descriptors into the bytecode (`ld_imm64 rX, map_fd`). `CompiledObject.compile` keeps the bytecode,
each map's spec and bcc's ctypes Key/Leaf types, then releases bcc's module (and its maps).
`CompiledObject.instantiate(pin_dir)` makes one independent copy: for each map it adopts the map
pinned at `pin_dir/<map>` when its shape matches, else creates and pins a new one; it then rewrites
the map fds in the bytecode to the instance's maps, loads the programs and pins them too.

So an agent compiles each program once (~1-2 s) however many nodes it serves, and after a restart
the new programs run on the old maps: state such as NAT entries survives.

Maps of maps (BPF_HASH_OF_MAPS) are created against their inner template map (`inner_maps` at
compile time); an outer map is adopted only together with its template, so inner maps of an old
layout never meet programs built for a new one. A pinned map whose shape changed (a new
max_entries, or a new key/value layout) can be migrated instead of replaced: pass a `Migration`
for it to instantiate() and its entries are copied (and converted) into the new map, which then
takes over the pin in one rename.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flowscope.errors import FlowscopeError
from probes import libbpf

log = logging.getLogger(__name__)

_INSN = struct.Struct("<BBhi")  # code, dst:4|src:4, off, imm
_BPF_LD_IMM64 = 0x18
_BPF_PSEUDO_MAP_FD = 1
_BPF_PSEUDO_MAP_VALUE = 2


class LoaderError(FlowscopeError):
    pass


@dataclass(frozen=True)
class MapSpec:
    """One map of a compiled object: what instantiate() creates, and its C types as bcc saw them."""

    name: str
    map_type: int
    key_size: int
    value_size: int  # for per-CPU maps: one CPU's value
    max_entries: int
    flags: int
    key_type: type  # bcc's ctypes mirror of the C key (for layout checks)
    value_type: type  # bcc's ctypes mirror of the C value (per-CPU: the array over CPUs)
    template_fd: int  # the fd number bcc baked into the bytecode
    inner_map: str | None = None  # maps of maps: the name of the inner template map


# old key bytes, old value bytes -> new key and value bytes (None: leave the entry behind)
Converter = Callable[[bytes, bytes], "tuple[bytes, bytes] | None"]


def _same(key: bytes, value: bytes) -> tuple[bytes, bytes]:
    return key, value


@dataclass(frozen=True)
class Migration:
    """How a map's entries move from a pinned map of another shape into the current one.

    `converters` is keyed by the old (key_size, value_size); a map whose layout is unchanged
    (only max_entries or flags differ) is copied as it is. Map modules own their migrations."""

    converters: Mapping[tuple[int, int], Converter] = field(default_factory=dict)

    def converter(self, old: libbpf.MapInfo, spec: MapSpec) -> Converter | None:
        if (old.key_size, old.value_size) == (spec.key_size, spec.value_size):
            return _same
        return self.converters.get((old.key_size, old.value_size))


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    insns: bytes
    license: str


def _bcc():
    try:
        import bcc
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise LoaderError(
            "cannot import bcc", hint="run `make setup` (Debian python3-bpfcc + the venv .pth)"
        ) from e
    return bcc


@dataclass(frozen=True)
class CompiledObject:
    source: Path
    programs: Mapping[str, ProgramSpec]
    maps: Mapping[str, MapSpec]
    compile_seconds: float

    @classmethod
    def compile(
        cls,
        source: Path,
        *,
        programs: Iterable[str],
        maps: Iterable[str],
        cflags: Iterable[str] = (),
        inner_maps: Mapping[str, str] | None = None,
    ) -> CompiledObject:
        """Compile `source` with bcc; `programs` and `maps` name everything the loader handles.

        Every map the programs reference must be listed, so no map is silently shared between
        instances. inner_maps: for each map of maps, the template map its inner maps follow
        (both listed in `maps`).
        """
        inner = dict(inner_maps or {})
        maps = list(maps)
        missing = {n for pair in inner.items() for n in pair} - set(maps)
        if missing:
            raise LoaderError(f"inner_maps names maps not listed in maps: {sorted(missing)}")
        bcc = _bcc()
        if not source.is_file():
            raise LoaderError(f"BPF source {source} not found", hint="reinstall flowscope")
        t0 = time.monotonic()
        try:
            # -I: the probes' shared headers (#include "x.h") sit next to their sources.
            flags = [f"-I{source.resolve().parent}", *cflags]
            b = bcc.BPF(src_file=str(source).encode(), cflags=flags)
        except Exception as e:
            raise LoaderError(f"bcc could not compile {source}: {e}") from e
        elapsed = time.monotonic() - t0
        try:
            lib = bcc.libbcc.lib
            license = lib.bpf_module_license(b.module).decode()
            progs = {n: ProgramSpec(n, bytes(b.dump_func(n.encode())), license) for n in programs}
            specs: dict[str, MapSpec] = {}
            for name in maps:
                table = b.get_table(name.encode())
                map_type = lib.bpf_table_type_id(b.module, table.map_id)
                value_size = ct.sizeof(table.Leaf)
                if map_type in libbpf.PERCPU_MAP_TYPES:
                    value_size //= libbpf.possible_cpus()
                key_size = ct.sizeof(table.Key)
                if map_type == libbpf.BPF_MAP_TYPE_RINGBUF:
                    key_size = value_size = 0  # bcc reports 4/4; the kernel insists on 0/0
                specs[name] = MapSpec(
                    name=name,
                    map_type=map_type,
                    key_size=key_size,
                    value_size=value_size,
                    max_entries=lib.bpf_table_max_entries_id(b.module, table.map_id),
                    flags=lib.bpf_table_flags_id(b.module, table.map_id),
                    key_type=table.Key,
                    value_type=table.Leaf,
                    template_fd=table.map_fd,
                    inner_map=inner.get(name),
                )
        finally:
            # The bytecode and specs are copied out; bcc's own maps are not needed any more.
            b.cleanup()
        obj = cls(source=source, programs=progs, maps=specs, compile_seconds=elapsed)
        for prog in progs.values():
            _patch_map_fds(prog, {s.template_fd: s.template_fd for s in specs.values()})
        return obj

    def instantiate(
        self,
        pin_dir: Path,
        prog_type: int,
        *,
        max_entries: Mapping[str, int] | None = None,
        migrations: Mapping[str, Migration] | None = None,
        attach_types: Mapping[str, int] | None = None,
    ) -> LoadedObject:
        """Load one independent copy of the programs with maps pinned under `pin_dir`.

        Maps already pinned there with the same type, key/value size, max_entries and flags are
        adopted (their entries survive); a pinned map of another shape is migrated when
        `migrations` has a way for it, else replaced and logged. Programs are loaded fresh and
        their pins replaced. On failure nothing new is left pinned. attach_types: per program,
        the expected attach type some program types need at load (cgroup sock_addr hooks).
        """
        sizes = dict(max_entries or {})
        moves = dict(migrations or {})
        unknown = (set(sizes) | set(moves)) - set(self.maps)
        if unknown:
            raise LoaderError(f"max_entries/migrations name unknown maps: {sorted(unknown)}")
        expected = dict(attach_types or {})
        if set(expected) - set(self.programs):
            raise LoaderError(
                f"attach_types name unknown programs: {sorted(set(expected) - set(self.programs))}"
            )
        try:
            pin_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LoaderError(
                f"cannot create pin directory {pin_dir}: {e.strerror}",
                hint="is bpffs mounted at /sys/fs/bpf? run `make setup`",
            ) from e

        maps: dict[str, OpenMap] = {}
        progs: dict[str, int] = {}
        created: list[Path] = []
        try:
            # inner templates before the maps of maps that are created against them
            for spec in sorted(self.maps.values(), key=lambda s: s.inner_map is not None):
                inner = maps[spec.inner_map] if spec.inner_map else None
                m = _open_or_create_map(
                    spec,
                    pin_dir,
                    sizes.get(spec.name, spec.max_entries),
                    inner=inner,
                    migration=moves.get(spec.name),
                )
                maps[spec.name] = m
                if not m.adopted:
                    created.append(m.path)
            fd_map = {s.template_fd: maps[s.name].fd for s in self.maps.values()}
            for prog in self.programs.values():
                insns = _patch_map_fds(prog, fd_map)
                if prog.name in expected:
                    fd = libbpf.prog_load_attach_type(
                        prog_type, prog.name, insns, prog.license, expected[prog.name]
                    )
                else:
                    fd = libbpf.prog_load(prog_type, prog.name, insns, prog.license)
                progs[prog.name] = fd
                path = pin_dir / prog.name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                libbpf.obj_pin(fd, path)
                created.append(path)
        except BaseException:
            for fd in [*progs.values(), *(m.fd for m in maps.values())]:
                os.close(fd)
            for path in created:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise
        return LoadedObject(pin_dir=pin_dir, maps=maps, programs=progs)


def _patch_map_fds(prog: ProgramSpec, fd_map: Mapping[int, int]) -> bytes:
    """The program's bytecode with each map fd replaced through fd_map (template fd -> new fd)."""
    code = bytearray(prog.insns)
    i = 0
    while i + _INSN.size <= len(code):
        op, regs, off, imm = _INSN.unpack_from(code, i)
        if op == _BPF_LD_IMM64:
            src = regs >> 4
            if src == _BPF_PSEUDO_MAP_VALUE:
                raise LoaderError(f"program {prog.name} uses global data, which is not supported")
            if src == _BPF_PSEUDO_MAP_FD:
                if imm not in fd_map:
                    raise LoaderError(
                        f"program {prog.name} references a map (fd {imm}) the loader was not "
                        "told about",
                        hint="list every map of the source in CompiledObject.compile(maps=...)",
                    )
                _INSN.pack_into(code, i, op, regs, off, fd_map[imm])
            i += 2 * _INSN.size  # ld_imm64 spans two instruction slots
        else:
            i += _INSN.size
    return bytes(code)


@dataclass
class OpenMap:
    name: str
    fd: int
    path: Path
    spec: MapSpec
    max_entries: int
    adopted: bool  # True: an existing pinned map (and its entries) was reused
    migrated: int | None = None  # entries carried over from a pinned map of another shape


_MAP_IN_MAP_TYPES = frozenset({libbpf.BPF_MAP_TYPE_HASH_OF_MAPS, libbpf.BPF_MAP_TYPE_ARRAY_OF_MAPS})
_NOT_MIGRATABLE = libbpf.PERCPU_MAP_TYPES | {libbpf.BPF_MAP_TYPE_RINGBUF}


def _open_or_create_map(
    spec: MapSpec,
    pin_dir: Path,
    max_entries: int,
    *,
    inner: OpenMap | None = None,
    migration: Migration | None = None,
) -> OpenMap:
    path = pin_dir / spec.name
    old_fd: int | None = None
    old_info: libbpf.MapInfo | None = None
    if path.exists():
        fd = libbpf.obj_get(path)
        info = libbpf.map_info(fd)
        want = (spec.map_type, spec.key_size, spec.value_size, max_entries, spec.flags)
        have = (info.map_type, info.key_size, info.value_size, info.max_entries, info.flags)
        # a map of maps holds inner maps of its template's layout: new template, new map
        inner_ok = inner is None or inner.adopted
        if have == want and inner_ok:
            return OpenMap(spec.name, fd, path, spec, max_entries, adopted=True)
        if (
            migration is not None
            and inner_ok
            and info.map_type == spec.map_type
            and spec.map_type not in _NOT_MIGRATABLE
            and migration.converter(info, spec) is not None
        ):
            old_fd, old_info = fd, info
        else:
            os.close(fd)
            log.warning(
                "pinned map %s has another shape (type, key, value, entries, flags) %s than %s%s:"
                " replacing it, its entries are lost",
                path,
                have,
                want,
                "" if inner_ok else f" or its inner template {inner.name if inner else ''} changed",
            )
            path.unlink()
    fd = libbpf.map_create(
        spec.map_type,
        spec.name,
        spec.key_size,
        spec.value_size,
        max_entries,
        spec.flags,
        inner_map_fd=inner.fd if inner is not None else None,
    )
    try:
        if old_fd is None:
            libbpf.obj_pin(fd, path)
            return OpenMap(spec.name, fd, path, spec, max_entries, adopted=False)
        assert migration is not None and old_info is not None
        moved = migrate_entries(old_fd, old_info, fd, migration.converter(old_info, spec))
        # the new map takes over the pin in one step: programs opening it never find none
        staging = pin_dir / f"{spec.name}-migrating"
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        libbpf.obj_pin(fd, staging)
        os.rename(staging, path)
        log.warning(
            "pinned map %s had another shape (key %d, value %d, %d entries): migrated %d "
            "entries into the current layout",
            path,
            old_info.key_size,
            old_info.value_size,
            old_info.max_entries,
            moved,
        )
        return OpenMap(spec.name, fd, path, spec, max_entries, adopted=False, migrated=moved)
    except BaseException:
        os.close(fd)
        raise
    finally:
        if old_fd is not None:
            os.close(old_fd)


def migrate_entries(old_fd: int, old: libbpf.MapInfo, new_fd: int, convert: Converter) -> int:
    """Copy every entry of map `old_fd` into `new_fd` through `convert`; returns how many.

    Maps of maps read back inner map ids and are written inner map fds: converted here. Entries
    that no longer fit (the new map is smaller) are left behind and logged."""
    in_map = old.map_type in _MAP_IN_MAP_TYPES
    key = None
    nxt = (ct.c_uint8 * max(old.key_size, 1))()
    value = (ct.c_uint8 * max(old.value_size, 1))()
    moved = skipped = 0
    while libbpf.map_next_key(old_fd, key, nxt):
        key = (ct.c_uint8 * len(nxt)).from_buffer_copy(nxt)
        if not libbpf.map_lookup(old_fd, key, value):
            continue  # deleted meanwhile
        out = convert(bytes(key), bytes(value))
        if out is None:
            continue
        new_key = (ct.c_uint8 * len(out[0])).from_buffer_copy(out[0])
        new_value = (ct.c_uint8 * len(out[1])).from_buffer_copy(out[1])
        inner_fd = None
        try:
            if in_map:
                inner_fd = libbpf.map_fd_by_id(int.from_bytes(out[1][:4], "little"))
                new_value = ct.c_uint32(inner_fd)
            libbpf.map_update(new_fd, new_key, new_value)
            moved += 1
        except OSError as e:
            if e.errno not in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM, errno.ENOENT):
                raise
            skipped += 1
        finally:
            if inner_fd is not None:
                os.close(inner_fd)
    if skipped:
        log.warning("map migration left %d entries behind (the new map is full)", skipped)
    return moved


@dataclass
class LoadedObject:
    """One instance: open fds of its maps and programs, pinned under pin_dir."""

    pin_dir: Path
    maps: dict[str, OpenMap]
    programs: dict[str, int]
    closed: bool = field(default=False)

    def map_fd(self, name: str) -> int:
        return self.maps[name].fd

    def prog_fd(self, name: str) -> int:
        return self.programs[name]

    def close(self) -> None:
        """Close this process's fds; pinned objects (and attached programs) stay in the kernel."""
        if self.closed:
            return
        for fd in [*self.programs.values(), *(m.fd for m in self.maps.values())]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.closed = True

    def unpin(self) -> None:
        """Remove this instance's pins (and pin_dir when that leaves it empty)."""
        for name in [*self.programs, *self.maps]:
            with contextlib.suppress(FileNotFoundError):
                (self.pin_dir / name).unlink()
        with contextlib.suppress(OSError):
            self.pin_dir.rmdir()
