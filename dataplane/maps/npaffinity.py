"""NodePort ClientIP affinity (probes/nodeport.c `np_affinity`), seen from Python.

    np_affinity LRU {client ip, service id} -> {last used, backend slot, ip, port}

Written by the program only: a new connection from a client within the service's timeout reuses
the slot, if that slot still holds the same backend (so a changed backend list never sends a
client to a backend it was not bound to). Decoded here for inspection and tests.
"""

from __future__ import annotations

import ctypes as ct
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address

from dataplane.maps.lbmap import Table
from dataplane.maps.netorder import ip_of

AFFINITY_MAP = "np_affinity"


class NpAffinityKey(ct.Structure):
    """struct np_affinity_key."""

    _fields_ = (("client", ct.c_uint32), ("svc_id", ct.c_uint32))


class NpAffinityValue(ct.Structure):
    """struct np_affinity_value."""

    _fields_ = (
        ("last_used_ns", ct.c_uint64),
        ("ip", ct.c_uint32),
        ("port", ct.c_uint16),
        ("slot", ct.c_uint16),
    )


LAYOUT: tuple[type, type] = (NpAffinityKey, NpAffinityValue)


@dataclass(frozen=True)
class NpAffinity:
    client: IPv4Address
    svc_id: int
    backend_ip: IPv4Address
    backend_port: int
    slot: int
    last_used_ns: int


def entries(table: Table) -> list[NpAffinity]:
    return sorted(
        (
            NpAffinity(
                ip_of(k.client),
                int(k.svc_id),
                ip_of(v.ip),
                socket.ntohs(v.port),
                int(v.slot),
                int(v.last_used_ns),
            )
            for k, v in table.items()
        ),
        key=lambda a: (a.svc_id, a.client),
    )
