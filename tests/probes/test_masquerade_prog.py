"""masq_egress/masq_ingress on crafted packets through BPF_PROG_TEST_RUN.

test_run hands the program an skb without checksum offload (CHECKSUM_NONE), so these tests check
the incremental checksum arithmetic itself: every translated packet must verify from scratch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataplane.maps.natmap import IPPROTO_TCP, NAT_DIR_IN, NAT_DIR_OUT, make_entry, make_key
from flowscope.errors import UsageError
from probes.masquerade import EGRESS_PROG, INGRESS_PROG, Masquerade, MasqueradeConfig
from tests.probes import packets as P
from tests.probes.packets import run_frame as run

NODE = "10.224.0.4"
REMOTE = "10.224.0.100"
POD1, POD2, POD_ELSEWHERE = "10.244.1.5", "10.244.1.6", "10.244.2.7"
PASS, SHOT = 0xFFFFFFFF, 2  # TC_ACT_UNSPEC as u32, TC_ACT_SHOT


@pytest.fixture
def masq(pin_root: Path) -> Iterator[Masquerade]:
    m = Masquerade.load(pin_root / "node")
    try:
        m.configure(MasqueradeConfig.build(NODE, "10.244.0.0/16"))
        yield m
    finally:
        m.unpin()
        m.close()


def tcp_out(src: str, sport: int, dst: str = REMOTE, dport: int = 80, flags: int = P.SYN) -> bytes:
    return P.ether(P.ipv4(src, dst, P.TCP, P.tcp(src, dst, sport, dport, flags, b"hello")))


def tcp_in(nat_port: int, sport: int = 80, flags: int = P.SYN | P.ACK, src: str = REMOTE) -> bytes:
    return P.ether(P.ipv4(src, NODE, P.TCP, P.tcp(src, NODE, sport, nat_port, flags, b"world")))


@pytest.mark.privileged
def test_tcp_is_snatted_to_the_node_and_reverse_natted_back(masq: Masquerade) -> None:
    verdict, data = run(masq, EGRESS_PROG, tcp_out(POD1, 40000))
    out = P.parse(data)
    assert verdict == PASS
    assert (out.src, out.dst, out.dport) == (NODE, REMOTE, 80)
    assert 61000 <= out.sport <= 65535
    assert out.ip_csum_ok and out.l4_csum_ok
    assert data.endswith(b"hello")

    verdict, data = run(masq, INGRESS_PROG, tcp_in(out.sport))
    back = P.parse(data)
    assert verdict == PASS
    assert (back.src, back.sport, back.dst, back.dport) == (REMOTE, 80, POD1, 40000)
    assert back.ip_csum_ok and back.l4_csum_ok

    pairs = {(e.direction, str(e.to_addr), e.to_port) for e in masq.entries()}
    assert pairs == {(NAT_DIR_OUT, NODE, out.sport), (NAT_DIR_IN, POD1, 40000)}
    s = masq.stats()
    assert (s["snat_packets"], s["rnat_packets"], s["new_mappings"]) == (1, 1, 1)


@pytest.mark.privileged
def test_a_flow_keeps_its_port_and_two_pods_with_one_port_get_two(masq: Masquerade) -> None:
    first = P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 61234))[1]).sport
    again = P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 61234, flags=P.ACK))[1]).sport
    other = P.parse(run(masq, EGRESS_PROG, tcp_out(POD2, 61234))[1]).sport
    assert first == again == 61234  # a pod port inside the NAT range is kept when free
    assert other != first and 61000 <= other <= 65535
    assert masq.stats()["new_mappings"] == 2
    # each reply finds its own pod
    assert P.parse(run(masq, INGRESS_PROG, tcp_in(first))[1]).dst == POD1
    assert P.parse(run(masq, INGRESS_PROG, tcp_in(other))[1]).dst == POD2


@pytest.mark.privileged
@pytest.mark.parametrize("no_csum", [False, True], ids=["udp-csum", "udp-zero-csum"])
def test_udp_translation_keeps_checksums_right(masq: Masquerade, no_csum: bool) -> None:
    seg = P.udp(POD1, REMOTE, 5353, 53, b"query", no_csum=no_csum)
    verdict, data = run(masq, EGRESS_PROG, P.ether(P.ipv4(POD1, REMOTE, P.UDP, seg)))
    out = P.parse(data)
    assert verdict == PASS and (out.src, out.dport) == (NODE, 53)
    assert out.ip_csum_ok and out.l4_csum_ok
    assert (out.l4_csum == 0) == no_csum  # "no checksum" stays 0, a real one never becomes 0

    reply = P.udp(REMOTE, NODE, 53, out.sport, b"answer", no_csum=no_csum)
    verdict, data = run(masq, INGRESS_PROG, P.ether(P.ipv4(REMOTE, NODE, P.UDP, reply)))
    back = P.parse(data)
    assert verdict == PASS and (back.dst, back.dport) == (POD1, 5353)
    assert back.ip_csum_ok and back.l4_csum_ok and (back.l4_csum == 0) == no_csum


@pytest.mark.privileged
def test_icmp_echo_id_is_the_port(masq: Masquerade) -> None:
    verdict, data = run(masq, EGRESS_PROG, P.ether(P.ipv4(POD1, REMOTE, P.ICMP, P.icmp_echo(7))))
    out = P.parse(data)
    assert verdict == PASS and out.src == NODE and 61000 <= out.sport <= 65535
    assert out.ip_csum_ok and out.l4_csum_ok
    reply = P.ether(P.ipv4(REMOTE, NODE, P.ICMP, P.icmp_echo(out.sport, reply=True)))
    verdict, data = run(masq, INGRESS_PROG, reply)
    back = P.parse(data)
    assert verdict == PASS and (back.dst, back.dport) == (POD1, 7)
    assert back.ip_csum_ok and back.l4_csum_ok


@pytest.mark.privileged
def test_ip_options_move_the_l4_header_and_are_respected(masq: Masquerade) -> None:
    seg = P.tcp(POD1, REMOTE, 40001, 443, P.SYN)
    verdict, data = run(masq, EGRESS_PROG, P.ether(P.ipv4(POD1, REMOTE, P.TCP, seg, ihl=7)))
    out = P.parse(data)
    assert verdict == PASS and out.src == NODE and out.dport == 443
    assert out.ip_csum_ok and out.l4_csum_ok


@pytest.mark.privileged
@pytest.mark.parametrize(
    "frame",
    [
        tcp_out(POD1, 40000, dst=POD_ELSEWHERE),  # pod to pod across nodes
        tcp_out(NODE, 40000),  # the node's own traffic
        tcp_out("10.224.0.9", 40000),  # some other VNET address being forwarded
    ],
    ids=["pod-to-pod", "node-own", "vnet-source"],
)
def test_traffic_that_is_not_pod_to_outside_is_untouched(masq: Masquerade, frame: bytes) -> None:
    assert run(masq, EGRESS_PROG, frame) == (PASS, frame)
    assert masq.entries() == []


def _malformed_egress() -> dict[str, tuple[bytes, str]]:
    ok_tcp = P.tcp(POD1, REMOTE, 40000, 80, P.SYN)
    return {
        "ihl-below-5": (P.ether(P.ipv4(POD1, REMOTE, P.TCP, ok_tcp, ihl=4)), "drop_malformed"),
        "not-version-4": (
            P.ether(P.ipv4(POD1, REMOTE, P.TCP, ok_tcp, version=6)),
            "drop_malformed",
        ),
        "tot-len-beyond-packet": (
            P.ether(P.ipv4(POD1, REMOTE, P.TCP, ok_tcp, tot_len=200)),
            "drop_malformed",
        ),
        "truncated-tcp": (P.ether(P.ipv4(POD1, REMOTE, P.TCP, ok_tcp[:12])), "drop_malformed"),
        "truncated-udp": (P.ether(P.ipv4(POD1, REMOTE, P.UDP, b"\x13\x88\x00")), "drop_malformed"),
        "truncated-icmp": (P.ether(P.ipv4(POD1, REMOTE, P.ICMP, b"\x08\x00")), "drop_malformed"),
        "first-fragment": (
            P.ether(
                P.ipv4(POD1, REMOTE, P.UDP, P.udp(POD1, REMOTE, 1, 2, b"x" * 16), frag_off=0x2000)
            ),
            "drop_fragment",
        ),
        "later-fragment": (
            P.ether(P.ipv4(POD1, REMOTE, P.UDP, b"y" * 24, frag_off=3)),
            "drop_fragment",
        ),
        "gre": (P.ether(P.ipv4(POD1, REMOTE, 47, b"\0" * 8)), "drop_unsupported"),
        "icmp-unreachable": (
            P.ether(P.ipv4(POD1, REMOTE, P.ICMP, b"\x03\x03\x00\x00\x00\x00\x00\x00" + b"z" * 28)),
            "drop_unsupported",
        ),
    }


@pytest.mark.privileged
@pytest.mark.parametrize("case", list(_malformed_egress()))
def test_untranslatable_pod_traffic_is_dropped_and_counted(masq: Masquerade, case: str) -> None:
    frame, counter = _malformed_egress()[case]
    verdict, data = run(masq, EGRESS_PROG, frame)
    assert verdict == SHOT
    assert data == frame  # nothing was rewritten before the verdict
    stats = masq.stats()
    assert stats[counter] == 1
    assert stats["snat_packets"] == 0
    assert masq.entries() == []


@pytest.mark.privileged
def test_malformed_or_unknown_ingress_is_passed_untouched(masq: Masquerade) -> None:
    nat_port = P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 40000))[1]).sport
    good = P.tcp(REMOTE, NODE, 80, nat_port, P.ACK)
    frames = {
        "ingress_malformed": [
            P.ether(P.ipv4(REMOTE, NODE, P.TCP, good, ihl=3)),
            P.ether(P.ipv4(REMOTE, NODE, P.TCP, good[:10])),
            P.ether(P.ipv4(REMOTE, NODE, P.TCP, good, tot_len=1000)),
        ],
        "ingress_fragment": [P.ether(P.ipv4(REMOTE, NODE, P.TCP, good, frag_off=0x2000))],
        "rnat_miss": [tcp_in(nat_port, sport=81), tcp_in(nat_port, src="10.224.0.101")],
        None: [
            tcp_in(22),  # outside the NAT range: the node's own service
            P.ether(P.ipv4(REMOTE, NODE, 47, b"\0" * 8)),
            P.ether(P.ipv4(REMOTE, NODE, P.ICMP, P.icmp_echo(nat_port))),  # a request, not a reply
        ],
    }
    for counter, cases in frames.items():
        for frame in cases:
            assert run(masq, INGRESS_PROG, frame) == (PASS, frame), counter
        if counter:
            assert masq.stats()[counter] == len(cases)
    assert masq.stats()["rnat_packets"] == 0


@pytest.mark.privileged
def test_a_full_port_range_fails_loudly(pin_root: Path) -> None:
    m = Masquerade.load(pin_root / "tiny")
    try:
        m.configure(MasqueradeConfig.build(NODE, "10.244.0.0/16", port_min=62000, port_max=62000))
        assert P.parse(run(m, EGRESS_PROG, tcp_out(POD1, 1000))[1]).sport == 62000
        assert run(m, EGRESS_PROG, tcp_out(POD2, 1000))[0] == SHOT  # same remote: no port left
        assert m.stats()["no_port_free"] == 1
        # a NAT port is unique per remote endpoint, so another remote port still works
        assert P.parse(run(m, EGRESS_PROG, tcp_out(POD2, 1000, dport=81))[1]).sport == 62000
    finally:
        m.unpin()
        m.close()


@pytest.mark.privileged
def test_fin_shortens_the_lifetime(masq: Masquerade) -> None:
    run(masq, EGRESS_PROG, tcp_out(POD1, 40000, flags=P.ACK))
    long_lived = {e.expires_ns for e in masq.entries()}
    run(masq, EGRESS_PROG, tcp_out(POD1, 40000, flags=P.FIN | P.ACK))
    entries = masq.entries()
    assert all(e.closing for e in entries)
    now = time.monotonic_ns()
    assert all(e.expires_ns <= now + 10 * 10**9 for e in entries)
    assert all(x > now + 3600 * 10**9 for x in long_lived)
    # a new SYN on the same tuple reopens it
    run(masq, EGRESS_PROG, tcp_out(POD1, 40000, flags=P.SYN))
    assert not any(e.closing for e in masq.entries())


@pytest.mark.privileged
def test_expired_mappings_are_not_used_and_gc_removes_them(pin_root: Path) -> None:
    m = Masquerade.load(pin_root / "short")
    try:
        m.configure(MasqueradeConfig.build(NODE, "10.244.0.0/16", timeout_udp_s=1))
        seg = P.udp(POD1, REMOTE, 5000, 53, b"q")
        nat = P.parse(run(m, EGRESS_PROG, P.ether(P.ipv4(POD1, REMOTE, P.UDP, seg)))[1]).sport
        reply = P.ether(P.ipv4(REMOTE, NODE, P.UDP, P.udp(REMOTE, NODE, 53, nat, b"a")))
        assert m.gc() == 0
        time.sleep(1.1)
        assert run(m, INGRESS_PROG, reply) == (PASS, reply)  # not translated any more
        assert m.stats()["rnat_expired"] == 1
        assert m.gc() == 2
        assert m.entries() == []
    finally:
        m.unpin()
        m.close()


@pytest.mark.privileged
def test_a_half_evicted_mapping_is_repaired_with_the_same_port(masq: Masquerade) -> None:
    nat = P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 40000))[1]).sport
    in_key = make_key(NAT_DIR_IN, IPPROTO_TCP, REMOTE, NODE, 80, nat)
    out_key = make_key(NAT_DIR_OUT, IPPROTO_TCP, POD1, REMOTE, 40000, 80)
    assert masq.nat.map.delete(in_key)
    assert P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 40000, flags=P.ACK))[1]).sport == nat
    assert masq.nat.map.delete(out_key)
    assert P.parse(run(masq, INGRESS_PROG, tcp_in(nat, flags=P.ACK))[1]).dst == POD1
    assert masq.stats()["repaired"] == 2
    assert len(masq.entries()) == 2
    assert P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 40000, flags=P.ACK))[1]).sport == nat


@pytest.mark.privileged
def test_a_port_taken_over_by_another_flow_gets_a_new_mapping(masq: Masquerade) -> None:
    nat = P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 40000))[1]).sport
    in_key = make_key(NAT_DIR_IN, IPPROTO_TCP, REMOTE, NODE, 80, nat)
    now = time.monotonic_ns()
    masq.nat.map.update(in_key, make_entry(POD2, 55555, created_ns=now, expires_ns=now + 10**12))
    moved = P.parse(run(masq, EGRESS_PROG, tcp_out(POD1, 40000, flags=P.ACK))[1]).sport
    assert moved != nat
    assert masq.stats()["port_collision"] == 1
    assert P.parse(run(masq, INGRESS_PROG, tcp_in(moved))[1]).dst == POD1


@pytest.mark.privileged
def test_unconfigured_instance_passes_everything(pin_root: Path) -> None:
    m = Masquerade.load(pin_root / "bare")
    try:
        assert m.config() is None
        frame = tcp_out(POD1, 40000)
        assert run(m, EGRESS_PROG, frame) == (PASS, frame)
    finally:
        m.unpin()
        m.close()


@pytest.mark.privileged
def test_config_round_trips_through_the_map(masq: Masquerade) -> None:
    cfg = MasqueradeConfig.build("10.224.3.3", "10.245.0.0/17", port_min=50000, timeout_udp_s=5)
    masq.configure(cfg)
    assert masq.config() == cfg


@pytest.mark.parametrize(
    ("args", "options", "field"),
    [
        (("10.224.0.400", "10.244.0.0/16"), {}, "node_ip"),
        (("10.224.0.4", "10.244.0.1/16"), {}, "native_cidr"),
        (("10.244.1.1", "10.244.0.0/16"), {}, "node_ip"),
        (("10.224.0.4", "10.244.0.0/16"), {"port_min": 70000}, "port_min/port_max"),
        (
            ("10.224.0.4", "10.244.0.0/16"),
            {"port_min": 3000, "port_max": 2000},
            "port_min/port_max",
        ),
        (("10.224.0.4", "10.244.0.0/16"), {"timeout_udp_s": 0}, "timeout_udp_s"),
        (("10.224.0.4", "10.244.0.0/16"), {"timeout_bogus": 1}, "timeout_bogus"),
    ],
)
def test_bad_config_names_the_field(args: tuple[str, str], options: dict, field: str) -> None:
    with pytest.raises(UsageError) as info:
        MasqueradeConfig.build(*args, **options)
    assert str(info.value).startswith(f"{field}:")
