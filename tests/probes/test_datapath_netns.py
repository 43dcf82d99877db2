"""The datapath on real traffic: two pods on one node-like namespace, each behind a veth whose
host side carries from_endpoint/to_endpoint, attached with the loader; real TCP, UDP and ping
allowed and denied; a second load on the same pins (a restarted agent) swapping programs while a
connection stays up.

    node (forwarding; host veths lxca, lxcb with 169.254.1.1)
      |            |
    pod a        pod b
    10.0.1.10    10.0.1.11
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from pyroute2 import AsyncIPRoute, netns

from dataplane.maps import flowevent
from dataplane.maps.flowevent import DropReason, EventType, ObservationPoint, Verdict
from dataplane.maps.ipcache import IPCacheValue
from dataplane.policy.entry import Direction, EndpointPolicy, PolicyEntry, allow_all
from flowscope.setns import enter_netns
from probes import tcattach
from probes.datapath import FROM_ENDPOINT, TC_PRIO, TO_ENDPOINT, Datapath
from tests.conftest import unique
from tests.probes.overlay import PeerServer, ask_tcp, ping, plumb_pod, sock

pytestmark = pytest.mark.privileged

OPEN_PORT, CLOSED_PORT = 8080, 9090
A_ID, B_ID = 1000, 1001
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0


@dataclass(frozen=True)
class Pod:
    ns: str
    ip: str
    host_if: str
    identity: int


@dataclass
class World:
    prefix: str = field(default_factory=lambda: unique("fsdp"))
    namespaces: list[str] = field(default_factory=list)
    pods: dict[str, Pod] = field(default_factory=dict)

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    def _ns(self, name: str) -> str:
        netns.create(name)
        self.namespaces.append(name)
        return name

    async def build(self) -> World:
        self._ns(self.node)
        with ThreadPoolExecutor(
            1, initializer=enter_netns, initargs=(f"/run/netns/{self.node}",)
        ) as pool:
            pool.submit(Path("/proc/sys/net/ipv4/ip_forward").write_text, "1\n").result()
        async with AsyncIPRoute(netns=self.node, flags=0) as ipr:
            await ipr.link("set", ifname="lo", state="up")
        await self._pod("a", "10.0.1.10", A_ID)
        await self._pod("b", "10.0.1.11", B_ID)
        return self

    async def _pod(self, name: str, ip: str, identity: int) -> None:
        ns = self._ns(f"{self.prefix}-{name}")
        host_if = f"lxc{name}"
        await plumb_pod(self.node, ns, host_if, ip)
        self.pods[name] = Pod(ns, ip, host_if, identity)

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            with contextlib.suppress(OSError, FileNotFoundError):
                netns.remove(ns)
        self.namespaces.clear()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    try:
        asyncio.run(w.build())
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def servers(world: World) -> Iterator[dict[str, list[PeerServer]]]:
    out: dict[str, list[PeerServer]] = {}
    try:
        for name, pod in world.pods.items():
            out[name] = [PeerServer(pod.ns, OPEN_PORT), PeerServer(pod.ns, CLOSED_PORT)]
        yield out
    finally:
        for group in out.values():
            for srv in group:
                srv.close()


# a may open anything; b accepts TCP and UDP on OPEN_PORT from a, and ping from anyone
A_POLICY = EndpointPolicy(frozenset({allow_all(Direction.EGRESS, cookie=1)}))
B_POLICY = EndpointPolicy(
    frozenset(
        {
            PolicyEntry(Direction.INGRESS, A_ID, 6, OPEN_PORT, 16, 21),
            PolicyEntry(Direction.INGRESS, A_ID, 17, OPEN_PORT, 16, 22),
            PolicyEntry(Direction.INGRESS, 0, 1, 8, 16, 23),  # ICMP echo request (type 8)
            allow_all(Direction.EGRESS, cookie=2),
        }
    )
)


async def _load_and_attach(world: World, pin_dir: Path) -> Datapath:
    dp = Datapath.load(pin_dir)
    dp.ipcache.sync(
        {IPv4Network(f"{p.ip}/32"): IPCacheValue(p.identity) for p in world.pods.values()}
    )
    for name, pod in world.pods.items():
        policy = A_POLICY if name == "a" else B_POLICY
        await dp.add_endpoint(world.node, pod.host_if, pod.identity, IPv4Address(pod.ip), policy)
    return dp


@pytest.fixture
async def dp(world: World, servers, pin_root: Path) -> AsyncIterator[Datapath]:
    d = await _load_and_attach(world, pin_root / "node")
    try:
        yield d
    finally:
        for pod in world.pods.values():
            await d.detach_endpoint(world.node, pod.host_if)
        d.unpin()
        d.close()


def connect(pod: Pod, dst: str, port: int, timeout: float = 2.0) -> socket.socket:
    s = sock(pod.ns)
    s.settimeout(timeout)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    try:
        s.connect((dst, port))
    except BaseException:
        s.close()
        raise
    return s


def udp_ask(pod: Pod, dst: str, port: int, message: bytes, timeout: float = 1.0) -> bytes | None:
    s = sock(pod.ns, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)  # allow fragments
        s.sendto(message, (dst, port))
        data = b""
        while b"|" not in data or len(data.partition(b"|")[2]) < len(message):
            data += s.recv(1 << 16)
        return data.partition(b"|")[2]
    except TimeoutError:
        return None
    finally:
        s.close()


def ip_events(dp: Datapath) -> list[flowevent.FlowEvent]:
    """This test's IPv4 events (the pods' own IPv6 chatter is dropped and reported too)."""
    ring = dp.ring()
    try:
        return [e for e in flowevent.events(flowevent.decode(ring.drain())) if e.proto]
    finally:
        ring.close()


async def test_policy_allows_and_denies_real_traffic(world: World, dp: Datapath) -> None:
    a, b = world.pods["a"], world.pods["b"]
    with connect(a, b.ip, OPEN_PORT) as c:
        assert ask_tcp(c, b"hello")[::2] == (a.ip, b"hello")
    with pytest.raises(TimeoutError):
        connect(a, b.ip, CLOSED_PORT, timeout=0.5)
    assert udp_ask(a, b.ip, OPEN_PORT, b"dns?") == b"dns?"
    assert udp_ask(a, b.ip, CLOSED_PORT, b"nope", timeout=0.5) is None
    assert ping(a.ns, b.ip, ident=4711)
    # b's egress allows all, but a's ingress was never opened to b: only replies come back
    with pytest.raises(TimeoutError):
        connect(b, a.ip, OPEN_PORT, timeout=0.5)

    evs = ip_events(dp)
    allowed = {
        (e.obs_point, e.proto, e.dport, e.policy_cookie)
        for e in evs
        if e.event_type == EventType.POLICY_VERDICT and e.verdict == Verdict.FORWARDED
    }
    assert (ObservationPoint.TO_ENDPOINT, 6, OPEN_PORT, 21) in allowed
    assert (ObservationPoint.TO_ENDPOINT, 17, OPEN_PORT, 22) in allowed
    assert (ObservationPoint.TO_ENDPOINT, 1, 0, 23) in allowed
    assert (ObservationPoint.FROM_ENDPOINT, 6, OPEN_PORT, 1) in allowed
    denied = {
        (str(e.saddr), str(e.daddr), e.dport, e.src_identity, e.dst_identity)
        for e in evs
        if e.drop_reason == DropReason.POLICY_DENIED
    }
    assert (a.ip, b.ip, CLOSED_PORT, A_ID, B_ID) in denied
    assert (b.ip, a.ip, OPEN_PORT, B_ID, A_ID) in denied
    replies = [e for e in evs if e.is_reply and e.event_type == EventType.TRACE]
    assert replies  # the first reply of each connection is reported
    stats = dp.stats()
    assert stats["ct_reply"] > 0 and stats["lost_events"] == 0
    assert stats["drop_policy_denied"] >= 3


async def test_fragmented_datagrams_pass_both_ways(world: World, dp: Datapath) -> None:
    a, b = world.pods["a"], world.pods["b"]
    big = b"f" * 4000  # three fragments each way at MTU 1500
    assert udp_ask(a, b.ip, OPEN_PORT, big) == big
    assert udp_ask(a, b.ip, CLOSED_PORT, big, timeout=0.5) is None
    stats = dp.stats()
    assert stats["fragments"] >= 12  # request and reply, at both hooks
    assert stats.get("drop_first_logical_datagram_fragment_not_found", 0) == 0


async def test_a_truncated_ip_header_on_the_wire_is_dropped(world: World, dp: Datapath) -> None:
    """A frame too short for an IP header, sent below IP on the pod's eth0 (test_run cannot
    carry one): from_endpoint drops it as an invalid packet."""
    a = world.pods["a"]
    tx = netns.create_socket(a.ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003), flags=0)
    try:
        tx.bind(("eth0", 0))
        before = dp.drops().get(DropReason.INVALID_PACKET_DROPPED, 0)
        runt = b"\xff" * 6 + b"\x02\0\0\0\0\x09" + b"\x08\x00" + b"\x45\x00\x00"
        with contextlib.suppress(OSError):  # the veth may report the drop back
            tx.sendto(runt, ("eth0", 0))
        for _ in range(50):
            if dp.drops().get(DropReason.INVALID_PACKET_DROPPED, 0) > before:
                break
            await asyncio.sleep(0.02)
        assert dp.drops()[DropReason.INVALID_PACKET_DROPPED] == before + 1
    finally:
        tx.close()


async def test_a_restarted_agent_swaps_programs_under_a_live_connection(
    world: World, servers, pin_root: Path
) -> None:
    a, b = world.pods["a"], world.pods["b"]
    first = await _load_and_attach(world, pin_root / "node")
    second = None
    try:
        with connect(a, b.ip, OPEN_PORT) as c:
            assert ask_tcp(c, b"before")[2] == b"before"
            first.close()  # kill -9: fds gone, programs stay attached and pinned
            # still enforcing with nobody running
            assert ask_tcp(c, b"orphaned")[2] == b"orphaned"
            with pytest.raises(TimeoutError):
                connect(a, b.ip, CLOSED_PORT, timeout=0.5)

            second = Datapath.load(pin_root / "node")
            assert all(second.adopted.values())
            assert second.policy.get(second.endpoints.entries()[0].endpoint_id) is not None
            for pod in world.pods.values():
                await second.attach_endpoint(world.node, pod.host_if)  # atomic replace
            assert ask_tcp(c, b"after")[2] == b"after"  # the connection never noticed
            with pytest.raises(TimeoutError):
                connect(a, b.ip, CLOSED_PORT, timeout=0.5)
            for hook, name in (
                (tcattach.Hook.INGRESS, FROM_ENDPOINT),
                (tcattach.Hook.EGRESS, TO_ENDPOINT),
            ):
                found = await tcattach.filters(world.node, a.host_if, hook)
                assert [(f.name, f.prio) for f in found] == [(name, TC_PRIO)]
    finally:
        live = second or first
        for pod in world.pods.values():
            await live.detach_endpoint(world.node, pod.host_if)
        live.unpin()
        live.close()
        first.close()


async def test_removing_an_endpoint_detaches_and_forgets_it(world: World, dp: Datapath) -> None:
    a, b = world.pods["a"], world.pods["b"]
    before = {e.ifindex for e in dp.endpoints.entries()}
    await dp.remove_endpoint(world.node, b.host_if)
    assert await tcattach.filters(world.node, b.host_if, tcattach.Hook.EGRESS) == []
    (left,) = dp.endpoints.entries()
    assert left.ifindex in before and dp.policy.endpoints() == [left.ifindex]
    # without programs on b's veth, b's ingress is not enforced any more
    with connect(a, b.ip, CLOSED_PORT) as c:
        assert ask_tcp(c, b"open")[2] == b"open"
    await dp.remove_endpoint(world.node, b.host_if)  # idempotent
