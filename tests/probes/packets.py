"""Build and parse Ethernet/IPv4/TCP/UDP/ICMP frames in pure Python, checksums included.

Used to feed BPF programs crafted packets (BPF_PROG_TEST_RUN, run_frame) and to check what they
made of them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Protocol

from probes import libbpf

ETH_P_IP = 0x0800
TCP, UDP, ICMP = 6, 17, 1
ICMP_ECHO_REPLY, ICMP_ECHO = 0, 8
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


class HasPrograms(Protocol):
    def prog_fd(self, name: str) -> int: ...


def run_frame(probe: HasPrograms, prog: str, frame: bytes) -> tuple[int, bytes]:
    """One frame through a loaded probe's program (BPF_PROG_TEST_RUN): its verdict and the
    frame as the program left it."""
    r = libbpf.prog_test_run(probe.prog_fd(prog), frame)
    return r.retval, r.data


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!BBH", 0, proto, length)
    )


def tcp(
    src: str, dst: str, sport: int, dport: int, flags: int = ACK, payload: bytes = b""
) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    seg = hdr + payload
    c = csum(_pseudo(src, dst, TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(
    src: str, dst: str, sport: int, dport: int, payload: bytes = b"", *, no_csum=False
) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if no_csum:
        return seg
    c = csum(_pseudo(src, dst, UDP, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp_echo(ident: int, seq: int = 1, payload: bytes = b"ping", *, reply: bool = False) -> bytes:
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO
    msg = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ihl: int = 5,
    frag_off: int = 0,
    tot_len: int | None = None,
    version: int = 4,
    ident: int = 1,
) -> bytes:
    options = b"\x01" * (max(ihl, 5) - 5) * 4  # NOPs
    length = 4 * max(ihl, 5) + len(payload) if tot_len is None else tot_len
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        0,
        length,
        ident,
        frag_off,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    hdr += options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ether(l3: bytes, proto: int = ETH_P_IP) -> bytes:
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + struct.pack("!H", proto) + l3


@dataclass(frozen=True)
class Parsed:
    src: str
    dst: str
    proto: int
    sport: int  # ICMP: echo id
    dport: int  # ICMP: echo id
    ip_csum_ok: bool
    l4_csum_ok: bool
    l4_csum: int


def parse(frame: bytes) -> Parsed:
    """Parse a frame built above (or rewritten by a program) and verify its checksums."""
    ip = frame[14:]
    ihl = (ip[0] & 0xF) * 4
    tot_len = struct.unpack("!H", ip[2:4])[0]
    proto = ip[9]
    src = str(ipaddress.IPv4Address(ip[12:16]))
    dst = str(ipaddress.IPv4Address(ip[16:20]))
    l4 = ip[ihl:tot_len]
    if proto in (TCP, UDP):
        sport, dport = struct.unpack("!HH", l4[:4])
        off = 16 if proto == TCP else 6
        l4c = struct.unpack("!H", l4[off : off + 2])[0]
        if proto == UDP and l4c == 0:
            ok = True  # no checksum
        else:
            ok = csum(_pseudo(src, dst, proto, len(l4)) + l4) == 0
    else:
        sport = dport = struct.unpack("!H", l4[4:6])[0]
        l4c = struct.unpack("!H", l4[2:4])[0]
        ok = csum(l4) == 0
    return Parsed(src, dst, proto, sport, dport, csum(ip[:ihl]) == 0, ok, l4c)
