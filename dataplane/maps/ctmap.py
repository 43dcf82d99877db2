"""The connection tracking table (probes/datapath.c `ct`), seen from Python.

An LRU hash: key struct ct_key {saddr, daddr, sport, dport, proto, scope} as the connection's
first packet carried it (network order); `scope` is the direction of the endpoint decision that
made the entry (Direction.EGRESS: the endpoint opened it, INGRESS: the endpoint accepted it), so
for two pods on one node each side's decision has an entry of its own, as Cilium's
TUPLE_F_OUT/TUPLE_F_IN do. Value struct ct_entry: expiry, creation time, packets and bytes per
direction, TCP flags seen per direction, flags (reply seen, closing, audit), the cookie of the
policy entry that allowed it and the peer's identity.

The kernel treats entries past expires_ns as missing (the next packet is decided again); gc()
deletes them. Like natmap.py (both on dataplane.maps.expiring): KernelCtMap over the pinned map
and FakeCtMap for pure tests.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from dataclasses import dataclass

import numpy as np

from dataplane.maps.expiring import DictBacked, ExpiringMap, KernelBacked
from dataplane.maps.netorder import ip_of, u32_of
from dataplane.policy.entry import Direction
from probes.bpfloader import Migration

MAP_NAME = "ct"
CT_F_REPLY_SEEN = 0x1
CT_F_CLOSING = 0x2
CT_F_AUDIT = 0x4
MIGRATION = Migration()  # older layouts carried forward: none yet (resizes are copied as is)

_PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}


class CtKey(ct.Structure):
    """struct ct_key; addresses and ports in network order, as in the packet."""

    _fields_ = (
        ("saddr", ct.c_uint32),
        ("daddr", ct.c_uint32),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("scope", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    )


class CtEntry(ct.Structure):
    """struct ct_entry; times are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns)."""

    _fields_ = (
        ("expires_ns", ct.c_uint64),
        ("created_ns", ct.c_uint64),
        ("packets_fwd", ct.c_uint64),
        ("bytes_fwd", ct.c_uint64),
        ("packets_rev", ct.c_uint64),
        ("bytes_rev", ct.c_uint64),
        ("cookie", ct.c_uint32),
        ("peer_identity", ct.c_uint32),
        ("tcp_flags_fwd", ct.c_uint8),
        ("tcp_flags_rev", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8 * 5),
    )


KEY_DTYPE = np.dtype(CtKey)
ENTRY_DTYPE = np.dtype(CtEntry)


def make_key(
    scope: Direction,
    proto: int,
    saddr: ipaddress.IPv4Address | str,
    daddr: ipaddress.IPv4Address | str,
    sport: int,
    dport: int,
) -> CtKey:
    """A key from host-order ports, as the datapath builds it (ICMP echo: sport = the id on
    the request, dport = 0)."""
    return CtKey(
        saddr=u32_of(saddr),
        daddr=u32_of(daddr),
        sport=socket.htons(sport),
        dport=socket.htons(dport),
        proto=proto,
        scope=int(scope),
    )


@dataclass(frozen=True)
class Connection:
    """One decoded entry."""

    scope: Direction
    proto: int
    saddr: ipaddress.IPv4Address
    daddr: ipaddress.IPv4Address
    sport: int
    dport: int
    expires_ns: int
    created_ns: int
    packets_fwd: int
    bytes_fwd: int
    packets_rev: int
    bytes_rev: int
    cookie: int
    peer_identity: int
    tcp_flags_fwd: int
    tcp_flags_rev: int
    flags: int

    @property
    def reply_seen(self) -> bool:
        return bool(self.flags & CT_F_REPLY_SEEN)

    @property
    def closing(self) -> bool:
        return bool(self.flags & CT_F_CLOSING)

    @property
    def audit(self) -> bool:
        return bool(self.flags & CT_F_AUDIT)

    @property
    def proto_name(self) -> str:
        return _PROTO_NAMES.get(self.proto, str(self.proto))

    def key(self) -> CtKey:
        return make_key(self.scope, self.proto, self.saddr, self.daddr, self.sport, self.dport)

    def __str__(self) -> str:
        return (
            f"{self.scope.name.lower()} {self.proto_name} {self.saddr}:{self.sport} > "
            f"{self.daddr}:{self.dport} pkts={self.packets_fwd}/{self.packets_rev}"
            f"{' reply' if self.reply_seen else ''}{' closing' if self.closing else ''}"
        )


def decode(keys: np.ndarray, values: np.ndarray) -> list[Connection]:
    return [
        Connection(
            scope=Direction(int(k["scope"])),
            proto=int(k["proto"]),
            saddr=ip_of(k["saddr"]),
            daddr=ip_of(k["daddr"]),
            sport=socket.ntohs(int(k["sport"])),
            dport=socket.ntohs(int(k["dport"])),
            **{name: int(v[name]) for name, *_ in CtEntry._fields_ if name != "pad"},
        )
        for k, v in zip(keys, values, strict=True)
    ]


def expired(values: np.ndarray, now_ns: int) -> np.ndarray:
    """Which entries are past their lifetime at `now_ns` (CLOCK_MONOTONIC ns)."""
    return values["expires_ns"] <= np.uint64(now_ns)


class CtMap(ExpiringMap[Connection]):
    key_dtype = KEY_DTYPE
    entry_dtype = ENTRY_DTYPE
    decode = staticmethod(decode)

    def expired(self, values: np.ndarray, now_ns: int) -> np.ndarray:
        return expired(values, now_ns)  # the datapath counts expires_ns == now as expired


class KernelCtMap(KernelBacked, CtMap):
    """The pinned ct map."""


class FakeCtMap(DictBacked, CtMap):
    """A dict-backed ct for tests without a kernel."""
