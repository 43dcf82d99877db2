"""Kernel records as flows: the datapath's events and the tracepoints' events, named through a
fake directory (the agent's enforcement is the real one, tested in tests/agent and tests/e2e)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from ipaddress import IPv4Address, IPv6Address

import numpy as np

from collector.datapath_flows import datapath_flow
from collector.enrich import Enricher
from collector.kernelflows import kernel_flow, reportable
from dataplane.agent.ipcache_records import IPRecord
from dataplane.identity.model import Identity, pod_labels
from dataplane.maps.flowevent import (
    CtState,
    DropReason,
    EventFlag,
    EventType,
    FlowEvent,
    ObservationPoint,
    TrafficDirection,
    Verdict,
)
from dataplane.maps.kernelevent import KernelEvent, Kind
from dataplane.policy.compiler import RuleRef
from dataplane.policy.entry import Direction
from flowscope.flow.model import FlowType, MessageType

A, B = IPv4Address("10.244.1.2"), IPv4Address("10.244.2.3")
NODE_IP = IPv4Address("10.224.0.4")
ID_A, ID_B = 300, 301
COOKIE = 0x1234


class Directory:
    version = 0

    def __init__(self) -> None:
        self.records = {
            str(A): IPRecord(A, ID_A, "node-1", NODE_IP, "x", "a"),
            str(B): IPRecord(B, ID_B, "node-2", NODE_IP, "y", "b"),
        }
        self.identities = {
            ID_A: Identity(ID_A, pod_labels("x", {"app": "a"}, {})),
            ID_B: Identity(ID_B, pod_labels("y", {"app": "b"}, {})),
        }

    def record(self, ip: str) -> IPRecord | None:
        return self.records.get(ip)

    def identity(self, identity_id: int) -> Identity | None:
        return self.identities.get(identity_id)

    def rule(self, cookie: int) -> RuleRef | None:
        if cookie == COOKIE:
            return RuleRef("y", "b-from-x", Direction.INGRESS, 0, 0, "y/b-from-x ingress rule 0")
        return None


ENRICHER = Enricher(Directory(), "lab")


def event(**kw) -> FlowEvent:
    base = dict(
        ktime_ns=1_000,
        event_type=EventType.POLICY_VERDICT,
        verdict=Verdict.FORWARDED,
        drop_reason=0,
        traffic_direction=TrafficDirection.INGRESS,
        obs_point=ObservationPoint.TO_ENDPOINT,
        is_reply=False,
        ct_state=CtState.NEW,
        src_identity=ID_A,
        dst_identity=ID_B,
        cidr_identity=0,
        endpoint_id=7,
        ifindex=7,
        policy_cookie=COOKIE,
        saddr=A,
        daddr=B,
        sport=40000,
        dport=80,
        proto=6,
        tcp_flags=0x02,
        icmp_type=0,
        icmp_code=0,
        pkt_len=60,
        ethertype=0x0800,
        flags=EventFlag(0),
    )
    return FlowEvent(**{**base, **kw})


def test_a_new_allowed_connection_names_both_pods_and_the_policy() -> None:
    flow = datapath_flow(event(), ENRICHER, "node-2", wall_offset=5_000)
    assert flow.time_ns == 6_000
    assert (flow.source.namespace, flow.source.pod_name, flow.source.id) == ("x", "a", 0)
    assert (flow.destination.pod_name, flow.destination.id) == ("b", 7)  # the local endpoint
    assert "k8s:app=b" in flow.destination.labels
    assert [(p.namespace, p.name) for p in flow.ingress_allowed_by] == [("y", "b-from-x")]
    assert flow.egress_allowed_by == ()
    assert flow.event_type.type == MessageType.POLICY_VERDICT
    assert flow.l4.flags.SYN and flow.summary == "TCP Flags: SYN"
    doc = flow.to_dict()
    assert doc["traffic_direction"] == "INGRESS"
    assert doc["trace_observation_point"] == "TO_ENDPOINT"


def test_a_policy_drop_carries_hubbles_reason_and_no_allowing_policy() -> None:
    flow = datapath_flow(
        event(verdict=Verdict.DROPPED, drop_reason=DropReason.POLICY_DENIED),
        ENRICHER,
        "node-2",
        0,
    )
    doc = flow.to_dict()
    assert doc["verdict"] == "DROPPED" and doc["drop_reason_desc"] == "POLICY_DENIED"
    assert flow.event_type.type == MessageType.DROP and flow.event_type.sub_type == 133
    assert flow.ingress_allowed_by == ()


def test_from_endpoint_gives_the_endpoint_id_to_the_source() -> None:
    flow = datapath_flow(
        event(obs_point=ObservationPoint.FROM_ENDPOINT, ct_state=CtState.ESTABLISHED),
        ENRICHER,
        "node-1",
        0,
    )
    assert flow.source.id == 7 and flow.destination.id == 0
    assert flow.ingress_allowed_by == ()  # only new connections name their rule


def test_an_unknown_address_is_an_endpoint_with_only_its_identity() -> None:
    flow = datapath_flow(
        event(saddr=IPv4Address("10.224.0.254"), src_identity=2), ENRICHER, "node-1", 0
    )
    assert flow.source.pod_name == "" and flow.source.labels == ("reserved:world",)


def kernel(**kw) -> KernelEvent:
    base = dict(
        kind=Kind.DROP,
        time_ns=10,
        netns=4026531840,
        ifindex=7,
        family=2,
        protocol=17,
        saddr=A,
        daddr=B,
        sport=5000,
        dport=53,
        drop_reason=3,
        drop_reason_name="NO_SOCKET",
        old_state=None,
        new_state=None,
        skb_len=100,
        location=0,
        err=0,
    )
    return KernelEvent(**{**base, **kw})


def test_a_kernel_drop_keeps_the_kernels_reason() -> None:
    flow = kernel_flow(kernel(), ENRICHER, "node-2", 0)
    doc = flow.to_dict()
    assert doc["verdict"] == "DROPPED" and doc["kernel_drop_reason"] == "NO_SOCKET"
    assert flow.source.pod_name == "a" and flow.destination.pod_name == "b"
    assert flow.summary == "UDP"


def test_a_dual_stack_sockets_peer_reads_as_ipv4() -> None:
    flow = kernel_flow(
        kernel(
            kind=Kind.STATE,
            protocol=6,
            saddr=IPv6Address(f"::ffff:{A}"),
            daddr=IPv6Address(f"::ffff:{B}"),
            old_state="TCP_SYN_SENT",
            new_state="TCP_ESTABLISHED",
        ),
        ENRICHER,
        "node-1",
        0,
    )
    assert flow.ip.source == str(A) and flow.ip.destination == str(B)
    assert flow.type == FlowType.SOCK and flow.summary == "TCP state SYN_SENT -> ESTABLISHED"
    assert flow.source.pod_name == "a"


def test_benign_drops_and_the_datapaths_own_tc_drops_are_left_out() -> None:
    ours = {(4026531840, 7)}

    def datapath_device(netns: int, ifindex: int) -> bool:
        return (netns, ifindex) in ours

    assert reportable(kernel(), datapath_device)
    assert not reportable(kernel(drop_reason_name="QUEUE_PURGE"), datapath_device)
    assert not reportable(kernel(drop_reason_name="TC_EGRESS"), datapath_device)
    # a tc drop elsewhere (another program, another device) is news
    assert reportable(kernel(drop_reason_name="TC_EGRESS", ifindex=9), datapath_device)
    assert reportable(kernel(kind=Kind.RETRANSMIT, drop_reason_name=None), datapath_device)


def test_the_enricher_forgets_names_when_the_directory_changes() -> None:
    directory = Directory()
    enricher = Enricher(directory, "lab")
    assert enricher.endpoint(str(A), ID_A).pod_name == "a"
    directory.records[str(A)] = IPRecord(A, ID_A, "node-1", NODE_IP, "x", "renamed")
    assert enricher.endpoint(str(A), ID_A).pod_name == "a"  # remembered: same version
    directory.version = 1
    assert enricher.endpoint(str(A), ID_A).pod_name == "renamed"


class FakeRing:
    """A ring buffer that hands out the given batches, then nothing."""

    size = 1 << 20  # bytes of its data area, as RingBuffer.size

    def __init__(self, batches: list[list[bytes]]) -> None:
        self.batches = batches

    def drain(self, max_records: int = 1 << 16) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []

    def drain_array(self, dtype, max_records: int = 1 << 16, *, copy: bool = False):
        return np.frombuffer(b"".join(self.drain(max_records)), dtype).copy()

    async def wait_readable(self, timeout: float | None = None) -> bool:
        await asyncio.sleep(0.001)
        return bool(self.batches)


async def records_after(stream, run: Coroutine, at_least: int) -> list:
    """Run a collector coroutine until `stream` holds at_least records (1 s at most), stop it,
    and return the stream's records."""
    task = asyncio.create_task(run)
    try:
        for _ in range(200):
            if len(stream.ring) >= at_least:
                break
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
    return [e.record for e in stream.ring.last()]


async def test_the_collector_publishes_flows_and_turns_kernel_loss_into_lost_events() -> None:
    from collector.flowstream import FlowStream
    from collector.node import NodeCollector
    from dataplane.maps.flowevent import FlowEventStruct
    from flowscope.flow.model import Flow, LostEvent, LostEventSource

    record = bytes(
        FlowEventStruct(
            ktime_ns=1,
            src_identity=ID_A,
            dst_identity=ID_B,
            endpoint_id=7,
            ifindex=7,
            saddr=0x0201F40A,
            daddr=0x0302F40A,
            sport=40000,
            dport=80,
            event_type=5,
            verdict=1,
            traffic_direction=1,
            obs_point=101,
            ct_state=1,
            proto=6,
            tcp_flags=2,
            version=1,
        )
    )
    lost = iter([0, 0, 5, 5, 12] + [12] * 100)  # the kernel's counter, read once per wake-up
    stream = FlowStream(100, node_name="node-2")
    collector = NodeCollector("node-2", ENRICHER, stream)
    ring = FakeRing([[record] * 3, [record] * 2, [record]])
    records = await records_after(stream, collector.run_datapath(ring, lambda: next(lost)), 8)
    flows = [r for r in records if isinstance(r, Flow)]
    losses = [r for r in records if isinstance(r, LostEvent)]
    assert len(flows) == 6 and all(f.destination.pod_name == "b" for f in flows)
    assert [x.num_events_lost for x in losses] == [5, 7]  # each increase, once
    assert all(x.source == LostEventSource.PERF_EVENT_RING_BUFFER for x in losses)
    assert collector.stats.sources["datapath"].records == 6
