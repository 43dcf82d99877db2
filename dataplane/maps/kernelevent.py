"""Kernel events from the tracepoint probes (probes/tracepoints.c `struct kernel_event`).

One fixed 80-byte record for three kinds: a packet the kernel dropped (skb:kfree_skb, with the
kernel's drop reason), a TCP state change (sock:inet_sock_set_state) and a TCP retransmit
(tcp:tcp_retransmit_skb). The ctypes mirror has the C layout exactly (checked against bcc by
tests/maps/test_kernelevent.py), and so has EVENT_DTYPE, its numpy twin: the ring is drained as one
structured array per batch (RingBuffer.drain_array), kept as columns by the collector
(collector.kernelcolumns: `address_keys` turns both address columns into keys without Python
work per record), and turned into frozen `KernelEvent`s only where a Python object per event is
wanted (`decode`).

Drop reason numbers are the running kernel's `enum skb_drop_reason`, which changes between
kernel versions (6.1: NO_SOCKET = 2; 6.18: NO_SOCKET = 3); names come from the tracepoint's own
format file (`drop_reason_names`), never from a table compiled into flowscope.
"""

from __future__ import annotations

import ctypes as ct
import enum
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class Kind(enum.IntEnum):
    """KIND_* in tracepoints.c."""

    DROP = 1
    STATE = 2
    RETRANSMIT = 3


class TcpState(enum.IntEnum):
    """include/net/tcp_states.h; names as the kernel's tracepoints print them."""

    TCP_ESTABLISHED = 1
    TCP_SYN_SENT = 2
    TCP_SYN_RECV = 3
    TCP_FIN_WAIT1 = 4
    TCP_FIN_WAIT2 = 5
    TCP_TIME_WAIT = 6
    TCP_CLOSE = 7
    TCP_CLOSE_WAIT = 8
    TCP_LAST_ACK = 9
    TCP_LISTEN = 10
    TCP_CLOSING = 11
    TCP_NEW_SYN_RECV = 12


AF_INET = 2
AF_INET6 = 10


class KernelEventStruct(ct.Structure):
    """struct kernel_event. Ports are host order; addresses network order (IPv4 in bytes 0-3)."""

    _fields_ = (
        ("ktime_ns", ct.c_uint64),
        ("location", ct.c_uint64),
        ("netns", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("drop_reason", ct.c_uint32),
        ("skb_len", ct.c_uint32),
        ("err", ct.c_int32),
        ("kind", ct.c_uint8),
        ("protocol", ct.c_uint8),
        ("old_state", ct.c_uint8),
        ("new_state", ct.c_uint8),
        ("family", ct.c_uint16),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
    )


class TpConfigStruct(ct.Structure):
    """struct tp_config: the probes' settings (one entry, key 0)."""

    _fields_ = (("skip_reason", ct.c_uint32), ("state_mask", ct.c_uint32))


EVENT_DTYPE = np.dtype(KernelEventStruct)
EVENT_SIZE = EVENT_DTYPE.itemsize

_SYMBOLIC = re.compile(r"\{\s*(\d+)\s*,\s*\"([A-Z0-9_]+)\"\s*\}")


def drop_reason_names(format_text: str) -> dict[int, str]:
    """The `enum skb_drop_reason` table from skb:kfree_skb's tracefs format file.

    The kernel prints the reason with __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ...);
    that list is the enum of the running kernel, so it is the one table that is always right.
    Raises ValueError when the text has no such list (not the kfree_skb format, or a kernel
    without drop reasons)."""
    start = format_text.find("__print_symbolic(REC->reason")
    if start < 0:
        raise ValueError("format text has no __print_symbolic(REC->reason, ...) table")
    names = {int(num): name for num, name in _SYMBOLIC.findall(format_text[start:])}
    if not names:
        raise ValueError("the reason table in the format text is empty")
    return names


def to_array(records: Sequence[bytes]) -> np.ndarray:
    """Ring buffer records (each EVENT_SIZE bytes) as one structured array, in one copy.

    Raises ValueError naming the first record of another size (a stale or foreign ring)."""
    for i, rec in enumerate(records):
        if len(rec) != EVENT_SIZE:
            raise ValueError(f"record {i} is {len(rec)} bytes, a kernel_event is {EVENT_SIZE}")
    return np.frombuffer(b"".join(records), dtype=EVENT_DTYPE).copy()


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_V4_MAPPED = np.uint64(0xFFFF << 32)  # ::ffff:a.b.c.d as two big-endian words: (0, this | v4)
_SHIFT32 = np.uint64(32)
NO_ADDRESS, V4, V6 = 0, 1, 2  # address_keys' kinds


_SADDR = EVENT_DTYPE.fields["saddr"][1]
assert EVENT_DTYPE.fields["daddr"][1] == _SADDR + 16 and _SADDR % 8 == 0


def address_keys(events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both address columns of `events` (EVENT_DTYPE) as keys, the sources' then the
    destinations': (high word, low word, kind), uint64 columns of 2 * len(events). IPv4
    addresses and IPv6 ones mapped from IPv4 (a dual-stack socket's IPv4 peer) both read as the
    mapped form (0, 0xffff_a.b.c.d) of kind V4, other IPv6 addresses as their two big-endian
    halves of kind V6, and records of no known family as (0, 0, NO_ADDRESS)."""
    n = len(events)
    # saddr and daddr are four big-endian words in a row: s_high, s_low, d_high, d_low
    first = _SADDR // 8
    words = np.ascontiguousarray(events).view(">u8").reshape(n, EVENT_SIZE // 8)
    words = words[:, first : first + 4].astype(np.uint64)
    high = np.concatenate((words[:, 0], words[:, 2]))
    low = np.concatenate((words[:, 1], words[:, 3]))
    family = events["family"]
    if (family == AF_INET).all():  # the usual batch: one pass
        low = (high >> _SHIFT32) | _V4_MAPPED
        return np.zeros(2 * n, np.uint64), low, np.full(2 * n, V4, np.uint64)
    family = np.concatenate((family, family))
    v4 = family == AF_INET
    v6 = family == AF_INET6
    kind = np.zeros(2 * n, np.uint64)
    kind[v6] = V6
    kind[v6 & (high == 0) & ((low >> _SHIFT32) == np.uint64(0xFFFF))] = V4
    kind[v4] = V4
    low[v4] = (high[v4] >> _SHIFT32) | _V4_MAPPED
    high[v4] = 0
    none = ~(v4 | v6)
    high[none] = 0
    low[none] = 0
    return high, low, kind


def address_of(high: int, low: int, kind: int) -> Address | None:
    """The address of an address_keys key (IPv4 for the mapped form)."""
    if kind == V4:
        return ipaddress.IPv4Address(low & 0xFFFF_FFFF)
    if kind == V6:
        return ipaddress.IPv6Address(high << 64 | low)
    return None


def _addr(raw: np.ndarray, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if family == AF_INET:
        return ipaddress.IPv4Address(bytes(raw[:4]))
    if family == AF_INET6:
        return ipaddress.IPv6Address(bytes(raw))
    return None


def state_name(value: int) -> str | None:
    """A TCP state number as the kernel prints it (None for 0, the number for an unknown one)."""
    return _state(value)


def _state(value: int) -> str | None:
    try:
        return TcpState(value).name
    except ValueError:
        return None if value == 0 else str(value)


def _endpoint(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int) -> str:
    return f"[{addr}]:{port}" if isinstance(addr, ipaddress.IPv6Address) else f"{addr}:{port}"


@dataclass(frozen=True)
class KernelEvent:
    """One decoded event. Fields that do not apply to a kind are None (or 0 for numbers)."""

    kind: Kind
    time_ns: int  # CLOCK_MONOTONIC nanoseconds (the kernel's bpf_ktime_get_ns)
    netns: int  # network namespace inode number
    ifindex: int
    family: int
    protocol: int  # IPPROTO_*; 0 for a drop without an IPv4 header
    saddr: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    sport: int
    dport: int
    drop_reason: int  # the running kernel's enum skb_drop_reason value (drops only)
    drop_reason_name: str | None  # e.g. "NO_SOCKET"
    old_state: str | None  # state changes: "TCP_SYN_SENT", ...
    new_state: str | None  # state changes: the new state; retransmits: the socket's state
    skb_len: int
    location: int  # drops: kernel text address that freed the packet
    err: int  # retransmits: the kernel's error for the retransmission (0: sent)

    def __str__(self) -> str:
        flow = (
            f"{_endpoint(self.saddr, self.sport)} > {_endpoint(self.daddr, self.dport)} "
            f"proto {self.protocol}"
        )
        if self.kind is Kind.DROP:
            return f"DROP {self.drop_reason_name or self.drop_reason} {flow} if {self.ifindex}"
        if self.kind is Kind.STATE:
            return f"STATE {self.old_state} -> {self.new_state} {flow}"
        return f"RETRANSMIT {self.new_state} {flow}"


def decode(events: np.ndarray, reason_names: Mapping[int, str]) -> list[KernelEvent]:
    """Structured array (EVENT_DTYPE) -> KernelEvents. Unknown kinds are skipped."""
    out: list[KernelEvent] = []
    for e in events:
        try:
            kind = Kind(int(e["kind"]))
        except ValueError:
            continue
        family = int(e["family"])
        reason = int(e["drop_reason"])
        drop = kind is Kind.DROP
        out.append(
            KernelEvent(
                kind=kind,
                time_ns=int(e["ktime_ns"]),
                netns=int(e["netns"]),
                ifindex=int(e["ifindex"]),
                family=family,
                protocol=int(e["protocol"]),
                saddr=_addr(e["saddr"], family),
                daddr=_addr(e["daddr"], family),
                sport=int(e["sport"]),
                dport=int(e["dport"]),
                drop_reason=reason,
                drop_reason_name=reason_names.get(reason, str(reason)) if drop else None,
                old_state=_state(int(e["old_state"])) if kind is Kind.STATE else None,
                new_state=None if drop else _state(int(e["new_state"])),
                skb_len=int(e["skb_len"]),
                location=int(e["location"]),
                err=int(e["err"]),
            )
        )
    return out
