"""The connection tracking table (probes/datapath.c `ct`), seen from Python.

An LRU hash: key struct ct_key {saddr, daddr, sport, dport, proto, scope} as the connection's
first packet carried it (network order); `scope` is the direction of the endpoint decision that
made the entry (Direction.EGRESS: the endpoint opened it, INGRESS: the endpoint accepted it), so
for two pods on one node each side's decision has an entry of its own, as Cilium's
TUPLE_F_OUT/TUPLE_F_IN do. Value struct ct_entry: expiry, creation time, packets and bytes per
direction, TCP flags seen per direction, flags (reply seen, closing, audit), the cookie of the
policy entry that allowed it and the peer's identity.

The kernel treats entries past expires_ns as missing (the next packet is decided again); gc()
deletes them. Like natmap.py: KernelCtMap over the pinned map and FakeCtMap for pure tests.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from dataplane.maps.bpfmap import BpfMap
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


class CtMap(ABC):
    @abstractmethod
    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        """All (keys, values) as structured arrays of KEY_DTYPE and ENTRY_DTYPE."""

    @abstractmethod
    def delete_keys(self, keys: np.ndarray) -> int: ...

    @abstractmethod
    def put(self, key: CtKey, entry: CtEntry) -> None:
        """Write one entry (tests, migrations)."""

    def entries(self) -> list[Connection]:
        return decode(*self.dump())

    def count(self) -> int:
        return len(self.dump()[0])

    def gc(self, now_ns: int | None = None) -> int:
        """Delete every entry past its lifetime; returns how many. Call it every few seconds:
        the kernel already ignores expired entries, this only frees their slots early."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        keys, values = self.dump()
        dead = keys[expired(values, now)]
        return self.delete_keys(dead) if len(dead) else 0

    def flush(self) -> int:
        keys, _ = self.dump()
        return self.delete_keys(keys) if len(keys) else 0


class KernelCtMap(CtMap):
    def __init__(self, bpfmap: BpfMap) -> None:
        self.map = bpfmap

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        return self.map.dump()

    def delete_keys(self, keys: np.ndarray) -> int:
        return self.map.delete_many(keys)

    def put(self, key: CtKey, entry: CtEntry) -> None:
        self.map.update(key, entry)


class FakeCtMap(CtMap):
    def __init__(self) -> None:
        self._entries: dict[bytes, bytes] = {}

    def put(self, key: CtKey, entry: CtEntry) -> None:
        self._entries[bytes(key)] = bytes(entry)

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.frombuffer(b"".join(self._entries), dtype=KEY_DTYPE).copy()
        values = np.frombuffer(b"".join(self._entries.values()), dtype=ENTRY_DTYPE).copy()
        return keys, values

    def delete_keys(self, keys: np.ndarray) -> int:
        deleted = 0
        for raw in (k.tobytes() for k in keys):
            if self._entries.pop(raw, None) is not None:
                deleted += 1
        return deleted
