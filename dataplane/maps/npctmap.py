"""The NodePort connection table (probes/nodeport.c `np_ct`), seen from Python.

Two entries per connection, like the masquerade's nat_v4:
    FWD   {client, node_ip, client_port, nodePort}      -> backend (+ SNAT node_ip:port)
    REPLY {backend, reply dst, backend_port, reply dport} -> client and node_ip:nodePort
The reply's destination is the client itself (local backend) or node_ip:snat_port (remote
backend, flag CT_F_SNAT). The kernel refreshes both halves on every packet and ignores expired
ones; `gc()` deletes entries past `expires_ns` (user space, every few seconds; the table
operations are dataplane.maps.expiring's, shared with natmap and ctmap).
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from dataclasses import dataclass

import numpy as np

from dataplane.maps.expiring import DictBacked, ExpiringMap, KernelBacked
from dataplane.maps.netorder import ip_of
from dataplane.maps.tuple4 import Tuple4Key, key_fields, tuple_key

CT_MAP = "np_ct"
DIR_FWD = 0
DIR_REPLY = 1
CT_F_SNAT = 0x1
CT_F_CLOSING = 0x2


class NpCtKey(Tuple4Key):
    """struct np_ct_key."""


class NpCtEntry(ct.Structure):
    """struct np_ct_entry."""

    _fields_ = (
        ("to_addr", ct.c_uint32),
        ("nat_addr", ct.c_uint32),
        ("to_port", ct.c_uint16),
        ("nat_port", ct.c_uint16),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
        ("svc_id", ct.c_uint32),
        ("created_ns", ct.c_uint64),
        ("expires_ns", ct.c_uint64),
    )


LAYOUT: tuple[type, type] = (NpCtKey, NpCtEntry)
KEY_DTYPE = np.dtype(NpCtKey)
ENTRY_DTYPE = np.dtype(NpCtEntry)


@dataclass(frozen=True)
class NpConnection:
    """One entry, decoded. FWD: to = backend, nat = SNAT source (0.0.0.0:0: none);
    REPLY: to = the client, nat = node_ip:nodePort."""

    direction: int
    proto: int
    saddr: ipaddress.IPv4Address
    daddr: ipaddress.IPv4Address
    sport: int
    dport: int
    to_addr: ipaddress.IPv4Address
    to_port: int
    nat_addr: ipaddress.IPv4Address
    nat_port: int
    flags: int
    svc_id: int
    expires_ns: int

    @property
    def snat(self) -> bool:
        return bool(self.flags & CT_F_SNAT)


def make_key(direction: int, proto: int, saddr: str, daddr: str, sport: int, dport: int) -> NpCtKey:
    return tuple_key(NpCtKey, direction, proto, saddr, daddr, sport, dport)


def decode(keys: np.ndarray, values: np.ndarray) -> list[NpConnection]:
    return [
        NpConnection(
            **key_fields(k),
            to_addr=ip_of(v["to_addr"]),
            to_port=socket.ntohs(int(v["to_port"])),
            nat_addr=ip_of(v["nat_addr"]),
            nat_port=socket.ntohs(int(v["nat_port"])),
            flags=int(v["flags"]),
            svc_id=int(v["svc_id"]),
            expires_ns=int(v["expires_ns"]),
        )
        for k, v in zip(keys, values, strict=True)
    ]


class NpCtMap(ExpiringMap[NpConnection]):
    key_dtype = KEY_DTYPE
    entry_dtype = ENTRY_DTYPE
    decode = staticmethod(decode)


class KernelNpCtMap(KernelBacked, NpCtMap):
    """The pinned np_ct map."""


class FakeNpCtMap(DictBacked, NpCtMap):
    """A dict-backed np_ct for tests without a kernel."""
