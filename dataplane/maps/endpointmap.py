"""The endpoints map (probes/datapath.c `endpoints`): which pod a host-side veth belongs to.

Key: the host-side veth's ifindex (u32), the interface the datapath's programs see a packet on.
Value: struct endpoint_info {endpoint id, identity, IPv4 (network order), flags}. The endpoint id
is the host ifindex too (it keys the per-endpoint policy map), so an endpoint is named by one
number everywhere. A packet on an interface with no entry is dropped, never allowed.

Like dataplane/maps/natmap.py: ctypes mirrors (checked against bcc by tests/maps), a decoded
entry type, and one interface with a kernel and a dict-backed implementation.
"""

from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass

from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.maps.netorder import ip_of, u32_of
from probes.bpfloader import Migration

MAP_NAME = "endpoints"
EP_F_AUDIT = 0x1  # policy audit mode: would-be drops pass with verdict AUDIT

# Older layouts this module can carry forward (none yet: this is the first one).
MIGRATION = Migration()


class EndpointInfo(ct.Structure):
    """struct endpoint_info."""

    _fields_ = (
        ("endpoint_id", ct.c_uint32),
        ("identity", ct.c_uint32),
        ("ipv4", ct.c_uint32),  # network order
        ("flags", ct.c_uint32),
    )


EndpointKey = ct.c_uint32


@dataclass(frozen=True)
class Endpoint:
    """One local endpoint as the datapath knows it."""

    ifindex: int  # the host-side veth
    identity: int
    ipv4: ipaddress.IPv4Address
    audit: bool = False

    @property
    def endpoint_id(self) -> int:
        return self.ifindex

    def to_struct(self) -> EndpointInfo:
        return EndpointInfo(
            endpoint_id=self.ifindex,
            identity=self.identity,
            ipv4=u32_of(self.ipv4),
            flags=EP_F_AUDIT if self.audit else 0,
        )

    @classmethod
    def from_struct(cls, ifindex: int, v: EndpointInfo) -> Endpoint:
        return cls(int(ifindex), int(v.identity), ip_of(v.ipv4), bool(v.flags & EP_F_AUDIT))


def validate(ep: Endpoint) -> None:
    if not 0 < ep.ifindex < 2**32:
        raise MapError(f"endpoint ifindex: {ep.ifindex} is not an interface index")
    if not 0 <= ep.identity < 2**32:
        raise MapError(f"endpoint identity: {ep.identity} does not fit in 32 bits")


class EndpointMap(ABC):
    @abstractmethod
    def upsert(self, ep: Endpoint) -> None:
        """Add or replace the endpoint (one map update: the programs see old or new)."""

    @abstractmethod
    def delete(self, ifindex: int) -> bool: ...

    @abstractmethod
    def get(self, ifindex: int) -> Endpoint | None: ...

    @abstractmethod
    def entries(self) -> list[Endpoint]: ...


class KernelEndpointMap(EndpointMap):
    def __init__(self, bpfmap: BpfMap, max_entries: int) -> None:
        self.map = bpfmap
        self.max_entries = max_entries

    def upsert(self, ep: Endpoint) -> None:
        validate(ep)
        try:
            self.map.update(EndpointKey(ep.ifindex), ep.to_struct())
        except OSError as e:
            if e.errno == errno.E2BIG:
                raise MapError(
                    f"map {MAP_NAME} is full ({self.max_entries} endpoints): "
                    f"cannot add endpoint {ep.ifindex}",
                    hint="raise max_endpoints in Datapath.load (the agent's --max-endpoints)",
                ) from e
            raise

    def delete(self, ifindex: int) -> bool:
        return self.map.delete(EndpointKey(ifindex))

    def get(self, ifindex: int) -> Endpoint | None:
        v = self.map.lookup(EndpointKey(ifindex))
        return Endpoint.from_struct(ifindex, v) if v is not None else None

    def entries(self) -> list[Endpoint]:
        keys, values = self.map.dump()
        found = [
            Endpoint.from_struct(int(k), EndpointInfo.from_buffer_copy(v.tobytes()))
            for k, v in zip(keys, values, strict=True)
        ]
        return sorted(found, key=lambda e: e.ifindex)


class FakeEndpointMap(EndpointMap):
    """Dict-backed, with the kernel map's capacity limit."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._entries: dict[int, Endpoint] = {}
        self.max_entries = max_entries

    def upsert(self, ep: Endpoint) -> None:
        validate(ep)
        if ep.ifindex not in self._entries and len(self._entries) >= self.max_entries:
            raise MapError(
                f"map {MAP_NAME} is full ({self.max_entries} endpoints): "
                f"cannot add endpoint {ep.ifindex}",
                hint="raise max_endpoints in Datapath.load (the agent's --max-endpoints)",
            )
        self._entries[ep.ifindex] = ep

    def delete(self, ifindex: int) -> bool:
        return self._entries.pop(ifindex, None) is not None

    def get(self, ifindex: int) -> Endpoint | None:
        return self._entries.get(ifindex)

    def entries(self) -> list[Endpoint]:
        return sorted(self._entries.values(), key=lambda e: e.ifindex)
