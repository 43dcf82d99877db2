"""The IPv4 tuple key the translating programs key their connection tables by.

masquerade.c's `struct nat_key` and nodeport.c's `struct np_ct_key` are the same 16 bytes, like
Cilium's ipv4_ct_tuple shared by its CT and NAT maps: {saddr, daddr, sport, dport, proto, dir},
addresses and ports in network byte order as in the packet. Each table's module mirrors its C
struct as a subclass of `Tuple4Key` (tests/maps prove the layout against the compiled program)
and builds and decodes keys with tuple_key() and key_fields().
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import socket
from typing import Any, TypeVar

import numpy as np

from dataplane.maps.netorder import ip_of, u32_of

K = TypeVar("K", bound="Tuple4Key")


class Tuple4Key(ct.Structure):
    _fields_ = (
        ("saddr", ct.c_uint32),
        ("daddr", ct.c_uint32),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("dir", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    )


def tuple_key(
    cls: type[K],
    direction: int,
    proto: int,
    saddr: ipaddress.IPv4Address | str,
    daddr: ipaddress.IPv4Address | str,
    sport: int,
    dport: int,
) -> K:
    """A key from host-order ports, as the C programs build it."""
    return cls(
        saddr=u32_of(saddr),
        daddr=u32_of(daddr),
        sport=socket.htons(sport),
        dport=socket.htons(dport),
        proto=proto,
        dir=direction,
    )


def key_fields(k: np.void) -> dict[str, Any]:
    """One dumped key (a record of the key's dtype) as decoded fields: direction, proto, the
    addresses and the host-order ports."""
    return {
        "direction": int(k["dir"]),
        "proto": int(k["proto"]),
        "saddr": ip_of(k["saddr"]),
        "daddr": ip_of(k["daddr"]),
        "sport": socket.ntohs(int(k["sport"])),
        "dport": socket.ntohs(int(k["dport"])),
    }
