"""The Observer's columnar pre-filter (collector.ringcolumns + protofilter.FlowSelection.prefilter)
against the exact matcher: on random batches and random filters, the mask passes every row the
exact matcher accepts, and GetFlows' history is what matching every built record gives."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import numpy as np
import pytest

from collector.columns import DatapathNamer
from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.observer import HistoryRequest, select_history
from collector.ring import FlowRing, RingEntry
from collector.ringcolumns import MERGE_AT, RingIndex, batch_columns
from collector.translations import Link, RecentTranslations
from dataplane.agent.ipcache_records import IPRecord
from dataplane.identity.model import Identity, pod_labels
from dataplane.maps.flowevent import (
    CtState,
    DropReason,
    EventType,
    ObservationPoint,
    Verdict,
)
from flowscope.flow.filter import FlowFilter
from flowscope.flow.model import LostEvent, LostEventSource, Service, ServiceTranslation
from flowscope.flow.protofilter import FlowSelection, compile_selection
from flowscope.proto import flow_pb2
from tests.collector.test_columns import rows
from tests.collector.test_flows import COOKIE, NODE_IP, event

T0 = 1_700_000_000 * 10**9
PODS = [  # address, identity, namespace, pod, app
    ("10.244.1.2", 300, "x", "a-1", "a"),
    ("10.244.1.3", 300, "x", "a-2", "a"),
    ("10.244.2.3", 301, "y", "b-1", "b"),
    ("10.244.2.4", 302, "y", "c-1", "c"),
]
OUTSIDE = ["192.0.2.9", "10.0.0.10"]
ADDRESSES = [p[0] for p in PODS] + OUTSIDE
IDENTITIES = [300, 301, 302, 2, 9999]
PORTS = [53, 80, 443, 8080, 40000]
PROTOS = [6, 17, 1, 132, 58, 47]
VERDICTS = [Verdict.FORWARDED, Verdict.DROPPED, Verdict.AUDIT]
REASONS = [0, DropReason.POLICY_DENIED, DropReason.INVALID_SOURCE_IP]
POINTS = [ObservationPoint.FROM_ENDPOINT, ObservationPoint.TO_ENDPOINT]
WEB = Service("web", "y")


class Directory:
    version = 0

    def __init__(self) -> None:
        self.records = {
            ip: IPRecord(IPv4Address(ip), ident, "node-1", NODE_IP, ns, pod)
            for ip, ident, ns, pod, _ in PODS
        }
        self.identities = {
            ident: Identity(ident, pod_labels(ns, {"app": app}, {}))
            for _, ident, ns, _, app in PODS
        }

    def record(self, ip: str) -> IPRecord | None:
        return self.records.get(ip)

    def identity(self, identity_id: int) -> Identity | None:
        return self.identities.get(identity_id)

    def rule(self, cookie: int):
        return None


def translations() -> RecentTranslations:
    links = RecentTranslations()
    for client in ADDRESSES[:2]:
        backend = PODS[2][0]
        link = Link(WEB, ServiceTranslation("10.0.0.10", 8000, IPv4Address(backend), 80))
        links.remember((IPv4Address(client), IPv4Address(backend), 80, 6), link, T0)
    links.remember(
        (IPv4Address(ADDRESSES[0]), IPv4Address(PODS[3][0]), 443, 6),
        Link(None, ServiceTranslation("10.0.0.11", 443, IPv4Address(PODS[3][0]), 443)),
        T0,
    )
    return links


def random_events(rng: np.random.Generator, n: int, t: int) -> list:
    out = []
    for i in range(n):
        verdict = rng.choice(VERDICTS)
        reply = rng.choice([False, True, None])
        out.append(
            event(
                ktime_ns=t + i,
                saddr=IPv4Address(str(rng.choice(ADDRESSES))),
                daddr=IPv4Address(str(rng.choice(ADDRESSES))),
                src_identity=int(rng.choice(IDENTITIES)),
                dst_identity=int(rng.choice(IDENTITIES)),
                sport=int(rng.choice(PORTS)),
                dport=int(rng.choice(PORTS)),
                proto=int(rng.choice(PROTOS)),
                tcp_flags=int(rng.integers(0, 256)),
                verdict=verdict,
                drop_reason=int(rng.choice(REASONS)),
                traffic_direction=int(rng.choice([0, 1, 2])),
                obs_point=rng.choice(POINTS),
                is_reply=reply,
                event_type=int(rng.choice([EventType.TRACE, EventType.POLICY_VERDICT])),
                ct_state=int(rng.choice([CtState.NEW, CtState.ESTABLISHED, CtState.REPLY])),
                policy_cookie=COOKIE,
                endpoint_id=int(rng.integers(0, 3)),
            )
        )
    return out


def random_filter(rng: np.random.Generator) -> flow_pb2.FlowFilter:
    """One FlowFilter of 1-3 random criteria, from values the random events take (and not)."""
    choices = {
        "source_ip": lambda: [str(rng.choice([*ADDRESSES, "10.244.1.0/24", "10.244.0.0/16"]))],
        "destination_ip": lambda: [str(rng.choice([*ADDRESSES, "10.244.2.0/24", "fd00::/8"]))],
        "source_pod": lambda: [str(rng.choice(["x/a", "y/", "a-", "y/b-1", "z/"]))],
        "destination_pod": lambda: [str(rng.choice(["x/", "y/c", "b-", "x/a-2"]))],
        "source_label": lambda: [str(rng.choice(["app=a", "k8s:app in (b,c)", "!app"]))],
        "destination_label": lambda: [str(rng.choice(["app=b", "app!=b", "app"]))],
        "source_service": lambda: [str(rng.choice(["y/web", "web", "x/"]))],
        "destination_service": lambda: [str(rng.choice(["y/web", "y/", "other"]))],
        "source_identity": lambda: [int(rng.choice(IDENTITIES))],
        "destination_identity": lambda: [int(rng.choice(IDENTITIES)), 2],
        "source_port": lambda: [str(rng.choice(PORTS))],
        "destination_port": lambda: [str(p) for p in rng.choice(PORTS, 2)],
        "protocol": lambda: [str(rng.choice(["tcp", "udp", "icmp", "sctp", "icmpv6"]))],
        "verdict": lambda: [int(rng.choice(VERDICTS))],
        "drop_reason_desc": lambda: [int(rng.choice(REASONS[1:]))],
        "traffic_direction": lambda: [int(rng.choice([0, 1, 2]))],
        "reply": lambda: [bool(rng.choice([False, True]))],
        "tcp_flags": lambda: [flow_pb2.TCPFlags(SYN=True, ACK=bool(rng.integers(0, 2)))],
        "event_type": lambda: [
            flow_pb2.EventTypeFilter(
                type=int(rng.choice([1, 4, 5])),
                match_sub_type=bool(rng.integers(0, 2)),
                sub_type=int(rng.choice([0, 5, 133])),
            )
        ],
        "node_name": lambda: [str(rng.choice(["node-*", "other"]))],
        "ip_version": lambda: [int(rng.choice([1, 2]))],
        "uuid": lambda: [""],
        "source_workload": lambda: [flow_pb2.Workload(kind="Deployment")],
        "http_method": lambda: ["GET"],
    }
    names = rng.choice(list(choices), int(rng.integers(1, 4)), replace=False)
    return flow_pb2.FlowFilter(**{str(n): choices[str(n)]() for n in names})


def random_selection(rng: np.random.Generator) -> FlowSelection:
    white = [random_filter(rng) for _ in range(int(rng.integers(0, 3)))]
    black = [random_filter(rng) for _ in range(int(rng.integers(0, 2)))]
    return compile_selection(white, black)


def filled_ring(rng: np.random.Generator, batches: int = 12) -> FlowRing:
    """Batches of random events from namers that start over (a new directory version, a second
    namer), with lost events between them: a ring of mixed chunks, its oldest pushed out."""
    directory = Directory()
    namers = [
        DatapathNamer(Enricher(directory, "lab"), f"node-{i}", T0, translations()) for i in (1, 2)
    ]
    ring = FlowRing(400)
    for b in range(batches):
        if b == 5:
            directory.version += 1  # the namer looks names up again, in a new list
        namer = namers[b % 3 == 2]
        size = int(rng.choice([1, 3, 40, 90]))
        ring.append_chunk(namer.batch(rows(random_events(rng, size, b * 1000))))
        if b % 4 == 1:
            ring.append(LostEvent.now(LostEventSource.PERF_EVENT_RING_BUFFER, 1, node_name="n"))
    return ring


@pytest.mark.parametrize("seed", range(6))
def test_the_mask_passes_every_row_the_exact_matcher_accepts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ring = filled_ring(rng)
    chunks = [chunk for _, chunk in ring.chunks_from(0)]
    columns, _offsets = batch_columns(chunks)
    records = [chunk.record(i) for chunk in chunks for i in range(len(chunk))]
    assert len(columns) == len(records)
    narrowed = 0
    for _ in range(150):
        selection = random_selection(rng)
        mask = selection.prefilter(columns)
        exact = np.array([selection.matches(r) for r in records])
        missed = np.flatnonzero(exact & ~mask)
        assert not len(missed), (selection, [records[i] for i in missed[:3]])
        narrowed += int((~mask).sum())
    assert narrowed > 0  # the pre-filter does leave rows out
    # the columns say what the flows say
    flows = [i for i, r in enumerate(records) if not isinstance(r, LostEvent)]
    assert not columns.opaque[flows].any() and columns.opaque.sum() == len(records) - len(flows)
    assert columns.time_ns[flows].tolist() == [records[i].time_ns for i in flows]


def test_exact_criteria_decide_a_blacklist_and_names_are_looked_at_last_and_once() -> None:
    rng = np.random.default_rng(7)
    ring = filled_ring(rng)
    columns, _ = batch_columns([chunk for _, chunk in ring.chunks_from(0)])
    selection = compile_selection(
        blacklist=[flow_pb2.FlowFilter(verdict=[flow_pb2.FORWARDED])],
    )
    records = [e.record for e in ring.entries()]
    keep = selection.prefilter(columns)[-len(records) :]
    assert keep.tolist() == [selection.matches(r) for r in records]  # exact: nothing extra
    # a pod criterion looks names up only for the rows the verdict left, once per distinct key
    looked: list[int] = []
    counted = dataclasses.replace(
        columns, endpoint_lists=[Counted(lst, looked) for lst in columns.endpoint_lists]
    )
    pods = compile_selection([flow_pb2.FlowFilter(source_pod=["x/a"], verdict=[flow_pb2.DROPPED])])
    mask = pods.prefilter(counted)
    dropped = columns.verdict == flow_pb2.DROPPED
    assert len(looked) == len(np.unique(columns.ends[dropped & ~columns.opaque]))
    assert len(looked) <= int(dropped.sum()) < len(columns)
    assert mask.tolist() == pods.prefilter(columns).tolist()
    # an undecidable criterion (uuid) leaves the whitelist open and the blacklist unused
    by_uuid = compile_selection([flow_pb2.FlowFilter(uuid=["x"])], [flow_pb2.FlowFilter(uuid=[""])])
    assert by_uuid.prefilter(columns).all()


class Counted(list):
    """A list of names that counts the lookups made in it."""

    def __init__(self, items: list, looked: list) -> None:
        super().__init__(items)
        self.looked = looked

    def __getitem__(self, index):
        self.looked.append(index)
        return super().__getitem__(index)


def history(ring: FlowRing, request: HistoryRequest) -> list:
    """The history as matching every built record gives it (the Observer's old way)."""
    entries = ring.entries()
    wanted = [e for e in entries if request.wants(e.record)]
    n = request.number or None
    if n is None:
        return wanted
    return wanted[:n] if request.first else wanted[-n:]


@pytest.mark.parametrize("seed", range(4))
def test_history_through_the_index_is_what_matching_every_record_gives(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    ring = filled_ring(rng, batches=6)
    index = RingIndex(ring)
    for round_ in range(40):
        if round_ % 5 == 4:  # the ring moves on between queries: new segments, old rows out
            ring = index.ring
            ring.append_chunk(
                DatapathNamer(Enricher(Directory(), "lab"), "node-3", T0).batch(
                    rows(random_events(rng, int(rng.integers(1, 120)), 10**6 * round_))
                )
            )
        times = sorted(e.record.time_ns for e in ring.entries())
        since = int(rng.choice(times)) if rng.integers(0, 3) == 0 else None
        until = int(rng.choice(times)) if rng.integers(0, 3) == 0 else None
        if since is not None and until is not None and until < since:
            since, until = until, since
        request = HistoryRequest(
            number=int(rng.choice([0, 1, 5, 50])),
            first=bool(rng.integers(0, 2)),
            follow=False,
            since_ns=since,
            until_ns=until,
            selection=random_selection(rng),
            field_mask=None,
        )
        got = select_history(index, request)
        want = history(ring, request)
        assert [(id(e.chunk), e.index) for e in got] == [(id(e.chunk), e.index) for e in want]
    assert len(index._segments) <= MERGE_AT


def test_a_follower_builds_only_the_rows_its_prefilter_passes() -> None:
    rng = np.random.default_rng(3)
    namer = DatapathNamer(Enricher(Directory(), "lab"), "node-1", T0, translations())
    stream = FlowStream(10_000)
    selection = compile_selection([flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
    follower = stream.follow(selection)
    everything = stream.follow(FlowFilter())
    batch = namer.batch(rows(random_events(rng, 300, 0)))
    stream.publish_batch(batch)
    got = follower.take()
    dropped = [i for i in range(len(batch)) if batch.record(i).verdict == Verdict.DROPPED]
    assert [e.index for e in got if isinstance(e, RingEntry)] == dropped
    assert len(everything.take()) == 300
    # without the exact matcher's help nothing else was built for the selective follower
    fresh = namer.batch(rows(random_events(rng, 300, 10_000)))
    stream.publish_batch(fresh)
    follower.take()
    built = sum(r is not None for r in fresh._records)
    assert built == int((fresh.events["verdict"] == Verdict.DROPPED).sum()) < 300
