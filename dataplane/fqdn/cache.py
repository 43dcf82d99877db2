"""What DNS answered, for how long: names -> addresses, each pair kept until its TTL (never less
than `min_ttl`) runs out. Pure: the caller passes the clock.

Only the node's DNS proxy writes here, from answers it got itself from the cluster DNS for
queries it sent: a pod cannot put an address into the cache except by asking the cluster DNS a
name. The policy compiler reads it (the addresses toFQDNs selectors stand for), and so does the
collector (the names an address is known by, for flows' destination_names).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, ip_address

from dataplane.fqdn.selector import FQDNSelector, canonical

DEFAULT_MIN_TTL = 60  # seconds: short TTLs (0-5 s are common) would churn policy maps


class DNSCache:
    def __init__(self, min_ttl: int = DEFAULT_MIN_TTL, max_pairs: int = 100_000) -> None:
        self.min_ttl = min_ttl
        self.max_pairs = max_pairs  # bounded: a pod asking random names cannot grow it forever
        self._expiry: dict[str, dict[IPv4Address, float]] = {}  # name -> ip -> expires at
        self._names: dict[IPv4Address, set[str]] = {}
        self._pairs = 0
        self.version = 0  # bumped whenever the (name, address) pairs change

    def learn(self, names: Iterable[str], ips: Iterable[str], ttl: int, now: float) -> bool:
        """An answer: every address under every name of its chain (the query and its CNAMEs).
        True when a pair is new (policy may have to allow it); a known pair only lives longer."""
        until = now + max(int(ttl), self.min_ttl)
        addresses = []
        for text in ips:
            try:
                address = ip_address(text)
            except ValueError:
                continue
            if isinstance(address, IPv4Address):
                addresses.append(address)
        grew = False
        for name in {canonical(n) for n in names}:
            known = self._expiry.setdefault(name, {})
            for address in addresses:
                if address not in known:
                    if self._pairs >= self.max_pairs and not self._evict(now):
                        continue
                    self._pairs += 1
                    self._names.setdefault(address, set()).add(name)
                    grew = True
                known[address] = max(known.get(address, 0.0), until)
            if not known:
                del self._expiry[name]
        if grew:
            self.version += 1
        return grew

    def expire(self, now: float) -> bool:
        """Forget the pairs whose time ran out; True when any did."""
        gone = [
            (name, address)
            for name, known in self._expiry.items()
            for address, until in known.items()
            if until <= now
        ]
        for name, address in gone:
            self._forget(name, address)
        if gone:
            self.version += 1
        return bool(gone)

    def _evict(self, now: float) -> bool:
        """Room for one more pair: the one that expires first goes."""
        soonest = min(
            (
                (until, name, address)
                for name, k in self._expiry.items()
                for address, until in k.items()
            ),
            default=None,
        )
        if soonest is None:
            return False
        self._forget(soonest[1], soonest[2])
        self.version += 1
        return True

    def _forget(self, name: str, address: IPv4Address) -> None:
        known = self._expiry.get(name)
        if known is None or known.pop(address, None) is None:
            return
        self._pairs -= 1
        if not known:
            del self._expiry[name]
        names = self._names.get(address)
        if names is not None:
            names.discard(name)
            if not names:
                del self._names[address]

    def ips_for(self, selector: FQDNSelector) -> frozenset[IPv4Address]:
        """Every address of every cached name the selector matches."""
        return frozenset(
            address
            for name, known in self._expiry.items()
            if selector.matches(name)
            for address in known
        )

    def names_of(self, address: IPv4Address | str) -> tuple[str, ...]:
        """The names an address is known by, sorted."""
        try:
            key = ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return ()
        return tuple(sorted(self._names.get(key, ())))

    def expires_at(self, name: str, address: str) -> float | None:
        return self._expiry.get(canonical(name), {}).get(ip_address(address))

    def __len__(self) -> int:
        return self._pairs
