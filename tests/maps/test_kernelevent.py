"""Kernel event record mirror: layout against bcc, batch decode, the drop reason table."""

from __future__ import annotations

import ctypes as ct
import socket
from ipaddress import IPv4Address, IPv6Address

import pytest

from dataplane.maps import layout
from dataplane.maps.kernelevent import (
    AF_INET,
    AF_INET6,
    EVENT_DTYPE,
    EVENT_SIZE,
    NO_ADDRESS,
    V4,
    V6,
    KernelEventStruct,
    Kind,
    TcpState,
    TpConfigStruct,
    address_keys,
    address_of,
    decode,
    drop_reason_names,
    to_array,
)

# The kfree_skb format of a 6.1 kernel (shortened): numbers differ from 6.18's.
FORMAT_61 = """name: kfree_skb
ID: 1410
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:28;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u location=%p reason: %s", REC->skbaddr, REC->protocol, \
REC->location, __print_symbolic(REC->reason, { 1, "NOT_SPECIFIED" }, { 2, "NO_SOCKET" }, \
{ 3, "PKT_TOO_SMALL" }, { 69, "MAX" })
"""

REASONS = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 19: "IP_NOPROTO"}


def _record(**fields) -> bytes:
    rec = KernelEventStruct()
    for name, value in fields.items():
        if name in ("saddr", "daddr"):
            ct.memmove(getattr(rec, name), value, len(value))
        else:
            setattr(rec, name, value)
    return bytes(rec)


def test_mirror_sizes() -> None:
    assert EVENT_SIZE == ct.sizeof(KernelEventStruct) == 80
    assert EVENT_DTYPE.itemsize == EVENT_SIZE
    assert ct.sizeof(TpConfigStruct) == 8


@pytest.mark.privileged
def test_mirrors_match_the_compiled_program() -> None:
    from probes.tracepoints import CONFIG_MAP, LOST_MAP, NETNS_MAP, compiled

    obj = compiled(layout_check=True)
    ev = obj.maps["layout_kernel_event"]
    layout.assert_same_layout("struct kernel_event", KernelEventStruct, ev.value_type)
    layout.assert_same_layout("struct tp_config", TpConfigStruct, obj.maps[CONFIG_MAP].value_type)
    netns = obj.maps[NETNS_MAP]
    layout.assert_map_layout(NETNS_MAP, ct.c_uint32, ct.c_uint8, netns.key_type, netns.value_type)
    lost = obj.maps[LOST_MAP]
    layout.assert_map_layout(
        LOST_MAP, ct.c_int, ct.c_uint64, lost.key_type, lost.value_type, percpu=True
    )


def test_reason_table_from_this_kernels_format() -> None:
    from probes.tracepoints import format_text

    names = drop_reason_names(format_text("skb", "kfree_skb"))
    # every name once, and the ones the stack's common drops use
    assert len(set(names.values())) == len(names)
    assert {"NOT_SPECIFIED", "NO_SOCKET", "IP_NOPROTO", "NEIGH_FAILED"} <= set(names.values())
    assert names[min(names)] == "NOT_SPECIFIED"  # SKB_NOT_DROPPED_YET/CONSUMED are not listed


def test_reason_table_of_another_kernel() -> None:
    assert drop_reason_names(FORMAT_61) == {
        1: "NOT_SPECIFIED",
        2: "NO_SOCKET",
        3: "PKT_TOO_SMALL",
        69: "MAX",
    }


def test_reason_table_refuses_other_formats() -> None:
    with pytest.raises(ValueError, match="no __print_symbolic"):
        drop_reason_names('name: consume_skb\nprint fmt: "skbaddr=%p", REC->skbaddr\n')
    with pytest.raises(ValueError, match="empty"):
        drop_reason_names('print fmt: "%s", __print_symbolic(REC->reason, )')


def test_batch_decode_of_each_kind() -> None:
    v4 = socket.inet_aton("10.1.2.3") + bytes(12)
    v4d = socket.inet_aton("10.1.2.4") + bytes(12)
    v6 = IPv6Address("fd00::1").packed
    records = [
        _record(
            kind=Kind.DROP,
            ktime_ns=10,
            netns=4026531840,
            ifindex=7,
            drop_reason=3,
            skb_len=60,
            location=0xFFFFFFFF81000000,
            family=AF_INET,
            protocol=17,
            sport=5353,
            dport=9,
            saddr=v4,
            daddr=v4d,
        ),
        _record(
            kind=Kind.STATE,
            ktime_ns=11,
            netns=5,
            family=AF_INET6,
            protocol=6,
            old_state=TcpState.TCP_SYN_SENT,
            new_state=TcpState.TCP_ESTABLISHED,
            sport=40000,
            dport=443,
            saddr=v6,
            daddr=v6,
        ),
        _record(kind=Kind.RETRANSMIT, netns=5, family=AF_INET, new_state=2, err=-105, saddr=v4),
        _record(kind=Kind.DROP, netns=5, drop_reason=999),  # no IPv4 header, unknown reason
        _record(kind=0),  # not a kind: skipped
    ]
    arr = to_array(records)
    assert arr.dtype == EVENT_DTYPE and len(arr) == 5
    assert list(arr["netns"]) == [4026531840, 5, 5, 5, 0]
    drop, state, rtx, bare = decode(arr, REASONS)

    assert drop.kind is Kind.DROP
    assert (drop.drop_reason, drop.drop_reason_name) == (3, "NO_SOCKET")
    assert (drop.saddr, drop.daddr) == (IPv4Address("10.1.2.3"), IPv4Address("10.1.2.4"))
    assert (drop.sport, drop.dport, drop.protocol, drop.ifindex) == (5353, 9, 17, 7)
    assert (drop.old_state, drop.new_state, drop.time_ns) == (None, None, 10)
    assert drop.location == 0xFFFFFFFF81000000
    assert str(drop) == "DROP NO_SOCKET 10.1.2.3:5353 > 10.1.2.4:9 proto 17 if 7"

    assert (state.old_state, state.new_state) == ("TCP_SYN_SENT", "TCP_ESTABLISHED")
    assert state.saddr == IPv6Address("fd00::1") and state.drop_reason_name is None
    assert str(state).startswith("STATE TCP_SYN_SENT -> TCP_ESTABLISHED [fd00::1]:40000")

    assert (rtx.kind, rtx.new_state, rtx.old_state, rtx.err) == (
        Kind.RETRANSMIT,
        "TCP_SYN_SENT",
        None,
        -105,
    )
    assert bare.saddr is None and bare.drop_reason_name == "999"


def test_to_array_refuses_records_of_another_size() -> None:
    good = _record(kind=Kind.DROP)
    with pytest.raises(ValueError, match="record 1 is 72 bytes, a kernel_event is 80"):
        to_array([good, good[:72]])
    assert len(to_array([])) == 0


@pytest.mark.privileged
def test_the_numpy_dtype_has_the_compiled_layout() -> None:
    """The collector reads the ring with EVENT_DTYPE (drain_array): every field of the compiled
    struct at its offset and size, and nothing else."""
    from probes.tracepoints import compiled

    generated = compiled(layout_check=True).maps["layout_kernel_event"].value_type
    assert EVENT_DTYPE.itemsize == ct.sizeof(generated)
    fields = {name: getattr(generated, name) for name, *_ in generated._fields_}
    assert set(EVENT_DTYPE.names) == set(fields)
    for name, described in fields.items():
        dtype, offset = EVENT_DTYPE.fields[name][:2]
        assert (name, offset, dtype.itemsize) == (name, described.offset, described.size)


def test_address_keys_read_both_columns_as_one_form_of_each_address() -> None:
    v4 = IPv4Address("10.1.2.3")
    v6 = IPv6Address("fd00::1")
    mapped = IPv6Address("::ffff:10.1.2.4")
    records = [
        _record(family=AF_INET, saddr=v4.packed, daddr=IPv4Address("10.1.2.4").packed),
        _record(family=AF_INET6, saddr=mapped.packed, daddr=v6.packed),
        _record(family=0, saddr=v4.packed, daddr=v4.packed),  # no family: no address
        _record(family=AF_INET6, saddr=bytes(16), daddr=bytes(16)),  # :: is an address
    ]
    high, low, kind = address_keys(to_array(records))
    keys = zip(high.tolist(), low.tolist(), kind.tolist(), strict=True)
    sources = [v4, IPv4Address("10.1.2.4"), None, IPv6Address("::")]
    destinations = [IPv4Address("10.1.2.4"), v6, None, IPv6Address("::")]
    assert [address_of(*key) for key in keys] == sources + destinations
    # the same IPv4 address is one key whichever way the record holds it
    assert (high[1], low[1], kind[1]) == (high[4], low[4], kind[4])
    assert kind.tolist() == [V4, V4, NO_ADDRESS, V6, V4, V6, NO_ADDRESS, V6]
    # the one-pass path of an all-IPv4 batch gives the keys of the general one
    fast = address_keys(to_array(records[:1]))
    assert [c.tolist() for c in fast] == [[c[0], c[4]] for c in (high, low, kind)]
