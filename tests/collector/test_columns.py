"""Columnar collection (collector.columns): batches named per distinct key give the same flows
as naming each event, names are snapshotted at collection, Flows are built only when read, and
the flow stream's ring and followers take whole batches."""

from __future__ import annotations

import asyncio
import dataclasses
from ipaddress import IPv4Address

import numpy as np
import pytest

from collector.columns import DatapathNamer, FlowBatch, KeyIndex
from collector.datapath_flows import datapath_flow
from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.node import NodeCollector
from collector.ring import FlowRing, capacity_of
from collector.translations import Link, RecentTranslations
from dataplane.agent.ipcache_records import IPRecord
from dataplane.maps.flowevent import (
    EVENT_DTYPE,
    IS_REPLY_UNKNOWN,
    CtState,
    DropReason,
    FlowEvent,
    FlowEventStruct,
    ObservationPoint,
    Verdict,
)
from flowscope.errors import UsageError
from flowscope.flow.filter import FlowFilter
from flowscope.flow.model import Flow, LostEvent, LostEventSource, Service, ServiceTranslation
from tests.collector.test_flows import ID_A, ID_B, NODE_IP, Directory, FakeRing, event

A, B, OUTSIDE = "10.244.1.2", "10.244.2.3", "192.0.2.9"
T0 = 1_700_000_000 * 10**9


class CountingDirectory(Directory):
    """The fake directory, counting how often it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def record(self, ip: str):
        self.asked += 1
        return super().record(ip)

    def identity(self, identity_id: int):
        self.asked += 1
        return super().identity(identity_id)


def rows(events: list[FlowEvent]) -> np.ndarray:
    """Events as the kernel's records."""
    out = np.zeros(len(events), EVENT_DTYPE)
    for i, ev in enumerate(events):
        fields = dataclasses.asdict(ev)
        fields["saddr"] = int.from_bytes(ev.saddr.packed, "little")
        fields["daddr"] = int.from_bytes(ev.daddr.packed, "little")
        fields["is_reply"] = IS_REPLY_UNKNOWN if ev.is_reply is None else int(ev.is_reply)
        fields = {k: int(v) for k, v in fields.items()}
        out[i] = np.frombuffer(bytes(FlowEventStruct(**fields, version=1)), EVENT_DTYPE)[0]
    return out


def variety() -> list[FlowEvent]:
    """Events of every kind the naming distinguishes, several times each."""
    kinds = [
        event(),  # new, allowed by policy, to-endpoint
        event(ct_state=CtState.ESTABLISHED, ktime_ns=2_000),
        event(obs_point=ObservationPoint.FROM_ENDPOINT, traffic_direction=2, endpoint_id=9),
        event(verdict=Verdict.DROPPED, drop_reason=DropReason.POLICY_DENIED),
        event(saddr=IPv4Address(OUTSIDE), src_identity=2),  # the world
        event(src_identity=ID_B),  # an address seen with an identity not its own
        event(proto=17, tcp_flags=0, is_reply=None),
        event(proto=1, sport=0, dport=0, icmp_type=8),
        event(  # a reply: backend -> client
            saddr=IPv4Address(B),
            daddr=IPv4Address(A),
            sport=80,
            dport=40000,
            is_reply=True,
            src_identity=ID_B,
            dst_identity=ID_A,
            ct_state=CtState.REPLY,
        ),
    ]
    return [dataclasses.replace(k, ktime_ns=k.ktime_ns + 10 * i) for i in range(5) for k in kinds]


def translations() -> RecentTranslations:
    links = RecentTranslations()
    link = Link(Service("web", "y"), ServiceTranslation("10.0.0.10", 8000, B, 80))
    links.remember((A, B, 80, 6), link, T0)
    return links


def test_a_batch_names_every_event_as_naming_each_event_alone_does() -> None:
    evs = variety()
    enricher = Enricher(Directory(), "lab")
    namer = DatapathNamer(enricher, "node-2", T0, translations())
    batch = namer.batch(rows(evs))
    one_by_one = translations()
    expected = [datapath_flow(ev, enricher, "node-2", T0, one_by_one) for ev in evs]
    assert [batch.record(i) for i in range(len(batch))] == expected
    named = [f for f in expected if f.destination_service or f.source_service]
    # every TCP packet between A and B:80 (six kinds), the reply's as its source_service
    assert len(named) == 5 * 6 and sum(f.source_service is not None for f in named) == 5
    assert any(f.ingress_allowed_by for f in expected)
    assert batch.time_ns.tolist() == [f.time_ns for f in expected]


def test_names_are_looked_up_per_distinct_key_not_per_event() -> None:
    directory = CountingDirectory()
    namer = DatapathNamer(Enricher(directory, "lab"), "n", 0)
    many = rows([event(ktime_ns=i) for i in range(10_000)])
    namer.batch(many)
    first = directory.asked
    assert 0 < first <= 4  # two endpoints: an address and an identity each
    namer.batch(many.copy())
    assert directory.asked == first  # the next batch asks nothing
    assert len(namer.endpoints) == 1  # one pair of ends


def test_names_are_those_of_collection_time() -> None:
    directory = Directory()
    namer = DatapathNamer(Enricher(directory, "lab"), "n", 0)
    old = namer.batch(rows([event()]))
    directory.records[A] = IPRecord(IPv4Address(A), ID_A, "node-1", NODE_IP, "x", "a-2")
    directory.version = 1  # the agent's directory changed: pod a was replaced
    new = namer.batch(rows([event()]))
    assert old.record(0).source.pod_name == "a"  # built after the change, named before it
    assert new.record(0).source.pod_name == "a-2"


def test_flows_are_built_only_when_read_and_once() -> None:
    namer = DatapathNamer(Enricher(Directory(), "lab"), "n", 0)
    batch = namer.batch(rows([event(ktime_ns=i) for i in range(100)]))
    stream = FlowStream(1000)
    stream.publish_batch(batch)
    assert len(stream.ring) == 100 and stream.seen == 100
    assert batch._records is None  # nothing built yet
    entry = stream.ring.last(1)[0]
    assert entry.record is entry.record and entry.line() is entry.line()
    assert sum(r is not None for r in batch._records) == 1
    assert Flow.from_json(entry.line()) == entry.record


def test_the_key_index_answers_exactly_through_collisions_and_restarts() -> None:
    made: list[tuple[int, int]] = []

    def make(a: int, b: int) -> str:
        made.append((a, b))
        return f"{a}/{b}"

    index: KeyIndex[str] = KeyIndex(make, bits=2, limit=50)  # 4 slots: many collisions
    rng = np.random.default_rng(1)
    for _ in range(5):
        w1 = rng.integers(0, 6, 500).astype(np.uint64) << np.uint64(40)
        w2 = rng.integers(0, 5, 500).astype(np.uint64)
        numbers = index.lookup(w1, w2)
        got = [index.values[n] for n in numbers.tolist()]
        assert got == [f"{a}/{b}" for a, b in zip(w1.tolist(), w2.tolist(), strict=True)]
    assert len(made) == len(set(made)) == 30  # each key made once
    kept = index.values
    index.reset()
    assert kept[0] == f"{made[0][0]}/{made[0][1]}" and index.values == []


def test_the_ring_holds_the_newest_across_batches_and_single_records() -> None:
    namer = DatapathNamer(Enricher(Directory(), "lab"), "n", 0)
    ring = FlowRing(25)
    for b in range(4):
        ring.append_chunk(namer.batch(rows([event(ktime_ns=b * 100 + i) for i in range(10)])))
    lost = LostEvent.now(LostEventSource.PERF_EVENT_RING_BUFFER, 3)
    ring.append(lost)
    assert len(ring) == 25 and ring.seen == 41
    times = [e.record.time_ns for e in ring.last() if isinstance(e.record, Flow)]
    # 40 flows and a lost event through 25 places: the first batch's entries 6..9 stay
    assert times == [b * 100 + i for b in (1, 2, 3) for i in range(10)][-24:]
    assert ring.last(1)[0].record is lost
    assert [e.record.time_ns for e in ring.last(2, lambda r: isinstance(r, Flow))] == [308, 309]


async def test_followers_get_batches_in_order_selected_and_bounded() -> None:
    namer = DatapathNamer(Enricher(Directory(), "lab"), "n", 0)
    stream = FlowStream(1000, client_queue=15)
    drops = stream.follow(FlowFilter.from_dict({"verdict": ["DROPPED"]}))
    everything = stream.follow(FlowFilter())
    mixed = [
        event(ktime_ns=i, verdict=Verdict.DROPPED if i % 3 == 0 else Verdict.FORWARDED)
        for i in range(10)
    ]
    stream.publish_batch(namer.batch(rows(mixed)))
    stream.publish_lost(LostEventSource.PERF_EVENT_RING_BUFFER, 2)
    stream.publish_batch(namer.batch(rows([event(ktime_ns=100 + i) for i in range(10)])))
    got = drops.take()
    assert [e.record.time_ns for e in got[:4]] == [0, 3, 6, 9]
    assert isinstance(got[4].record, LostEvent)
    # the second batch did not fit the queue whole (15 records): the rest is counted
    assert len(got) == 5 + 1 and got[5].count == 10 - 4
    every = everything.take()
    assert [e.record.time_ns for e in every[:10]] == list(range(10))
    assert [e.record.time_ns for e in every[11:15]] == [100, 101, 102, 103]
    assert every[15].count == 6
    assert not drops.take() and not drops.wakeup.is_set()
    assert stream.lost_counts[LostEventSource.PERF_EVENT_RING_BUFFER] == 2
    await asyncio.sleep(0)


async def test_the_collector_counts_undecodable_batches_as_lost_by_the_collector() -> None:
    stream = FlowStream(100)
    collector = NodeCollector("n", Enricher(Directory(), "lab"), stream)
    good = rows([event()])
    bad = good.copy()
    bad["version"] = 9
    ring = FakeRing([[good.tobytes() * 3], [bad.tobytes()]])
    collector.drain_datapath(ring)
    collector.drain_datapath(ring)
    records = [e.record for e in stream.ring.last()]
    assert [type(r) for r in records] == [Flow, Flow, Flow, LostEvent]
    assert records[3].source == LostEventSource.COLLECTOR_DECODE
    assert records[3].num_events_lost == 1


def test_a_batch_is_a_chunk_of_the_ring() -> None:
    namer = DatapathNamer(Enricher(Directory(), "lab"), "n", 0)
    batch = namer.batch(rows([event()]))
    assert isinstance(batch, FlowBatch) and len(batch) == 1
    assert batch.event(0) == event()


def test_ring_capacity_comes_from_the_cluster_and_is_checked() -> None:
    assert capacity_of({}) == 65535
    assert capacity_of({"flow_ring_capacity": 1000}) == 1000
    for bad in (0, -1, "100", True, 1.5):
        with pytest.raises(UsageError, match="flow_ring_capacity"):
            capacity_of({"flow_ring_capacity": bad})


def test_an_empty_batch_names_nothing() -> None:
    namer = DatapathNamer(Enricher(Directory(), "lab"), "n", 0, translations())
    batch = namer.batch(np.zeros(0, EVENT_DTYPE))
    assert len(batch) == 0
    stream = FlowStream(10)
    stream.publish_batch(batch)
    assert stream.seen == 0 and len(stream.ring) == 0  # nothing appended
