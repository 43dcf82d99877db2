"""Translated traffic as flows: the socket LB's TRANSLATED events, the datapath's packets of a
translated connection, the services index and the client's cgroup, through fakes of the agent's
directory and rings (the real ones meet in tests/e2e/test_service_flows.py)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path

import numpy as np

from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.node import NodeCollector
from collector.podcgroups import PodCgroups, cgroup_id
from collector.services import ServiceIndex, frontend_owners
from collector.socklb_flows import translation_flow
from collector.translations import Link, RecentTranslations
from dataplane.maps.flowevent import FlowEventStruct, ObservationPoint
from dataplane.maps.lbmap import Proto
from flowscope.flow.compact import format_flow
from flowscope.flow.filter import FlowFilter, parse_event_type
from flowscope.flow.model import (
    Flow,
    LostEvent,
    LostEventSource,
    MessageType,
    Service,
    ServiceTranslation,
    SocketTranslationPoint,
    Verdict,
    record_from_json,
)
from probes.socklb import EVENT_DTYPE, HOOK_CONNECT, LBEvent, Translation, decode_events
from tests.collector.test_flows import ID_A, ID_B, Directory, FakeRing, event, records_after

CLIENT, BACKEND = "10.244.1.2", "10.244.2.3"  # pods x/a and y/b of the fake directory
VIP = "10.0.0.10"
WEB = {
    "metadata": {"name": "web", "namespace": "y"},
    "spec": {
        "type": "NodePort",
        "clusterIP": VIP,
        "ports": [
            {"name": "http", "port": 8000, "targetPort": 80, "protocol": "TCP", "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
    },
}


def enricher(tmp_path: Path) -> Enricher:
    pod_cgroup = tmp_path / "pod-a"
    pod_cgroup.mkdir(exist_ok=True)
    return Enricher(
        Directory(),
        "lab",
        services=ServiceIndex.of([WEB]),
        pods=PodCgroups(lambda: [(pod_cgroup, CLIENT)]),
    )


def translation(cgroup: int, **kw) -> Translation:
    base = dict(
        ktime_ns=1_000,
        sock_cookie=77,
        netns_cookie=5,
        vip=IPv4Address(VIP),
        vport=8000,
        backend_ip=IPv4Address(BACKEND),
        backend_port=80,
        backend_id=3,
        revnat_id=1,
        proto=Proto.TCP,
        hook=HOOK_CONNECT,
        affinity=False,
        cgroup_id=cgroup,
    )
    return Translation(**{**base, **kw})


def reply_event(ktime_ns: int):
    """A reply packet BACKEND:80 -> CLIENT:40000, the identities swapped."""
    return event(
        saddr=IPv4Address(BACKEND),
        daddr=IPv4Address(CLIENT),
        sport=80,
        dport=40000,
        is_reply=True,
        src_identity=ID_B,
        dst_identity=ID_A,
        ktime_ns=ktime_ns,
    )


def test_frontends_name_their_service_by_address_port_and_protocol() -> None:
    owners = frontend_owners([WEB])
    assert owners[(VIP, 8000, "TCP")] == (Service("web", "y"), "ClusterIP")
    assert owners[(VIP, 53, "UDP")] == (Service("web", "y"), "ClusterIP")
    assert owners[("0.0.0.0", 30080, "TCP")] == (Service("web", "y"), "NodePort")
    assert (VIP, 53, "TCP") not in owners
    index = ServiceIndex.of([WEB])
    assert index.service_at(VIP, 8000, 6) == Service("web", "y")
    assert index.service_at(VIP, 8000, 17) is None
    assert index.node_port(30080, "tcp") == Service("web", "y")


def test_the_index_follows_the_mirror_version() -> None:
    services: list = []
    version = [0]
    index = ServiceIndex(lambda: services, lambda: version[0])
    assert index.service_at(VIP, 8000, 6) is None
    services.append(WEB)
    assert index.service_at(VIP, 8000, 6) is None  # same version: not read again
    version[0] = 1
    assert index.service_at(VIP, 8000, 6) == Service("web", "y")


def test_a_cgroup_names_its_pod_and_unknown_ones_rescan_at_most_once_a_second(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "pod-a", tmp_path / "pod-b"
    a.mkdir()
    pods = [(a, CLIENT)]
    now = [100.0]
    cgroups = PodCgroups(lambda: list(pods), clock=lambda: now[0])
    assert cgroups.ip_of(cgroup_id(a)) == CLIENT
    b.mkdir()
    pods.append((b, BACKEND))
    assert cgroups.ip_of(cgroup_id(b)) is None  # scanned just now
    now[0] += 1.0
    assert cgroups.ip_of(cgroup_id(b)) == BACKEND
    assert cgroups.ip_of(0) is None


def test_lb_events_decode_with_their_cgroup_and_version_1_records_with_none() -> None:
    ev = LBEvent(ktime_ns=9, sock_cookie=77, vport=8000, backend_port=80, proto=6, hook=1)
    ev.cgroup_id = 1234
    ev.vip = int.from_bytes(IPv4Address(VIP).packed, "little")
    v2 = bytes(ev)
    assert len(v2) == EVENT_DTYPE.itemsize == 56
    got = decode_events([v2, v2[:48]])
    assert [t.cgroup_id for t in got] == [1234, 0]
    assert str(got[0].vip) == VIP and got[1].vport == 8000


def test_a_translation_is_a_trace_sock_flow_in_hubbles_shape(tmp_path: Path) -> None:
    enr = enricher(tmp_path)
    cg = cgroup_id(tmp_path / "pod-a")
    links = RecentTranslations()
    flow = translation_flow(translation(cg), enr, "node-1", 5_000, links)
    assert flow.verdict == Verdict.TRANSLATED and flow.time_ns == 6_000
    assert (flow.ip.source, flow.ip.destination) == (CLIENT, VIP)
    assert flow.l4.destination_port == 8000 and flow.l4.source_port == 0
    assert (flow.source.pod_name, flow.source.identity) == ("a", ID_A)
    assert (flow.destination.pod_name, flow.destination.identity) == ("b", ID_B)
    doc = json.loads(flow.to_json())["flow"]
    assert doc["verdict"] == "TRANSLATED" and doc["Type"] == "SOCK"
    assert doc["event_type"] == {"type": 7, "sub_type": 2}
    assert doc["sock_xlate_point"] == "SOCK_XLATE_POINT_POST_DIRECTION_FWD"
    assert doc["socket_cookie"] == "77" and doc["cgroup_id"] == str(cg)
    assert doc["destination_service"] == {"name": "web", "namespace": "y"}
    assert doc["service_translation"] == {
        "service_ip": VIP,
        "service_port": 8000,
        "backend_ip": BACKEND,
        "backend_port": 80,
    }
    assert record_from_json(flow.to_json()) == flow  # and back
    assert len(links) == 1


def test_a_translation_of_an_unknown_cgroup_still_shows_with_no_source(tmp_path: Path) -> None:
    links = RecentTranslations()
    flow = translation_flow(translation(999_999_999), enricher(tmp_path), "node-1", 0, links)
    assert flow.ip.source == "" and flow.source.pod_name == ""
    assert flow.destination_service == Service("web", "y")
    assert len(links) == 0  # nothing to link packets by


def test_packets_of_a_translated_connection_carry_the_service_both_ways(tmp_path: Path) -> None:
    from collector.datapath_flows import datapath_flow

    enr = enricher(tmp_path)
    links = RecentTranslations(ttl_ns=1_000_000)
    translation_flow(translation(cgroup_id(tmp_path / "pod-a")), enr, "node-1", 0, links)
    out = datapath_flow(
        event(obs_point=ObservationPoint.FROM_ENDPOINT, ktime_ns=2_000), enr, "node-1", 0, links
    )
    assert out.destination_service == Service("web", "y") and out.source_service is None
    assert out.service_translation == ServiceTranslation(VIP, 8000, BACKEND, 80)
    reply = datapath_flow(
        reply_event(ktime_ns=900_000),
        enr,
        "node-1",
        0,
        links,
    )
    assert reply.source_service == Service("web", "y") and reply.destination_service is None
    # the reply refreshed the link: still named 1.5 ms after the translation
    later = datapath_flow(event(ktime_ns=1_500_000), enr, "node-1", 0, links)
    assert later.destination_service == Service("web", "y")
    other_port = datapath_flow(event(dport=81, ktime_ns=1_600_000), enr, "node-1", 0, links)
    assert other_port.destination_service is None and other_port.service_translation is None
    expired = datapath_flow(event(ktime_ns=5_000_000), enr, "node-1", 0, links)
    assert expired.destination_service is None


def test_the_translation_table_is_bounded_and_keeps_the_newest() -> None:
    links = RecentTranslations(ttl_ns=10**9, max_entries=10)
    link = Link(None, ServiceTranslation(VIP, 80, BACKEND, 80))
    for i in range(25):
        links.remember((f"10.244.1.{i}", BACKEND, 80, 6), link, now_ns=i)
    assert len(links) <= 10
    assert links.lookup(("10.244.1.24", BACKEND, 80, 6), 30) is link
    assert links.lookup(("10.244.1.0", BACKEND, 80, 6), 30) is None


def test_compact_lines_read_client_service_backend(tmp_path: Path) -> None:
    from collector.datapath_flows import datapath_flow

    enr = enricher(tmp_path)
    links = RecentTranslations()
    sock = translation_flow(translation(cgroup_id(tmp_path / "pod-a")), enr, "node-1", 0, links)
    line = format_flow(sock)
    assert (
        f"x/a (ID:{ID_A}) -> y/web:8000 -> y/b:80 (ID:{ID_B}) post-xlate-fwd TRANSLATED (TCP)"
        in line
    )
    pkt = format_flow(datapath_flow(event(ktime_ns=2_000), enr, "node-1", 0, links))
    assert f"x/a:40000 (ID:{ID_A}) -> y/web:8000 -> y/b:80 (ID:{ID_B}) policy-verdict" in pkt
    reply = datapath_flow(
        reply_event(ktime_ns=3_000),
        enr,
        "node-1",
        0,
        links,
    )
    assert "x/a:40000 (ID:300) <- y/web:8000 <- y/b:80 (ID:301)" in format_flow(reply)
    plain = format_flow(datapath_flow(event(dport=81), enr, "node-1", 0, None))
    assert "web" not in plain and "-> y/b:81 (ID:301)" in plain


def test_type_and_service_filters(tmp_path: Path) -> None:
    from collector.datapath_flows import datapath_flow

    enr = enricher(tmp_path)
    links = RecentTranslations()
    sock = translation_flow(translation(cgroup_id(tmp_path / "pod-a")), enr, "node-1", 0, links)
    pkt = datapath_flow(event(ktime_ns=2_000), enr, "node-1", 0, links)
    plain = datapath_flow(event(dport=81), enr, "node-1", 0, None)
    by_type = FlowFilter.from_dict({"type": ["trace-sock"], "verdict": "TRANSLATED"})
    assert by_type.matches(sock) and not by_type.matches(pkt)
    assert FlowFilter.from_dict(by_type.to_dict()) == by_type
    point = FlowFilter.from_dict({"type": "trace-sock:post-xlate-fwd"})
    assert point.matches(sock) and point.to_dict() == {"type": ["trace-sock:post-xlate-fwd"]}
    assert not FlowFilter.from_dict({"type": "trace-sock:pre-xlate-fwd"}).matches(sock)
    assert FlowFilter.from_dict({"type": "policy-verdict"}).matches(pkt)
    svc = FlowFilter.from_dict({"service": ["y/web"]})
    assert svc.matches(sock) and svc.matches(pkt) and not svc.matches(plain)
    assert FlowFilter.from_dict({"service": "web"}).matches(pkt)
    assert not FlowFilter.from_dict({"service": "x/web"}).matches(pkt)
    assert parse_event_type("trace:to-endpoint").sub_type == 0
    for bad, field in (("sock", "not an event type"), ("trace:nowhere", "sub-type")):
        try:
            FlowFilter.from_dict({"type": bad})
        except ValueError as exc:
            assert str(exc).startswith("filters.type:") and field in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_xlate_point_labels_are_hubbles() -> None:
    assert [p.label for p in SocketTranslationPoint][1:] == [
        "pre-xlate-fwd",
        "post-xlate-fwd",
        "pre-xlate-rev",
        "post-xlate-rev",
    ]
    assert MessageType.TRACE_SOCK == 7


async def test_the_collector_drains_the_socket_lb_ring_before_the_datapath_one(
    tmp_path: Path,
) -> None:
    enr = enricher(tmp_path)
    cg = cgroup_id(tmp_path / "pod-a")
    lb = LBEvent(ktime_ns=1, sock_cookie=77, vport=8000, backend_port=80, proto=6, hook=1)
    lb.vip = int.from_bytes(IPv4Address(VIP).packed, "little")
    lb.backend_ip = int.from_bytes(IPv4Address(BACKEND).packed, "little")
    lb.cgroup_id = cg
    packet = bytes(
        FlowEventStruct(
            ktime_ns=2,
            src_identity=ID_A,
            dst_identity=ID_B,
            endpoint_id=7,
            ifindex=7,
            saddr=int.from_bytes(IPv4Address(CLIENT).packed, "little"),
            daddr=int.from_bytes(IPv4Address(BACKEND).packed, "little"),
            sport=40000,
            dport=80,
            event_type=4,
            verdict=1,
            traffic_direction=2,
            obs_point=5,
            ct_state=1,
            proto=6,
            tcp_flags=2,
            version=1,
        )
    )
    lb_lost = iter([0, 0, 4] + [4] * 100)
    stream = FlowStream(100, node_name="node-1")
    collector = NodeCollector("node-1", enr, stream)
    datapath_ring = FakeRing([[packet]])
    lb_ring = FakeRing([[bytes(lb)]])
    records = await records_after(
        stream,
        collector.run_datapath(datapath_ring, lambda: 0, (lb_ring, lambda: next(lb_lost))),
        3,
    )
    flows = [r for r in records if isinstance(r, Flow)]
    assert [f.verdict for f in flows] == [Verdict.TRANSLATED, Verdict.FORWARDED]
    assert flows[1].destination_service == Service("web", "y")  # linked: drained in that order
    losses = [r for r in records if isinstance(r, LostEvent)]
    assert [(x.source, x.num_events_lost) for x in losses] == [
        (LostEventSource.PERF_EVENT_RING_BUFFER, 4)
    ]
    assert collector.stats.sources["socket-lb"].records == 1
    assert np.dtype(LBEvent).itemsize == 56


def test_a_translated_nodeport_at_the_nodes_own_address_names_its_service(tmp_path: Path) -> None:
    enr = enricher(tmp_path)
    cg = cgroup_id(tmp_path / "pod-a")
    node_ip = IPv4Address("10.224.0.4")
    flow = translation_flow(translation(cg, vip=node_ip, vport=30080), enr, "n", 0)
    assert flow.destination_service == Service("web", "y")
    assert (flow.ip.destination, flow.l4.destination_port) == (str(node_ip), 30080)
    other = translation_flow(translation(cg, vip=node_ip, vport=30081), enr, "n", 0)
    assert other.destination_service is None  # no NodePort 30081
