"""Loader for probes/socklb.c: service translation at the socket, on a cluster's cgroup.

The node agent's whole use of it:

    lb = SocketLB.load(paths.node_bpf_dir(node) / "socklb")   # adopts pinned maps and ids
    lb.attach(paths.cgroup_dir)        # every pod socket below the cluster's cgroup
    lb.maps.upsert_service(Service(vip, port, proto, backends=[Backend(ip, port)], ...))
    lb.maps.delete_service(frontend); lb.maps.services()   # `flowscope service list`
    lb.stats(); read_events(lb.ring()) -> array        # TRANSLATED events (collector)
    on shutdown: lb.close()          (programs stay attached, maps stay pinned: still translating)
    on cluster removal: lb.detach(); lb.unpin(); lb.close()
    lb.l7: the HTTP L7 redirect (dataplane/maps/l7map.py): its set of {pod ip, port} and the
           original destinations of redirected connections (the agent's dataplane/agent/nodel7.py)

The L7 redirect adds a fifth program of another type (sock_ops, BPF_CGROUP_SOCK_OPS) on the same
maps: the object is compiled once and loaded as two instances sharing the pins (the loader
takes one program type per instance). It is attached apart: lb.attach_l7(cgroup), detach_l7().

Attachment: BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI on the cgroup directory (the attachment
belongs to the cgroup, not to this process, so it outlives the agent like a pinned tc filter).
attach() adds the new programs first and only then detaches any older instance of the same
programs (found by name on that cgroup): during the swap both run, and since the first
translates a service address to a backend address the second no longer matches, so every
connect is translated exactly once.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import dataclasses
import enum
import functools
import os
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import numpy as np

from dataplane.maps import counters, l7map, lbmap
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.l7map import KernelL7Maps
from dataplane.maps.lbmap import KernelLBMaps, Proto
from dataplane.maps.netorder import ip_of
from flowscope.errors import FlowscopeError, UsageError
from probes import libbpf
from probes.bpfloader import CompiledObject, LoadedObject
from probes.ringbuf import RingBuffer

SOURCE = Path(__file__).with_name("socklb.c")
CONNECT4 = "fs_lb_connect4"
SENDMSG4 = "fs_lb_sendmsg4"
RECVMSG4 = "fs_lb_recvmsg4"
GETPEERNAME4 = "fs_lb_peername4"
ATTACH_TYPES = {
    CONNECT4: libbpf.BPF_CGROUP_INET4_CONNECT,
    SENDMSG4: libbpf.BPF_CGROUP_UDP4_SENDMSG,
    RECVMSG4: libbpf.BPF_CGROUP_UDP4_RECVMSG,
    GETPEERNAME4: libbpf.BPF_CGROUP_INET4_GETPEERNAME,
}
SOCKOPS = "fs_l7_sockops"
BPF_PROG_TYPE_SOCK_OPS = 13
BPF_CGROUP_SOCK_OPS = 3
ALL_ATTACH_TYPES = {**ATTACH_TYPES, SOCKOPS: BPF_CGROUP_SOCK_OPS}
PROGRAMS = tuple(ATTACH_TYPES)

STATS_MAP = "lb_stats"
LOST_MAP = "lb_lost"
EVENTS_MAP = "lb_events"
LB_MAPS = (
    lbmap.SERVICES_MAP,
    lbmap.BACKENDS_MAP,
    lbmap.REVNAT_MAP,
    lbmap.AFFINITY_MAP,
    lbmap.SOCK_REVNAT_MAP,
)
L7_MAPS = (l7map.REDIRECT_MAP, l7map.ORIG_SOCK_MAP, l7map.ORIG_PORT_MAP)
MAPS = (*LB_MAPS, STATS_MAP, LOST_MAP, EVENTS_MAP, *L7_MAPS)
SOCKOPS_MAPS = (l7map.ORIG_SOCK_MAP, l7map.ORIG_PORT_MAP, STATS_MAP)  # what fs_l7_sockops uses

DEFAULT_SERVICE_SLOTS = 65536  # service entries + backend slots
DEFAULT_BACKENDS = 65536
DEFAULT_REVNAT = 65536
DEFAULT_AFFINITY = 65536
DEFAULT_SOCK_REVNAT = 65536  # LRU: one per translated socket (UDP and getpeername need it)
DEFAULT_EVENTS_BYTES = 1 << 20
DEFAULT_L7_REDIRECT = 65536  # pod ports with HTTP rules in the cluster
DEFAULT_L7_ORIG = 65536  # LRU: redirected connections being opened
_PAGE = 4096

HOOK_CONNECT = 1
HOOK_SENDMSG = 2
EVENT_F_AFFINITY = 0x1


class SockLBStat(enum.IntEnum):
    """Counters in lb_stats; the same order as enum lb_stat in socklb.c."""

    TRANSLATED_CONNECT = 0
    TRANSLATED_SENDMSG = 1
    REVERSED_RECVMSG = 2
    REVERSED_PEERNAME = 3
    NO_BACKEND = 4
    SLOT_MISS = 5
    AFFINITY_HIT = 6
    EVENTS = 7
    L7_REDIRECTED = 8
    L7_PORT_RECORDED = 9
    L7_PEERNAME = 10


class LBEvent(ct.Structure):
    """struct lb_event: one TRANSLATED socket-level translation."""

    _fields_ = (
        ("ktime_ns", ct.c_uint64),
        ("sock_cookie", ct.c_uint64),
        ("netns_cookie", ct.c_uint64),
        ("vip", ct.c_uint32),
        ("backend_ip", ct.c_uint32),
        ("vport", ct.c_uint16),
        ("backend_port", ct.c_uint16),
        ("backend_id", ct.c_uint32),
        ("revnat_id", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("hook", ct.c_uint8),
        ("version", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
        ("cgroup_id", ct.c_uint64),
    )


EVENT_DTYPE = np.dtype(LBEvent)


@dataclass(frozen=True)
class Translation:
    """A decoded lb_event."""

    ktime_ns: int
    sock_cookie: int
    netns_cookie: int
    vip: IPv4Address
    vport: int
    backend_ip: IPv4Address
    backend_port: int
    backend_id: int
    revnat_id: int
    proto: Proto
    hook: int  # HOOK_CONNECT or HOOK_SENDMSG
    affinity: bool  # the backend came from the client's affinity entry
    cgroup_id: int = 0  # the connecting task's cgroup (0 from a version 1 program)


def to_array(records: list[bytes]) -> np.ndarray:
    """Ring buffer records (as RingBuffer.drain returns them) as one EVENT_DTYPE array; a
    shorter (version 1) record reads with cgroup_id 0."""
    size = EVENT_DTYPE.itemsize
    joined = b"".join(r[:size].ljust(size, b"\0") for r in records)
    return np.frombuffer(joined, dtype=EVENT_DTYPE).copy()


def read_events(ring: RingBuffer, max_records: int = 1 << 16) -> np.ndarray:
    """Drain the TRANSLATED ring into one EVENT_DTYPE array (a new one, the caller's), in one
    copy; record by record only when the ring holds records of another size (version 1 ones
    from a program of an older agent, still attached while the new one takes over)."""
    try:
        return ring.drain_array(EVENT_DTYPE, max_records, copy=True)
    except ValueError:
        return to_array(ring.drain(max_records))


def decode_events(records: list[bytes]) -> list[Translation]:
    """Decode ring buffer records (as RingBuffer.drain returns them) one object each."""
    if not records:
        return []
    return [
        Translation(
            ktime_ns=int(e["ktime_ns"]),
            sock_cookie=int(e["sock_cookie"]),
            netns_cookie=int(e["netns_cookie"]),
            vip=ip_of(e["vip"]),
            vport=int(e["vport"]),
            backend_ip=ip_of(e["backend_ip"]),
            backend_port=int(e["backend_port"]),
            backend_id=int(e["backend_id"]),
            revnat_id=int(e["revnat_id"]),
            proto=Proto(int(e["proto"])),
            hook=int(e["hook"]),
            affinity=bool(int(e["flags"]) & EVENT_F_AFFINITY),
            cgroup_id=int(e["cgroup_id"]),
        )
        for e in to_array(records)
    ]


@functools.cache
def _compiled_all() -> CompiledObject:
    return CompiledObject.compile(SOURCE, programs=(*PROGRAMS, SOCKOPS), maps=MAPS)


def compiled() -> CompiledObject:
    """socklb.c compiled with bcc, once per process: the sock_addr programs and every map."""
    whole = _compiled_all()
    return dataclasses.replace(
        whole, programs={n: p for n, p in whole.programs.items() if n in PROGRAMS}
    )


def compiled_sockops() -> CompiledObject:
    """The same compilation's sock_ops program, with the maps it uses (adopted from the pins
    the sock_addr instance made)."""
    whole = _compiled_all()
    return dataclasses.replace(
        whole,
        programs={SOCKOPS: whole.programs[SOCKOPS]},
        maps={n: whole.maps[n] for n in SOCKOPS_MAPS},
    )


class SocketLB:
    """One node's socket LB: maps and four programs pinned under one directory."""

    def __init__(self, obj: LoadedObject, sockops: LoadedObject) -> None:
        self._obj = obj
        self._sockops = sockops
        m = obj.maps
        self.maps = KernelLBMaps({n: (m[n].fd, m[n].max_entries) for n in LB_MAPS})
        self.l7 = KernelL7Maps({n: (m[n].fd, m[n].max_entries) for n in L7_MAPS})
        self._stats = BpfMap(m[STATS_MAP].fd, ct.c_uint32, ct.c_uint64, name=STATS_MAP, percpu=True)
        self._lost = BpfMap(m[LOST_MAP].fd, ct.c_uint32, ct.c_uint64, name=LOST_MAP, percpu=True)
        self._cgroup: Path | None = None

    @classmethod
    def load(
        cls,
        pin_dir: Path,
        *,
        service_slots: int = DEFAULT_SERVICE_SLOTS,
        backends: int = DEFAULT_BACKENDS,
        revnat: int = DEFAULT_REVNAT,
        affinity: int = DEFAULT_AFFINITY,
        sock_revnat: int = DEFAULT_SOCK_REVNAT,
        events_bytes: int = DEFAULT_EVENTS_BYTES,
        l7_redirect: int = DEFAULT_L7_REDIRECT,
        l7_orig: int = DEFAULT_L7_ORIG,
    ) -> SocketLB:
        """Load an instance, adopting the maps (services, ids, affinity) pinned in pin_dir.

        service_slots: entries of lb_services, one per service port plus one per backend of it.
        events_bytes: the TRANSLATED ring buffer (a power of two of pages; 56 bytes an event)."""
        if events_bytes < _PAGE or events_bytes & (events_bytes - 1):
            raise UsageError(
                f"events_bytes: {events_bytes} is not a power of two of at least {_PAGE} bytes"
            )
        sizes = {
            "service_slots": service_slots,
            "backends": backends,
            "revnat": revnat,
            "affinity": affinity,
            "sock_revnat": sock_revnat,
            "l7_redirect": l7_redirect,
            "l7_orig": l7_orig,
        }
        for name, value in sizes.items():
            if not 0 < value < 2**31:
                raise UsageError(f"{name}: {value} must be a positive number of entries")
        obj = compiled().instantiate(
            Path(pin_dir),
            libbpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            max_entries={
                lbmap.SERVICES_MAP: service_slots,
                lbmap.BACKENDS_MAP: backends,
                lbmap.REVNAT_MAP: revnat,
                lbmap.AFFINITY_MAP: affinity,
                lbmap.SOCK_REVNAT_MAP: sock_revnat,
                EVENTS_MAP: events_bytes,
                l7map.REDIRECT_MAP: l7_redirect,
                l7map.ORIG_SOCK_MAP: l7_orig,
                l7map.ORIG_PORT_MAP: l7_orig,
            },
            attach_types=ATTACH_TYPES,
        )
        try:
            # adopts the maps just pinned (same shapes), so both instances share them
            sockops = compiled_sockops().instantiate(
                Path(pin_dir),
                BPF_PROG_TYPE_SOCK_OPS,
                max_entries={l7map.ORIG_SOCK_MAP: l7_orig, l7map.ORIG_PORT_MAP: l7_orig},
            )
        except BaseException:
            obj.close()
            raise
        return cls(obj, sockops)

    @property
    def pin_dir(self) -> Path:
        return self._obj.pin_dir

    @property
    def adopted(self) -> dict[str, bool]:
        return {name: m.adopted for name, m in self._obj.maps.items()}

    def prog_fd(self, name: str) -> int:
        if name == SOCKOPS:
            return self._sockops.prog_fd(name)
        return self._obj.prog_fd(name)

    def ring(self) -> RingBuffer:
        """A reader of the TRANSLATED event ring (the caller closes it)."""
        return RingBuffer(self._obj.map_fd(EVENTS_MAP))

    # -- attachment --

    def attach(self, cgroup: Path) -> None:
        """Attach the four programs to a cgroup v2 directory (sockets of every cgroup below it
        included), then detach older instances of them from it."""
        self._attach(Path(cgroup), ATTACH_TYPES)

    def attach_l7(self, cgroup: Path) -> None:
        """Attach the sock_ops program of the HTTP L7 redirect to the cgroup (as attach() does):
        without it, connections are still redirected but the proxy cannot tell where to."""
        self._attach(Path(cgroup), {SOCKOPS: BPF_CGROUP_SOCK_OPS})

    def _attach(self, cgroup: Path, programs: dict[str, int]) -> None:
        fd = _open_cgroup(cgroup)
        try:
            ours = {name: libbpf.prog_info(self.prog_fd(name)).id for name in programs}
            for name, attach_type in programs.items():
                if ours[name] in libbpf.prog_query(fd, attach_type):
                    continue  # attached already (attach() called twice)
                libbpf.prog_attach(self.prog_fd(name), fd, attach_type, libbpf.BPF_F_ALLOW_MULTI)
            for name, attach_type in programs.items():
                _detach_named(fd, attach_type, name, keep=ours[name])
        finally:
            os.close(fd)
        self._cgroup = cgroup

    def detach(self, cgroup: Path | None = None) -> int:
        """Detach every instance of the four programs from the cgroup (default: the one attach()
        used); returns how many attachments were removed (0 when the cgroup is gone)."""
        return self._detach(cgroup, ATTACH_TYPES)

    def detach_l7(self, cgroup: Path | None = None) -> int:
        """Detach every instance of the L7 sock_ops program (as detach() does)."""
        return self._detach(cgroup, {SOCKOPS: BPF_CGROUP_SOCK_OPS})

    def _detach(self, cgroup: Path | None, programs: dict[str, int]) -> int:
        target = Path(cgroup) if cgroup is not None else self._cgroup
        if target is None:
            return 0
        try:
            fd = _open_cgroup(target)
        except FlowscopeError:
            return 0
        try:
            return sum(_detach_named(fd, t, name, keep=None) for name, t in programs.items())
        finally:
            os.close(fd)

    def attached(self, cgroup: Path, *, l7: bool = False) -> dict[str, bool]:
        """Per program (the four; l7: the sock_ops one too): whether this instance is attached
        to the cgroup itself."""
        fd = _open_cgroup(Path(cgroup))
        try:
            return {
                name: libbpf.prog_info(self.prog_fd(name)).id in libbpf.prog_query(fd, t)
                for name, t in (ALL_ATTACH_TYPES if l7 else ATTACH_TYPES).items()
            }
        finally:
            os.close(fd)

    # -- counters --

    def lost_events(self) -> int:
        return counters.counter(self._lost, 0)

    def stats(self) -> dict[str, int]:
        """Counters summed over CPUs by lower-case SockLBStat name, and `lost_events`."""
        out = counters.counters(self._stats, SockLBStat)
        out["lost_events"] = self.lost_events()
        return out

    # -- lifetime --

    def close(self) -> None:
        """Close this process's fds. Pins, attachments and map entries stay."""
        self._obj.close()
        self._sockops.close()

    def unpin(self) -> None:
        self._sockops.unpin()
        self._obj.unpin()


def _open_cgroup(cgroup: Path) -> int:
    try:
        return os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise FlowscopeError(
            f"cannot open cgroup {cgroup}: {e.strerror}",
            hint="is the lab up (it creates the cluster's cgroup under the cgroup2 mount)?",
        ) from e


def _detach_named(cgroup_fd: int, attach_type: int, name: str, *, keep: int | None) -> int:
    """Detach programs called `name` (ours, by the name we load them with) except id `keep`."""
    removed = 0
    for prog_id in libbpf.prog_query(cgroup_fd, attach_type):
        if prog_id == keep:
            continue
        try:
            fd = libbpf.prog_fd_by_id(prog_id)
        except FileNotFoundError:
            continue
        try:
            if libbpf.prog_info(fd).name != name[: libbpf.BPF_OBJ_NAME_LEN - 1]:
                continue
            with contextlib.suppress(FileNotFoundError):
                libbpf.prog_detach(fd, cgroup_fd, attach_type)
                removed += 1
        finally:
            os.close(fd)
    return removed
