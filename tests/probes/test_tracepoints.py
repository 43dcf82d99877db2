"""Tracepoint probes on the real kernel: TCP state changes, drops with the kernel's reason and
retransmits, scoped to the namespaces a node watches.

The world: namespaces `a` and `b` joined by a veth (10.99.0.1 and 10.99.0.3 on a, 10.99.0.2 on
b; b black-holes replies to 10.99.0.3, so a SYN from there is never answered) and `c`, a
namespace of the same machine that no test watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import numpy as np
import pytest
from pyroute2 import AsyncIPRoute, netns

from dataplane.endpoint.netns import netns_path, write_sysctls
from dataplane.maps.kernelevent import AF_INET, EVENT_SIZE, KernelEvent, Kind, TcpState
from dataplane.maps.netnsfilter import netns_inode
from flowscope.errors import NotFound, UsageError
from probes import tracepoints
from probes.tracepoints import TracepointProbes
from tests.conftest import unique
from tests.probes.overlay import sock

pytestmark = pytest.mark.privileged

A_IP, A_SILENT_IP, B_IP = "10.99.0.1", "10.99.0.3", "10.99.0.2"
C_IP = "10.99.1.1"  # c's own address (on its lo): local traffic not to a loopback address


@dataclass(frozen=True)
class World:
    a: str
    b: str
    c: str
    va_ifindex: int
    vb_ifindex: int

    def inode(self, ns: str) -> int:
        return netns_inode(ns)


async def _build(prefix: str) -> World:
    a, b, c = (f"{prefix}{x}" for x in "abc")
    for ns in (a, b, c):
        netns.create(ns)
    # a's link-local IPv6 address usable at once (no duplicate address detection wait)
    write_sysctls(netns_path(a), {"net/ipv6/conf/default/accept_dad": "0"})
    async with AsyncIPRoute(netns=a, flags=0) as ipr:
        await ipr.link("add", ifname="va", kind="veth", peer={"ifname": "vb", "net_ns_fd": b})
        await ipr.link("set", ifname="lo", state="up")
        va = (await ipr.link_lookup(ifname="va"))[0]
        await ipr.addr("add", index=va, address=A_IP, prefixlen=24)
        await ipr.addr("add", index=va, address=A_SILENT_IP, prefixlen=24)
        await ipr.link("set", index=va, state="up")
    async with AsyncIPRoute(netns=b, flags=0) as ipr:
        await ipr.link("set", ifname="lo", state="up")
        vb = (await ipr.link_lookup(ifname="vb"))[0]
        await ipr.addr("add", index=vb, address=B_IP, prefixlen=24)
        await ipr.link("set", index=vb, state="up")
        await ipr.route("add", dst=f"{A_SILENT_IP}/32", type="blackhole")
    async with AsyncIPRoute(netns=c, flags=0) as ipr:
        await ipr.link("set", ifname="lo", state="up")
        lo = (await ipr.link_lookup(ifname="lo"))[0]
        await ipr.addr("add", index=lo, address=C_IP, prefixlen=32)
    return World(a, b, c, va, vb)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    prefix = unique("fstp")
    try:
        yield asyncio.run(_build(prefix))
    finally:
        for x in "abc":
            with contextlib.suppress(OSError, FileNotFoundError):
                netns.remove(f"{prefix}{x}")


@pytest.fixture
def probes(pin_root: Path) -> Iterator[TracepointProbes]:
    tp = TracepointProbes.load(pin_root / "tp")
    try:
        tp.attach()
        yield tp
    finally:
        tp.close()
        tp.unpin()


def collect(
    tp: TracepointProbes, done: Callable[[list[KernelEvent]], bool], timeout: float = 3.0
) -> list[KernelEvent]:
    """Events until `done(events)` holds or the timeout passes."""
    events: list[KernelEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events.extend(tp.read())
        if done(events):
            break
        time.sleep(0.02)
    return events


def _linger_rst(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def tcp_exchange(client_ns: str, server_ns: str, server_ip: str) -> tuple[int, int]:
    """One TCP connection, closed by the client first; returns (client port, server port)."""
    srv = sock(server_ns)
    srv.bind((server_ip, 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    cli = sock(client_ns)
    cli.settimeout(2)
    try:
        cli.connect((server_ip, port))
        conn, _ = srv.accept()
        cli.sendall(b"hello")
        assert conn.recv(5) == b"hello"
        cport = cli.getsockname()[1]
        cli.close()
        assert conn.recv(1) == b""  # the client's FIN
        conn.close()
    finally:
        cli.close()
        srv.close()
    return cport, port


def states(events: list[KernelEvent], sport: int) -> list[tuple[str | None, str | None]]:
    return [(e.old_state, e.new_state) for e in events if e.kind is Kind.STATE and e.sport == sport]


def test_tcp_states_of_a_watched_namespace_only(world: World, probes: TracepointProbes) -> None:
    probes.watch_netns(world.inode(world.a))
    # traffic in namespaces nobody watches: the server side in b, loopback in c
    c_ports = tcp_exchange(world.c, world.c, C_IP)
    # loopback inside the watched namespace (an app and the L7 proxy's listener) is not a flow
    a_loop = tcp_exchange(world.a, world.a, "127.0.0.1")
    cport, sport = tcp_exchange(world.a, world.b, B_IP)
    events = collect(probes, lambda ev: ("TCP_FIN_WAIT2", "TCP_CLOSE") in states(ev, cport))
    assert {e.netns for e in events} == {world.inode(world.a)}
    assert states(events, cport) == [
        ("TCP_SYN_SENT", "TCP_ESTABLISHED"),
        ("TCP_ESTABLISHED", "TCP_FIN_WAIT1"),
        ("TCP_FIN_WAIT1", "TCP_FIN_WAIT2"),
        ("TCP_FIN_WAIT2", "TCP_CLOSE"),  # the socket hands over to its time-wait twin
    ]
    # the first change happens before connect() binds a port: it has the destination only
    syn = [e for e in events if e.new_state == "TCP_SYN_SENT"]
    assert [(e.old_state, e.dport, str(e.daddr)) for e in syn] == [("TCP_CLOSE", sport, B_IP)]
    est = next(e for e in events if e.sport == cport)
    assert (str(est.saddr), str(est.daddr), est.dport, est.protocol) == (A_IP, B_IP, sport, 6)
    assert not any(e.sport in c_ports or e.dport in c_ports for e in events)
    looped = [e for e in events if e.sport in a_loop or e.dport in a_loop]
    assert not looped, looped


def test_only_the_chosen_tcp_states_are_reported(world: World, probes: TracepointProbes) -> None:
    probes.configure(
        report_unspecified=False, tcp_states={TcpState.TCP_ESTABLISHED, TcpState.TCP_CLOSE}
    )
    probes.watch_netns(world.inode(world.a))
    cport, _ = tcp_exchange(world.a, world.b, B_IP)
    events = collect(probes, lambda ev: ("TCP_FIN_WAIT2", "TCP_CLOSE") in states(ev, cport))
    # opened and closed: the kernel dropped FIN_WAIT1/2's arrival and SYN_SENT before the ring
    assert states(events, cport) == [
        ("TCP_SYN_SENT", "TCP_ESTABLISHED"),
        ("TCP_FIN_WAIT2", "TCP_CLOSE"),
    ]
    changes = [e for e in events if e.kind is Kind.STATE]
    assert {e.new_state for e in changes} <= {"TCP_ESTABLISHED", "TCP_CLOSE"}


def test_watch_and_unwatch_change_what_is_reported(world: World, probes: TracepointProbes) -> None:
    a, b = world.inode(world.a), world.inode(world.b)
    probes.watch_netns(a)
    assert probes.watch_named_netns(world.b) == b
    assert probes.netns.inodes() == {a, b}
    cport, sport = tcp_exchange(world.a, world.b, B_IP)

    def server_closed(ev: list[KernelEvent]) -> bool:
        return any(e.netns == b and e.new_state == "TCP_CLOSE" and e.sport == sport for e in ev)

    events = collect(probes, server_closed)
    server = [(e.old_state, e.new_state) for e in events if e.netns == b and e.sport == sport]
    assert ("TCP_CLOSE", "TCP_LISTEN") in server  # listen()
    assert ("TCP_SYN_RECV", "TCP_ESTABLISHED") in server  # the accepted child
    assert ("TCP_CLOSE_WAIT", "TCP_LAST_ACK") in server
    assert states(events, cport)  # and the client side, in a

    assert probes.unwatch_netns(b) is True
    assert probes.unwatch_netns(b) is False
    cport2, sport2 = tcp_exchange(world.a, world.b, B_IP)
    events = collect(probes, lambda ev: ("TCP_FIN_WAIT2", "TCP_CLOSE") in states(ev, cport2))
    assert {e.netns for e in events} == {a}
    assert not [e for e in events if e.kind is Kind.STATE and e.sport == sport2]


def test_udp_to_a_closed_port_is_a_no_socket_drop(world: World, probes: TracepointProbes) -> None:
    probes.watch_netns(world.inode(world.b))
    u = sock(world.a, socket.SOCK_DGRAM)
    u.bind((A_IP, 0))
    src = u.getsockname()[1]
    u.sendto(b"anyone?", (B_IP, 9))
    u.close()
    # the same in an unwatched namespace: no event
    q = sock(world.c, socket.SOCK_DGRAM)
    q.sendto(b"anyone?", (C_IP, 9))
    q.close()
    events = collect(
        probes, lambda ev: any(e.kind is Kind.DROP and e.family == AF_INET for e in ev)
    )
    # IPv4 only: the links' own IPv6 chatter may be dropped too (with NOT_SPECIFIED, skipped)
    drops = [e for e in events if e.kind is Kind.DROP and e.family == AF_INET]
    assert len(drops) == 1
    d = drops[0]
    assert d.drop_reason_name == "NO_SOCKET"
    assert tracepoints.reason_names()[d.drop_reason] == "NO_SOCKET"
    assert (d.netns, d.ifindex, d.protocol) == (world.inode(world.b), world.vb_ifindex, 17)
    assert (d.saddr, d.sport, d.daddr, d.dport) == (IPv4Address(A_IP), src, IPv4Address(B_IP), 9)
    assert d.skb_len >= 8 + len(b"anyone?")  # at least the UDP header and payload
    assert d.location != 0
    assert (d.old_state, d.new_state) == (None, None)


def test_unknown_ip_protocol_is_an_ip_noproto_drop(world: World, probes: TracepointProbes) -> None:
    probes.watch_netns(world.inode(world.b))
    raw = sock(world.a, socket.SOCK_RAW, 253)  # 253: reserved for experiments (RFC 3692)
    raw.sendto(b"\0" * 8, (B_IP, 0))
    raw.close()
    events = collect(
        probes, lambda ev: any(e.kind is Kind.DROP and e.family == AF_INET for e in ev)
    )
    drops = [
        (e.drop_reason_name, e.protocol, str(e.saddr), e.sport)
        for e in events
        if e.family == AF_INET
    ]
    assert drops == [("IP_NOPROTO", 253, A_IP, 0)]  # no ports for an unknown protocol


def test_unanswered_syn_is_retransmitted(world: World, probes: TracepointProbes) -> None:
    probes.watch_netns(world.inode(world.a))
    cli = sock(world.a)
    _linger_rst(cli)
    cli.bind((A_SILENT_IP, 0))
    cport = cli.getsockname()[1]
    cli.setblocking(False)
    try:
        with contextlib.suppress(BlockingIOError):
            cli.connect((B_IP, 7))
        # the first retransmission of a SYN comes after the initial RTO, one second
        events = collect(probes, lambda ev: any(e.kind is Kind.RETRANSMIT for e in ev), 4.0)
    finally:
        cli.close()
    rtx = [e for e in events if e.kind is Kind.RETRANSMIT]
    assert rtx, "no retransmit event within 4 s"
    r = rtx[0]
    assert (r.new_state, r.saddr, r.sport, r.daddr, r.dport) == (
        "TCP_SYN_SENT",
        IPv4Address(A_SILENT_IP),
        cport,
        IPv4Address(B_IP),
        7,
    )
    assert (r.netns, r.protocol, r.err) == (world.inode(world.a), 6, 0)
    assert r.drop_reason_name is None


def test_full_ring_counts_lost_events(
    world: World, probes: TracepointProbes, pin_root: Path
) -> None:
    """A one-page ring next to a big one, both watching c: what the small one kept plus what it
    counted as lost is exactly what the big one saw."""
    small = TracepointProbes.load(pin_root / "small", ring_bytes=4096)
    try:
        for tp in (small, probes):
            tp.watch_netns(world.inode(world.c))
        small.attach()
        u = sock(world.c, socket.SOCK_DGRAM)
        for _ in range(200):
            u.sendto(b"x", (C_IP, 9))
        u.close()
        seen = collect(probes, lambda ev: len(ev) >= 200)
        kept = small.read_array()
        assert len(seen) >= 200
        assert len(kept) == 4096 // (EVENT_SIZE + 8)  # each record has an 8-byte header
        assert set(kept["netns"]) == {world.inode(world.c)}
        assert small.lost_events() == len(seen) - len(kept)
        assert probes.lost_events() == 0
        # drained: room again
        v = sock(world.c, socket.SOCK_DGRAM)
        v.sendto(b"x", (C_IP, 9))
        v.close()
        assert len(collect(small, lambda ev: len(ev) >= 1)) == 1
    finally:
        small.close()
        small.unpin()


def test_close_detaches(world: World, pin_root: Path) -> None:
    tp = TracepointProbes.load(pin_root / "tp")
    try:
        tp.watch_netns(world.inode(world.c))
        tp.attach()
        tp.attach()  # idempotent
        assert tp.attached
        tp.detach()
        assert not tp.attached
        u = sock(world.c, socket.SOCK_DGRAM)
        u.sendto(b"x", (C_IP, 9))
        u.close()
        time.sleep(0.1)
        assert tp.read() == []
        tp.attach()
        u = sock(world.c, socket.SOCK_DGRAM)
        u.sendto(b"x", (C_IP, 9))
        u.close()
        assert len(collect(tp, lambda ev: len(ev) >= 1)) == 1
    finally:
        tp.close()
        tp.unpin()
    assert not tp.attached


def test_reload_adopts_watched_namespaces(world: World, pin_root: Path) -> None:
    first = TracepointProbes.load(pin_root / "tp")
    first.watch_netns(world.inode(world.a))
    first.close()
    again = TracepointProbes.load(pin_root / "tp")
    try:
        assert again.netns.inodes() == {world.inode(world.a)}
    finally:
        again.close()
        again.unpin()


def test_bad_input_names_the_field(pin_root: Path) -> None:
    with pytest.raises(NotFound, match="netns: no network namespace 'fs-no-such-ns'"):
        netns_inode("fs-no-such-ns")
    with pytest.raises(UsageError, match="netns"):
        netns_inode("../etc")
    assert netns_inode(None) == netns_inode(None)
    with pytest.raises(tracepoints.TracepointError, match="ring_bytes"):
        TracepointProbes.load(pin_root / "tp", ring_bytes=5000)
    tp = TracepointProbes.load(pin_root / "tp")
    try:
        with pytest.raises(UsageError, match="netns inode"):
            tp.watch_netns(0)
    finally:
        tp.close()
        tp.unpin()


def test_unspecified_drops_only_when_asked(
    world: World, probes: TracepointProbes, pin_root: Path
) -> None:
    """IPv6 multicast to a group nobody in b joined: b frees it without a reason."""
    everything = TracepointProbes.load(pin_root / "all", report_unspecified=True)
    try:
        for tp in (everything, probes):
            tp.watch_netns(world.inode(world.b))
        everything.attach()
        u = netns.create_socket(world.a, socket.AF_INET6, socket.SOCK_DGRAM, 0, flags=0)
        u.sendto(b"x" * 77, ("ff02::1:2345", 9, 0, world.va_ifindex))
        u.close()

        def ours(ev: list[KernelEvent]) -> list[KernelEvent]:
            # IPv6 header + UDP header + payload: tells it from the link's own IPv6 chatter
            return [e for e in ev if e.drop_reason_name == "NOT_SPECIFIED" and e.skb_len == 125]

        got = ours(collect(everything, lambda ev: bool(ours(ev))))
        assert [(e.ifindex, e.family, e.saddr) for e in got] == [(world.vb_ifindex, 0, None)]
        assert not [e for e in probes.read() if e.drop_reason_name == "NOT_SPECIFIED"]
    finally:
        everything.close()
        everything.unpin()


def test_the_ring_drains_as_columns_named_as_the_per_event_path(
    world: World, probes: TracepointProbes
) -> None:
    """What the node's collector does with the ring (drain_array, then the columnar naming of
    collector.kernelcolumns) gives the flows of the per-event path on the same records."""
    from collector.enrich import Enricher
    from collector.kernelcolumns import KernelNamer
    from collector.kernelflows import kernel_flow, reportable
    from dataplane.maps.kernelevent import decode
    from tests.collector.test_flows import Directory

    probes.watch_netns(world.inode(world.a))
    probes.watch_netns(world.inode(world.b))
    cport, sport = tcp_exchange(world.a, world.b, B_IP)
    u = sock(world.a, socket.SOCK_DGRAM)
    u.sendto(b"anyone?", (B_IP, 9))  # NO_SOCKET in b
    u.close()
    arrays = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        arrays.append(probes.read_array())
        got = decode(np.concatenate(arrays), probes.reason_names)
        if any(e.dport == 9 for e in got) and ("TCP_FIN_WAIT2", "TCP_CLOSE") in states(got, cport):
            break
        time.sleep(0.02)
    events = np.concatenate(arrays)
    assert len(events) >= 8  # both ends' state changes and the drop

    def device(_netns: int, _ifindex: int) -> bool:
        return False

    namer = KernelNamer(Enricher(Directory(), "lab"), "n", 10, probes.reason_names, device)
    batch = namer.batch(events)
    expected = [
        kernel_flow(e, Enricher(Directory(), "lab"), "n", 10)
        for e in decode(events, probes.reason_names)
        if reportable(e, device)
    ]
    flows = [batch.record(i) for i in range(len(batch))]
    assert flows == expected
    summaries = {(f.l4.source_port, f.summary) for f in flows if f.l4 is not None}
    assert (cport, "TCP state SYN_SENT -> ESTABLISHED") in summaries
    assert (sport, "TCP state SYN_RECV -> ESTABLISHED") in summaries  # the server's end
    drop = next(f for f in flows if f.kernel_drop_reason == "NO_SOCKET")
    assert (drop.ip.source, drop.ip.destination, drop.l4.destination_port) == (A_IP, B_IP, 9)
