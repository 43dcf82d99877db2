"""The service load-balancing maps (probes/socklb.c), seen from Python: one owner for their layouts.

    lb_services  {vip, dport, slot, proto, scope} -> slot 0: the service (count, flags, affinity
                 timeout, reverse-NAT id); slot i in 1..count: the id of its i-th backend
    lb_backends  backend id -> {ip, port, proto}
    lb_revnat    reverse-NAT id -> {vip, port, proto}: what a translated socket reports
    lb_affinity  LRU {client, reverse-NAT id, kind} -> {last used, backend id}
    lb_sock_revnat  LRU {socket cookie, backend ip, backend port} -> {vip, port, reverse-NAT id}
                 (written by the programs only; decoded here for inspection)

Addresses and ports are network order in every key and value, as struct bpf_sock_addr has them.

`LBMaps` keeps the Python side (which ids are in use, which backends each service references)
over a table store: `KernelLBMaps` over the pinned maps, `FakeLBMaps` over dicts with the same
capacity limits, for pure tests. Building a KernelLBMaps reads the pinned maps back, so a restarted
agent adopts the services, backend ids and reverse-NAT ids already programmed (and drops what no
service references: the debris of an update a crash interrupted).

Write order, so that a connect racing an update never picks a slot that points nowhere: the
reverse-NAT entry and new backends first, then backend slots 1..n, then the service entry (slot 0)
with the new count, then slots beyond the new count, then backends nothing references any more.
Established connections are never touched (they were translated at connect time); a removed
backend is just not picked again, and affinity entries that pointed at it are deleted.
"""

from __future__ import annotations

import ctypes as ct
import enum
import errno
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.maps.netorder import ip_of, u32_of

SERVICES_MAP = "lb_services"
BACKENDS_MAP = "lb_backends"
REVNAT_MAP = "lb_revnat"
AFFINITY_MAP = "lb_affinity"
SOCK_REVNAT_MAP = "lb_sock_revnat"

SVC_F_AFFINITY = 0x1
AFF_NETNS_COOKIE = 0
AFF_CLIENT_IP = 1
MAX_SLOTS = 0xFFFF  # slot numbers are u16; slot 0 is the service itself
MAX_REVNAT_ID = 0xFFFF
MAX_BACKEND_ID = 0xFFFFFFFF
MAX_AFFINITY_TIMEOUT = 86400  # Kubernetes: 0 < clientIP.timeoutSeconds <= 1 day


class Proto(enum.IntEnum):
    TCP = socket.IPPROTO_TCP
    UDP = socket.IPPROTO_UDP


class SvcKey(ct.Structure):
    """struct lb_svc_key."""

    _fields_ = (
        ("vip", ct.c_uint32),
        ("dport", ct.c_uint16),
        ("slot", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("scope", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    )


class SvcValue(ct.Structure):
    """struct lb_svc_value."""

    _fields_ = (
        ("backend_id", ct.c_uint32),
        ("affinity_timeout", ct.c_uint32),
        ("count", ct.c_uint16),
        ("revnat_id", ct.c_uint16),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    )


class BackendValue(ct.Structure):
    """struct lb_backend."""

    _fields_ = (
        ("ip", ct.c_uint32),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("flags", ct.c_uint8),
    )


class RevNatValue(ct.Structure):
    """struct lb_revnat."""

    _fields_ = (
        ("vip", ct.c_uint32),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
    )


class AffinityKey(ct.Structure):
    """struct lb_affinity_key."""

    _fields_ = (
        ("client", ct.c_uint64),
        ("revnat_id", ct.c_uint16),
        ("kind", ct.c_uint8),
        ("pad", ct.c_uint8 * 5),
    )


class AffinityValue(ct.Structure):
    """struct lb_affinity_value."""

    _fields_ = (
        ("last_used_ns", ct.c_uint64),
        ("backend_id", ct.c_uint32),
        ("pad", ct.c_uint32),
    )


class SockKey(ct.Structure):
    """struct lb_sock_key."""

    _fields_ = (
        ("cookie", ct.c_uint64),
        ("backend_ip", ct.c_uint32),
        ("backend_port", ct.c_uint16),
        ("pad", ct.c_uint8 * 2),
    )


class SockValue(ct.Structure):
    """struct lb_sock_value."""

    _fields_ = (
        ("vip", ct.c_uint32),
        ("vport", ct.c_uint16),
        ("revnat_id", ct.c_uint16),
    )


# map name -> (key type, value type): what the layout test checks against the compiled program
LAYOUTS: dict[str, tuple[type, type]] = {
    SERVICES_MAP: (SvcKey, SvcValue),
    BACKENDS_MAP: (ct.c_uint32, BackendValue),
    REVNAT_MAP: (ct.c_uint16, RevNatValue),
    AFFINITY_MAP: (AffinityKey, AffinityValue),
    SOCK_REVNAT_MAP: (SockKey, SockValue),
}


# -- the model --


@dataclass(frozen=True, order=True)
class Backend:
    ip: IPv4Address
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", IPv4Address(self.ip))

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, order=True)
class Frontend:
    """What a service is found by: its address, port and protocol."""

    vip: IPv4Address
    port: int
    proto: Proto

    def __post_init__(self) -> None:
        object.__setattr__(self, "vip", IPv4Address(self.vip))
        object.__setattr__(self, "proto", _proto(self.proto))

    def __str__(self) -> str:
        return f"{self.vip}:{self.port}/{self.proto.name}"


@dataclass(frozen=True)
class Service:
    """One frontend and its backends, as the maps hold it (a Kubernetes Service with several
    ports is several of these, one per port)."""

    vip: IPv4Address
    port: int
    proto: Proto
    backends: tuple[Backend, ...] = ()
    affinity_timeout: int | None = None  # seconds of ClientIP affinity; None: no affinity

    def __post_init__(self) -> None:
        object.__setattr__(self, "vip", IPv4Address(self.vip))
        object.__setattr__(self, "proto", _proto(self.proto))
        object.__setattr__(self, "backends", tuple(self.backends))

    @property
    def frontend(self) -> Frontend:
        return Frontend(self.vip, self.port, self.proto)


@dataclass(frozen=True)
class ServiceEntry:
    """A service with the ids the maps gave it."""

    service: Service
    revnat_id: int
    backend_ids: tuple[int, ...]


@dataclass(frozen=True)
class Affinity:
    """One lb_affinity entry: `client` is a netns cookie (kind AFF_NETNS_COOKIE) or an IPv4."""

    client: int
    kind: int
    revnat_id: int
    backend_id: int
    last_used_ns: int


def _proto(value: Proto | int | str) -> Proto:
    if isinstance(value, str):
        try:
            return Proto[value.upper()]
        except KeyError:
            raise MapError(f"service proto: {value!r} is not TCP or UDP") from None
    try:
        return Proto(value)
    except ValueError:
        raise MapError(f"service proto: {value!r} is not TCP (6) or UDP (17)") from None


def validate(svc: Service) -> None:
    """Raise MapError naming the field of `svc` the maps cannot hold."""
    where = f"service {svc.frontend}"
    if svc.vip.is_unspecified:
        raise MapError(f"{where} vip: 0.0.0.0 cannot be a service address")
    validate_frontend(where, svc.port, svc.affinity_timeout, svc.backends)


def validate_frontend(
    where: str, port: int, affinity_timeout: int | None, backends: Sequence[Any]
) -> None:
    """The checks every load-balancer frontend shares (socket LB and NodePort): its port, its
    affinity timeout, and backends (anything with `ip` and `port`) the slots can hold."""
    if not 0 < port <= 0xFFFF:
        raise MapError(f"{where} port: {port} is not in 1-65535")
    if affinity_timeout is not None and not 0 < affinity_timeout <= MAX_AFFINITY_TIMEOUT:
        raise MapError(
            f"{where} affinity_timeout: {affinity_timeout} is not in 1-{MAX_AFFINITY_TIMEOUT}"
            " seconds",
            hint="Kubernetes' default for ClientIP affinity is 10800",
        )
    if len(backends) > MAX_SLOTS:
        raise MapError(f"{where} backends: {len(backends)} is more than {MAX_SLOTS}")
    seen: set[tuple[IPv4Address, int]] = set()
    for i, b in enumerate(backends):
        if not 0 < b.port <= 0xFFFF:
            raise MapError(f"{where} backends[{i}].port: {b.port} is not in 1-65535")
        if b.ip.is_unspecified:
            raise MapError(f"{where} backends[{i}].ip: 0.0.0.0 is not a backend address")
        if (b.ip, b.port) in seen:
            raise MapError(f"{where} backends[{i}]: {b.ip}:{b.port} is listed twice")
        seen.add((b.ip, b.port))


def svc_key(fe: Frontend, slot: int = 0) -> SvcKey:
    return SvcKey(vip=u32_of(fe.vip), dport=socket.htons(fe.port), slot=slot, proto=int(fe.proto))


def frontend_of(key: SvcKey) -> Frontend:
    return Frontend(ip_of(key.vip), socket.ntohs(key.dport), Proto(key.proto))


# -- table stores --


class Table(ABC):
    """One map as the control plane uses it: ctypes keys and values."""

    def __init__(self, name: str, key_type: type, value_type: type, max_entries: int) -> None:
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.max_entries = max_entries

    @abstractmethod
    def get(self, key): ...

    @abstractmethod
    def put(self, key, value) -> None: ...

    @abstractmethod
    def delete(self, key) -> bool: ...

    @abstractmethod
    def items(self) -> Iterator[tuple]: ...

    def full(self) -> MapError:
        return MapError(
            f"map {self.name} is full ({self.max_entries} entries)",
            hint="raise its size in SocketLB.load (the agent's service map sizes)",
        )


class KernelTable(Table):
    def __init__(self, bpfmap: BpfMap, max_entries: int) -> None:
        super().__init__(bpfmap.name, bpfmap.key_type, bpfmap.value_type, max_entries)
        self.map = bpfmap

    def get(self, key):
        return self.map.lookup(key)

    def put(self, key, value) -> None:
        try:
            self.map.update(key, value)
        except OSError as e:
            if e.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
                raise self.full() from e
            raise

    def delete(self, key) -> bool:
        return self.map.delete(key)

    def items(self) -> Iterator[tuple]:
        keys, values = self.map.dump()
        for k, v in zip(keys, values, strict=True):
            yield (
                self.key_type.from_buffer_copy(k.tobytes()),
                self.value_type.from_buffer_copy(v.tobytes()),
            )


class FakeTable(Table):
    def __init__(self, name: str, key_type: type, value_type: type, max_entries: int) -> None:
        super().__init__(name, key_type, value_type, max_entries)
        self.data: dict[bytes, bytes] = {}

    def get(self, key):
        raw = self.data.get(bytes(key))
        return None if raw is None else self.value_type.from_buffer_copy(raw)

    def put(self, key, value) -> None:
        raw = bytes(key)
        if raw not in self.data and len(self.data) >= self.max_entries:
            raise self.full()
        self.data[raw] = bytes(value)

    def delete(self, key) -> bool:
        return self.data.pop(bytes(key), None) is not None

    def items(self) -> Iterator[tuple]:
        for k, v in list(self.data.items()):
            yield self.key_type.from_buffer_copy(k), self.value_type.from_buffer_copy(v)


@dataclass
class _State:
    frontends: dict[Frontend, ServiceEntry] = field(default_factory=dict)
    backend_ids: dict[tuple[Backend, Proto], int] = field(default_factory=dict)
    backends: dict[int, tuple[Backend, Proto]] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)  # backend id -> services using it
    revnat_ids: set[int] = field(default_factory=set)


class LBMaps:
    """Services in the LB maps: upsert, delete, read back. Not thread-safe: one writer (the
    agent's service reconciler)."""

    def __init__(
        self,
        services: Table,
        backends: Table,
        revnat: Table,
        affinity: Table,
        sock_revnat: Table | None = None,
    ) -> None:
        self._svc = services
        self._be = backends
        self._rev = revnat
        self._aff = affinity
        self._sock = sock_revnat
        self._s = _State()
        self._slot_count = 0  # entries in lb_services
        self._next_backend = 1
        self._next_revnat = 1
        self.repaired = self._adopt()

    # -- reading --

    def services(self) -> list[Service]:
        """Every service the maps hold, sorted by frontend."""
        return [e.service for e in self.entries()]

    def entries(self) -> list[ServiceEntry]:
        return [self._s.frontends[fe] for fe in sorted(self._s.frontends)]

    def lookup(
        self, vip: IPv4Address | str, port: int, proto: Proto | int | str
    ) -> ServiceEntry | None:
        """The service at a frontend, or None."""
        return self._s.frontends.get(Frontend(IPv4Address(vip), port, _proto(proto)))

    def backend_id(self, backend: Backend, proto: Proto | int | str) -> int | None:
        return self._s.backend_ids.get((backend, _proto(proto)))

    def affinity(self) -> list[Affinity]:
        """The affinity entries (the kernel writes them; expired ones linger until replaced)."""
        return [
            Affinity(
                int(k.client), int(k.kind), int(k.revnat_id), int(v.backend_id), int(v.last_used_ns)
            )
            for k, v in self._aff.items()
        ]

    def usage(self) -> dict[str, tuple[int, int]]:
        """Per map: (entries, capacity) of what the control plane writes."""
        return {
            SERVICES_MAP: (self._slot_count, self._svc.max_entries),
            BACKENDS_MAP: (len(self._s.backends), self._be.max_entries),
            REVNAT_MAP: (len(self._s.revnat_ids), self._rev.max_entries),
        }

    # -- writing --

    def upsert_service(self, svc: Service) -> ServiceEntry:
        """Create or replace the service at svc.frontend with exactly these backends."""
        validate(svc)
        fe = svc.frontend
        old = self._s.frontends.get(fe)
        old_ids = old.backend_ids if old else ()
        keys = [(b, fe.proto) for b in svc.backends]
        new_backends = list(dict.fromkeys(k for k in keys if k not in self._s.backend_ids))
        self._check_room(old, len(svc.backends), len(new_backends))

        revnat_id = old.revnat_id if old else self._alloc_revnat()
        if old is None:
            self._rev.put(
                ct.c_uint16(revnat_id),
                RevNatValue(vip=u32_of(fe.vip), port=socket.htons(fe.port), proto=int(fe.proto)),
            )
            self._s.revnat_ids.add(revnat_id)
        for key in new_backends:
            bid = self._alloc_backend()
            b, proto = key
            self._be.put(
                ct.c_uint32(bid),
                BackendValue(ip=u32_of(b.ip), port=socket.htons(b.port), proto=int(proto)),
            )
            self._s.backend_ids[key] = bid
            self._s.backends[bid] = key
            self._s.refs[bid] = 0
        ids = tuple(self._s.backend_ids[k] for k in keys)
        for slot, bid in enumerate(ids, start=1):
            self._svc.put(svc_key(fe, slot), SvcValue(backend_id=bid))
        self._svc.put(svc_key(fe, 0), self._service_value(svc, revnat_id))
        for slot in range(len(ids) + 1, len(old_ids) + 1):
            self._svc.delete(svc_key(fe, slot))
        self._slot_count += len(ids) - len(old_ids) + (0 if old else 1)

        entry = ServiceEntry(svc, revnat_id, ids)
        self._s.frontends[fe] = entry
        for bid in ids:
            self._s.refs[bid] += 1
        removed = set(old_ids) - set(ids)
        for bid in old_ids:
            self._release_backend(bid)
        if old is not None and old.service.affinity_timeout is not None:
            if svc.affinity_timeout is None:
                self._forget_affinity(revnat_id, None)  # switched off: forget every client
            elif removed:
                self._forget_affinity(revnat_id, removed)
        return entry

    def delete_service(self, frontend: Frontend | Service) -> bool:
        """Remove a service: new connections to its address are no longer translated."""
        fe = frontend.frontend if isinstance(frontend, Service) else frontend
        old = self._s.frontends.pop(fe, None)
        if old is None:
            return False
        self._svc.delete(svc_key(fe, 0))  # first: the service vanishes at once
        for slot in range(1, len(old.backend_ids) + 1):
            self._svc.delete(svc_key(fe, slot))
        self._slot_count -= 1 + len(old.backend_ids)
        self._rev.delete(ct.c_uint16(old.revnat_id))
        self._s.revnat_ids.discard(old.revnat_id)
        for bid in old.backend_ids:
            self._release_backend(bid)
        if old.service.affinity_timeout is not None:
            self._forget_affinity(old.revnat_id, None)
        return True

    def sync(self, services: Iterable[Service]) -> tuple[int, int]:
        """Make the maps hold exactly `services`: upsert what changed, delete the rest.
        Returns (upserted, deleted)."""
        want = {s.frontend: s for s in services}
        for s in want.values():
            validate(s)
        upserted = deleted = 0
        for fe in [fe for fe in self._s.frontends if fe not in want]:
            deleted += self.delete_service(fe)
        for fe, s in want.items():
            cur = self._s.frontends.get(fe)
            if cur is None or cur.service != s:
                self.upsert_service(s)
                upserted += 1
        return upserted, deleted

    # -- internals --

    @staticmethod
    def _service_value(svc: Service, revnat_id: int) -> SvcValue:
        return SvcValue(
            count=len(svc.backends),
            revnat_id=revnat_id,
            flags=SVC_F_AFFINITY if svc.affinity_timeout is not None else 0,
            affinity_timeout=svc.affinity_timeout or 0,
        )

    def _check_room(self, old: ServiceEntry | None, n_backends: int, n_new: int) -> None:
        """Refuse before writing anything when the maps cannot take the change."""
        grow = n_backends - (len(old.backend_ids) if old else -1)
        if self._slot_count + max(grow, 0) > self._svc.max_entries:
            raise self._svc.full()
        if len(self._s.backends) + n_new > self._be.max_entries:
            raise self._be.full()
        if old is None and len(self._s.revnat_ids) >= min(self._rev.max_entries, MAX_REVNAT_ID):
            raise self._rev.full()

    def _alloc_revnat(self) -> int:
        for _ in range(MAX_REVNAT_ID):
            rid = self._next_revnat
            self._next_revnat = rid % MAX_REVNAT_ID + 1
            if rid not in self._s.revnat_ids:
                return rid
        raise self._rev.full()

    def _alloc_backend(self) -> int:
        # ids run up before they are reused, so a stale affinity entry rarely names a new backend
        while True:
            bid = self._next_backend
            self._next_backend = bid % MAX_BACKEND_ID + 1
            if bid not in self._s.backends:
                return bid

    def _release_backend(self, bid: int) -> None:
        self._s.refs[bid] -= 1
        if self._s.refs[bid] <= 0:
            key = self._s.backends.pop(bid)
            del self._s.backend_ids[key]
            del self._s.refs[bid]
            self._be.delete(ct.c_uint32(bid))

    def _forget_affinity(self, revnat_id: int, backend_ids: set[int] | None) -> int:
        gone = 0
        for k, v in self._aff.items():
            if k.revnat_id == revnat_id and (backend_ids is None or v.backend_id in backend_ids):
                gone += self._aff.delete(k)
        return gone

    def _adopt(self) -> int:
        """Rebuild the Python state from the tables; delete entries nothing reaches.
        Returns how many entries were deleted."""
        repaired = 0
        heads: dict[Frontend, SvcValue] = {}
        slots: dict[Frontend, dict[int, int]] = {}
        for k, v in self._svc.items():
            fe = frontend_of(k)
            if k.slot == 0:
                heads[fe] = v
            else:
                slots.setdefault(fe, {})[int(k.slot)] = int(v.backend_id)
        backends: dict[int, tuple[Backend, Proto]] = {}
        for k, v in self._be.items():
            backends[int(k.value)] = (
                Backend(ip_of(v.ip), socket.ntohs(v.port)),
                Proto(v.proto),
            )
        revnat: dict[int, RevNatValue] = {int(k.value): v for k, v in self._rev.items()}
        for fe, head in heads.items():
            got = slots.pop(fe, {})
            ids = tuple(got.get(i, 0) for i in range(1, head.count + 1))
            for slot in [s for s in got if s > head.count]:
                repaired += self._svc.delete(svc_key(fe, slot))
            if any(bid not in backends for bid in ids) or head.revnat_id not in revnat:
                # interrupted half way: keep it findable with what is readable, fix on next upsert
                ids = tuple(bid for bid in ids if bid in backends)
            affinity = head.affinity_timeout if head.flags & SVC_F_AFFINITY else None
            svc = Service(fe.vip, fe.port, fe.proto, tuple(backends[b][0] for b in ids), affinity)
            self._s.frontends[fe] = ServiceEntry(svc, int(head.revnat_id), ids)
            self._slot_count += 1 + head.count
            self._s.revnat_ids.add(int(head.revnat_id))
            for bid in ids:
                self._s.refs[bid] = self._s.refs.get(bid, 0) + 1
        for fe, got in slots.items():  # slots of a service whose head is gone
            for slot in got:
                repaired += self._svc.delete(svc_key(fe, slot))
        for bid, key in backends.items():
            if bid in self._s.refs:
                self._s.backends[bid] = key
                self._s.backend_ids[key] = bid
            else:
                repaired += self._be.delete(ct.c_uint32(bid))
        for rid in revnat:
            if rid not in self._s.revnat_ids:
                repaired += self._rev.delete(ct.c_uint16(rid))
        if self._s.backends:
            self._next_backend = max(self._s.backends) % MAX_BACKEND_ID + 1
        if self._s.revnat_ids:
            self._next_revnat = max(self._s.revnat_ids) % MAX_REVNAT_ID + 1
        return repaired


class KernelLBMaps(LBMaps):
    """LBMaps over the pinned maps of a SocketLB instance (probes/socklb.py builds it)."""

    def __init__(self, maps: dict[str, tuple[int, int]]) -> None:
        """maps: map name -> (fd, max_entries) for the five LB maps."""

        def table(name: str) -> KernelTable:
            fd, size = maps[name]
            key, value = LAYOUTS[name]
            return KernelTable(BpfMap(fd, key, value, name=name), size)

        super().__init__(
            table(SERVICES_MAP),
            table(BACKENDS_MAP),
            table(REVNAT_MAP),
            table(AFFINITY_MAP),
            table(SOCK_REVNAT_MAP),
        )


class FakeLBMaps(LBMaps):
    """Dict-backed LB maps with the kernel maps' layouts and capacity limits."""

    def __init__(
        self,
        *,
        services: int = 65536,
        backends: int = 65536,
        revnat: int = 65536,
        affinity: int = 65536,
        tables: Sequence[FakeTable] | None = None,
    ) -> None:
        """tables: adopt these (a restarted agent's view of the same maps)."""
        if tables is None:
            sizes = (services, backends, revnat, affinity, 1)
            names = (SERVICES_MAP, BACKENDS_MAP, REVNAT_MAP, AFFINITY_MAP, SOCK_REVNAT_MAP)
            tables = [FakeTable(n, *LAYOUTS[n], size) for n, size in zip(names, sizes, strict=True)]
        self.tables = list(tables)
        super().__init__(*self.tables)
