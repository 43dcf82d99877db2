"""np_ingress/np_egress on crafted packets through BPF_PROG_TEST_RUN: DNAT to a local backend
(client address kept), DNAT+SNAT to a remote one (redirected out of the uplink), reverse NAT of
both kinds of reply, LoadBalancer addresses, eTP Local without a backend, ClientIP affinity,
Maglev keeping connections when a backend goes, the overlay masquerade bypass, and malformed
packets passed untouched.

test_run gives the program a CHECKSUM_NONE skb, so every rewritten packet must verify from
scratch (the incremental checksum arithmetic is what is tested)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataplane.maps.nodeportmap import NodePortBackend, NodePortService
from dataplane.maps.npctmap import DIR_FWD, DIR_REPLY
from flowscope.errors import UsageError
from probes.nodeport import (
    DEFAULT_SNAT_MAX,
    DEFAULT_SNAT_MIN,
    EGRESS_PROG,
    INGRESS_PROG,
    NodePort,
    NodePortConfig,
)
from tests.probes import packets as P
from tests.probes.packets import run_frame as run

NODE, OTHER_NODE, CLIENT = "10.224.0.4", "10.224.0.5", "10.224.0.254"
LOCAL_POD, REMOTE_POD = "10.244.1.5", "10.244.2.7"
PASS, OK, SHOT, REDIRECT = 0xFFFFFFFF, 0, 2, 7
NODEPORT = 30080


@pytest.fixture
def np_(pin_root: Path) -> Iterator[NodePort]:
    n = NodePort.load(pin_root / "node")
    try:
        n.configure(
            NodePortConfig(ipaddress.IPv4Address(NODE), 1, ipaddress.IPv4Network("10.244.0.0/16")),
            node_ips=[NODE, OTHER_NODE],
        )
        yield n
    finally:
        n.unpin()
        n.close()


def tcp(src: str, sport: int, dst: str, dport: int, flags: int = P.SYN) -> bytes:
    return P.ether(P.ipv4(src, dst, P.TCP, P.tcp(src, dst, sport, dport, flags, b"data")))


def udp(src: str, sport: int, dst: str, dport: int) -> bytes:
    return P.ether(P.ipv4(src, dst, P.UDP, P.udp(src, dst, sport, dport, b"data")))


def service(*backends: NodePortBackend, port: int = NODEPORT, **kw) -> NodePortService:
    return NodePortService(port, "TCP", backends, **kw)


LOCAL = NodePortBackend(LOCAL_POD, 80)
REMOTE = NodePortBackend(REMOTE_POD, 8080, remote=True)


@pytest.mark.privileged
def test_local_backend_is_dnatted_keeping_the_client_and_its_reply_reverse_natted(
    np_: NodePort,
) -> None:
    np_.maps.sync([service(LOCAL)])
    verdict, data = run(np_, INGRESS_PROG, tcp(CLIENT, 40000, NODE, NODEPORT))
    pkt = P.parse(data)
    assert verdict == PASS  # the stack routes it to the pod
    assert (pkt.src, pkt.sport, pkt.dst, pkt.dport) == (CLIENT, 40000, LOCAL_POD, 80)
    assert pkt.ip_csum_ok and pkt.l4_csum_ok and data.endswith(b"data")

    verdict, data = run(np_, EGRESS_PROG, tcp(LOCAL_POD, 80, CLIENT, 40000, P.SYN | P.ACK))
    back = P.parse(data)
    assert verdict == PASS  # masquerade runs next and leaves a node source alone
    assert (back.src, back.sport, back.dst, back.dport) == (NODE, NODEPORT, CLIENT, 40000)
    assert back.ip_csum_ok and back.l4_csum_ok
    dirs = {(c.direction, str(c.to_addr), c.to_port) for c in np_.ct.entries()}
    assert dirs == {(DIR_FWD, LOCAL_POD, 80), (DIR_REPLY, CLIENT, 40000)}
    s = np_.stats()
    assert (s["dnat_local"], s["revnat_local"], s["new_conn"]) == (1, 1, 1)


@pytest.mark.privileged
def test_remote_backend_is_snatted_to_the_node_and_redirected_both_ways(np_: NodePort) -> None:
    np_.maps.sync([service(REMOTE)])
    verdict, data = run(np_, INGRESS_PROG, tcp(CLIENT, 40000, NODE, NODEPORT))
    out = P.parse(data)
    assert verdict == REDIRECT  # a local source address: never up our own stack
    assert (out.src, out.dst, out.dport) == (NODE, REMOTE_POD, 8080)
    assert DEFAULT_SNAT_MIN <= out.sport <= DEFAULT_SNAT_MAX
    assert out.ip_csum_ok and out.l4_csum_ok

    verdict, data = run(np_, INGRESS_PROG, tcp(REMOTE_POD, 8080, NODE, out.sport, P.SYN | P.ACK))
    back = P.parse(data)
    assert verdict == REDIRECT
    assert (back.src, back.sport, back.dst, back.dport) == (NODE, NODEPORT, CLIENT, 40000)
    assert back.ip_csum_ok and back.l4_csum_ok

    # the same connection keeps its backend and SNAT port
    again = P.parse(run(np_, INGRESS_PROG, tcp(CLIENT, 40000, NODE, NODEPORT, P.ACK))[1])
    assert (again.sport, again.dst) == (out.sport, REMOTE_POD)
    s = np_.stats()
    assert (s["dnat_remote"], s["revnat_remote"], s["new_conn"]) == (2, 1, 1)


@pytest.mark.privileged
def test_udp_is_translated_with_its_checksum(np_: NodePort) -> None:
    np_.maps.sync([NodePortService(30053, "UDP", (NodePortBackend(LOCAL_POD, 53),))])
    verdict, data = run(np_, INGRESS_PROG, udp(CLIENT, 5000, NODE, 30053))
    pkt = P.parse(data)
    assert verdict == PASS and (pkt.dst, pkt.dport) == (LOCAL_POD, 53) and pkt.l4_csum_ok
    verdict, data = run(np_, EGRESS_PROG, udp(LOCAL_POD, 53, CLIENT, 5000))
    back = P.parse(data)
    assert (back.src, back.sport) == (NODE, 30053) and back.l4_csum_ok


@pytest.mark.privileged
def test_a_frontend_without_backends_drops_and_other_traffic_passes(np_: NodePort) -> None:
    np_.maps.sync([service(local=True)])  # eTP Local on a node without a backend
    frame = tcp(CLIENT, 40000, NODE, NODEPORT)
    assert run(np_, INGRESS_PROG, frame)[0] == SHOT
    assert np_.stats()["no_backend"] == 1
    for other in (
        tcp(CLIENT, 40000, NODE, 22),  # the node's own port
        tcp(CLIENT, 40000, OTHER_NODE, NODEPORT),  # another node's address
        tcp(CLIENT, 40000, NODE, DEFAULT_SNAT_MIN + 5),  # no such SNAT connection
    ):
        verdict, data = run(np_, INGRESS_PROG, other)
        assert (verdict, data) == (PASS, other)


LB_IP = "10.225.0.7"  # a LoadBalancer address the fabric routes to the nodes


@pytest.mark.privileged
def test_a_loadbalancer_address_is_translated_and_replies_leave_from_it(np_: NodePort) -> None:
    np_.maps.sync(
        [
            service(LOCAL, port=80, address=LB_IP),
            service(REMOTE, port=443, address=LB_IP),
            service(REMOTE),  # a NodePort on the node's own address, beside them
        ]
    )
    verdict, data = run(np_, INGRESS_PROG, tcp(CLIENT, 40000, LB_IP, 80))
    pkt = P.parse(data)
    assert verdict == PASS and (pkt.src, pkt.dst, pkt.dport) == (CLIENT, LOCAL_POD, 80)
    verdict, data = run(np_, EGRESS_PROG, tcp(LOCAL_POD, 80, CLIENT, 40000, P.SYN | P.ACK))
    back = P.parse(data)
    assert (back.src, back.sport, back.dst) == (LB_IP, 80, CLIENT)
    assert back.ip_csum_ok and back.l4_csum_ok

    # a remote backend: SNAT to the node, and the reply leaves from the LoadBalancer address
    verdict, data = run(np_, INGRESS_PROG, tcp(CLIENT, 40001, LB_IP, 443))
    out = P.parse(data)
    assert verdict == REDIRECT and (out.src, out.dst, out.dport) == (NODE, REMOTE_POD, 8080)
    verdict, data = run(np_, INGRESS_PROG, tcp(REMOTE_POD, 8080, NODE, out.sport, P.SYN | P.ACK))
    back = P.parse(data)
    assert verdict == REDIRECT
    assert (back.src, back.sport, back.dst, back.dport) == (LB_IP, 443, CLIENT, 40001)
    assert back.ip_csum_ok and back.l4_csum_ok

    # the LoadBalancer's ports are its own: not NodePorts, and no other port of the address
    for other in (tcp(CLIENT, 40002, NODE, 80), tcp(CLIENT, 40002, LB_IP, NODEPORT)):
        verdict, data = run(np_, INGRESS_PROG, other)
        assert (verdict, data) == (PASS, other)


@pytest.mark.privileged
@pytest.mark.parametrize(
    "frame",
    [
        P.ether(P.ipv4(CLIENT, NODE, P.TCP, b"\0" * 8)),  # TCP header cut short
        P.ether(P.ipv4(CLIENT, NODE, P.TCP, P.tcp(CLIENT, NODE, 1, NODEPORT), ihl=4)),
        P.ether(P.ipv4(CLIENT, NODE, P.TCP, P.tcp(CLIENT, NODE, 1, NODEPORT), tot_len=400)),
        P.ether(P.ipv4(CLIENT, NODE, P.TCP, P.tcp(CLIENT, NODE, 1, NODEPORT), frag_off=0x2000)),
        P.ether(P.ipv4(CLIENT, NODE, P.ICMP, P.icmp_echo(7))),
        P.ether(P.ipv4(CLIENT, NODE, P.UDP, b"\x13\x88\x00")),  # UDP header cut short
    ],
    ids=["short-tcp", "ihl-4", "tot-len-too-long", "fragment", "icmp", "short-udp"],
)
def test_malformed_packets_pass_untouched(np_: NodePort, frame: bytes) -> None:
    np_.maps.sync([service(LOCAL)])
    for prog in (INGRESS_PROG, EGRESS_PROG):
        verdict, data = run(np_, prog, frame)
        assert (verdict, data[: len(frame)]) == (PASS, frame)
    assert np_.ct.entries() == []


@pytest.mark.privileged
def test_client_ip_affinity_keeps_one_backend_across_client_ports(np_: NodePort) -> None:
    backends = tuple(NodePortBackend(f"10.244.1.{i}", 80) for i in range(10, 14))
    np_.maps.sync([service(*backends, affinity_timeout=60)])
    got = {
        P.parse(run(np_, INGRESS_PROG, tcp(CLIENT, 40000 + i, NODE, NODEPORT))[1]).dst
        for i in range(15)
    }
    assert len(got) == 1
    assert np_.stats()["affinity_hit"] == 14
    (aff,) = np_.affinity()
    assert str(aff.client) == CLIENT and str(aff.backend_ip) in got
    # without affinity, 15 connections spread
    np_.maps.sync([service(*backends)])
    spread = {
        P.parse(run(np_, INGRESS_PROG, tcp(CLIENT, 50000 + i, NODE, NODEPORT))[1]).dst
        for i in range(15)
    }
    assert len(spread) > 1


@pytest.mark.privileged
def test_affinity_ends_after_its_timeout(np_: NodePort) -> None:
    backends = tuple(NodePortBackend(f"10.244.1.{i}", 80) for i in range(10, 14))
    np_.maps.sync([service(*backends, affinity_timeout=1)])
    run(np_, INGRESS_PROG, tcp(CLIENT, 40000, NODE, NODEPORT))
    run(np_, INGRESS_PROG, tcp(CLIENT, 40001, NODE, NODEPORT))
    assert np_.stats()["affinity_hit"] == 1
    time.sleep(1.2)
    run(np_, INGRESS_PROG, tcp(CLIENT, 40002, NODE, NODEPORT))  # chosen afresh
    assert np_.stats()["affinity_hit"] == 1
    run(np_, INGRESS_PROG, tcp(CLIENT, 40003, NODE, NODEPORT))  # bound again
    assert np_.stats()["affinity_hit"] == 2


@pytest.mark.privileged
def test_maglev_keeps_most_connections_when_a_backend_goes(np_: NodePort) -> None:
    backends = tuple(NodePortBackend(f"10.244.1.{i}", 80) for i in range(10, 15))
    np_.maps.sync([service(*backends, maglev=True)])

    def choose(ports: range) -> dict[int, str]:
        out = {}
        for port in ports:
            out[port] = P.parse(run(np_, INGRESS_PROG, tcp(CLIENT, port, NODE, NODEPORT))[1]).dst
        np_.ct.delete_keys(np_.ct.dump()[0])  # forget them: the next SYNs choose afresh
        return out

    ports = range(20000, 20600)
    before = choose(ports)
    assert set(before.values()) == {str(b.ip) for b in backends}
    assert choose(ports) == before  # the same tuple hashes to the same backend every time
    assert np_.stats()["maglev"] == 2 * len(ports)

    gone = str(backends[2].ip)
    np_.maps.sync([service(*(b for b in backends if str(b.ip) != gone), maglev=True)])
    after = choose(ports)
    survivors = [p for p in ports if before[p] != gone]
    kept = sum(after[p] == before[p] for p in survivors)
    assert gone not in after.values()
    assert kept / len(survivors) >= 0.9, (kept, len(survivors))


@pytest.mark.privileged
def test_a_pod_reply_to_another_nodes_snat_port_skips_masquerade(np_: NodePort) -> None:
    reply = tcp(LOCAL_POD, 80, OTHER_NODE, DEFAULT_SNAT_MIN + 7, P.SYN | P.ACK)
    verdict, data = run(np_, EGRESS_PROG, reply)
    assert (verdict, data) == (OK, reply)  # TC_ACT_OK ends the chain before masquerade
    elsewhere = tcp(LOCAL_POD, 80, "192.0.2.1", DEFAULT_SNAT_MIN + 7, P.SYN | P.ACK)
    assert run(np_, EGRESS_PROG, elsewhere)[0] == PASS  # not a node: masquerade decides
    assert np_.stats()["masq_bypass"] == 1


@pytest.mark.privileged
def test_connections_expire_and_gc_removes_them(np_: NodePort) -> None:
    np_.maps.sync([service(LOCAL)])
    run(np_, INGRESS_PROG, tcp(CLIENT, 40000, NODE, NODEPORT))
    assert len(np_.ct.entries()) == 2
    assert np_.gc() == 0
    horizon = max(c.expires_ns for c in np_.ct.entries()) + 1
    assert np_.gc(horizon) == 2 and np_.ct.entries() == []


def test_config_rejects_a_snat_range_over_the_nodeports() -> None:
    with pytest.raises(UsageError, match="overlaps the NodePort range"):
        NodePortConfig(ipaddress.IPv4Address(NODE), 1, snat_min=29000, snat_max=31000).validate()
    with pytest.raises(UsageError, match="ifindex"):
        NodePortConfig(ipaddress.IPv4Address(NODE), 0).validate()
