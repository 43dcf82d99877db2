"""The per-endpoint policy maps (probes/datapath.c `policy`), as Cilium keeps one per endpoint.

`policy` is a BPF hash of maps: endpoint id (the host ifindex) -> that endpoint's own LPM trie of
allow entries. Inner key struct policy_key {prefixlen, identity (host order), direction, protocol,
dport (network order)}; the prefix always covers identity and direction (40 bits), then the
protocol (8 bits) unless it is "any", then the port's leading prefix_len bits. Inner value struct
policy_value {cookie, flags}. The datapath asks the trie for the peer's identity, its CIDR
identity (when nonzero), then identity 0: EndpointPolicy.decide (dataplane/policy/entry.py) to
the letter, which the privileged tests check packet by packet.

set_policy() builds a complete new inner map and swaps it in with one update of the outer map,
so a program sees either the old policy or the new one, never a partial one; the kernel frees
the replaced inner map once no program uses it. Inner maps are not pinned: the pinned outer map
holds them, and a restarted agent reads them back through it (get()).

What the map stores is the policy's canonical form: entries with the same key (the same
direction, identity, protocol and port prefix) collapse to the one with the lowest cookie (the
one decide() would pick); "any protocol" entries carry port 0/0; ports are masked to their
prefix. decide() gives the same answers on both forms.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass

from dataplane.maps.bpfmap import BpfMap, MapError
from dataplane.policy.entry import (
    ANY_IDENTITY,
    ANY_PROTOCOL,
    PORT_BITS,
    Direction,
    EndpointPolicy,
    PolicyEntry,
)
from probes import libbpf
from probes.bpfloader import Migration

MAP_NAME = "policy"
INNER_TEMPLATE = "policy_inner"
STATIC_PREFIX = 40  # identity (32) + direction (8)
MAX_PREFIX = STATIC_PREFIX + 8 + PORT_BITS
MIGRATION = Migration()  # older layouts carried forward: none yet


class PolicyKey(ct.Structure):
    """struct policy_key (an LPM trie key)."""

    _fields_ = (
        ("prefixlen", ct.c_uint32),
        ("identity", ct.c_uint32),
        ("direction", ct.c_uint8),
        ("protocol", ct.c_uint8),
        ("dport", ct.c_uint16),  # network order
    )


class PolicyValue(ct.Structure):
    """struct policy_value."""

    _fields_ = (("cookie", ct.c_uint32), ("flags", ct.c_uint32))


def validate(entry: PolicyEntry) -> None:
    """Raise MapError naming the field of `entry` the map cannot hold."""
    checks = (
        ("direction", entry.direction in (Direction.INGRESS, Direction.EGRESS)),
        ("identity", 0 <= entry.identity < 2**32),
        ("protocol", 0 <= entry.protocol < 256),
        ("port", 0 <= entry.port <= 0xFFFF),
        ("prefix_len", 0 <= entry.prefix_len <= PORT_BITS),
        ("cookie", 0 <= entry.cookie < 2**32),
    )
    for name, ok in checks:
        if not ok:
            raise MapError(f"policy entry {name}: {getattr(entry, name)!r} is out of range")


def canonical(entry: PolicyEntry) -> PolicyEntry:
    """The entry as the map holds it (see the module docstring)."""
    if entry.protocol == ANY_PROTOCOL:
        return PolicyEntry(entry.direction, entry.identity, ANY_PROTOCOL, 0, 0, entry.cookie)
    mask = (0xFFFF << (PORT_BITS - entry.prefix_len)) & 0xFFFF
    return PolicyEntry(
        entry.direction,
        entry.identity,
        entry.protocol,
        entry.port & mask,
        entry.prefix_len,
        entry.cookie,
    )


def make_key(entry: PolicyEntry) -> PolicyKey:
    e = canonical(entry)
    # identity and direction always; the protocol and port bits only for a specific protocol
    prefixlen = STATIC_PREFIX if e.protocol == ANY_PROTOCOL else STATIC_PREFIX + 8 + e.prefix_len
    return PolicyKey(
        prefixlen=prefixlen,
        identity=e.identity,
        direction=int(e.direction),
        protocol=e.protocol,
        dport=socket.htons(e.port),
    )


def entry_of(key: PolicyKey, value: PolicyValue) -> PolicyEntry:
    if key.prefixlen <= STATIC_PREFIX:
        return PolicyEntry(Direction(key.direction), int(key.identity), 0, 0, 0, int(value.cookie))
    return PolicyEntry(
        Direction(key.direction),
        int(key.identity),
        int(key.protocol),
        socket.ntohs(key.dport),
        int(key.prefixlen) - STATIC_PREFIX - 8,
        int(value.cookie),
    )


def canonical_policy(policy: EndpointPolicy) -> dict[bytes, PolicyEntry]:
    """Map key bytes -> the entry stored under it (the lowest cookie wins a shared key)."""
    out: dict[bytes, PolicyEntry] = {}
    for entry in policy.entries:
        validate(entry)
        e = canonical(entry)
        raw = bytes(make_key(e))
        prev = out.get(raw)
        if prev is None or e.cookie < prev.cookie:
            out[raw] = e
    return out


@dataclass(frozen=True)
class Verdict:
    """What the endpoint's policy map says about a new connection."""

    allowed: bool
    cookie: int  # the allowing entry's cookie; 0 when denied
    no_policy: bool = False  # the endpoint has no policy map at all (the datapath drops)


def _too_big(epid: int, count: int, max_entries: int) -> MapError:
    return MapError(
        f"map {MAP_NAME}: the policy of endpoint {epid} needs {count} entries, "
        f"more than one endpoint's policy map holds ({max_entries})",
        hint="raise it for a new cluster (`flowscope lab up --policy-map-entries N`) "
        "or narrow the policies (port ranges and ipBlock excepts multiply entries)",
    )


def _outer_full(epid: int, max_endpoints: int) -> MapError:
    return MapError(
        f"map {MAP_NAME} is full ({max_endpoints} endpoints): cannot add endpoint {epid}",
        hint="raise max_endpoints in Datapath.load (the agent's --max-endpoints)",
    )


class PolicyMap(ABC):
    @abstractmethod
    def set_policy(self, endpoint_id: int, policy: EndpointPolicy) -> None:
        """Replace the endpoint's whole policy at once."""

    @abstractmethod
    def delete(self, endpoint_id: int) -> bool:
        """Remove the endpoint's policy (its traffic is then dropped: no policy map)."""

    @abstractmethod
    def get(self, endpoint_id: int) -> EndpointPolicy | None:
        """The policy as the map holds it (canonical form); None when the endpoint has none."""

    @abstractmethod
    def endpoints(self) -> list[int]: ...

    @abstractmethod
    def decide(
        self,
        endpoint_id: int,
        direction: Direction,
        identity: int,
        cidr_identity: int,
        protocol: int,
        dport: int,
    ) -> Verdict:
        """The lookup the datapath makes for a new connection, made on this map."""


class KernelPolicyMap(PolicyMap):
    """The pinned outer map; inner maps are created with the template's shape."""

    def __init__(
        self,
        outer: BpfMap,
        *,
        inner_flags: int,
        inner_entries: int,
        max_endpoints: int,
    ) -> None:
        self.map = outer
        self.inner_flags = inner_flags
        self.inner_entries = inner_entries
        self.max_endpoints = max_endpoints

    def set_policy(self, endpoint_id: int, policy: EndpointPolicy) -> None:
        entries = canonical_policy(policy)
        if len(entries) > self.inner_entries:
            raise _too_big(endpoint_id, len(entries), self.inner_entries)
        fd = libbpf.map_create(
            libbpf.BPF_MAP_TYPE_LPM_TRIE,
            f"pol_{endpoint_id}",
            ct.sizeof(PolicyKey),
            ct.sizeof(PolicyValue),
            self.inner_entries,
            self.inner_flags,
        )
        try:
            for raw, entry in entries.items():
                try:
                    libbpf.map_update(
                        fd, PolicyKey.from_buffer_copy(raw), PolicyValue(cookie=entry.cookie)
                    )
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.E2BIG):
                        raise _too_big(endpoint_id, len(entries), self.inner_entries) from e
                    raise
            try:
                # the swap: one update of the outer map publishes the complete new policy
                self.map.update(ct.c_uint32(endpoint_id), ct.c_uint32(fd))
            except OSError as e:
                if e.errno == errno.E2BIG:
                    raise _outer_full(endpoint_id, self.max_endpoints) from e
                raise
        finally:
            os.close(fd)  # the outer map holds the inner one from now on

    def delete(self, endpoint_id: int) -> bool:
        return self.map.delete(ct.c_uint32(endpoint_id))

    def _inner_fd(self, endpoint_id: int) -> int | None:
        map_id = self.map.lookup(ct.c_uint32(endpoint_id))
        if map_id is None:
            return None
        try:
            return libbpf.map_fd_by_id(map_id.value)
        except FileNotFoundError:
            return None  # replaced meanwhile and freed

    def get(self, endpoint_id: int) -> EndpointPolicy | None:
        fd = self._inner_fd(endpoint_id)
        if fd is None:
            return None
        try:
            inner = BpfMap(fd, PolicyKey, PolicyValue, name=f"pol_{endpoint_id}")
            found = []
            for key in inner.keys():  # noqa: SIM118  (a BpfMap, not a dict)
                value = inner.lookup(key)
                if value is not None:
                    found.append(entry_of(key, value))
            return EndpointPolicy(frozenset(found))
        finally:
            os.close(fd)

    def endpoints(self) -> list[int]:
        return sorted(int(k.value) for k in self.map.keys())  # noqa: SIM118

    def decide(
        self,
        endpoint_id: int,
        direction: Direction,
        identity: int,
        cidr_identity: int,
        protocol: int,
        dport: int,
    ) -> Verdict:
        fd = self._inner_fd(endpoint_id)
        if fd is None:
            return Verdict(False, 0, no_policy=True)
        try:
            key = PolicyKey(
                prefixlen=MAX_PREFIX,
                direction=int(direction),
                protocol=protocol,
                dport=socket.htons(dport),
            )
            value = PolicyValue()
            for ident in _candidates(identity, cidr_identity):
                key.identity = ident
                if libbpf.map_lookup(fd, key, value):
                    return Verdict(True, int(value.cookie))
            return Verdict(False, 0)
        finally:
            os.close(fd)


def _candidates(identity: int, cidr_identity: int) -> list[int]:
    return [identity, *([cidr_identity] if cidr_identity else []), ANY_IDENTITY]


class FakePolicyMap(PolicyMap):
    """Dict-backed, with the kernel map's canonical form and capacity limits."""

    def __init__(self, *, inner_entries: int = 16384, max_endpoints: int = 1024) -> None:
        self._policies: dict[int, EndpointPolicy] = {}
        self.inner_entries = inner_entries
        self.max_endpoints = max_endpoints

    def set_policy(self, endpoint_id: int, policy: EndpointPolicy) -> None:
        entries = canonical_policy(policy)
        if len(entries) > self.inner_entries:
            raise _too_big(endpoint_id, len(entries), self.inner_entries)
        if endpoint_id not in self._policies and len(self._policies) >= self.max_endpoints:
            raise _outer_full(endpoint_id, self.max_endpoints)
        self._policies[endpoint_id] = EndpointPolicy(frozenset(entries.values()))

    def delete(self, endpoint_id: int) -> bool:
        return self._policies.pop(endpoint_id, None) is not None

    def get(self, endpoint_id: int) -> EndpointPolicy | None:
        return self._policies.get(endpoint_id)

    def endpoints(self) -> list[int]:
        return sorted(self._policies)

    def decide(
        self,
        endpoint_id: int,
        direction: Direction,
        identity: int,
        cidr_identity: int,
        protocol: int,
        dport: int,
    ) -> Verdict:
        policy = self._policies.get(endpoint_id)
        if policy is None:
            return Verdict(False, 0, no_policy=True)
        hit = policy.decide(direction, identity, cidr_identity, protocol, dport)
        return Verdict(True, hit.cookie) if hit else Verdict(False, 0)
