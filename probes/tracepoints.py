"""Loader for probes/tracepoints.c: kernel drops, TCP state changes and retransmits of one node.

The node agent's whole use of it:

    tp = TracepointProbes.load(paths.node_bpf_dir(node) / "tracepoints")
    tp.watch_netns(netns_inode(paths.node_netns(node)))      # the node itself
    tp.watch_netns(netns_inode(pod_netns))                    # each pod, on CNI ADD
    tp.attach()
    loop: await tp.ring.wait_readable(0.1); events = tp.read_array()   # columns, or
          tp.read() -> [KernelEvent]                                  # one object each
          tp.lost_events()                                    # report ring-full losses
    pod gone: tp.unwatch_netns(inode)
    shutdown: tp.close()              (detaches: tracepoint attachments live with this process)

Attachment: each program is set on a perf event of its tracepoint (perf_event_open +
PERF_EVENT_IOC_SET_BPF, probes.libbpf.attach_tracepoint). This machine has no kprobes and
refuses fentry; tracepoint perf events work everywhere since 4.7, need no BTF-typed program
(unlike tp_btf), and take the tracepoint's documented, format-described arguments (unlike raw
tracepoints, whose arguments are the kernel's internal function parameters). The attachment is
owned by the perf event fd: detach() or close() closes it, and a crashed agent leaves nothing
attached (maps, including the watched namespaces, stay pinned for the next start).

Kernel layouts: the programs read a few kernel struct fields (skb->dev, dev->nd_net,
sk->skc_net, net->ns.inum, ...). Their offsets come from the running kernel's BTF
(probes.btf), passed to the compiler as OFF_* macros, since bcc's headers are another kernel's.

Drops with reason NOT_SPECIFIED (plain kfree_skb() callers, mostly packets freed on error paths
that carry no diagnosis) are not reported by default: they are frequent, say nothing a user can
act on, and every drop that the stack diagnoses has its own reason on 6.x kernels. load(...,
report_unspecified=True) reports them too.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataplane.maps import counters
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.kernelevent import (
    EVENT_DTYPE,
    KernelEvent,
    TcpState,
    TpConfigStruct,
    decode,
    drop_reason_names,
    to_array,
)
from dataplane.maps.netnsfilter import NetnsFilter, netns_inode
from flowscope.errors import FlowscopeError
from probes import btf, libbpf
from probes.bpfloader import CompiledObject, LoadedObject
from probes.ringbuf import RingBuffer

SOURCE = Path(__file__).with_name("tracepoints.c")
EVENTS_MAP = "kernel_events"
NETNS_MAP = "netns_watch"
LOST_MAP = "kernel_lost"
CONFIG_MAP = "tp_config"
MAPS = (EVENTS_MAP, NETNS_MAP, LOST_MAP, CONFIG_MAP)


@dataclass(frozen=True)
class Tracepoint:
    program: str
    category: str
    event: str


TRACEPOINTS = (
    Tracepoint("tp_kfree_skb", "skb", "kfree_skb"),
    Tracepoint("tp_sock_state", "sock", "inet_sock_set_state"),
    Tracepoint("tp_tcp_retransmit", "tcp", "tcp_retransmit_skb"),
)
PROGRAMS = tuple(t.program for t in TRACEPOINTS)

# OFF_* macro -> (struct, member path): every kernel field the programs read.
KERNEL_FIELDS = {
    "OFF_SKB_DEV": ("sk_buff", "dev"),
    "OFF_SKB_SK": ("sk_buff", "sk"),
    "OFF_SKB_HEAD": ("sk_buff", "head"),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "OFF_SKB_LEN": ("sk_buff", "len"),
    "OFF_DEV_NET": ("net_device", "nd_net.net"),
    "OFF_DEV_IFINDEX": ("net_device", "ifindex"),
    "OFF_SOCK_NET": ("sock", "__sk_common.skc_net.net"),
    "OFF_NET_INUM": ("net", "ns.inum"),
}

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_FIELD = re.compile(r"field:[^;]*?(\w+)(?:\[\d+\])?;")


class TracepointError(FlowscopeError):
    pass


def format_text(category: str, event: str) -> str:
    """The tracefs format file of a tracepoint (its fields and print format)."""
    for root in TRACEFS_DIRS:
        path = root / "events" / category / event / "format"
        with contextlib.suppress(FileNotFoundError, PermissionError):
            return path.read_text()
    raise TracepointError(
        f"tracepoint {category}:{event} not found under {' or '.join(map(str, TRACEFS_DIRS))}",
        hint="mount tracefs (`make setup` does: mount -t tracefs tracefs /sys/kernel/tracing)",
    )


def format_fields(text: str) -> set[str]:
    """The field names a tracefs format file declares."""
    return set(_FIELD.findall(text))


def cflags() -> list[str]:
    """Compiler flags describing the running kernel: field offsets and optional fields."""
    flags = [f"-D{macro}={btf.field_offset(*where)}" for macro, where in KERNEL_FIELDS.items()]
    if "err" in format_fields(format_text("tcp", "tcp_retransmit_skb")):
        flags.append("-DTP_RETRANSMIT_HAS_ERR")  # added in 6.x kernels
    return flags


@functools.cache
def compiled(*, layout_check: bool = False) -> CompiledObject:
    """tracepoints.c compiled with bcc for the running kernel, once per process.

    layout_check adds a map whose value is struct kernel_event, so that tests can compare the
    compiled struct with the Python mirror."""
    maps = MAPS + (("layout_kernel_event",) if layout_check else ())
    extra = ["-DLAYOUT_CHECK"] if layout_check else []
    return CompiledObject.compile(SOURCE, programs=PROGRAMS, maps=maps, cflags=cflags() + extra)


@functools.cache
def reason_names() -> dict[int, str]:
    """The running kernel's drop reason numbers and names (NO_SOCKET, ...)."""
    return drop_reason_names(format_text("skb", "kfree_skb"))


class TracepointProbes:
    """One node's tracepoint probes: maps pinned under one directory, programs attached while
    this object is."""

    def __init__(self, obj: LoadedObject) -> None:
        self._obj = obj
        self._perf_fds: dict[str, int] = {}
        self.netns = NetnsFilter(
            BpfMap(obj.map_fd(NETNS_MAP), ct.c_uint32, ct.c_uint8, name=NETNS_MAP)
        )
        self._lost = BpfMap(
            obj.map_fd(LOST_MAP), ct.c_uint32, ct.c_uint64, name=LOST_MAP, percpu=True
        )
        self._config = BpfMap(obj.map_fd(CONFIG_MAP), ct.c_uint32, TpConfigStruct, name=CONFIG_MAP)
        self.reason_names = reason_names()
        self.ring = RingBuffer(obj.map_fd(EVENTS_MAP))

    @classmethod
    def load(
        cls,
        pin_dir: Path,
        *,
        report_unspecified: bool = False,
        ring_bytes: int | None = None,
        tcp_states: Iterable[TcpState] | None = None,
    ) -> TracepointProbes:
        """Load a node's instance, adopting its pinned maps (the watched namespaces survive an
        agent restart). ring_bytes sizes the event ring (a power of two of pages; 1 MiB).
        tcp_states: the new states whose changes are reported (None: every change); the
        kernel drops the others before any ring buffer work."""
        sizes = None
        if ring_bytes is not None:
            page = os.sysconf("SC_PAGE_SIZE")
            if ring_bytes < page or ring_bytes & (ring_bytes - 1):
                raise TracepointError(
                    f"ring_bytes: {ring_bytes} is not a power of two of at least {page}"
                )
            sizes = {EVENTS_MAP: ring_bytes}
        obj = compiled().instantiate(
            Path(pin_dir), libbpf.BPF_PROG_TYPE_TRACEPOINT, max_entries=sizes
        )
        try:
            probes = cls(obj)
            probes.configure(report_unspecified=report_unspecified, tcp_states=tcp_states)
        except BaseException:
            obj.close()
            raise
        return probes

    @property
    def pin_dir(self) -> Path:
        return self._obj.pin_dir

    @property
    def attached(self) -> bool:
        return bool(self._perf_fds)

    def configure(
        self, *, report_unspecified: bool, tcp_states: Iterable[TcpState] | None = None
    ) -> None:
        skip = 0
        if not report_unspecified:
            by_name = {name: num for num, name in self.reason_names.items()}
            skip = by_name.get("NOT_SPECIFIED", 0)
        mask = 0  # every state change
        if tcp_states is not None:
            # bit 31 is no TCP state: an empty set still makes the mask non-zero (report none)
            mask = sum(1 << int(s) for s in set(tcp_states)) or 1 << 31
        self._config.update(ct.c_uint32(0), TpConfigStruct(skip_reason=skip, state_mask=mask))

    def attach(self) -> None:
        """Attach the three programs to their tracepoints (no-op when attached)."""
        if self._perf_fds:
            return
        fds: dict[str, int] = {}
        try:
            for tp in TRACEPOINTS:
                fds[tp.program] = libbpf.attach_tracepoint(
                    self._obj.prog_fd(tp.program), tp.category, tp.event
                )
        except OSError as e:
            for fd in fds.values():
                os.close(fd)
            raise TracepointError(
                str(e), hint="tracefs must be mounted and the kernel must have the tracepoint"
            ) from e
        self._perf_fds = fds

    def detach(self) -> None:
        """Detach every program (closing its perf event); events stop at once."""
        fds, self._perf_fds = self._perf_fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def watch_netns(self, inode: int) -> None:
        self.netns.watch(inode)

    def unwatch_netns(self, inode: int) -> bool:
        return self.netns.unwatch(inode)

    def watch_named_netns(self, name: str | None) -> int:
        """Watch /run/netns/<name> (None: this process's namespace); returns its inode."""
        inode = netns_inode(name)
        self.watch_netns(inode)
        return inode

    def decode(self, records: list[bytes]) -> list[KernelEvent]:
        return decode(to_array(records), self.reason_names)

    def read(self, max_records: int = 1 << 16) -> list[KernelEvent]:
        """Drain the ring and decode what was there."""
        return self.decode(self.ring.drain(max_records))

    def read_array(self, max_records: int = 1 << 16) -> np.ndarray:
        """Drain the ring into one structured array (EVENT_DTYPE, a new one: the caller's), in
        one copy with no work per record (the collector's way: collector.kernelcolumns)."""
        return self.ring.drain_array(EVENT_DTYPE, max_records, copy=True)

    def lost_events(self) -> int:
        """Events the programs could not emit because the ring was full, since the map was
        created (summed over CPUs)."""
        return counters.counter(self._lost, 0)

    def close(self) -> None:
        """Detach and close this process's fds; the maps stay pinned."""
        self.detach()
        self.ring.close()
        self._obj.close()

    def unpin(self) -> None:
        self._obj.unpin()
