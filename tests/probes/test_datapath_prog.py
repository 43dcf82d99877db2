"""from_endpoint/to_endpoint on crafted packets through BPF_PROG_TEST_RUN.

The programs find the endpoint by skb->ifindex, so every run names an interface: the tests own a
network namespace with a few veths and run the programs from a thread inside it (test_run uses
the caller's namespace for ifindex lookups; no packet is sent anywhere).

World: endpoints A and B on this node; a pod P elsewhere inside a CIDR identity's range; the
node itself; everything else is WORLD.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2 import AsyncIPRoute, netns

from dataplane.identity.model import CIDR_ID_BASE, Reserved
from dataplane.maps import flowevent
from dataplane.maps.ctmap import CT_F_REPLY_SEEN, CtEntry
from dataplane.maps.endpointmap import Endpoint
from dataplane.maps.flowevent import (
    CtState,
    DropReason,
    EventFlag,
    EventType,
    ObservationPoint,
    TrafficDirection,
    Verdict,
)
from dataplane.maps.ipcache import IPCacheValue
from dataplane.policy.entry import (
    COOKIE_NO_POLICY,
    Direction,
    EndpointPolicy,
    PolicyEntry,
    allow_all,
    entries_for_ports,
)
from flowscope.setns import enter_netns
from probes import libbpf
from probes.datapath import FROM_ENDPOINT, TO_ENDPOINT, Datapath
from tests.conftest import unique
from tests.probes import packets as P

pytestmark = pytest.mark.privileged

PASS, SHOT = 0xFFFFFFFF, 2  # TC_ACT_UNSPEC as u32, TC_ACT_SHOT
A_IP, B_IP = "10.0.1.10", "10.0.1.11"
A_ID, B_ID, P_ID = 1000, 1001, 1002
P_IP = "10.0.2.5"  # a remote pod inside 10.0.2.0/24, which an ipBlock names
CIDR_NET, CIDR_ID = "10.0.2.0/24", CIDR_ID_BASE + 1
CIDR_ONLY_IP = "10.0.2.9"  # covered by the /24 only
NODE_IP = "10.224.0.4"
WORLD_IP = "192.0.2.7"
SCTP = 132
_SKB_CTX = 192  # sizeof(struct __sk_buff); ifindex at offset 40
_sports = itertools.count(20000)


def sport() -> int:
    """A fresh source port: a new connection every time."""
    return next(_sports) % 40000 + 20000


@dataclass
class Bench:
    """The programs, a namespace with interfaces for them to run "on", and the maps."""

    dp: Datapath
    pool: ThreadPoolExecutor
    ifindex: dict[str, int]  # a, b, unknown

    def run(self, prog: str, frame: bytes, on: str = "a") -> int:
        return self.run_full(prog, frame, on).retval

    def run_full(self, prog: str, frame: bytes, on: str = "a", repeat: int = 1) -> libbpf.TestRun:
        ctx = bytearray(_SKB_CTX)
        struct.pack_into("<I", ctx, 40, self.ifindex[on])
        fd = self.dp.prog_fd(prog)
        return self.pool.submit(libbpf.prog_test_run, fd, frame, repeat, ctx=bytes(ctx)).result()

    def events(self) -> list[flowevent.FlowEvent]:
        ring = self.dp.ring()
        try:
            return flowevent.events(flowevent.decode(ring.drain()))
        finally:
            ring.close()


@pytest.fixture(scope="module")
def ns() -> Iterator[tuple[str, dict[str, int]]]:
    name = unique("fsdp-run-")
    netns.create(name)
    try:
        yield name, asyncio.run(_veths(name))
    finally:
        netns.remove(name)


async def _veths(name: str) -> dict[str, int]:
    out = {}
    async with AsyncIPRoute(netns=name, flags=0) as ipr:
        for role in ("a", "b", "unknown"):
            await ipr.link("add", ifname=f"h{role}", kind="veth", peer={"ifname": f"p{role}"})
            out[role] = (await ipr.link_lookup(ifname=f"h{role}"))[0]
    return out


@contextlib.contextmanager
def bench_in(ns_name: str, ifindex: dict[str, int], pin_dir: Path, **load) -> Iterator[Bench]:
    dp = Datapath.load(pin_dir, **load)
    pool = ThreadPoolExecutor(1, initializer=enter_netns, initargs=(f"/run/netns/{ns_name}",))
    try:
        b = Bench(dp, pool, ifindex)
        dp.endpoints.upsert(Endpoint(ifindex["a"], A_ID, IPv4Address(A_IP)))
        dp.endpoints.upsert(Endpoint(ifindex["b"], B_ID, IPv4Address(B_IP)))
        dp.ipcache.apply(
            {
                IPv4Network(f"{A_IP}/32"): IPCacheValue(A_ID),
                IPv4Network(f"{B_IP}/32"): IPCacheValue(B_ID),
                IPv4Network(f"{P_IP}/32"): IPCacheValue(P_ID, CIDR_ID, IPv4Address("10.224.0.5")),
                IPv4Network(CIDR_NET): IPCacheValue(CIDR_ID, CIDR_ID),
                IPv4Network(f"{NODE_IP}/32"): IPCacheValue(int(Reserved.HOST)),
            }
        )
        yield b
    finally:
        pool.shutdown()
        dp.unpin()
        dp.close()


@pytest.fixture
def bench(ns, pin_root: Path) -> Iterator[Bench]:
    name, ifindex = ns
    with bench_in(name, ifindex, pin_root / "dp") as b:
        yield b


def policy(*entries: PolicyEntry) -> EndpointPolicy:
    return EndpointPolicy(frozenset(entries))


def allow(direction: Direction, identity: int, proto: int, port: int, plen: int = 16, cookie=7):
    return PolicyEntry(direction, identity, proto, port, plen, cookie)


EG, IN = Direction.EGRESS, Direction.INGRESS


def set_policies(b: Bench, a: EndpointPolicy, bpol: EndpointPolicy | None = None) -> None:
    b.dp.policy.set_policy(b.ifindex["a"], a)
    b.dp.policy.set_policy(b.ifindex["b"], bpol if bpol is not None else policy())


def tcp(src: str, dst: str, sp: int, dp: int, flags: int = P.SYN, payload: bytes = b"") -> bytes:
    return P.ether(P.ipv4(src, dst, P.TCP, P.tcp(src, dst, sp, dp, flags, payload)))


def udp(src: str, dst: str, sp: int, dp: int, payload: bytes = b"q") -> bytes:
    return P.ether(P.ipv4(src, dst, P.UDP, P.udp(src, dst, sp, dp, payload)))


def sctp(src: str, dst: str, sp: int, dp: int) -> bytes:
    return P.ether(P.ipv4(src, dst, SCTP, struct.pack("!HHII", sp, dp, 1, 0)))


def ping(src: str, dst: str, ident: int, reply: bool = False) -> bytes:
    return P.ether(P.ipv4(src, dst, P.ICMP, P.icmp_echo(ident, reply=reply)))


def icmp_error(src: str, dst: str, quoted: bytes, kind: int = 3, code: int = 3) -> bytes:
    """An ICMP error from src to dst quoting `quoted` (an IP packet): its header + 8 bytes."""
    ihl = (quoted[0] & 0xF) * 4
    body = struct.pack("!BBHI", kind, code, 0, 0) + quoted[: ihl + 8]
    body = body[:2] + struct.pack("!H", P.csum(body)) + body[4:]
    return P.ether(P.ipv4(src, dst, P.ICMP, body))


# -- policy decisions --------------------------------------------------------------------------


def test_allowed_and_denied_by_identity_and_port(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, B_ID, P.TCP, 80, cookie=11)))
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sport(), 80)) == PASS
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sport(), 81)) == SHOT  # port
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, P_IP, sport(), 80)) == SHOT  # identity
    assert bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, sport(), 80)) == SHOT  # protocol
    evs = bench.events()
    assert [(e.verdict, e.drop_reason, e.policy_cookie) for e in evs] == [
        (Verdict.FORWARDED, 0, 11),
        (Verdict.DROPPED, DropReason.POLICY_DENIED, 0),
        (Verdict.DROPPED, DropReason.POLICY_DENIED, 0),
        (Verdict.DROPPED, DropReason.POLICY_DENIED, 0),
    ]
    stats = bench.dp.stats()
    assert stats["drop_policy_denied"] == 3 and stats["ct_new"] == 1


def test_port_ranges_as_lpm_prefixes(bench: Bench) -> None:
    set_policies(bench, policy(*entries_for_ports(EG, B_ID, P.TCP, [(8000, 8099)], cookie=5)))
    for port, verdict in [(7999, SHOT), (8000, PASS), (8064, PASS), (8099, PASS), (8100, SHOT)]:
        assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sport(), port)) == verdict, port


def test_any_protocol_allows_every_protocol_and_port(bench: Bench) -> None:
    set_policies(bench, policy(PolicyEntry(EG, B_ID, 0, 0, 0, 9)))
    for frame in (
        tcp(A_IP, B_IP, sport(), 1),
        udp(A_IP, B_IP, sport(), 65535),
        sctp(A_IP, B_IP, sport(), 9),
        ping(A_IP, B_IP, sport()),
        P.ether(P.ipv4(A_IP, B_IP, 47, b"\0" * 8)),  # GRE: no ports at all
    ):
        assert bench.run(FROM_ENDPOINT, frame) == PASS
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, P_IP, sport(), 1)) == SHOT


def test_sctp_port_rule(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, B_ID, SCTP, 3868)))
    assert bench.run(FROM_ENDPOINT, sctp(A_IP, B_IP, sport(), 3868)) == PASS
    assert bench.run(FROM_ENDPOINT, sctp(A_IP, B_IP, sport(), 3869)) == SHOT


def test_cidr_identity_covers_pods_and_addresses_in_the_block(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, CIDR_ID, P.TCP, 443, cookie=21)))
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, P_IP, sport(), 443)) == PASS  # via cidr_identity
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, CIDR_ONLY_IP, sport(), 443)) == PASS  # its identity
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, WORLD_IP, sport(), 443)) == SHOT
    evs = bench.events()
    assert [(e.dst_identity, e.cidr_identity, e.policy_cookie) for e in evs] == [
        (P_ID, CIDR_ID, 21),
        (CIDR_ID, CIDR_ID, 21),
        (int(Reserved.WORLD), 0, 0),
    ]


def test_peer_identity_wins_over_cidr_and_wildcard(bench: Bench) -> None:
    """decide() asks the identity first: a port rule for P means the CIDR's any-port rule is
    not consulted for P's other ports."""
    set_policies(
        bench,
        policy(allow(EG, P_ID, P.TCP, 80, cookie=1), PolicyEntry(EG, CIDR_ID, 0, 0, 0, 2)),
    )
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, P_IP, sport(), 80)) == PASS
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, P_IP, sport(), 81)) == PASS  # falls to the CIDR
    assert [e.policy_cookie for e in bench.events()] == [1, 2]


def test_wildcard_identity_with_a_port(bench: Bench) -> None:
    set_policies(bench, policy(allow(IN, 0, P.TCP, 8080, cookie=3)))
    for src in (B_IP, P_IP, WORLD_IP, NODE_IP):
        assert bench.run(TO_ENDPOINT, tcp(src, A_IP, sport(), 8080)) == PASS, src
        assert bench.run(TO_ENDPOINT, tcp(src, A_IP, sport(), 8081)) == SHOT, src


def test_world_and_host_identities(bench: Bench) -> None:
    set_policies(
        bench,
        policy(
            PolicyEntry(IN, int(Reserved.HOST), 0, 0, 0, 4),
            allow(IN, int(Reserved.WORLD), P.UDP, 53),
        ),
    )
    assert bench.run(TO_ENDPOINT, tcp(NODE_IP, A_IP, sport(), 10250)) == PASS
    assert bench.run(TO_ENDPOINT, udp(WORLD_IP, A_IP, sport(), 53)) == PASS
    assert bench.run(TO_ENDPOINT, udp(WORLD_IP, A_IP, sport(), 54)) == SHOT
    assert bench.run(TO_ENDPOINT, udp(P_IP, A_IP, sport(), 53)) == SHOT


def test_audit_mode_passes_would_be_drops_as_audit(bench: Bench) -> None:
    set_policies(bench, policy())
    bench.dp.endpoints.upsert(Endpoint(bench.ifindex["a"], A_ID, IPv4Address(A_IP), audit=True))
    port = sport()
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, port, 80)) == PASS
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, port, 80, P.ACK)) == PASS  # by CT now
    (ev,) = bench.events()
    assert (ev.event_type, ev.verdict, ev.drop_reason) == (
        EventType.POLICY_VERDICT,
        Verdict.AUDIT,
        0,
    )
    assert EventFlag.AUDIT_MODE in ev.flags
    (conn,) = bench.dp.ct.entries()
    assert conn.audit and conn.cookie == 0
    assert bench.dp.stats()["audited"] == 1
    # audit mode does not change what a valid allow says, nor excuse spoofing
    assert bench.run(FROM_ENDPOINT, tcp("10.9.9.9", B_IP, sport(), 80)) == SHOT


def test_allow_all_entry_for_directions_without_policy(bench: Bench) -> None:
    set_policies(bench, policy(allow_all(EG), allow_all(IN)))
    assert bench.run(FROM_ENDPOINT, udp(A_IP, WORLD_IP, sport(), 9)) == PASS
    assert bench.run(TO_ENDPOINT, udp(WORLD_IP, A_IP, sport(), 9)) == PASS
    assert {e.policy_cookie for e in bench.events()} == {COOKIE_NO_POLICY}


def test_unknown_endpoint_and_missing_policy_are_dropped(bench: Bench) -> None:
    set_policies(bench, policy(allow_all(EG)))
    assert bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, sport(), 9), on="unknown") == SHOT
    bench.dp.policy.delete(bench.ifindex["a"])
    assert bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, sport(), 9)) == SHOT
    unknown, no_policy = bench.events()
    assert unknown.drop_reason == DropReason.NO_MATCHING_LOCAL_CONTAINER_FOUND
    assert (unknown.endpoint_id, unknown.ifindex) == (0, bench.ifindex["unknown"])
    assert no_policy.drop_reason == (
        DropReason.NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION
    )
    assert EventFlag.NO_POLICY in no_policy.flags
    assert no_policy.endpoint_id == bench.ifindex["a"]


def test_anti_spoofing_on_from_endpoint(bench: Bench) -> None:
    set_policies(bench, policy(allow_all(EG)))
    assert bench.run(FROM_ENDPOINT, udp(B_IP, P_IP, sport(), 9)) == SHOT  # B's address from A
    assert bench.run(FROM_ENDPOINT, udp(A_IP, P_IP, sport(), 9)) == PASS
    assert bench.events()[0].drop_reason == DropReason.INVALID_SOURCE_IP


def test_arp_passes_and_ipv6_is_dropped_as_unsupported(bench: Bench) -> None:
    set_policies(bench, policy())
    arp = P.ether(b"\0\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, proto=0x0806)
    ipv6 = P.ether(b"\x60" + b"\0" * 39, proto=0x86DD)
    assert bench.run(FROM_ENDPOINT, arp) == PASS
    assert bench.run(TO_ENDPOINT, arp, on="unknown") == PASS  # ARP needs no endpoint
    assert bench.run(FROM_ENDPOINT, ipv6) == SHOT
    (ev,) = bench.events()
    assert (ev.drop_reason, ev.ethertype, ev.is_reply) == (
        DropReason.UNSUPPORTED_L3_PROTOCOL,
        0x86DD,
        None,
    )
    stats = bench.dp.stats()
    assert stats["arp"] == 2 and stats["drop_unsupported_l3_protocol"] == 1


# -- connection tracking -----------------------------------------------------------------------


def test_replies_pass_by_conntrack_in_both_scopes(bench: Bench) -> None:
    """A opens to B on this node: A's egress decision and B's ingress decision each make an
    entry; replies pass both programs although neither side allows anything back."""
    set_policies(
        bench,
        policy(allow(EG, B_ID, P.TCP, 80, cookie=1)),
        policy(allow(IN, A_ID, P.TCP, 80, cookie=2)),
    )
    sp = sport()
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sp, 80), on="a") == PASS
    assert bench.run(TO_ENDPOINT, tcp(A_IP, B_IP, sp, 80), on="b") == PASS
    synack = tcp(B_IP, A_IP, 80, sp, P.SYN | P.ACK)
    assert bench.run(FROM_ENDPOINT, synack, on="b") == PASS
    assert bench.run(TO_ENDPOINT, synack, on="a") == PASS
    ack = tcp(A_IP, B_IP, sp, 80, P.ACK, b"data")
    assert bench.run(FROM_ENDPOINT, ack, on="a") == PASS
    assert bench.run(TO_ENDPOINT, ack, on="b") == PASS

    conns = {c.scope: c for c in bench.dp.ct.entries()}
    assert set(conns) == {EG, IN}
    for c in conns.values():
        assert (str(c.saddr), c.sport, str(c.daddr), c.dport) == (A_IP, sp, B_IP, 80)
        assert c.reply_seen and (c.packets_fwd, c.packets_rev) == (2, 1)
        assert c.tcp_flags_fwd == P.SYN | P.ACK and c.tcp_flags_rev == P.SYN | P.ACK
    assert (conns[EG].cookie, conns[IN].cookie) == (1, 2)
    assert conns[EG].peer_identity == B_ID and conns[IN].peer_identity == A_ID

    evs = bench.events()
    kinds = [(e.event_type, e.obs_point, e.ct_state, e.is_reply) for e in evs]
    assert kinds == [
        (EventType.POLICY_VERDICT, ObservationPoint.FROM_ENDPOINT, CtState.NEW, False),
        (EventType.POLICY_VERDICT, ObservationPoint.TO_ENDPOINT, CtState.NEW, False),
        (EventType.TRACE, ObservationPoint.FROM_ENDPOINT, CtState.REPLY, True),  # first reply
        (EventType.TRACE, ObservationPoint.TO_ENDPOINT, CtState.REPLY, True),
    ]  # the ACK carries nothing new: no event
    # A reply-direction packet that no connection explains is a new connection: denied
    assert bench.run(TO_ENDPOINT, tcp(B_IP, A_IP, 80, sport(), P.ACK), on="a") == SHOT


def test_tcp_without_syn_is_decided_like_a_new_connection(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, B_ID, P.TCP, 80)))
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sport(), 80, P.ACK)) == PASS
    assert bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sport(), 81, P.ACK)) == SHOT
    (conn,) = bench.dp.ct.entries()
    assert not conn.reply_seen


def test_tcp_lifetimes_syn_established_closing(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, B_ID, P.TCP, 80)))
    sp = sport()

    def expires_in() -> float:
        (conn,) = bench.dp.ct.entries()
        return (conn.expires_ns - time.monotonic_ns()) / 1e9

    bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sp, 80, P.SYN))
    assert 50 < expires_in() <= 60
    bench.run(TO_ENDPOINT, tcp(B_IP, A_IP, 80, sp, P.SYN | P.ACK))
    assert expires_in() > 6 * 3600 - 10
    bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sp, 80, P.FIN | P.ACK))
    assert 0 < expires_in() <= 10
    (conn,) = bench.dp.ct.entries()
    assert conn.closing and conn.flags & CT_F_REPLY_SEEN
    # a new SYN on the same tuple reopens it
    bench.run(FROM_ENDPOINT, tcp(A_IP, B_IP, sp, 80, P.SYN))
    (conn,) = bench.dp.ct.entries()
    assert not conn.closing
    fin_events = [e for e in bench.events() if e.tcp_flags & P.FIN]
    assert len(fin_events) == 1 and fin_events[0].event_type == EventType.TRACE


def test_udp_and_icmp_lifetime_and_echo_replies(bench: Bench) -> None:
    set_policies(bench, policy(PolicyEntry(EG, 0, 0, 0, 0, 1)))
    assert bench.run(FROM_ENDPOINT, ping(A_IP, WORLD_IP, 77)) == PASS
    assert bench.run(TO_ENDPOINT, ping(WORLD_IP, A_IP, 77, reply=True)) == PASS
    assert bench.run(TO_ENDPOINT, ping(WORLD_IP, A_IP, 78, reply=True)) == SHOT  # other id
    (conn,) = bench.dp.ct.entries()
    assert (conn.proto, conn.sport, conn.dport, conn.reply_seen) == (P.ICMP, 77, 0, True)
    assert 50 < (conn.expires_ns - time.monotonic_ns()) / 1e9 <= 60


def test_expired_entries_are_decided_again_and_collected(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, B_ID, P.UDP, 53)))
    sp = sport()
    assert bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, sp, 53)) == PASS
    bench.dp.policy.set_policy(bench.ifindex["a"], policy())  # now nothing is allowed
    assert bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, sp, 53)) == PASS  # the live entry

    (conn,) = bench.dp.ct.entries()
    stale = CtEntry.from_buffer_copy(bytes(_entry_struct(bench, conn)))
    stale.expires_ns = time.monotonic_ns() - 1
    bench.dp.ct.put(conn.key(), stale)
    assert bench.run(TO_ENDPOINT, udp(B_IP, A_IP, 53, sp)) == SHOT  # no reply to a dead entry
    assert bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, sp, 53)) == SHOT  # re-decided: denied

    bench.dp.policy.set_policy(bench.ifindex["a"], policy(allow(EG, B_ID, P.UDP, 53)))
    assert bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, sp, 53)) == PASS  # re-decided: allowed
    (fresh,) = bench.dp.ct.entries()
    assert fresh.expires_ns > time.monotonic_ns() and fresh.packets_fwd == 1

    bench.dp.ct.put(fresh.key(), stale)
    assert bench.dp.ct.gc() == 1 and bench.dp.ct.entries() == []


def _entry_struct(bench: Bench, conn) -> CtEntry:
    value = bench.dp.ct.map.lookup(conn.key())
    assert value is not None
    return value


def test_related_icmp_errors_pass_with_their_connection(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, 0, P.UDP, 53)), policy(allow(IN, A_ID, P.UDP, 53)))
    sp = sport()
    query = P.ipv4(A_IP, WORLD_IP, P.UDP, P.udp(A_IP, WORLD_IP, sp, 53, b"q"))
    assert bench.run(FROM_ENDPOINT, P.ether(query)) == PASS
    # the world answers "port unreachable": A's ingress allows nothing, it passes as related
    assert bench.run(TO_ENDPOINT, icmp_error(WORLD_IP, A_IP, query)) == PASS
    # an error about a connection nobody made is a new packet for the policy
    other = P.ipv4(A_IP, WORLD_IP, P.UDP, P.udp(A_IP, WORLD_IP, sp + 1, 53, b"q"))
    assert bench.run(TO_ENDPOINT, icmp_error(WORLD_IP, A_IP, other)) == SHOT
    # B accepted A's query; B's own "port unreachable" back to A passes B's egress as related
    sp2 = sport()
    q2 = P.ipv4(A_IP, B_IP, P.UDP, P.udp(A_IP, B_IP, sp2, 53, b"q"))
    assert bench.run(TO_ENDPOINT, P.ether(q2), on="b") == PASS
    assert bench.run(FROM_ENDPOINT, icmp_error(B_IP, A_IP, q2), on="b") == PASS
    related = [e for e in bench.events() if e.ct_state == CtState.RELATED]
    assert len(related) == 2 and all(EventFlag.ICMP_ERROR in e.flags for e in related)
    assert bench.dp.stats()["ct_related"] == 2
    assert all(c.proto == P.UDP for c in bench.dp.ct.entries())  # errors make no entries


# -- malformed packets -------------------------------------------------------------------------


def _malformed() -> dict[str, tuple[bytes, DropReason]]:
    seg = P.tcp(A_IP, B_IP, 40000, 80, P.SYN)
    bad = DropReason.INVALID_PACKET_DROPPED
    trunc = DropReason.CT_TRUNCATED_OR_INVALID_HEADER
    # (an IP header shorter than 20 bytes never reaches a program through test_run: the kernel
    # refuses such input, so test_datapath_netns injects one on a real interface)
    return {
        "ihl-below-5": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg, ihl=4)), bad),
        "ihl-0": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg, ihl=0)), bad),
        "version-6-in-ipv4": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg, version=6)), bad),
        "tot-len-beyond-packet": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg, tot_len=200)), bad),
        "tot-len-below-header": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg, tot_len=12)), bad),
        "ihl-beyond-tot-len": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg, ihl=15, tot_len=40)), bad),
        "tcp-truncated": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg[:12])), trunc),
        "tcp-cut-by-tot-len": (P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg, tot_len=30)), trunc),
        "udp-truncated": (P.ether(P.ipv4(A_IP, B_IP, P.UDP, b"\x13\x88\x00")), trunc),
        "sctp-truncated": (P.ether(P.ipv4(A_IP, B_IP, SCTP, b"\0" * 8)), trunc),
        "icmp-truncated": (P.ether(P.ipv4(A_IP, B_IP, P.ICMP, b"\x08\x00")), trunc),
        "icmp-error-without-quote": (
            P.ether(P.ipv4(A_IP, B_IP, P.ICMP, b"\x03\x03\0\0\0\0\0\0" + b"\x45" + b"\0" * 10)),
            trunc,
        ),
        "later-fragment-without-first": (
            P.ether(P.ipv4(A_IP, B_IP, P.UDP, b"y" * 24, frag_off=3, ident=999)),
            DropReason.FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
        ),
        "first-fragment-too-short-for-ports": (
            P.ether(P.ipv4(A_IP, B_IP, P.TCP, seg[:2], frag_off=0x2000, ident=998)),
            trunc,
        ),
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_malformed_packets_are_dropped_with_a_reason(bench: Bench, case: str) -> None:
    set_policies(bench, policy(allow_all(EG), allow_all(IN)))  # allow-all: only parsing drops
    frame, reason = _malformed()[case]
    for prog in (FROM_ENDPOINT, TO_ENDPOINT):
        run = bench.run_full(prog, frame)
        assert run.retval == SHOT, prog
        assert run.data == frame  # never rewritten
    evs = bench.events()
    assert [e.drop_reason for e in evs] == [reason, reason]
    assert [e.event_type for e in evs] == [EventType.DROP] * 2
    assert bench.dp.ct.entries() == []


def test_fragments_get_their_first_fragments_verdict(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, B_ID, P.UDP, 53)))
    payload = P.udp(A_IP, B_IP, 5353, 53, b"x" * 40)
    first = P.ether(P.ipv4(A_IP, B_IP, P.UDP, payload[:24], frag_off=0x2000, ident=7))
    rest = P.ether(P.ipv4(A_IP, B_IP, P.UDP, payload[24:], frag_off=3, ident=7))
    assert bench.run(FROM_ENDPOINT, first) == PASS
    assert bench.run(FROM_ENDPOINT, rest) == PASS
    # the same for a datagram the policy denies: the later fragment is denied too
    denied = P.udp(A_IP, B_IP, 5353, 54, b"x" * 40)
    assert (
        bench.run(
            FROM_ENDPOINT, P.ether(P.ipv4(A_IP, B_IP, P.UDP, denied[:24], frag_off=0x2000, ident=8))
        )
        == SHOT
    )
    assert (
        bench.run(
            FROM_ENDPOINT, P.ether(P.ipv4(A_IP, B_IP, P.UDP, denied[24:], frag_off=3, ident=8))
        )
        == SHOT
    )
    evs = bench.events()
    assert all(EventFlag.FRAGMENT in e.flags for e in evs)
    assert [(e.verdict, e.dport) for e in evs] == [
        (Verdict.FORWARDED, 53),
        (Verdict.DROPPED, 54),
        (Verdict.DROPPED, 54),
    ]
    assert bench.dp.stats()["fragments"] == 4


# Frames a fuzzer builds: random bytes after an IPv4 (or any) ethertype, or a valid IPv4 header
# with a random tail, or a broken header of a valid packet.
_ethertypes = st.sampled_from([0x0800, 0x0800, 0x0800, 0x86DD, 0x8100, 0x0806, 0x88CC])


@st.composite
def garbage_frames(draw) -> bytes:
    kind = draw(st.sampled_from(["raw", "ip-tail", "header-bits"]))
    if kind == "raw":
        body = draw(st.binary(min_size=0, max_size=120))
        return P.ether(body, proto=draw(_ethertypes))
    proto = draw(st.sampled_from([P.TCP, P.UDP, P.ICMP, SCTP, 0, 47, 255]))
    if kind == "ip-tail":
        tail = draw(st.binary(min_size=0, max_size=80))
        return P.ether(
            P.ipv4(A_IP, B_IP, proto, tail, frag_off=draw(st.sampled_from([0, 0x2000, 5, 0x4000])))
        )
    frame = bytearray(tcp(A_IP, B_IP, 40000, 80))
    for _ in range(draw(st.integers(1, 4))):
        frame[draw(st.integers(14, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame[: draw(st.integers(14, len(frame)))])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=garbage_frames())
def test_garbage_never_passes_a_deny_all_endpoint(bench: Bench, frame: bytes) -> None:
    """With nothing allowed, only ARP may pass, whatever the bytes; every drop is an event."""
    set_policies(bench, policy(), policy())
    is_arp = frame[12:14] == b"\x08\x06"
    if len(frame) < 14 + {b"\x08\x00": 20, b"\x86\xdd": 40}.get(frame[12:14], 0):
        # test_run itself refuses IPv4/IPv6 frames without a whole IP header
        with pytest.raises(OSError, match="Invalid argument"):
            bench.run(FROM_ENDPOINT, frame)
        return
    for prog in (FROM_ENDPOINT, TO_ENDPOINT):
        verdict = bench.run(prog, frame)
        assert verdict == (PASS if is_arp else SHOT), (prog, frame.hex())
    evs = bench.events()
    assert len(evs) == (0 if is_arp else 2)
    assert all(e.verdict == Verdict.DROPPED and e.drop_reason for e in evs)
    assert bench.dp.ct.entries() == []


def _well_formed(frame: bytes) -> bool:
    """What may pass an allow-all endpoint: ARP, or IPv4 whose header lengths hold together and
    whose L4 header is all there (non-first fragments carry none; their ports come from the
    tracker, so they are left out of this check)."""
    if frame[12:14] == b"\x08\x06":
        return True
    if frame[12:14] != b"\x08\x00" or len(frame) < 34:
        return False
    ip = frame[14:]
    ihl, tot_len = (ip[0] & 0xF) * 4, int.from_bytes(ip[2:4], "big")
    if ip[0] >> 4 != 4 or ihl < 20 or not ihl <= tot_len <= len(ip):
        return False
    need = {P.TCP: 20, P.UDP: 8, SCTP: 12, P.ICMP: 8}.get(ip[9], 0)
    if ip[9] == P.ICMP and tot_len - ihl >= 1 and ip[ihl] in (3, 4, 5, 11, 12):
        need = 8 + 20 + 8  # an ICMP error must quote a header and 8 bytes
    return tot_len - ihl >= need


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=garbage_frames())
def test_garbage_passes_an_allow_all_endpoint_only_when_well_formed(
    bench: Bench, frame: bytes
) -> None:
    set_policies(bench, policy(allow_all(EG), allow_all(IN)), policy(allow_all(EG), allow_all(IN)))
    if len(frame) < 14 + {b"\x08\x00": 20, b"\x86\xdd": 40}.get(frame[12:14], 0):
        return  # refused by test_run itself (see above)
    later_fragment = frame[12:14] == b"\x08\x00" and int.from_bytes(frame[20:22], "big") & 0x1FFF
    for prog, on in ((FROM_ENDPOINT, "a"), (TO_ENDPOINT, "a")):
        verdict = bench.run(prog, frame, on)
        assert verdict in (PASS, SHOT)
        if verdict == PASS and not later_fragment:
            assert _well_formed(frame), (prog, frame.hex())
        if verdict == SHOT:
            assert bench.events()[-1].verdict == Verdict.DROPPED
    bench.dp.ct.flush()


# -- events ------------------------------------------------------------------------------------


def test_event_record_fields(bench: Bench) -> None:
    set_policies(bench, policy(allow(EG, B_ID, P.TCP, 80, cookie=0xC0FFEE)))
    before = time.monotonic_ns()
    frame = tcp(A_IP, B_IP, 43210, 80, P.SYN, b"hello")
    bench.run(FROM_ENDPOINT, frame)
    bench.run(TO_ENDPOINT, ping(P_IP, A_IP, 5))
    allowed, dropped = bench.events()
    assert before <= allowed.ktime_ns <= time.monotonic_ns()
    assert allowed == flowevent.FlowEvent(
        ktime_ns=allowed.ktime_ns,
        event_type=EventType.POLICY_VERDICT,
        verdict=Verdict.FORWARDED,
        drop_reason=0,
        traffic_direction=TrafficDirection.EGRESS,
        obs_point=ObservationPoint.FROM_ENDPOINT,
        is_reply=False,
        ct_state=CtState.NEW,
        src_identity=A_ID,
        dst_identity=B_ID,
        cidr_identity=0,
        endpoint_id=bench.ifindex["a"],
        ifindex=bench.ifindex["a"],
        policy_cookie=0xC0FFEE,
        saddr=IPv4Address(A_IP),
        daddr=IPv4Address(B_IP),
        sport=43210,
        dport=80,
        proto=P.TCP,
        tcp_flags=P.SYN,
        icmp_type=0,
        icmp_code=0,
        pkt_len=len(frame),
        ethertype=0x0800,
        flags=EventFlag(0),
    )
    assert (dropped.event_type, dropped.verdict, dropped.drop_reason) == (
        EventType.DROP,
        Verdict.DROPPED,
        DropReason.POLICY_DENIED,
    )
    assert (dropped.traffic_direction, dropped.obs_point) == (
        TrafficDirection.INGRESS,
        ObservationPoint.TO_ENDPOINT,
    )
    assert (dropped.src_identity, dropped.dst_identity, dropped.cidr_identity) == (
        P_ID,
        A_ID,
        CIDR_ID,
    )
    assert (dropped.proto, dropped.icmp_type, dropped.sport, dropped.dport) == (P.ICMP, 8, 0, 0)
    assert dropped.is_reply is False


def test_batch_decode_is_columnar(bench: Bench) -> None:
    set_policies(bench, policy())
    for i in range(50):
        bench.run(FROM_ENDPOINT, udp(A_IP, B_IP, 1000 + i, 53))
    ring = bench.dp.ring()
    try:
        arr = flowevent.decode(ring.drain())
    finally:
        ring.close()
    assert arr.dtype == flowevent.EVENT_DTYPE and len(arr) == 50
    assert (arr["drop_reason"] == DropReason.POLICY_DENIED).all()
    assert arr["sport"].tolist() == list(range(1000, 1050))
    assert flowevent.ipv4(arr["daddr"][:1]) == [IPv4Address(B_IP)]


def test_a_full_ring_counts_lost_events(ns, pin_root: Path) -> None:
    name, ifindex = ns
    with bench_in(name, ifindex, pin_root / "tiny", events_bytes=4096) as b:
        set_policies(b, policy())
        for i in range(200):
            b.run(FROM_ENDPOINT, udp(A_IP, B_IP, 2000 + i, 53))
        kept = b.events()
        lost = b.dp.lost_events()
        assert 0 < len(kept) < 200
        assert len(kept) + lost == 200  # every event is either delivered or counted
        assert b.dp.stats()["events"] == len(kept)
        assert b.dp.stats()["drop_policy_denied"] == 200  # the drops themselves all happened
        b.run(FROM_ENDPOINT, udp(A_IP, B_IP, 1, 53))
        assert len(b.events()) == 1  # space again


# -- the kernel against the model --------------------------------------------------------------

# peer address -> (identity, CIDR identity), as the bench's ipcache has them
PEERS = {
    B_IP: (B_ID, 0),
    P_IP: (P_ID, CIDR_ID),
    CIDR_ONLY_IP: (CIDR_ID, CIDR_ID),
    NODE_IP: (int(Reserved.HOST), 0),
    WORLD_IP: (int(Reserved.WORLD), 0),
}
_identities = st.sampled_from([0, B_ID, P_ID, CIDR_ID, int(Reserved.HOST), int(Reserved.WORLD)])
_protocols = st.sampled_from([0, P.TCP, P.UDP, SCTP, P.ICMP])
_ports = st.one_of(st.sampled_from([0, 8, 53, 80, 443, 8000, 8080, 65535]), st.integers(0, 65535))


@st.composite
def policy_entries(draw) -> PolicyEntry:
    proto = draw(_protocols)
    return PolicyEntry(
        draw(st.sampled_from([EG, IN])),
        draw(_identities),
        proto,
        draw(_ports),
        draw(st.one_of(st.just(16), st.integers(0, 16))),
        draw(st.integers(1, 40)),  # few cookies: entries sharing a key must resolve alike
    )


@st.composite
def probes(draw, entries: list[PolicyEntry]) -> tuple[Direction, str, int, int]:
    """A packet: direction, peer, protocol, port; often one an entry is about."""
    if entries and draw(st.booleans()):
        e = draw(st.sampled_from(entries))
        proto = e.protocol or draw(_protocols.filter(bool))
        port = (e.port + draw(st.sampled_from([0, 0, 1, -1, 255, 256]))) % 65536
        direction = e.direction
    else:
        proto, port, direction = (
            draw(_protocols.filter(bool)),
            draw(_ports),
            draw(st.sampled_from([EG, IN])),
        )
    return direction, draw(st.sampled_from(sorted(PEERS))), proto, port


def probe_frame(direction: Direction, peer: str, proto: int, port: int) -> tuple[bytes, int]:
    """The frame and the port the policy sees (ICMP: the type; echo requests here)."""
    src, dst = (A_IP, peer) if direction == EG else (peer, A_IP)
    sp = sport()
    if proto == P.TCP:
        return tcp(src, dst, sp, port), port
    if proto == P.UDP:
        return udp(src, dst, sp, port), port
    if proto == SCTP:
        return sctp(src, dst, sp, port), port
    return ping(src, dst, sp), 8


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_kernel_decides_exactly_as_the_model(bench: Bench, data: st.DataObject) -> None:
    entries = data.draw(st.lists(policy_entries(), max_size=12))
    model = EndpointPolicy(frozenset(entries))
    bench.dp.policy.set_policy(bench.ifindex["a"], model)
    packets = data.draw(st.lists(probes(entries), min_size=1, max_size=15))
    for direction, peer, proto, port in packets:
        frame, policy_port = probe_frame(direction, peer, proto, port)
        ident, cidr = PEERS[peer]
        want = model.decide(direction, ident, cidr, proto, policy_port)
        prog = FROM_ENDPOINT if direction == EG else TO_ENDPOINT
        verdict = bench.run(prog, frame)
        (ev,) = bench.events()
        bench.dp.ct.flush()
        got = (verdict, ev.policy_cookie)
        assert got == ((PASS, want.cookie) if want else (SHOT, 0)), (direction, peer, proto, port)
        map_says = bench.dp.policy.decide(
            bench.ifindex["a"], direction, ident, cidr, proto, policy_port
        )
        assert (map_says.allowed, map_says.cookie) == ((True, want.cookie) if want else (False, 0))
