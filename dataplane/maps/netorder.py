"""IPv4 addresses as BPF maps hold them: the packet's network-order bytes in a u32 field.

On a little-endian host the u32 *value* of such a field is the address bytes read little-endian;
these two functions are the only place that knows it.
"""

from __future__ import annotations

from ipaddress import IPv4Address


def u32_of(addr: IPv4Address | str) -> int:
    """The u32 a map field holds for `addr` (network byte order in memory)."""
    return int.from_bytes(IPv4Address(addr).packed, "little")


def ip_of(value: int) -> IPv4Address:
    """The address a network-order u32 map field holds."""
    return IPv4Address(int(value).to_bytes(4, "little"))
