"""The datapath's flow event record (probes/datapath.c struct flow_event) and its batch decoding.

Every record in the `events` ring buffer is one fixed-size struct of RECORD_SIZE bytes. A reader
(probes/ringbuf.RingBuffer.drain()) hands back a list of raw records; `decode()` turns any number
of them into one numpy structured array with a single copy, so the collector filters and counts
columns without a Python object per event. `FlowEvent.from_row` / `events()` give objects for the
slow paths (tests, a CLI printing a few flows).

Numbers follow Hubble (cilium api/v1/flow/flow.proto) so they pass through unchanged: Verdict,
DropReason, TrafficDirection, TraceObservationPoint, and Cilium's monitor message types for the
event type. Ports are host order; addresses network order (decode with `ipv4()`).
"""

from __future__ import annotations

import ctypes as ct
import enum
import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from dataplane.maps.netorder import ip_of

VERSION = 1
IS_REPLY_UNKNOWN = 0xFF


class FlowEventStruct(ct.Structure):
    """struct flow_event."""

    _fields_ = (
        ("ktime_ns", ct.c_uint64),
        ("src_identity", ct.c_uint32),
        ("dst_identity", ct.c_uint32),
        ("endpoint_id", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("policy_cookie", ct.c_uint32),
        ("pkt_len", ct.c_uint32),
        ("saddr", ct.c_uint32),
        ("daddr", ct.c_uint32),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("drop_reason", ct.c_uint16),
        ("event_type", ct.c_uint8),
        ("verdict", ct.c_uint8),
        ("traffic_direction", ct.c_uint8),
        ("obs_point", ct.c_uint8),
        ("is_reply", ct.c_uint8),
        ("ct_state", ct.c_uint8),
        ("proto", ct.c_uint8),
        ("tcp_flags", ct.c_uint8),
        ("icmp_type", ct.c_uint8),
        ("icmp_code", ct.c_uint8),
        ("ethertype", ct.c_uint16),
        ("flags", ct.c_uint8),
        ("version", ct.c_uint8),
        ("cidr_identity", ct.c_uint32),
    )


RECORD_SIZE = ct.sizeof(FlowEventStruct)
EVENT_DTYPE = np.dtype(FlowEventStruct)


class EventType(enum.IntEnum):
    """Cilium monitor message types (pkg/monitor/api), Hubble's flow.event_type.type."""

    DROP = 1
    TRACE = 4
    POLICY_VERDICT = 5


class Verdict(enum.IntEnum):
    FORWARDED = 1
    DROPPED = 2
    AUDIT = 4


class TrafficDirection(enum.IntEnum):
    INGRESS = 1
    EGRESS = 2


class ObservationPoint(enum.IntEnum):
    """Hubble TraceObservationPoint."""

    FROM_ENDPOINT = 5
    TO_ENDPOINT = 101


class CtState(enum.IntEnum):
    NONE = 0
    NEW = 1
    ESTABLISHED = 2
    REPLY = 3
    RELATED = 4


class DropReason(enum.IntEnum):
    """The Hubble drop reasons the datapath uses."""

    INVALID_SOURCE_IP = 132
    POLICY_DENIED = 133
    INVALID_PACKET_DROPPED = 134
    CT_TRUNCATED_OR_INVALID_HEADER = 135
    UNSUPPORTED_L3_PROTOCOL = 139
    NO_MATCHING_LOCAL_CONTAINER_FOUND = 152
    CT_MAP_INSERTION_FAILED = 155
    NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION = 165
    FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND = 175


class EventFlag(enum.IntFlag):
    FRAGMENT = 0x01  # an IP fragment
    AUDIT_MODE = 0x02  # the endpoint is in policy audit mode
    NO_POLICY = 0x04  # the endpoint had no policy map
    ICMP_ERROR = 0x08  # an ICMP error message


def decode(records: Sequence[bytes] | bytes | bytearray | memoryview) -> np.ndarray:
    """Raw records (a list from RingBuffer.drain(), or their concatenation) as one structured
    array of EVENT_DTYPE. Raises ValueError on a record of another size or version."""
    raw = records if isinstance(records, bytes | bytearray | memoryview) else b"".join(records)
    if len(raw) % RECORD_SIZE:
        raise ValueError(
            f"flow event data of {len(raw)} bytes is not a whole number of "
            f"{RECORD_SIZE}-byte records (a datapath of another version?)"
        )
    arr = np.frombuffer(raw, dtype=EVENT_DTYPE).copy()
    if len(arr) and not (arr["version"] == VERSION).all():
        bad = sorted(set(arr["version"][arr["version"] != VERSION].tolist()))
        raise ValueError(f"flow event record versions {bad}, this reader knows {VERSION}")
    return arr


def ipv4(column: np.ndarray) -> list[ipaddress.IPv4Address]:
    """A column of network-order addresses (saddr, daddr) as addresses."""
    return [ip_of(a) for a in column]


E = TypeVar("E", bound=enum.IntEnum)


@functools.cache
def member_of(kind: type[E], value: int) -> E | int:
    """The member of `kind` for a number, or the number when it names none (cached: a handful
    of values recur in every batch). The kernel uses Hubble's numbering, so the flow model's
    enums take the kernel's numbers too."""
    try:
        return kind(int(value))
    except ValueError:
        return int(value)


_ip = functools.lru_cache(maxsize=65536)(ip_of)  # the same few addresses, event after event


@dataclass(frozen=True)
class FlowEvent:
    """One record, decoded."""

    ktime_ns: int
    event_type: EventType | int
    verdict: Verdict | int
    drop_reason: DropReason | int  # 0 unless DROPPED
    traffic_direction: TrafficDirection | int
    obs_point: ObservationPoint | int
    is_reply: bool | None
    ct_state: CtState | int
    src_identity: int
    dst_identity: int
    cidr_identity: int  # the peer's CIDR identity on policy decisions, else 0
    endpoint_id: int
    ifindex: int
    policy_cookie: int
    saddr: ipaddress.IPv4Address
    daddr: ipaddress.IPv4Address
    sport: int
    dport: int
    proto: int
    tcp_flags: int
    icmp_type: int
    icmp_code: int
    pkt_len: int
    ethertype: int
    flags: EventFlag

    @classmethod
    def from_row(cls, row: np.void) -> FlowEvent:
        return cls.from_values(dict(zip(row.dtype.names, row.tolist(), strict=True)))

    @classmethod
    def from_values(cls, r: dict) -> FlowEvent:
        """From one record's fields as plain Python values (a row of ndarray.tolist())."""
        reply = r["is_reply"]
        return cls(
            ktime_ns=r["ktime_ns"],
            event_type=member_of(EventType, r["event_type"]),
            verdict=member_of(Verdict, r["verdict"]),
            drop_reason=member_of(DropReason, r["drop_reason"]),
            traffic_direction=member_of(TrafficDirection, r["traffic_direction"]),
            obs_point=member_of(ObservationPoint, r["obs_point"]),
            is_reply=None if reply == IS_REPLY_UNKNOWN else bool(reply),
            ct_state=member_of(CtState, r["ct_state"]),
            src_identity=r["src_identity"],
            dst_identity=r["dst_identity"],
            cidr_identity=r["cidr_identity"],
            endpoint_id=r["endpoint_id"],
            ifindex=r["ifindex"],
            policy_cookie=r["policy_cookie"],
            saddr=_ip(r["saddr"]),
            daddr=_ip(r["daddr"]),
            sport=r["sport"],
            dport=r["dport"],
            proto=r["proto"],
            tcp_flags=r["tcp_flags"],
            icmp_type=r["icmp_type"],
            icmp_code=r["icmp_code"],
            pkt_len=r["pkt_len"],
            ethertype=r["ethertype"],
            flags=EventFlag(r["flags"]),
        )


def events(arr: np.ndarray | Iterable[bytes]) -> list[FlowEvent]:
    """Decoded objects, for small numbers of events."""
    if not isinstance(arr, np.ndarray):
        arr = decode(list(arr))
    names = arr.dtype.names
    # one tolist() for the batch: reading fields off numpy rows one by one costs ~1 us each
    return [FlowEvent.from_values(dict(zip(names, values, strict=True))) for values in arr.tolist()]
