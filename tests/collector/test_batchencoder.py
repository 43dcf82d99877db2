"""Whole columnar batches encoded from their columns (collector.batchencoder): every row is
byte for byte what protoconv serialises from that row's Flow, for random batches of each type
(the datapath's FlowBatch: any event columns, names, policies, services, times; the
tracepoints' KernelBatch: any kind, protocol, state, reason, addresses named or not; the socket
LB's TranslationBatch: any names, cookies, cgroups), with templates made or reused; framed rows
are the Kafka FlowBatch's `responses`; and the Flows themselves are not built."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.batchencoder import BatchEncoder, merged_runs
from collector.columnbatch import ColumnBatch
from collector.columns import Ends, FlowBatch
from collector.kernelcolumns import AddressName, KernelBatch
from collector.socklb_flows import TranslationNames
from collector.translationcolumns import TranslationBatch
from collector.translations import Link
from dataplane.maps import kernelevent
from dataplane.maps.flowevent import EVENT_DTYPE, VERSION
from flowscope.flow.model import (
    Endpoint,
    IPVersion,
    Policy,
    Service,
    ServiceTranslation,
    Workload,
)
from flowscope.flow.protoconv import record_to_response
from flowscope.proto import kafka_pb2, observer_pb2
from probes import socklb

T0 = 1_700_000_000 * 10**9

word = st.text("abcxyz-0123456789", min_size=1, max_size=8)
text = st.text("abcxyz-./:=0123456789", max_size=10)
endpoints = st.builds(
    Endpoint,
    id=st.integers(0, 2**16),
    identity=st.integers(0, 2**32 - 1),
    namespace=text,
    labels=st.lists(text, max_size=3).map(tuple),
    pod_name=text,
    workloads=st.lists(st.builds(Workload, word, word), max_size=2).map(tuple),
    cluster_name=text,
)
policies = st.lists(
    st.builds(
        Policy,
        name=word,
        namespace=text,
        labels=st.lists(text, max_size=2).map(tuple),
        revision=st.integers(0, 2**20),
        kind=st.sampled_from(["CiliumNetworkPolicy", "NetworkPolicy", ""]),
    ),
    min_size=1,
    max_size=2,
).map(tuple)
links = st.builds(
    Link,
    st.one_of(st.none(), st.builds(Service, word, text)),
    st.builds(
        ServiceTranslation, st.just("10.96.0.10"), st.integers(0, 65535), text, st.integers(0, 9)
    ),
)
# columns the flow is made of: mostly the datapath's values, sometimes anything
small = {
    "proto": st.sampled_from([6, 6, 17, 132, 1, 0, 58, 255]),
    "verdict": st.sampled_from([1, 2, 1, 0, 5, 200]),
    "obs_point": st.integers(0, 12),
    "traffic_direction": st.integers(0, 3),
    "event_type": st.sampled_from([4, 1, 5, 9]),
    "is_reply": st.sampled_from([0, 1, 0xFF, 7]),
    "ct_state": st.integers(0, 3),
    "tcp_flags": st.integers(0, 255),
    "icmp_type": st.integers(0, 255),
    "icmp_code": st.integers(0, 20),
}
wide = {
    "sport": st.one_of(st.integers(0, 2), st.integers(0, 65535)),
    "dport": st.one_of(st.integers(0, 2), st.integers(0, 65535)),
    "drop_reason": st.sampled_from([0, 133, 181, 65535]),
    "ifindex": st.sampled_from([0, 3, 70000]),
    "policy_cookie": st.sampled_from([0, 1, 2**32 - 1]),
    "saddr": st.sampled_from([0x0201F40A, 0x0302F40A, 0]),
    "daddr": st.sampled_from([0x0302F40A, 0x09000000]),
    "src_identity": st.sampled_from([2, 1234, 2**24 + 1]),
    "dst_identity": st.sampled_from([2, 5678]),
}
times = st.one_of(
    st.integers(0, 10**12),  # around the wall offset: whole seconds, no nanos, 0
    st.integers(0, 2**48),
    st.sampled_from([0, 10**9, 2 * 10**9]),
)
event_rows = st.fixed_dictionaries({**small, **wide, "ktime_ns": times})


@st.composite
def batches(draw) -> FlowBatch:
    names = st.lists(st.sampled_from(["api.example.com.", "x.example.org."]), max_size=2)
    pairs = draw(
        st.lists(
            st.builds(Ends, endpoints, endpoints, names.map(tuple), names.map(tuple)),
            min_size=1,
            max_size=3,
        )
    )
    allowed_names = draw(st.lists(policies, max_size=2))
    link_names = draw(st.lists(links, max_size=2))
    rows = draw(st.lists(event_rows, min_size=1, max_size=30))
    # runs of the same connection, as the datapath sends them
    rows = rows + [dict(r, ktime_ns=r["ktime_ns"] + 7, sport=r["sport"] ^ 1) for r in rows[:5]]
    events = np.zeros(len(rows), EVENT_DTYPE)
    for name in rows[0]:
        events[name] = [r[name] for r in rows]
    events["version"] = VERSION
    n = len(rows)
    index = st.integers(-1, len(allowed_names) - 1)
    return FlowBatch(
        events,
        node=draw(st.sampled_from(["node-1", "", "a-much-longer-node-name-" * 3])),
        wall_offset=draw(st.sampled_from([T0, 0, 123_456_789])),
        endpoints=pairs,
        ends=np.array(draw(st.lists(st.integers(0, len(pairs) - 1), min_size=n, max_size=n))),
        allowed_names=allowed_names,
        allowed=np.array(draw(st.lists(index, min_size=n, max_size=n)), np.int32),
        link_names=link_names,
        links=np.array(
            draw(st.lists(st.integers(-1, len(link_names) - 1), min_size=n, max_size=n)),
            np.int32,
        ),
    )


def serialised(batch: ColumnBatch, i: int) -> bytes:
    return record_to_response(batch.record(i)).SerializeToString()


def fresh(batch: FlowBatch) -> FlowBatch:
    """The same batch with nothing built yet."""
    return FlowBatch(
        batch.events.copy(),
        node=batch.node,
        wall_offset=batch.wall_offset,
        endpoints=batch.endpoints,
        ends=batch.ends,
        allowed_names=batch.allowed_names,
        allowed=batch.allowed,
        link_names=batch.link_names,
        links=batch.links,
    )


@settings(max_examples=50, deadline=None)
@given(batches())
def test_framed_rows_are_a_kafka_flowbatchs_responses(batch: FlowBatch) -> None:
    rows = BatchEncoder(field=3).encode(batch)
    message = kafka_pb2.FlowBatch.FromString(rows.data)
    assert list(message.responses) == [
        record_to_response(batch.record(i)) for i in range(len(batch))
    ]
    parts = [kafka_pb2.FlowBatch.FromString(rows.row(i)).responses[0] for i in range(len(rows))]
    assert parts == list(message.responses)


@settings(max_examples=30, deadline=None)
@given(batches())
def test_flows_are_built_only_for_new_templates(batch: FlowBatch) -> None:
    encoder = BatchEncoder()
    encoder.encode(batch)
    again = fresh(batch)
    encoder.encode(again)
    assert again._records is None  # every template was known: no Flow built


def test_a_time_before_1970_goes_one_flow_at_a_time() -> None:
    events = np.zeros(2, EVENT_DTYPE)
    events["version"], events["proto"], events["ktime_ns"] = VERSION, 6, [5, 10**9 + 5]
    batch = FlowBatch(
        events,
        node="n",
        wall_offset=-(10**9),
        endpoints=[Ends(Endpoint(id=1), Endpoint())],
        ends=np.zeros(2, np.int32),
        allowed_names=[],
        allowed=np.full(2, -1, np.int32),
        link_names=[],
        links=np.full(2, -1, np.int32),
    )
    rows = BatchEncoder().encode(batch)
    for i in range(2):
        got = observer_pb2.GetFlowsResponse.FromString(rows.row(i))
        assert got == record_to_response(batch.record(i))


@settings(max_examples=40, deadline=None)
@given(batches(), batches(), st.data())
def test_runs_of_one_collector_are_joined_and_encode_the_same(
    a: FlowBatch, other: FlowBatch, data
) -> None:
    # a second drain of the same collector: same endpoint and policy lists, its own services
    b = FlowBatch(
        other.events,
        node=a.node,
        wall_offset=a.wall_offset,
        endpoints=a.endpoints,
        ends=other.ends % len(a.endpoints),
        allowed_names=a.allowed_names,
        allowed=np.where(other.allowed < len(a.allowed_names), other.allowed, -1).astype(np.int32),
        link_names=other.link_names,
        links=other.links,
    )
    start = data.draw(st.integers(0, len(a) - 1))
    items = [(a, start, len(a)), (b, 0, len(b)), "missed", (other, 0, 1)]
    joined = merged_runs(items, 10_000)
    assert joined[1:] == ["missed", (other, 0, 1)]  # other's names are another collector's
    batch, first, stop = joined[0]
    assert (first, stop) == (0, len(a) - start + len(b))
    rows = BatchEncoder().encode(batch)
    want = [a.record(i) for i in range(start, len(a))] + [b.record(i) for i in range(len(b))]
    for i, record in enumerate(want):
        assert observer_pb2.GetFlowsResponse.FromString(rows.row(i)) == record_to_response(record)
    # past max_rows, the next run starts a new batch
    assert len(merged_runs([(a, 0, len(a)), (b, 0, len(b))], 1)) == 2


# -- the tracepoints' and the socket LB's batches --

addresses = st.one_of(
    st.none(),  # an event with no address
    st.builds(
        AddressName,
        st.sampled_from(["10.244.1.2", "10.244.2.3", "fd00::1", "10.224.0.254"]),
        st.sampled_from([IPVersion.IPv4, IPVersion.IPv6]),
        endpoints,
    ),
)
kernel_rows = st.fixed_dictionaries(
    {
        "kind": st.sampled_from([1, 2, 2, 3]),
        "protocol": st.sampled_from([6, 6, 17, 132, 1, 0, 58]),
        "sport": st.one_of(st.integers(0, 2), st.integers(0, 65535)),
        "dport": st.one_of(st.integers(0, 2), st.integers(0, 65535)),
        "ifindex": st.sampled_from([0, 3, 70000]),
        "drop_reason": st.sampled_from([0, 2, 3, 99, 2**32 - 1]),
        "old_state": st.sampled_from([0, 1, 2, 7, 12, 40]),
        "new_state": st.sampled_from([0, 1, 2, 7, 12, 40]),
        "ktime_ns": times,
    }
)


@st.composite
def kernel_batches(draw) -> KernelBatch:
    names = draw(st.lists(addresses, min_size=1, max_size=4))
    rows = draw(st.lists(kernel_rows, min_size=1, max_size=30))
    # connections: the same ends and states, other ports
    rows = rows + [dict(r, ktime_ns=r["ktime_ns"] + 9, sport=r["sport"] ^ 1) for r in rows[:5]]
    n = len(rows)
    events = np.zeros(n, kernelevent.EVENT_DTYPE)
    for name in rows[0]:
        events[name] = [r[name] for r in rows]
    number = st.integers(0, len(names) - 1)
    return KernelBatch(
        events,
        node=draw(st.sampled_from(["node-1", "", "a-much-longer-node-name-" * 3])),
        wall_offset=draw(st.sampled_from([T0, 0, 123_456_789])),
        reason_names={2: "NOT_SPECIFIED", 3: "NO_SOCKET"},
        addresses=names,
        sources=np.array(draw(st.lists(number, min_size=n, max_size=n)), np.int32),
        destinations=np.array(draw(st.lists(number, min_size=n, max_size=n)), np.int32),
    )


translation_names = st.builds(
    TranslationNames,
    client=st.one_of(st.none(), st.sampled_from(["10.244.1.2", ""])),
    service=st.one_of(st.none(), st.builds(Service, word, text)),
    translation=st.builds(
        ServiceTranslation,
        st.sampled_from(["10.96.0.10", "10.0.0.10"]),
        st.integers(0, 65535),
        text,
        st.integers(0, 65535),
    ),
    proto=st.sampled_from([6, 17]),
    source=endpoints,
    destination=endpoints,
)


@st.composite
def translation_batches(draw) -> TranslationBatch:
    names = draw(st.lists(translation_names, min_size=1, max_size=4))
    n = draw(st.integers(1, 40))
    events = np.zeros(n, socklb.EVENT_DTYPE)
    events["ktime_ns"] = draw(st.lists(times, min_size=n, max_size=n))
    cookies = st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1), st.just(2**64 - 1))
    events["sock_cookie"] = draw(st.lists(cookies, min_size=n, max_size=n))
    keys = np.array(draw(st.lists(st.integers(0, len(names) - 1), min_size=n, max_size=n)))
    # a key's cgroup (the namer's keys hold it), mostly; sometimes another
    cgroups = draw(st.lists(st.sampled_from([0, 77, 2**64 - 1]), min_size=len(names)))
    events["cgroup_id"] = [cgroups[k] if draw(st.integers(0, 5)) else 5 for k in keys.tolist()]
    return TranslationBatch(
        events,
        node=draw(st.sampled_from(["node-1", "", "a-much-longer-node-name-" * 3])),
        wall_offset=draw(st.sampled_from([T0, 0, 123_456_789])),
        names=names,
        keys=keys,
    )


def renewed(batch: ColumnBatch) -> ColumnBatch:
    """The same kernel or translation batch with nothing built yet."""
    if isinstance(batch, KernelBatch):
        return KernelBatch(
            batch.events.copy(),
            node=batch.node,
            wall_offset=batch.wall_offset,
            reason_names=batch.reason_names,
            addresses=batch.addresses,
            sources=batch.sources,
            destinations=batch.destinations,
        )
    assert isinstance(batch, TranslationBatch)
    return TranslationBatch(
        batch.events.copy(),
        node=batch.node,
        wall_offset=batch.wall_offset,
        names=batch.names,
        keys=batch.keys,
    )


@settings(max_examples=600, deadline=None)
@given(st.one_of(batches(), kernel_batches(), translation_batches()), st.data())
def test_every_row_is_protoconvs_bytes(batch: ColumnBatch, data) -> None:
    """Datapath, tracepoint and socket-LB batches alike, plain and framed."""
    encoder = BatchEncoder()
    start = data.draw(st.integers(0, len(batch) - 1))
    for _ in range(2):  # templates made, then reused
        rows = encoder.encode(batch, start)
        assert len(rows) == len(batch) - start
        for i in range(start, len(batch)):
            assert rows.row(i - start) == serialised(batch, i), i
    assert encoder.hits >= encoder.misses
    # framed: a Kafka FlowBatch's responses, the same bytes in their field
    framed = BatchEncoder(field=3).encode(batch, start)
    message = kafka_pb2.FlowBatch.FromString(framed.data)
    assert [r.SerializeToString() for r in message.responses] == [
        serialised(batch, i) for i in range(start, len(batch))
    ]


@settings(max_examples=60, deadline=None)
@given(st.one_of(kernel_batches(), translation_batches()))
def test_kernel_and_translation_flows_are_built_only_for_new_templates(
    batch: ColumnBatch,
) -> None:
    encoder = BatchEncoder()
    first = renewed(batch)
    encoder.encode(first)
    built = sum(r is not None for r in first._records or [])
    assert built == encoder.misses  # one Flow per template, none per row
    again = renewed(batch)
    encoder.encode(again)
    assert again._records is None  # every template was known: no Flow built


def test_a_connection_flood_makes_a_template_per_kind_not_per_connection() -> None:
    """Four state changes per connection (client and server, each its own ports): a
    template per change, not per connection."""
    n = 4000
    events = np.zeros(n, kernelevent.EVENT_DTYPE)
    events["ktime_ns"] = np.arange(n) * 1000
    events["kind"], events["protocol"] = 2, 6
    events["old_state"] = np.tile([2, 3, 1, 1], n // 4)  # SYN_SENT, SYN_RECV, ESTABLISHED
    events["new_state"] = np.tile([1, 1, 7, 7], n // 4)  # ESTABLISHED, CLOSE
    events["sport"] = 1024 + np.arange(n) // 4
    events["dport"] = 80
    ends = [AddressName("10.244.1.2", IPVersion.IPv4, Endpoint(pod_name="a"))]
    batch = KernelBatch(
        events,
        node="n",
        wall_offset=T0,
        reason_names={},
        addresses=ends,
        sources=np.zeros(n, np.int32),
        destinations=np.zeros(n, np.int32),
    )
    encoder = BatchEncoder()
    rows = encoder.encode(batch)
    assert encoder.misses == 3
    assert [rows.row(i) for i in (0, 1, n - 1)] == [serialised(batch, i) for i in (0, 1, n - 1)]
