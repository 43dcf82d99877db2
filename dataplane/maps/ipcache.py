"""The ipcache map (probes/datapath.c `ipcache`): the identity of every address the node knows.

An LPM trie keyed by {prefixlen, IPv4 (network order)}; value struct ipcache_info {identity,
cidr_identity, node_ip, flags}. The datapath looks up a peer's address with prefixlen 32 and
gets the longest prefix covering it; a miss means Reserved.WORLD. `cidr_identity` is the identity
of the longest ipBlock prefix covering the entry (0 when none), so one lookup serves both the
peer's own identity and the CIDR identity ipBlock rules select (see dataplane/identity).

KernelIPCacheMap over the pinned map, FakeIPCacheMap (dict + longest-prefix match in Python)
for tests without a kernel. Writers get a MapError naming the map when it is full.
"""

from __future__ import annotations

import ctypes as ct
import errno
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.maps.netorder import ip_of, u32_of
from probes.bpfloader import Migration

MAP_NAME = "ipcache"
MIGRATION = Migration()  # older layouts carried forward: none yet


class IPCacheKey(ct.Structure):
    """struct ipcache_key: an LPM trie key (prefixlen, then the address bytes in order)."""

    _fields_ = (("prefixlen", ct.c_uint32), ("addr", ct.c_uint32))


class IPCacheInfo(ct.Structure):
    """struct ipcache_info."""

    _fields_ = (
        ("identity", ct.c_uint32),
        ("cidr_identity", ct.c_uint32),
        ("node_ip", ct.c_uint32),  # network order; 0: not in the cluster
        ("flags", ct.c_uint32),
    )


@dataclass(frozen=True)
class IPCacheValue:
    identity: int
    cidr_identity: int = 0
    node_ip: IPv4Address | None = None
    flags: int = 0

    def to_struct(self) -> IPCacheInfo:
        return IPCacheInfo(
            identity=self.identity,
            cidr_identity=self.cidr_identity,
            node_ip=u32_of(self.node_ip) if self.node_ip is not None else 0,
            flags=self.flags,
        )

    @classmethod
    def from_struct(cls, v: IPCacheInfo) -> IPCacheValue:
        return cls(
            identity=int(v.identity),
            cidr_identity=int(v.cidr_identity),
            node_ip=ip_of(v.node_ip) if v.node_ip else None,
            flags=int(v.flags),
        )


class EntryLike(Protocol):
    """What apply()/sync() accept: IPCacheValue, or the identity package's plan entries."""

    @property
    def identity(self) -> int: ...
    @property
    def cidr_identity(self) -> int: ...
    @property
    def node_ip(self) -> IPv4Address | None: ...


def _net(prefix: IPv4Network | str) -> IPv4Network:
    try:
        return IPv4Network(prefix)
    except ValueError as e:
        raise MapError(f"ipcache prefix {prefix!r}: {e}") from e


def make_key(prefix: IPv4Network | str) -> IPCacheKey:
    """The trie key of a prefix (host bits cleared)."""
    net = IPv4Network(prefix, strict=False)
    return IPCacheKey(prefixlen=net.prefixlen, addr=u32_of(net.network_address))


def _value(entry: EntryLike) -> IPCacheValue:
    if isinstance(entry, IPCacheValue):
        return entry
    return IPCacheValue(
        identity=int(entry.identity),
        cidr_identity=int(entry.cidr_identity),
        node_ip=IPv4Address(entry.node_ip) if entry.node_ip is not None else None,
    )


def _check(prefix: IPv4Network, value: IPCacheValue) -> None:
    for name in ("identity", "cidr_identity", "flags"):
        v = getattr(value, name)
        if not 0 <= v < 2**32:
            raise MapError(f"ipcache {prefix}: {name} {v} does not fit in 32 bits")


def _full(max_entries: int, prefix: IPv4Network) -> MapError:
    return MapError(
        f"map {MAP_NAME} is full ({max_entries} prefixes): cannot add {prefix}",
        hint="raise ipcache_entries in Datapath.load (the agent's --ipcache-entries)",
    )


class IPCacheMap(ABC):
    @abstractmethod
    def upsert(self, prefix: IPv4Network | str, value: IPCacheValue) -> None: ...

    @abstractmethod
    def delete(self, prefix: IPv4Network | str) -> bool: ...

    @abstractmethod
    def get(self, prefix: IPv4Network | str) -> IPCacheValue | None:
        """The entry for exactly this prefix."""

    @abstractmethod
    def lookup(self, addr: IPv4Address | str) -> IPCacheValue | None:
        """What the datapath finds for an address: the longest prefix covering it."""

    @abstractmethod
    def entries(self) -> dict[IPv4Network, IPCacheValue]: ...

    def apply(
        self,
        upserts: Mapping[IPv4Network, EntryLike],
        deletes: Iterable[IPv4Network] = (),
    ) -> None:
        """Write `upserts`, then delete `deletes`: an address moving between entries never
        falls through to a less specific one (or to WORLD) in between."""
        for prefix, entry in upserts.items():
            self.upsert(prefix, _value(entry))
        for prefix in deletes:
            self.delete(prefix)

    def sync(self, desired: Mapping[IPv4Network, EntryLike]) -> tuple[int, int]:
        """Make the map hold exactly `desired`; returns (entries written, entries deleted)."""
        want = {_net(p): _value(e) for p, e in desired.items()}
        have = self.entries()
        upserts = {p: v for p, v in want.items() if have.get(p) != v}
        deletes = [p for p in have if p not in want]
        self.apply(upserts, deletes)
        return len(upserts), len(deletes)


class KernelIPCacheMap(IPCacheMap):
    def __init__(self, bpfmap: BpfMap, max_entries: int) -> None:
        self.map = bpfmap
        self.max_entries = max_entries

    def upsert(self, prefix: IPv4Network | str, value: IPCacheValue) -> None:
        net = _net(prefix)
        _check(net, value)
        try:
            self.map.update(make_key(net), value.to_struct())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.E2BIG):
                raise _full(self.max_entries, net) from e
            raise

    def delete(self, prefix: IPv4Network | str) -> bool:
        return self.map.delete(make_key(_net(prefix)))

    def get(self, prefix: IPv4Network | str) -> IPCacheValue | None:
        # An LPM lookup returns the longest match, not necessarily this prefix: check it.
        return self.entries().get(_net(prefix))

    def lookup(self, addr: IPv4Address | str) -> IPCacheValue | None:
        v = self.map.lookup(IPCacheKey(prefixlen=32, addr=u32_of(addr)))
        return IPCacheValue.from_struct(v) if v is not None else None

    def entries(self) -> dict[IPv4Network, IPCacheValue]:
        out = {}
        for key in self.map.keys():  # noqa: SIM118  (LPM tries have no batch lookup)
            v = self.map.lookup(key)
            if v is not None:
                net = IPv4Network(f"{ip_of(key.addr)}/{key.prefixlen}", strict=False)
                out[net] = IPCacheValue.from_struct(v)
        return out


class FakeIPCacheMap(IPCacheMap):
    def __init__(self, max_entries: int = 65536) -> None:
        self._entries: dict[IPv4Network, IPCacheValue] = {}
        self.max_entries = max_entries

    def upsert(self, prefix: IPv4Network | str, value: IPCacheValue) -> None:
        net = _net(prefix)
        _check(net, value)
        if net not in self._entries and len(self._entries) >= self.max_entries:
            raise _full(self.max_entries, net)
        self._entries[net] = value

    def delete(self, prefix: IPv4Network | str) -> bool:
        return self._entries.pop(_net(prefix), None) is not None

    def get(self, prefix: IPv4Network | str) -> IPCacheValue | None:
        return self._entries.get(_net(prefix))

    def lookup(self, addr: IPv4Address | str) -> IPCacheValue | None:
        a = IPv4Address(addr)
        hits = [net for net in self._entries if a in net]
        return self._entries[max(hits, key=lambda n: n.prefixlen)] if hits else None

    def entries(self) -> dict[IPv4Network, IPCacheValue]:
        return dict(self._entries)
