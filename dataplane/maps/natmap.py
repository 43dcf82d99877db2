"""The masquerade NAT table (probes/masquerade.c `nat_v4`), seen from Python.

Like Cilium's pkg/maps/ctmap: ctypes mirrors of the C key and value with the exact layout
(checked against the compiled program by tests/maps with dataplane.maps.layout), decoded entries,
and one interface (dataplane.maps.expiring, shared with ctmap and npctmap) with two
implementations: `KernelNatMap` over the pinned BPF map and `FakeNatMap`, dict-backed, for tests
that need no kernel. The kernel refreshes both halves of a mapping on every packet; `gc()` here
deletes whatever is past its `expires_ns`.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from dataclasses import dataclass

import numpy as np

from dataplane.maps.expiring import DictBacked, ExpiringMap, KernelBacked, expires_before
from dataplane.maps.netorder import ip_of, u32_of
from dataplane.maps.tuple4 import Tuple4Key, key_fields, tuple_key

NAT_DIR_OUT = 0  # pod -> outside, original tuple; value: node IP and NAT port
NAT_DIR_IN = 1  # outside -> node IP:NAT port, reply tuple; value: pod IP and port
NAT_F_CLOSING = 0x1

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_PROTO_NAMES = {IPPROTO_ICMP: "ICMP", IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP"}


class NatKey(Tuple4Key):
    """struct nat_key. Addresses and ports are in network byte order, as in the packet."""


class NatEntry(ct.Structure):
    """struct nat_entry. Times are CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns)."""

    _fields_ = (
        ("addr", ct.c_uint32),
        ("port", ct.c_uint16),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("created_ns", ct.c_uint64),
        ("expires_ns", ct.c_uint64),
    )


KEY_DTYPE = np.dtype(NatKey)
ENTRY_DTYPE = np.dtype(NatEntry)


@dataclass(frozen=True)
class NatMapping:
    """One entry of the table, decoded. `to_addr`/`to_port` are what the tuple is rewritten to:
    for OUT entries the node IP and NAT port, for IN entries the pod's address and port."""

    direction: int
    proto: int
    saddr: ipaddress.IPv4Address
    daddr: ipaddress.IPv4Address
    sport: int
    dport: int
    to_addr: ipaddress.IPv4Address
    to_port: int
    created_ns: int
    expires_ns: int
    closing: bool

    @property
    def proto_name(self) -> str:
        return _PROTO_NAMES.get(self.proto, str(self.proto))

    def key(self) -> NatKey:
        return make_key(self.direction, self.proto, self.saddr, self.daddr, self.sport, self.dport)

    def __str__(self) -> str:
        arrow = "->" if self.direction == NAT_DIR_OUT else "<-"
        return (
            f"{self.proto_name} {self.saddr}:{self.sport} > {self.daddr}:{self.dport} "
            f"{arrow} {self.to_addr}:{self.to_port}"
        )


def make_key(
    direction: int,
    proto: int,
    saddr: ipaddress.IPv4Address | str,
    daddr: ipaddress.IPv4Address | str,
    sport: int,
    dport: int,
) -> NatKey:
    """A key from host-order ports, as the C program builds it."""
    return tuple_key(NatKey, direction, proto, saddr, daddr, sport, dport)


def make_entry(
    addr: ipaddress.IPv4Address | str,
    port: int,
    *,
    created_ns: int,
    expires_ns: int,
    flags: int = 0,
) -> NatEntry:
    return NatEntry(
        addr=u32_of(addr),
        port=socket.htons(port),
        flags=flags,
        created_ns=created_ns,
        expires_ns=expires_ns,
    )


def decode(keys: np.ndarray, values: np.ndarray) -> list[NatMapping]:
    return [
        NatMapping(
            **key_fields(k),
            to_addr=ip_of(v["addr"]),
            to_port=socket.ntohs(int(v["port"])),
            created_ns=int(v["created_ns"]),
            expires_ns=int(v["expires_ns"]),
            closing=bool(v["flags"] & NAT_F_CLOSING),
        )
        for k, v in zip(keys, values, strict=True)
    ]


def expired(values: np.ndarray, now_ns: int) -> np.ndarray:
    """Which entries are past their lifetime at `now_ns` (CLOCK_MONOTONIC ns)."""
    return expires_before(values, now_ns)


class NatMap(ExpiringMap[NatMapping]):
    """The operations the agent needs on a NAT table, whatever holds it. A pair's halves carry
    the same expiry (each packet refreshes both), so gc() drops them together."""

    key_dtype = KEY_DTYPE
    entry_dtype = ENTRY_DTYPE
    decode = staticmethod(decode)


class KernelNatMap(KernelBacked, NatMap):
    """The pinned nat_v4 map."""


class FakeNatMap(DictBacked, NatMap):
    """A dict-backed NAT table with the kernel map's semantics for tests without a kernel."""
