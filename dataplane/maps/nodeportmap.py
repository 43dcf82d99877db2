"""The NodePort and LoadBalancer frontends (probes/nodeport.c `np_services`), seen from Python.

    np_services {addr, port, proto, slot} -> slot 0: {count, service id, flags, affinity timeout};
                slot i in 1..count: backend i {ip, port, remote flag}

Ports and addresses are network order in keys and values, as in the packet. A NodePort frontend
has addr 0 and matches this node's IP only (the program compares the destination with
np_config.node_ip); a LoadBalancer frontend has its address (which the fabric routes to the nodes).

`NodePortMaps` owns the Python side: service ids (stable across updates, adopted from the pinned
map on restart), and each Maglev service's table in np_maglev (dataplane.maps.maglevmap), rebuilt
only when that service's backends change. Write order, so a packet racing an update never picks a
slot that points nowhere: backend slots 1..n, then the Maglev table, then the head (slot 0, with
the new count), then slots beyond the new count, then a table no longer wanted. Established
connections are never touched: np_ct remembers their backend.
"""

from __future__ import annotations

import ctypes as ct
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from dataplane.maps.bpfmap import MapError
from dataplane.maps.lbmap import FakeTable, Proto, Table, _proto, validate_frontend
from dataplane.maps.maglevmap import LAYOUT as MAGLEV_LAYOUT
from dataplane.maps.maglevmap import MAGLEV_MAP, TABLE_SIZE, MaglevMap
from dataplane.maps.netorder import ip_of, u32_of
from dataplane.services import maglev

SERVICES_MAP = "np_services"
SVC_F_LOCAL = 0x1
SVC_F_MAGLEV = 0x2
SVC_F_AFFINITY = 0x4
BE_F_REMOTE = 0x1
MAX_SERVICE_ID = 0xFFFFFFFF


class NpSvcKey(ct.Structure):
    """struct np_svc_key."""

    _fields_ = (
        ("addr", ct.c_uint32),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("slot", ct.c_uint16),
        ("pad2", ct.c_uint16),
    )


class NpSvcValue(ct.Structure):
    """struct np_svc_value."""

    _fields_ = (
        ("ip", ct.c_uint32),
        ("port", ct.c_uint16),
        ("count", ct.c_uint16),
        ("id", ct.c_uint32),
        ("affinity_timeout", ct.c_uint32),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    )


LAYOUT: tuple[type, type] = (NpSvcKey, NpSvcValue)


@dataclass(frozen=True, order=True)
class NodePortBackend:
    ip: IPv4Address
    port: int
    remote: bool = False  # on another node: reached with SNAT to this node's IP

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", IPv4Address(self.ip))

    @property
    def name(self) -> str:
        """The Maglev name (as dataplane.services.plan.Backend.name)."""
        return f"{self.ip}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name}{' (remote)' if self.remote else ''}"


NODE_ADDRESS = IPv4Address(0)  # a frontend at this node's own IP: a NodePort

Frontend = tuple[IPv4Address, int, Proto]


@dataclass(frozen=True)
class NodePortService:
    """One frontend on the uplink and the backends it may use: a NodePort (nodePort/proto at
    this node's IP, `address` NODE_ADDRESS) or a LoadBalancer address (port/proto at `address`)."""

    port: int
    proto: Proto
    backends: tuple[NodePortBackend, ...] = ()
    local: bool = False  # externalTrafficPolicy Local (backends are already only local ones)
    maglev: bool = False
    affinity_timeout: int | None = None  # seconds of ClientIP affinity; None: none
    address: IPv4Address = NODE_ADDRESS

    def __post_init__(self) -> None:
        object.__setattr__(self, "proto", _proto(self.proto))
        object.__setattr__(self, "backends", tuple(self.backends))
        object.__setattr__(self, "address", IPv4Address(self.address))

    @property
    def frontend(self) -> Frontend:
        return (self.address, self.port, self.proto)

    def __str__(self) -> str:
        if self.address == NODE_ADDRESS:
            return f"NodePort {self.port}/{self.proto.name}"
        return f"LoadBalancer {self.address}:{self.port}/{self.proto.name}"


def validate(svc: NodePortService) -> None:
    """Raise MapError naming the field the maps cannot hold."""
    where = str(svc)
    validate_frontend(where, svc.port, svc.affinity_timeout, svc.backends)
    if svc.maglev and len(svc.backends) > TABLE_SIZE:
        raise MapError(f"{where} backends: more than the Maglev table's {TABLE_SIZE} slots")


def svc_key(address: IPv4Address, port: int, proto: Proto, slot: int = 0) -> NpSvcKey:
    return NpSvcKey(addr=u32_of(address), port=socket.htons(port), proto=int(proto), slot=slot)


@dataclass(frozen=True)
class NodePortEntry:
    service: NodePortService
    id: int


@dataclass
class _State:
    entries: dict[Frontend, NodePortEntry] = field(default_factory=dict)
    ids: set[int] = field(default_factory=set)


class NodePortMaps:
    """NodePort frontends in np_services (+ np_maglev). One writer: the agent's service sync."""

    def __init__(self, services: Table, maglev_table: Table) -> None:
        self._svc = services
        self.maglev = MaglevMap(maglev_table)
        self._s = _State()
        self._slot_count = 0
        self._next_id = 1
        self.maglev_builds = 0  # tables computed and written (tests: only on backend changes)
        self.repaired = self._adopt()

    # -- reading --

    def entries(self) -> list[NodePortEntry]:
        return [self._s.entries[k] for k in sorted(self._s.entries)]

    def services(self) -> list[NodePortService]:
        return [e.service for e in self.entries()]

    def lookup(
        self, port: int, proto: Proto | int | str, address: IPv4Address | str = NODE_ADDRESS
    ) -> NodePortEntry | None:
        return self._s.entries.get((IPv4Address(address), port, _proto(proto)))

    def usage(self) -> dict[str, tuple[int, int]]:
        maglev_n = sum(1 for e in self._s.entries.values() if e.service.maglev)
        return {
            SERVICES_MAP: (self._slot_count, self._svc.max_entries),
            MAGLEV_MAP: (maglev_n, self.maglev.table.max_entries),
        }

    # -- writing --

    def upsert(self, svc: NodePortService) -> NodePortEntry:
        validate(svc)
        fe = svc.frontend
        old = self._s.entries.get(fe)
        old_n = len(old.service.backends) if old else 0
        grow = len(svc.backends) - old_n + (0 if old else 1)
        if self._slot_count + max(grow, 0) > self._svc.max_entries:
            raise self._svc.full()
        sid = old.id if old else self._alloc_id()
        for slot, b in enumerate(svc.backends, start=1):
            self._svc.put(
                svc_key(*svc.frontend, slot),
                NpSvcValue(
                    ip=u32_of(b.ip),
                    port=socket.htons(b.port),
                    flags=BE_F_REMOTE if b.remote else 0,
                ),
            )
        rebuild = (
            svc.maglev
            and svc.backends
            and (old is None or not old.service.maglev or old.service.backends != svc.backends)
        )
        if rebuild:
            self.maglev.put(sid, maglev.lookup_table([b.name for b in svc.backends]))
            self.maglev_builds += 1
        self._svc.put(svc_key(*svc.frontend, 0), self._head(svc, sid))
        for slot in range(len(svc.backends) + 1, old_n + 1):
            self._svc.delete(svc_key(*svc.frontend, slot))
        if old is not None and old.service.maglev and (not svc.maglev or not svc.backends):
            self.maglev.delete(sid)
        self._slot_count += grow
        entry = NodePortEntry(svc, sid)
        self._s.entries[fe] = entry
        self._s.ids.add(sid)
        return entry

    def delete(
        self, port: int, proto: Proto | int | str, address: IPv4Address | str = NODE_ADDRESS
    ) -> bool:
        fe = (IPv4Address(address), port, _proto(proto))
        old = self._s.entries.pop(fe, None)
        if old is None:
            return False
        self._svc.delete(svc_key(*fe, 0))  # first: the frontend vanishes at once
        for slot in range(1, len(old.service.backends) + 1):
            self._svc.delete(svc_key(*fe, slot))
        if old.service.maglev:
            self.maglev.delete(old.id)
        self._slot_count -= 1 + len(old.service.backends)
        self._s.ids.discard(old.id)
        return True

    def sync(self, services: Iterable[NodePortService]) -> tuple[int, int]:
        """Make the maps hold exactly `services`; returns (upserted, deleted)."""
        want = {s.frontend: s for s in services}
        for s in want.values():
            validate(s)
        gone = [fe for fe in self._s.entries if fe not in want]
        deleted = sum(self.delete(port, proto, address) for address, port, proto in gone)
        upserted = 0
        for fe, s in want.items():
            cur = self._s.entries.get(fe)
            if cur is None or cur.service != s:
                self.upsert(s)
                upserted += 1
        return upserted, deleted

    # -- internals --

    @staticmethod
    def _head(svc: NodePortService, sid: int) -> NpSvcValue:
        flags = (
            (SVC_F_LOCAL if svc.local else 0)
            | (SVC_F_MAGLEV if svc.maglev else 0)
            | (SVC_F_AFFINITY if svc.affinity_timeout is not None else 0)
        )
        return NpSvcValue(
            count=len(svc.backends),
            id=sid,
            flags=flags,
            affinity_timeout=svc.affinity_timeout or 0,
        )

    def _alloc_id(self) -> int:
        # ids run up before reuse, so a stale affinity or conntrack entry rarely names a new one
        while True:
            sid = self._next_id
            self._next_id = sid % MAX_SERVICE_ID + 1
            if sid not in self._s.ids:
                return sid

    def _adopt(self) -> int:
        """Rebuild the Python state from the maps (agent restart); delete what nothing reaches."""
        repaired = 0
        heads: dict[Frontend, NpSvcValue] = {}
        slots: dict[Frontend, dict[int, NpSvcValue]] = {}
        for k, v in self._svc.items():
            fe = (ip_of(k.addr), socket.ntohs(k.port), Proto(k.proto))
            if k.slot == 0:
                heads[fe] = v
            else:
                slots.setdefault(fe, {})[int(k.slot)] = v
        for fe, head in heads.items():
            got = slots.pop(fe, {})
            for slot in [s for s in got if s > head.count]:
                repaired += self._svc.delete(svc_key(*fe, slot))
            backends = tuple(
                NodePortBackend(
                    ip_of(got[i].ip), socket.ntohs(got[i].port), bool(got[i].flags & BE_F_REMOTE)
                )
                for i in range(1, head.count + 1)
                if i in got
            )
            svc = NodePortService(
                fe[1],
                fe[2],
                backends,
                local=bool(head.flags & SVC_F_LOCAL),
                maglev=bool(head.flags & SVC_F_MAGLEV),
                affinity_timeout=head.affinity_timeout if head.flags & SVC_F_AFFINITY else None,
                address=fe[0],
            )
            self._s.entries[fe] = NodePortEntry(svc, int(head.id))
            self._s.ids.add(int(head.id))
            self._slot_count += 1 + head.count
        for fe, got in slots.items():
            for slot in got:
                repaired += self._svc.delete(svc_key(*fe, slot))
        maglev_ids = {e.id for e in self._s.entries.values() if e.service.maglev}
        for sid in self.maglev.ids() - maglev_ids:
            repaired += self.maglev.delete(sid)
        if self._s.ids:
            self._next_id = max(self._s.ids) % MAX_SERVICE_ID + 1
        return repaired


class FakeNodePortMaps(NodePortMaps):
    """Dict-backed maps with the kernel maps' layouts and capacity limits."""

    def __init__(
        self, *, services: int = 65536, maglev: int = 1024, tables: list[FakeTable] | None = None
    ) -> None:
        if tables is None:
            tables = [
                FakeTable(SERVICES_MAP, *LAYOUT, services),
                FakeTable(MAGLEV_MAP, *MAGLEV_LAYOUT, maglev),
            ]
        self.tables = tables
        super().__init__(*tables)
