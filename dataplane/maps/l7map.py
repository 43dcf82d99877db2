"""The HTTP L7 redirect maps (probes/socklb.c `l7_*`), seen from Python: one owner for their
layouts (checked against the compiled program by tests/maps/test_l7map.py).

- l7_redirect  {pod ip, port} -> {proxy port}: the destinations whose connections go to the
  node's HTTP proxy (pods with `toPorts[].rules.http` on that port). The agent keeps it equal to
  the set it computes from the store (`sync`).
- l7_orig_port {netns cookie, local port} -> the original destination of a redirected
  connection: what the proxy reads (and deletes) when it accepts it (`take_original`).
- l7_orig_sock socket cookie -> the same, for getpeername (the kernel's; LRU, never read here).

Two implementations of one interface: `KernelL7Maps` over the pinned maps and `FakeL7Maps`,
dict-backed, for tests without a kernel.
"""

from __future__ import annotations

import ctypes as ct
import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.netorder import ip_of, u32_of
from flowscope.errors import FlowscopeError, UsageError

REDIRECT_MAP = "l7_redirect"
ORIG_SOCK_MAP = "l7_orig_sock"
ORIG_PORT_MAP = "l7_orig_port"


class L7Key(ct.Structure):
    """struct l7_key: address and port in network order."""

    _fields_ = (("ip", ct.c_uint32), ("port", ct.c_uint16), ("pad", ct.c_uint8 * 2))


class L7Value(ct.Structure):
    """struct l7_value: the proxy's port (network order) on 127.0.0.1 in the client's netns."""

    _fields_ = (("proxy_port", ct.c_uint16), ("flags", ct.c_uint16))


class L7Orig(ct.Structure):
    """struct l7_orig: addresses and ports in network order."""

    _fields_ = (
        ("ip", ct.c_uint32),
        ("backend_ip", ct.c_uint32),
        ("port", ct.c_uint16),
        ("backend_port", ct.c_uint16),
        ("pad", ct.c_uint32),
    )


class L7PortKey(ct.Structure):
    """struct l7_port_key: the local port in host order (as sock_ops gives it)."""

    _fields_ = (("netns_cookie", ct.c_uint64), ("local_port", ct.c_uint16), ("pad", ct.c_uint8 * 6))


LAYOUTS: dict[str, tuple[type, type]] = {
    REDIRECT_MAP: (L7Key, L7Value),
    ORIG_SOCK_MAP: (ct.c_uint64, L7Orig),
    ORIG_PORT_MAP: (L7PortKey, L7Orig),
}


@dataclass(frozen=True, order=True)
class Redirect:
    """A destination whose TCP connections go through the HTTP proxy: a pod's address and a
    port of it with HTTP rules."""

    ip: IPv4Address
    port: int

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise UsageError(f"port: {self.port} is not a TCP port (1-65535)")


@dataclass(frozen=True)
class OriginalDst:
    """Where a redirected connection was going: `ip:port` as the application asked (a service
    or the pod itself) and the pod (`backend`) the socket LB chose."""

    ip: IPv4Address
    port: int
    backend_ip: IPv4Address
    backend_port: int

    @property
    def backend(self) -> tuple[str, int]:
        return (str(self.backend_ip), self.backend_port)


def redirect_key(r: Redirect) -> L7Key:
    return L7Key(ip=u32_of(r.ip), port=socket.htons(r.port))


def redirect_value(proxy_port: int) -> L7Value:
    if not 0 < proxy_port < 65536:
        raise UsageError(f"proxy_port: {proxy_port} is not a TCP port (1-65535)")
    return L7Value(proxy_port=socket.htons(proxy_port))


def orig_value(o: OriginalDst) -> L7Orig:
    return L7Orig(
        ip=u32_of(o.ip),
        backend_ip=u32_of(o.backend_ip),
        port=socket.htons(o.port),
        backend_port=socket.htons(o.backend_port),
    )


def decode_orig(v: L7Orig) -> OriginalDst:
    return OriginalDst(
        ip=ip_of(v.ip),
        port=socket.ntohs(v.port),
        backend_ip=ip_of(v.backend_ip),
        backend_port=socket.ntohs(v.backend_port),
    )


def port_key(netns_cookie: int, local_port: int) -> L7PortKey:
    return L7PortKey(netns_cookie=netns_cookie, local_port=local_port)


class L7MapFull(FlowscopeError):
    pass


class L7Maps:
    """The agent's view: the redirect set and the original destinations. Subclasses give the
    three primitive operations on raw ctypes keys and values."""

    capacity: int

    # -- primitives -------------------------------------------------------------------------------
    def _redirects(self) -> dict[Redirect, int]:
        raise NotImplementedError

    def _put_redirect(self, key: L7Key, value: L7Value) -> None:
        raise NotImplementedError

    def _delete_redirect(self, key: L7Key) -> None:
        raise NotImplementedError

    def _pop_orig(self, key: L7PortKey) -> L7Orig | None:
        raise NotImplementedError

    # -- the interface ----------------------------------------------------------------------------
    def redirects(self) -> dict[Redirect, int]:
        """What the map holds: destination -> proxy port."""
        return self._redirects()

    def sync(self, wanted: Mapping[Redirect, int]) -> tuple[int, int]:
        """Make the map hold exactly `wanted` (destination -> proxy port); returns (written,
        removed). Refuses, writing nothing, when `wanted` does not fit."""
        if len(wanted) > self.capacity:
            raise L7MapFull(
                f"{REDIRECT_MAP}: {len(wanted)} pod ports with HTTP rules, room for "
                f"{self.capacity}",
                hint="raise l7_redirect in SocketLB.load",
            )
        have = self._redirects()
        written = removed = 0
        # new entries first: a destination never misses the proxy while another one changes
        for r, port in sorted(wanted.items()):
            if have.get(r) != port:
                self._put_redirect(redirect_key(r), redirect_value(port))
                written += 1
        for r in sorted(set(have) - set(wanted)):
            self._delete_redirect(redirect_key(r))
            removed += 1
        return written, removed

    def take_original(self, netns_cookie: int, local_port: int) -> OriginalDst | None:
        """The original destination of the redirected connection from `local_port` in the
        network namespace `netns_cookie`, removed from the map (each is read once)."""
        raw = self._pop_orig(port_key(netns_cookie, local_port))
        return None if raw is None else decode_orig(raw)


class KernelL7Maps(L7Maps):
    """L7Maps over the pinned maps of a SocketLB instance (probes/socklb.py builds it)."""

    def __init__(self, maps: Mapping[str, tuple[int, int]]) -> None:
        """maps: map name -> (fd, max_entries) for the three l7 maps."""
        fd, self.capacity = maps[REDIRECT_MAP]
        self._redirect = BpfMap(fd, L7Key, L7Value, name=REDIRECT_MAP)
        fd, _ = maps[ORIG_PORT_MAP]
        self._orig_port = BpfMap(fd, L7PortKey, L7Orig, name=ORIG_PORT_MAP)
        fd, _ = maps[ORIG_SOCK_MAP]
        self.orig_sock = BpfMap(fd, ct.c_uint64, L7Orig, name=ORIG_SOCK_MAP)

    def _redirects(self) -> dict[Redirect, int]:
        keys, values = self._redirect.dump()
        return {
            Redirect(ip_of(k["ip"]), socket.ntohs(int(k["port"]))): socket.ntohs(
                int(v["proxy_port"])
            )
            for k, v in zip(keys, values, strict=True)
        }

    def _put_redirect(self, key: L7Key, value: L7Value) -> None:
        try:
            self._redirect.update(key, value)
        except OSError as e:
            if e.errno in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
                raise L7MapFull(
                    f"{REDIRECT_MAP}: full ({self.capacity} entries)",
                    hint="raise l7_redirect in SocketLB.load",
                ) from e
            raise

    def _delete_redirect(self, key: L7Key) -> None:
        self._redirect.delete(key)

    def _pop_orig(self, key: L7PortKey) -> L7Orig | None:
        value = self._orig_port.lookup(key)
        if value is not None:
            self._orig_port.delete(key)
        return value


class FakeL7Maps(L7Maps):
    """Dict-backed, with the kernel maps' byte layouts and capacity."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self.redirect: dict[bytes, bytes] = {}
        self.orig_port: dict[bytes, bytes] = {}

    def _redirects(self) -> dict[Redirect, int]:
        out = {}
        for k, v in self.redirect.items():
            key, value = L7Key.from_buffer_copy(k), L7Value.from_buffer_copy(v)
            out[Redirect(ip_of(key.ip), socket.ntohs(key.port))] = socket.ntohs(value.proxy_port)
        return out

    def _put_redirect(self, key: L7Key, value: L7Value) -> None:
        if bytes(key) not in self.redirect and len(self.redirect) >= self.capacity:
            raise L7MapFull(f"{REDIRECT_MAP}: full ({self.capacity} entries)")
        self.redirect[bytes(key)] = bytes(value)

    def _delete_redirect(self, key: L7Key) -> None:
        self.redirect.pop(bytes(key), None)

    def record(self, netns_cookie: int, local_port: int, orig: OriginalDst) -> None:
        """What the kernel's sock_ops program does for a redirected connection."""
        self.orig_port[bytes(port_key(netns_cookie, local_port))] = bytes(orig_value(orig))

    def _pop_orig(self, key: L7PortKey) -> L7Orig | None:
        raw = self.orig_port.pop(bytes(key), None)
        return None if raw is None else L7Orig.from_buffer_copy(raw)
