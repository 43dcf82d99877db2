"""What the datapath enforces for one endpoint: allow entries, as the policy map holds them.

The kernel's decision, which `decide` below states in Python (the compiler's tests and
`policy trace` use it; a privileged test checks the kernel agrees):

    For a packet of a new connection in direction D of the local endpoint (EGRESS: the pod sends,
    INGRESS: the pod receives) with peer identity P, the peer's CIDR identity C (0 when no ipBlock
    prefix covers the peer's address), IP protocol `proto` and destination port `dport`:
    it is allowed when an entry with direction D matches with identity P, or C (when C != 0),
    or 0 ("any identity"); an entry matches when its protocol is 0 ("any protocol", and then any
    port) or equals `proto` and the first `prefix_len` bits of its port equal those of `dport`.
    Nothing matches: denied (POLICY_DENIED). There are no deny entries, so rules simply union.

A direction no policy selects the endpoint for is not "unenforced" by a flag: it holds one
allow-all entry (identity 0, protocol 0) with cookie COOKIE_NO_POLICY. So an endpoint's whole
policy is one set of entries, which the datapath swaps in atomically, and an endpoint without
any entries (unknown to the agent) is denied rather than silently allowed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

ANY_IDENTITY = 0
ANY_PROTOCOL = 0
PORT_BITS = 16

# Cookies name the rule an entry came from (policy + rule), for flows and `policy trace`.
COOKIE_NO_POLICY = 0xFFFFFFFF  # no policy selects the endpoint in this direction: allow all
COOKIE_HOST = 0xFFFFFFFE  # node-local host traffic to pods is always allowed (kubelet probes)


class Direction(enum.IntEnum):
    INGRESS = 0
    EGRESS = 1


@dataclass(frozen=True, order=True)
class PolicyEntry:
    direction: Direction
    identity: int  # 0: any identity
    protocol: int  # IPPROTO_TCP 6, UDP 17, SCTP 132; 0: any protocol (and then any port)
    port: int  # host order; only the first prefix_len bits count
    prefix_len: int  # 16: exactly `port`; 0: any port
    cookie: int  # u32 naming the rule this entry came from

    def matches(self, direction: Direction, identity: int, protocol: int, dport: int) -> bool:
        if self.direction != direction or self.identity != identity:
            return False
        if self.protocol == ANY_PROTOCOL:
            return True
        if self.protocol != protocol:
            return False
        shift = PORT_BITS - self.prefix_len
        return (self.port >> shift) == (dport >> shift)

    @property
    def specificity(self) -> int:
        """The LPM prefix this entry has beyond (direction, identity): longer wins a lookup."""
        return 0 if self.protocol == ANY_PROTOCOL else 8 + self.prefix_len


@dataclass(frozen=True)
class EndpointPolicy:
    entries: frozenset[PolicyEntry]

    def decide(
        self, direction: Direction, identity: int, cidr_identity: int, protocol: int, dport: int
    ) -> PolicyEntry | None:
        """The entry that allows this new connection, or None when it is denied.

        Lookup order, as the kernel does it: the peer's identity, its CIDR identity, then any
        identity; within one identity the longest (most specific) match wins."""
        candidates = [identity]
        if cidr_identity:
            candidates.append(cidr_identity)
        candidates.append(ANY_IDENTITY)
        for ident in candidates:
            hits = [e for e in self.entries if e.matches(direction, ident, protocol, dport)]
            if hits:
                return max(hits, key=lambda e: (e.specificity, -e.cookie))
        return None


def port_prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """Cover the port range [start, end] with the fewest (port, prefix_len) prefixes."""
    if not 0 <= start <= end <= 0xFFFF:
        raise ValueError(f"bad port range {start}-{end}")
    out: list[tuple[int, int]] = []
    while start <= end:
        size = start & -start if start else 1 << PORT_BITS
        while size > end - start + 1:
            size >>= 1
        out.append((start, PORT_BITS - size.bit_length() + 1))
        start += size
    return out


def allow_all(direction: Direction, cookie: int = COOKIE_NO_POLICY) -> PolicyEntry:
    return PolicyEntry(direction, ANY_IDENTITY, ANY_PROTOCOL, 0, 0, cookie)


def entries_for_ports(
    direction: Direction,
    identity: int,
    protocol: int,
    ranges: Iterable[tuple[int, int]],
    cookie: int,
) -> list[PolicyEntry]:
    """Entries allowing `identity` on each port range [start, end] of `protocol`."""
    return [
        PolicyEntry(direction, identity, protocol, port, plen, cookie)
        for start, end in ranges
        for port, plen in port_prefixes(start, end)
    ]
