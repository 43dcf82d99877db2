"""Compile a bcc program once, then load it as many times as there are nodes, with pinned maps.

bcc compiles C to bytecode and creates the maps the source declares, baking their file
descriptors into the bytecode (`ld_imm64 rX, map_fd`). `CompiledObject.compile` keeps the bytecode,
each map's spec and bcc's ctypes Key/Leaf types, then releases bcc's module (and its maps).
`CompiledObject.instantiate(pin_dir)` makes one independent copy: for each map it adopts the map
pinned at `pin_dir/<map>` when its shape matches, else creates and pins a new one; it then rewrites
the map fds in the bytecode to the instance's maps, loads the programs and pins them too.

So an agent compiles each program once (~1-2 s) however many nodes it serves, and after a restart
the new programs run on the old maps: state such as NAT entries survives.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os
import struct
import time
from collections.abc import Iterable, Mapping
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
    ) -> CompiledObject:
        """Compile `source` with bcc; `programs` and `maps` name everything the loader handles.

        Every map the programs reference must be listed, so no map is silently shared between
        instances.
        """
        bcc = _bcc()
        if not source.is_file():
            raise LoaderError(f"BPF source {source} not found", hint="reinstall flowscope")
        t0 = time.monotonic()
        try:
            b = bcc.BPF(src_file=str(source).encode(), cflags=list(cflags))
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
    ) -> LoadedObject:
        """Load one independent copy of the programs with maps pinned under `pin_dir`.

        Maps already pinned there with the same type, key/value size, max_entries and flags are
        adopted (their entries survive); a pinned map of another shape is replaced and logged.
        Programs are loaded fresh and their pins replaced. On failure nothing new is left pinned.
        """
        sizes = dict(max_entries or {})
        unknown = set(sizes) - set(self.maps)
        if unknown:
            raise LoaderError(f"max_entries names unknown maps: {sorted(unknown)}")
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
            for spec in self.maps.values():
                m = _open_or_create_map(spec, pin_dir, sizes.get(spec.name, spec.max_entries))
                maps[spec.name] = m
                if not m.adopted:
                    created.append(m.path)
            fd_map = {s.template_fd: maps[s.name].fd for s in self.maps.values()}
            for prog in self.programs.values():
                fd = libbpf.prog_load(
                    prog_type, prog.name, _patch_map_fds(prog, fd_map), prog.license
                )
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


def _open_or_create_map(spec: MapSpec, pin_dir: Path, max_entries: int) -> OpenMap:
    path = pin_dir / spec.name
    if path.exists():
        fd = libbpf.obj_get(path)
        info = libbpf.map_info(fd)
        want = (spec.map_type, spec.key_size, spec.value_size, max_entries, spec.flags)
        have = (info.map_type, info.key_size, info.value_size, info.max_entries, info.flags)
        if have == want:
            return OpenMap(spec.name, fd, path, spec, max_entries, adopted=True)
        os.close(fd)
        log.warning(
            "pinned map %s has another shape (type, key, value, entries, flags) %s than %s: "
            "replacing it, its entries are lost",
            path,
            have,
            want,
        )
        path.unlink()
    fd = libbpf.map_create(
        spec.map_type, spec.name, spec.key_size, spec.value_size, max_entries, spec.flags
    )
    try:
        libbpf.obj_pin(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return OpenMap(spec.name, fd, path, spec, max_entries, adopted=False)


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
