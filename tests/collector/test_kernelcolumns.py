"""The tracepoints' and the socket LB's events named a batch at a time (collector.kernelcolumns,
collector.translationcolumns): the flows are those of the per-event path on the same records,
names are looked up per distinct key and are those of collection time, flows are built when
read. Pure: a fake directory stands for the agent's (tests/e2e meet the real one)."""

from __future__ import annotations

import asyncio
import ctypes as ct
import random
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import numpy as np
import pytest

from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.kernelcolumns import KernelNamer
from collector.kernelflows import kernel_flow, reportable
from collector.node import NodeCollector
from collector.podcgroups import cgroup_id
from collector.socklb_flows import translation_flow
from collector.translationcolumns import TranslationNamer
from collector.translations import RecentTranslations
from dataplane.agent.ipcache_records import IPRecord
from dataplane.maps.kernelevent import (
    AF_INET,
    AF_INET6,
    EVENT_DTYPE,
    KernelEventStruct,
    decode,
    to_array,
)
from flowscope.flow.model import Endpoint
from probes import socklb
from probes.socklb import LBEvent
from tests.collector.test_flows import ID_A, NODE_IP, Directory, FakeRing
from tests.collector.test_service_flows import BACKEND, CLIENT, VIP, enricher

A, B = "10.244.1.2", "10.244.2.3"  # pods x/a and y/b of the fake directory
REASONS = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 7: "QUEUE_PURGE", 40: "TC_INGRESS", 41: "TC_EGRESS"}
OWN_NETNS, OWN_IFINDEX = 4026531840, 7  # an endpoint's veth in the node's namespace


def own_device(netns: int, ifindex: int) -> bool:
    return (netns, ifindex) == (OWN_NETNS, OWN_IFINDEX)


class CountingEnricher(Enricher):
    def __init__(self, directory: Directory) -> None:
        super().__init__(directory, "lab")
        self.asked: list[str] = []

    def by_ip(self, ip: str) -> Endpoint:
        self.asked.append(ip)
        return super().by_ip(ip)


def record(**fields) -> bytes:
    rec = KernelEventStruct()
    for name, value in fields.items():
        if name in ("saddr", "daddr"):
            ct.memmove(getattr(rec, name), value, len(value))
        else:
            setattr(rec, name, value)
    return bytes(rec)


def mapped(ip: str) -> bytes:
    return IPv6Address(f"::ffff:{ip}").packed


def random_records(count: int, seed: int = 1) -> list[bytes]:
    """Events of every kind and family the programs write, and some they do not."""
    rng = random.Random(seed)
    addresses = [
        (AF_INET, IPv4Address(A).packed),
        (AF_INET, IPv4Address(B).packed),
        (AF_INET, IPv4Address("10.224.0.254").packed),  # no pod's
        (AF_INET6, mapped(A)),  # a dual-stack socket's IPv4 peer
        (AF_INET6, IPv6Address("fd00::1").packed),
        (AF_INET6, bytes(16)),  # ::
        (0, bytes(16)),  # a drop with no IPv4 header
    ]
    out = []
    for i in range(count):
        family, saddr = rng.choice(addresses)
        daddr = rng.choice([a for f, a in addresses if f == family])
        out.append(
            record(
                ktime_ns=1_000 + i,
                location=rng.choice([0, 0xFFFF_FFFF_8100_0000]),
                netns=rng.choice([OWN_NETNS, OWN_NETNS + 1]),
                ifindex=rng.choice([0, OWN_IFINDEX, 9]),
                drop_reason=rng.choice([*REASONS, 99]),
                skb_len=rng.randrange(2000),
                kind=rng.choice([1, 1, 2, 2, 2, 3, 0, 9]),
                protocol=rng.choice([6, 17, 132, 1, 0]),
                old_state=rng.choice([0, 1, 2, 7, 12, 40]),
                new_state=rng.choice([0, 1, 2, 7, 12, 40]),
                family=family,
                sport=rng.randrange(65536),
                dport=rng.randrange(65536),
                saddr=saddr,
                daddr=daddr,
            )
        )
    return out


def per_event(records: list[bytes], enr: Enricher, node: str, offset: int) -> list:
    """The per-record path the columns replace: decode, reportable, kernel_flow."""
    return [
        kernel_flow(e, enr, node, offset)
        for e in decode(to_array(records), REASONS)
        if reportable(e, own_device)
    ]


def test_a_batch_builds_the_flows_of_the_per_event_path() -> None:
    records = random_records(3000)
    expected = per_event(records, Enricher(Directory(), "lab"), "node-1", 5_000)
    namer = KernelNamer(Enricher(Directory(), "lab"), "node-1", 5_000, REASONS, own_device)
    batch = namer.batch(to_array(records))
    assert len(batch) == len(expected) > 1000  # some left out, most kept
    assert [batch.record(i) for i in range(len(batch))] == expected
    assert [batch.line(i) for i in range(len(batch))] == [
        f.to_json().encode() + b"\n" for f in expected
    ]
    assert np.array_equal(batch.time_ns, [f.time_ns for f in expected])
    sources = {f.source.pod_name for f in expected if f.source}
    assert {"a", "b", ""} <= sources  # named pods, unknown addresses, no address


def test_benign_and_own_tc_drops_are_masked_asking_per_distinct_interface() -> None:
    asked: list[tuple[int, int]] = []

    def device(netns: int, ifindex: int) -> bool:
        asked.append((netns, ifindex))
        return own_device(netns, ifindex)

    def drop(reason: int, ifindex: int = OWN_IFINDEX, netns: int = OWN_NETNS) -> bytes:
        return record(kind=1, drop_reason=reason, netns=netns, ifindex=ifindex)

    records = [
        drop(3),  # NO_SOCKET: kept
        drop(7),  # QUEUE_PURGE: benign
        drop(40),  # TC_INGRESS on our veth: the datapath said it
        drop(41),
        drop(41, ifindex=9),  # on another device: kept
        drop(40, netns=OWN_NETNS + 1),  # kept
        drop(40),
        record(kind=2),
        record(kind=0),  # unknown kind: left out
    ]
    namer = KernelNamer(Enricher(Directory(), "lab"), "n", 0, REASONS, device)
    keep = namer.reportable(to_array(records))
    assert keep.tolist() == [True, False, False, False, True, True, False, True, False]
    assert sorted(asked) == sorted({(OWN_NETNS, 7), (OWN_NETNS, 9), (OWN_NETNS + 1, 7)})


def test_addresses_are_named_per_distinct_address_not_per_event() -> None:
    directory = Directory()
    enr = CountingEnricher(directory)
    namer = KernelNamer(enr, "n", 0, REASONS)
    state = dict(kind=2, protocol=6, old_state=2, new_state=1, family=AF_INET)
    a, b = IPv4Address(A).packed, IPv4Address(B).packed
    records = [record(**state, sport=i, saddr=a, daddr=b) for i in range(2000)]
    records += [record(**state, sport=i, saddr=b, daddr=a) for i in range(2000)]
    batch = namer.batch(to_array(records))
    assert sorted(enr.asked) == [A, B]  # once each, for 4000 events
    namer.batch(to_array(records))
    assert len(enr.asked) == 2  # and not again while the directory stays
    assert batch.record(3999).source.pod_name == "b"
    directory.version = 1
    namer.batch(to_array(records[:1]))
    assert len(enr.asked) == 4  # changed: found again


def test_names_are_those_of_collection_time_and_flows_are_built_when_read() -> None:
    directory = Directory()
    namer = KernelNamer(Enricher(directory, "lab"), "n", 0, REASONS)
    a, b = IPv4Address(A).packed, IPv4Address(B).packed
    batch = namer.batch(to_array([record(kind=2, family=AF_INET, saddr=a, daddr=b)] * 3))
    assert batch._records is None  # nothing built yet
    directory.records[A] = IPRecord(IPv4Address(A), ID_A, "node-1", NODE_IP, "x", "a-2")
    directory.version = 1
    assert batch.record(1).source.pod_name == "a"
    assert batch._records is not None and batch._records.count(None) == 2  # that one only
    assert batch.record(1) is batch.record(1)


def test_an_empty_drain_names_nothing() -> None:
    namer = KernelNamer(Enricher(Directory(), "lab"), "n", 0, REASONS)
    assert len(namer.batch(np.zeros(0, EVENT_DTYPE))) == 0
    translations = TranslationNamer(Enricher(Directory(), "lab"), "n", 0, RecentTranslations())
    assert len(translations.batch(np.zeros(0, socklb.EVENT_DTYPE))) == 0


class FakeProbes:
    """The tracepoint probes as the collector uses them: a ring, the reason table, a counter."""

    def __init__(self, records: list[bytes]) -> None:
        self.ring = FakeRing([records])
        self.reason_names = REASONS

    def lost_events(self) -> int:
        return 0


async def test_the_collector_publishes_reportable_kernel_events_as_one_batch() -> None:
    directory = Directory()
    stream = FlowStream(100)
    collector = NodeCollector("n", Enricher(directory, "lab"), stream, own_device)
    a, b = IPv4Address(A).packed, IPv4Address(B).packed
    ends = dict(family=AF_INET, saddr=a, daddr=b)
    state = record(kind=2, protocol=6, old_state=2, new_state=7, **ends)
    benign = record(kind=1, drop_reason=7, protocol=17, **ends)
    drop = record(kind=1, drop_reason=3, protocol=17, **ends)
    task = asyncio.create_task(collector.run_tracepoints(FakeProbes([state, benign, drop])))
    try:
        for _ in range(200):
            if len(stream.ring) >= 2:
                break
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
    records = [e.record for e in stream.ring.last()]
    assert [r.summary for r in records] == ["TCP state SYN_SENT -> CLOSE", "UDP"]
    assert records[1].kernel_drop_reason == "NO_SOCKET"
    assert [r.source.pod_name for r in records] == ["a", "a"]
    assert collector.stats.sources["tracepoints"].records == 3


# -- the socket LB's translations --


def lb_record(cgroup: int, ktime: int, cookie: int, **kw) -> bytes:
    ev = LBEvent(ktime_ns=ktime, sock_cookie=cookie, hook=1, version=2, cgroup_id=cgroup)
    values = dict(vip=VIP, vport=8000, backend_ip=BACKEND, backend_port=80, proto=6) | kw
    for name, value in values.items():
        if name in ("vip", "backend_ip"):
            value = int.from_bytes(IPv4Address(value).packed, "little")
        setattr(ev, name, value)
    return bytes(ev)


@pytest.mark.parametrize("variety", [1, 2, 3])
def test_translations_build_the_per_event_flows_and_leave_the_same_links(
    tmp_path: Path, variety: int
) -> None:
    """From one key per batch (one client, one backend) to a dozen (found by sorting)."""
    cg = cgroup_id(tmp_path.joinpath("pod-a").mkdir() or tmp_path / "pod-a")
    rng = random.Random(variety)
    udp = {"vport": 53, "backend_port": 53, "proto": 17}
    records = [
        lb_record(
            rng.choice([cg, 999_999][:variety]),  # the client pod, or a host process
            1_000 + i,
            i,
            backend_ip=rng.choice([BACKEND, "10.244.2.9"][:variety]),
            **rng.choice([{}, udp, {"vip": "10.0.0.99"}][:variety]),
        )
        for i in range(500)
    ]
    old_links, new_links = RecentTranslations(), RecentTranslations()
    expected = [
        translation_flow(t, enricher(tmp_path), "node-1", 7, old_links)
        for t in socklb.decode_events(records)
    ]
    namer = TranslationNamer(enricher(tmp_path), "node-1", 7, new_links)
    batch = namer.batch(socklb.to_array(records))
    assert [batch.record(i) for i in range(len(batch))] == expected
    assert len(batch.names) == {1: 1, 2: 8, 3: 12}[variety]  # per (cgroup, frontend, backend)
    assert list(new_links._entries.items()) == list(old_links._entries.items())  # same order
    assert {f.destination_service.name for f in expected if f.destination_service} == {"web"}
    assert any(f.source.pod_name == "a" for f in expected)
    assert variety == 1 or any(f.ip.source == "" for f in expected)


async def test_translation_rings_read_whole_and_version_1_records_too(tmp_path: Path) -> None:
    cg = cgroup_id(tmp_path.joinpath("pod-a").mkdir() or tmp_path / "pod-a")

    class Ring(FakeRing):
        def drain_array(self, dtype, max_records: int = 1 << 16, *, copy: bool = False):
            if self.batches and any(len(r) != np.dtype(dtype).itemsize for r in self.batches[0]):
                raise ValueError("a record of another size")  # as RingBuffer: nothing taken
            return super().drain_array(dtype, max_records, copy=copy)

    v2 = lb_record(cg, 1, 1)
    ring = Ring([[v2, v2[:48]]])
    got = socklb.read_events(ring)
    assert got["cgroup_id"].tolist() == [cg, 0] and got["vport"].tolist() == [8000, 8000]
    assert socklb.read_events(Ring([[v2, v2]]))["sock_cookie"].tolist() == [1, 1]
    stream = FlowStream(100)
    collector = NodeCollector("node-1", enricher(tmp_path), stream)
    task = asyncio.create_task(collector.run_socket_lb(Ring([[v2] * 3]), lambda: 0))
    try:
        for _ in range(200):
            if len(stream.ring) >= 3:
                break
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
    flows = [e.record for e in stream.ring.last()]
    assert [f.source.pod_name for f in flows] == ["a"] * 3
    assert [f.ip.source for f in flows] == [CLIENT] * 3
    assert len(collector.translations) == 1


def test_translation_names_last_across_batches_while_their_sources_stay(tmp_path: Path) -> None:
    pod = tmp_path / "pod-a"
    pod.mkdir()
    enr = enricher(tmp_path)
    calls: list[int] = []
    pod_ip = enr.pod_ip

    def counted(cgroup: int) -> str | None:
        calls.append(cgroup)
        return pod_ip(cgroup)

    enr.pod_ip = counted  # type: ignore[method-assign]
    cg, stranger = cgroup_id(pod), cgroup_id(tmp_path)
    namer = TranslationNamer(enr, "n", 0, RecentTranslations())
    batch = [lb_record(cg, i, i) for i in range(50)] + [lb_record(stranger, 60, 60)]
    for _ in range(3):
        flows = namer.batch(socklb.to_array(batch))
    assert calls.count(cg) == 1  # named once for 3 batches
    assert calls.count(stranger) == 3  # no pod's (yet): asked again at every batch
    assert flows.record(0).source.pod_name == "a" and flows.record(50).source.pod_name == ""
    enr.directory.version = 7  # the agent's directory changed: names found again
    namer.batch(socklb.to_array(batch))
    assert calls.count(cg) == 2
