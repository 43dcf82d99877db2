"""The socket LB's recent translations, so that packets of a translated connection can name the
service they were sent to.

After the socket LB, no packet carries the service address: the client's socket was connected
to the backend itself. The datapath's events therefore only show client -> backend. The
TRANSLATED event of the connect() said which service that was; this table keeps it for a while
under (client IP, backend IP, backend port, protocol), and each packet flow that matches refreshes
it, so an active connection stays named however long it lives.

Limits (we have no socket cookie in the datapath's packet events to join on exactly):
- the client is known by its IP, so two services that share a backend (same IP and port) reached
  by the same client within TTL are not told apart: the last translation names both;
- a client that also connects to the backend's address directly, while an entry lives, sees those
  packets named after the service too;
- an idle connection (no packet for TTL) loses its name until the next translation;
- only the node that made the translation knows it: a backend on another node sees that node's
  packets without destination_service (the client's node names them).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowscope.flow.model import Service, ServiceTranslation

TTL_NS = 120 * 10**9  # how long a translation names packets with no packet refreshing it
MAX_ENTRIES = 65536  # past this, expired entries go first, then the oldest

Key = tuple[str, str, int, int]  # client IP, backend IP, backend port, IP protocol number


@dataclass(frozen=True)
class Link:
    """What a translation says about the packets that follow it."""

    service: Service | None  # None: the frontend belongs to no Service the agent knows
    translation: ServiceTranslation


class RecentTranslations:
    def __init__(self, ttl_ns: int = TTL_NS, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_ns = ttl_ns
        self.max_entries = max_entries
        # key -> [link, last seen ns]: a list so that a refresh is one store, no new entry
        self._entries: dict[Key, list] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: Key, link: Link, now_ns: int) -> None:
        entries = self._entries
        entries.pop(key, None)  # re-inserted: the newest is last, the oldest first
        entries[key] = [link, now_ns]
        if len(entries) > self.max_entries:
            self._evict(now_ns)

    def lookup(self, key: Key, now_ns: int) -> Link | None:
        """The link of a packet flow's key, refreshed; None when none or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now_ns - entry[1] > self.ttl_ns:
            del self._entries[key]
            return None
        if now_ns > entry[1]:
            entry[1] = now_ns
        return entry[0]

    def _evict(self, now_ns: int) -> None:
        entries = self._entries
        for key in [k for k, (_, seen) in entries.items() if now_ns - seen > self.ttl_ns]:
            del entries[key]
        # down to 90%, so that a table full of live entries is not scanned at every insert
        keep = self.max_entries * 9 // 10
        while len(entries) > keep:
            del entries[next(iter(entries))]
