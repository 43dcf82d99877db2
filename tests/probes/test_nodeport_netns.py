"""NodePort on real traffic, beside masquerade, on lab-style overlay nodes (tests/probes/overlay):
an outside host reaches a node's NodePort; a local backend sees the client's address, a remote
one the node's (SNAT, redirected out of the uplink), and both replies come back as the
NodePort; a reloaded instance adopts the maps and keeps an established connection."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dataplane.maps.nodeportmap import NodePortBackend, NodePortService
from probes import tcattach
from probes.masquerade import TC_PRIO as MASQ_PRIO
from probes.masquerade import Masquerade
from probes.nodeport import TC_PRIO, NodePort
from tests.probes.overlay import NATIVE_CIDR, OUTSIDE_IP, Overlay, PeerServer, ask_tcp, sock

pytestmark = pytest.mark.privileged
PORT, NODEPORT = 8080, 30080


@pytest.fixture
def servers(overlay: Overlay) -> Iterator[dict[str, PeerServer]]:
    made = {name: PeerServer(overlay.pods[name].ns, PORT) for name in ("a1", "b1")}
    try:
        yield made
    finally:
        for s in made.values():
            s.close()


@pytest.fixture
async def datapath(overlay: Overlay, pin_root: Path) -> AsyncIterator[dict[str, NodePort]]:
    """NodePort and masquerade on both nodes, as the agent attaches them."""
    loaded: list = []
    nodeports: dict[str, NodePort] = {}
    node_ips = [n.ip for n in overlay.nodes.values()]
    try:
        for name, node in overlay.nodes.items():
            m = Masquerade.load(pin_root / f"masq-{name}")
            loaded.append(m)
            await m.attach(node.ns, "eth0", node.ip, NATIVE_CIDR)
            n = NodePort.load(pin_root / f"np-{name}")
            loaded.append(n)
            await n.attach(node.ns, "eth0", node.ip, native_cidr=NATIVE_CIDR, node_ips=node_ips)
            nodeports[name] = n
        yield nodeports
    finally:
        for obj in loaded:
            await obj.detach()
            obj.unpin()
            obj.close()


def connect(overlay: Overlay, dst: str, sport: int) -> socket.socket:
    """A TCP connection from the outside host to dst:NODEPORT from a chosen source port."""
    s = sock(overlay.outside)
    s.settimeout(2.0)
    # close with RST: no FIN retransmissions wander into the next connection on this tuple
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    s.connect((dst, NODEPORT))
    return s


SERVICE = NodePortService(
    NODEPORT,
    "TCP",
    (NodePortBackend("10.244.1.5", PORT), NodePortBackend("10.244.2.5", PORT, remote=True)),
)


async def test_local_and_remote_backends_answer_as_the_nodeport(
    overlay: Overlay, servers: dict[str, PeerServer], datapath: dict[str, NodePort]
) -> None:
    node_a = overlay.nodes["a"]
    datapath["a"].maps.sync([SERVICE])
    seen: dict[str, set[str]] = {"10.244.1.5": set(), "10.244.2.5": set()}
    for i in range(16):
        with connect(overlay, node_a.ip, 41000 + i) as c:
            assert c.getpeername() == (node_a.ip, NODEPORT)
            ip, _, echo = ask_tcp(c, b"hello")
            assert echo == b"hello"
            backend = next(
                fwd.to_addr
                for fwd in datapath["a"].ct.entries()
                if fwd.direction == 0 and fwd.sport == 41000 + i
            )
            seen[str(backend)].add(ip)
    # the local backend sees the client itself; the remote one the node (SNAT)
    assert seen == {"10.244.1.5": {OUTSIDE_IP}, "10.244.2.5": {node_a.ip}}
    stats_a, stats_b = datapath["a"].stats(), datapath["b"].stats()
    assert stats_a["dnat_local"] and stats_a["dnat_remote"] and stats_a["revnat_remote"]
    assert stats_a["revnat_local"]
    assert stats_b["masq_bypass"]  # b's pod answered a's SNAT port without masquerade


async def test_nodeport_runs_before_masquerade_and_a_reload_keeps_connections(
    overlay: Overlay,
    servers: dict[str, PeerServer],
    datapath: dict[str, NodePort],
    pin_root: Path,
) -> None:
    node_a = overlay.nodes["a"]
    datapath["a"].maps.sync([SERVICE])
    for hook in (tcattach.Hook.INGRESS, tcattach.Hook.EGRESS):
        prios = sorted(f.prio for f in await tcattach.filters(node_a.ns, "eth0", hook))
        assert prios == [TC_PRIO, MASQ_PRIO], (hook, prios)
    with connect(overlay, node_a.ip, 42000) as c:
        first = ask_tcp(c, b"one")
        again = NodePort.load(pin_root / "np-a")  # the agent restarts
        try:
            assert again.adopted and again.maps.services() == [SERVICE]
            assert again.maps.sync([SERVICE]) == (0, 0)
            await again.attach(
                node_a.ns,
                "eth0",
                node_a.ip,
                native_cidr=NATIVE_CIDR,
                node_ips=[n.ip for n in overlay.nodes.values()],
            )
            assert ask_tcp(c, b"two")[:2] == first[:2]  # same backend, same translation
        finally:
            again.close()
