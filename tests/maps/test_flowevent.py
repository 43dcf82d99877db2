"""Flow event records: the mirror against the compiled struct, and batch decoding."""

from __future__ import annotations

import ctypes as ct
from ipaddress import IPv4Address
from pathlib import Path

import numpy as np
import pytest

from dataplane.maps import flowevent, layout
from dataplane.maps.flowevent import (
    EVENT_DTYPE,
    RECORD_SIZE,
    CtState,
    DropReason,
    EventFlag,
    EventType,
    FlowEventStruct,
    ObservationPoint,
    TrafficDirection,
    Verdict,
)


def test_record_is_64_bytes_with_no_hidden_padding() -> None:
    assert RECORD_SIZE == 64 and EVENT_DTYPE.itemsize == 64
    end = 0
    for leaf in layout.flatten(FlowEventStruct):
        assert leaf.offset == end, leaf  # every byte belongs to a named field
        end = leaf.offset + leaf.size
    assert end == RECORD_SIZE


@pytest.mark.privileged
def test_mirror_matches_the_compiled_struct(tmp_path: Path) -> None:
    """struct flow_event only travels through the ring buffer, which has no types: compile the
    datapath source with one extra map of it, and compare against bcc's ctypes type."""
    from probes.bpfloader import CompiledObject
    from probes.datapath import SOURCE

    probe = tmp_path / "flow_event_layout.c"
    probe.write_text(
        f'#include "{SOURCE}"\nBPF_ARRAY(flow_event_layout, struct flow_event, 1);\n'
        "int touch(struct __sk_buff *skb)\n"
        "{ int k = 0; return flow_event_layout.lookup(&k) != 0; }\n"
    )
    obj = CompiledObject.compile(probe, programs=["touch"], maps=["flow_event_layout"])
    layout.assert_same_layout(
        "flow_event", FlowEventStruct, obj.maps["flow_event_layout"].value_type
    )


def _record(**fields) -> bytes:
    base = dict(version=flowevent.VERSION, verdict=Verdict.FORWARDED, is_reply=0)
    return bytes(FlowEventStruct(**(base | fields)))


def test_decode_many_records_in_one_array() -> None:
    raw = [
        _record(
            ktime_ns=i,
            saddr=int.from_bytes(IPv4Address("10.0.1.10").packed, "little"),
            sport=1000 + i,
            drop_reason=DropReason.POLICY_DENIED if i % 2 else 0,
        )
        for i in range(1000)
    ]
    arr = flowevent.decode(raw)
    assert arr.dtype == EVENT_DTYPE and len(arr) == 1000
    assert int((arr["drop_reason"] == DropReason.POLICY_DENIED).sum()) == 500
    assert np.array_equal(arr["sport"], np.arange(1000, 2000, dtype=np.uint16))
    assert flowevent.ipv4(arr["saddr"][:2]) == [IPv4Address("10.0.1.10")] * 2
    # the concatenation decodes the same
    assert np.array_equal(flowevent.decode(b"".join(raw)), arr)
    assert len(flowevent.decode([])) == 0


def test_decoded_objects_carry_hubble_numbers() -> None:
    (ev,) = flowevent.events(
        [
            _record(
                event_type=EventType.DROP,
                verdict=Verdict.DROPPED,
                drop_reason=DropReason.INVALID_SOURCE_IP,
                traffic_direction=TrafficDirection.EGRESS,
                obs_point=ObservationPoint.FROM_ENDPOINT,
                is_reply=flowevent.IS_REPLY_UNKNOWN,
                ct_state=CtState.NONE,
                daddr=int.from_bytes(IPv4Address("192.0.2.7").packed, "little"),
                flags=EventFlag.FRAGMENT | EventFlag.AUDIT_MODE,
            )
        ]
    )
    assert (ev.verdict.value, ev.drop_reason.value, ev.obs_point.value) == (2, 132, 5)
    assert (ev.traffic_direction.value, ev.event_type.value) == (2, 1)
    assert ev.is_reply is None and ev.daddr == IPv4Address("192.0.2.7")
    assert ev.flags == EventFlag.FRAGMENT | EventFlag.AUDIT_MODE
    # numbers this reader has no name for stay numbers
    (odd,) = flowevent.events([_record(drop_reason=199, verdict=9)])
    assert (odd.drop_reason, odd.verdict) == (199, 9)


def test_records_of_another_size_or_version_are_refused() -> None:
    with pytest.raises(ValueError, match="not a whole number of 64-byte records"):
        flowevent.decode([b"\0" * 60])
    with pytest.raises(ValueError, match="versions \\[2\\]"):
        flowevent.decode([_record(version=2)])
    assert ct.sizeof(FlowEventStruct) == RECORD_SIZE
