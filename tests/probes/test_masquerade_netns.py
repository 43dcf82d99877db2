"""Masquerade on real traffic: pods behind lab-style nodes reach a VNET host that cannot route
back to the pod CIDR, only because their packets leave with the node's IP."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dataplane.maps.natmap import NAT_DIR_OUT
from probes import tcattach
from probes.masquerade import TC_PRIO, Masquerade
from tests.probes.overlay import (
    NATIVE_CIDR,
    OUTSIDE_IP,
    Overlay,
    PeerServer,
    ask_tcp,
    ping,
    sock,
)

pytestmark = pytest.mark.privileged
PORT = 8080
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0  # <linux/in.h>; not in Python 3.11's socket


@pytest.fixture
def server(overlay: Overlay) -> Iterator[PeerServer]:
    srv = PeerServer(overlay.outside, PORT)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
async def masq(overlay: Overlay, pin_root: Path) -> AsyncIterator[dict[str, Masquerade]]:
    """Masquerade loaded and attached on both nodes: one compiled object, two instances."""
    loaded: dict[str, Masquerade] = {}
    try:
        for name, node in overlay.nodes.items():
            m = Masquerade.load(pin_root / name)
            loaded[name] = m
            await m.attach(node.ns, "eth0", node.ip, NATIVE_CIDR)
        yield loaded
    finally:
        for m in loaded.values():
            await m.detach()
            m.unpin()
            m.close()


def connect(ns: str, dst: str, *, bind_port: int = 0, timeout: float = 2.0) -> socket.socket:
    s = sock(ns)
    s.settimeout(timeout)
    # close with RST: no FIN retransmissions wander into the next test's masquerade
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if bind_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", bind_port))
    s.connect((dst, PORT))
    return s


def udp_ask(ns: str, dst: str, message: bytes, timeout: float = 1.0) -> bytes | None:
    s = sock(ns, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(message, (dst, PORT))
        return s.recv(4096)
    except TimeoutError:
        return None
    finally:
        s.close()


def test_without_masquerade_the_outside_is_unreachable(
    overlay: Overlay, server: PeerServer
) -> None:
    pod = overlay.pods["a1"]
    with pytest.raises(TimeoutError):
        connect(pod.ns, OUTSIDE_IP, timeout=0.7)
    assert udp_ask(pod.ns, OUTSIDE_IP, b"hello?", timeout=0.5) is None
    assert not ping(pod.ns, OUTSIDE_IP, ident=4242, timeout=0.5)
    # the packets did arrive, with the pod's own source address the VNET cannot answer
    assert server.udp_peers and server.udp_peers[-1][0] == pod.ip


async def test_tcp_udp_and_ping_leave_with_the_node_ip(
    overlay: Overlay, server: PeerServer, masq: dict[str, Masquerade]
) -> None:
    pod, node = overlay.pods["a1"], overlay.nodes["a"]
    with connect(pod.ns, OUTSIDE_IP) as c:
        ip, port, echo = ask_tcp(c, b"hello")
        assert (ip, echo) == (node.ip, b"hello")
        assert 61000 <= port <= 65535
        # a bulk transfer (TSO-sized segments through tc egress) keeps the same mapping
        c.sendall(b"BULK" + b"x" * (2 << 20) + b"END")
        again_ip, again_port, total = ask_tcp(c, b"")
        assert (again_ip, again_port, int(total)) == (node.ip, port, 4 + (2 << 20) + 3)

    reply = udp_ask(pod.ns, OUTSIDE_IP, b"dns?")
    assert reply is not None
    seen_ip, _, body = reply.partition(b"|")
    assert seen_ip.decode().split(":")[0] == node.ip and body == b"dns?"

    watcher = sock(overlay.outside, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    watcher.settimeout(1)
    try:
        assert ping(pod.ns, OUTSIDE_IP, ident=4343)
        requests = []
        while not requests:
            packet = watcher.recv(2048)
            if packet[(packet[0] & 0xF) * 4] == 8:  # an echo request, not stray ICMP
                requests.append(socket.inet_ntoa(packet[12:16]))
        assert requests == [node.ip]  # the echo left as the node
    finally:
        watcher.close()

    out = {(e.proto_name, str(e.saddr)) for e in masq["a"].entries() if e.direction == NAT_DIR_OUT}
    assert out == {("TCP", pod.ip), ("UDP", pod.ip), ("ICMP", pod.ip)}
    stats = masq["a"].stats()
    assert stats["snat_packets"] > 0 and stats["rnat_packets"] > 0
    assert stats["no_port_free"] == stats["map_insert_failed"] == stats["csum_failed"] == 0


async def test_two_pods_with_the_same_source_port_get_distinct_nat_ports(
    overlay: Overlay, server: PeerServer, masq: dict[str, Masquerade]
) -> None:
    a1, a2 = overlay.pods["a1"], overlay.pods["a2"]
    # 61500 lies in the NAT range: the first pod keeps it, the second must be moved
    with (
        connect(a1.ns, OUTSIDE_IP, bind_port=61500) as c1,
        connect(a2.ns, OUTSIDE_IP, bind_port=61500) as c2,
    ):
        ip1, port1, echo1 = ask_tcp(c1, b"from a1")
        ip2, port2, echo2 = ask_tcp(c2, b"from a2")
        assert ip1 == ip2 == overlay.nodes["a"].ip
        assert port1 != port2
        assert (echo1, echo2) == (b"from a1", b"from a2")
        # both stay open at once and keep answering to the right pod
        assert ask_tcp(c2, b"a2 again")[1:] == (port2, b"a2 again")
        assert ask_tcp(c1, b"a1 again")[1:] == (port1, b"a1 again")


async def test_pod_to_pod_across_nodes_is_not_natted(
    overlay: Overlay, masq: dict[str, Masquerade]
) -> None:
    a1, b1 = overlay.pods["a1"], overlay.pods["b1"]
    srv = PeerServer(b1.ns, PORT)
    try:
        with connect(a1.ns, b1.ip) as c:
            ip, port, _ = ask_tcp(c, b"east-west")
            assert (ip, port) == (a1.ip, c.getsockname()[1])
    finally:
        srv.close()
    assert masq["a"].entries() == [] and masq["b"].entries() == []
    assert masq["a"].stats()["snat_packets"] == masq["b"].stats()["snat_packets"] == 0


async def test_fragmented_pod_traffic_is_dropped_and_counted(
    overlay: Overlay, server: PeerServer, masq: dict[str, Masquerade]
) -> None:
    pod = overlay.pods["a1"]
    s = sock(pod.ns, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        s.settimeout(0.5)
        s.sendto(b"f" * 3000, (OUTSIDE_IP, PORT))  # 3 fragments at MTU 1500
        with pytest.raises(TimeoutError):
            s.recv(4096)
    finally:
        s.close()
    assert masq["a"].stats()["drop_fragment"] >= 2
    assert all(peer[0] != pod.ip for peer in server.udp_peers)  # nothing leaked untranslated
    # small datagrams still work
    assert udp_ask(pod.ns, OUTSIDE_IP, b"small") is not None


async def test_raw_malformed_frames_on_the_wire(
    overlay: Overlay, server: PeerServer, masq: dict[str, Masquerade]
) -> None:
    """Frames injected below IP (AF_PACKET on the node's uplink) meet the program directly.

    They are watched on the fabric end of the node's cable: the bridge itself (br_netfilter)
    would discard broken IPv4 before the outside host saw it."""
    from tests.probes import packets as P

    node, pod = overlay.nodes["a"], overlay.pods["a1"]
    tx = _packet_socket(node.ns, "eth0")
    rx = _packet_socket(overlay.fabric, "up-a")
    rx.settimeout(0.5)
    try:
        mac = b"\xff" * 6 + b"\x02\0\0\0\0\x09" + b"\x08\x00"
        runt = mac + b"\x45\x00\x00"  # IPv4 ethertype, 3 bytes of header
        udp = P.udp(pod.ip, OUTSIDE_IP, 1, PORT)
        bad_ihl = mac + P.ipv4(pod.ip, OUTSIDE_IP, P.UDP, udp, ihl=4)
        before = masq["a"].stats()
        tx.sendto(runt, ("eth0", 0))
        with pytest.raises(OSError) as dropped:  # TC_ACT_SHOT reaches AF_PACKET as NET_XMIT_DROP
            tx.sendto(bad_ihl, ("eth0", 0))
        assert dropped.value.errno == errno.ENOBUFS
        seen = [f for f in _drain(rx) if f[6:12] == mac[6:12]]
        after = masq["a"].stats()
        assert seen == [runt]  # the runt passed untouched, the pod-sourced bad header did not
        assert after["drop_malformed"] == before["drop_malformed"] + 1
        assert after["snat_packets"] == before["snat_packets"]
    finally:
        tx.close()
        rx.close()


def _packet_socket(ns: str, ifname: str) -> socket.socket:
    from pyroute2 import netns

    s = netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003), flags=0)
    s.bind((ifname, 0))
    return s


def _drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(4096))
        except TimeoutError:
            return out


async def test_agent_restart_keeps_established_flows(
    overlay: Overlay, server: PeerServer, pin_root: Path
) -> None:
    pod, node = overlay.pods["a1"], overlay.nodes["a"]
    first = Masquerade.load(pin_root / "a")
    try:
        await first.attach(node.ns, "eth0", node.ip, NATIVE_CIDR)
        with connect(pod.ns, OUTSIDE_IP) as c:
            _, port, _ = ask_tcp(c, b"before")
            before = {str(e) for e in first.entries()}
            first.close()  # the agent dies: fds gone, programs still attached and pinned

            second = Masquerade.load(pin_root / "a")  # new agent: new programs, adopted maps
            try:
                assert second.adopted
                assert {str(e) for e in second.entries()} == before
                await second.attach(node.ns, "eth0", node.ip, NATIVE_CIDR)  # replaces filters
                assert ask_tcp(c, b"after")[1:] == (port, b"after")
                names = [
                    f.name for f in await tcattach.filters(node.ns, "eth0", tcattach.Hook.EGRESS)
                ]
                assert names == ["masq_egress"]
            finally:
                assert await second.detach() == 2
                second.unpin()
                second.close()
    finally:
        first.close()
    # detached: the outside is unreachable again
    with pytest.raises(TimeoutError):
        connect(pod.ns, OUTSIDE_IP, timeout=0.7)


async def test_attach_and_detach_manage_only_their_filters(
    overlay: Overlay, masq: dict[str, Masquerade]
) -> None:
    node = overlay.nodes["b"]
    for hook, name in (
        (tcattach.Hook.EGRESS, "masq_egress"),
        (tcattach.Hook.INGRESS, "masq_ingress"),
    ):
        found = await tcattach.filters(node.ns, "eth0", hook)
        assert [(f.name, f.prio) for f in found] == [(name, TC_PRIO)]
    assert await masq["b"].detach() == 2
    assert await tcattach.filters(node.ns, "eth0", tcattach.Hook.EGRESS) == []
    assert await masq["b"].detach(node.ns, "eth0") == 0  # idempotent
    await masq["b"].attach(node.ns, "eth0", node.ip, NATIVE_CIDR)


async def test_attach_errors_name_what_is_missing(pin_root: Path) -> None:
    m = Masquerade.load(pin_root / "x")
    try:
        with pytest.raises(
            tcattach.AttachError, match="network namespace 'fsmq-nope' does not exist"
        ):
            await m.attach("fsmq-nope", "eth0", "10.224.0.4", NATIVE_CIDR)
    finally:
        m.unpin()
        m.close()
