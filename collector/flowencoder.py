"""GetFlowsResponse bytes for a node's records, fast enough for the Kafka publisher.

Building a Flow message field by field (flowscope.flow.protoconv) costs ~50 us a flow in
Python: at that price one core publishes ~20k flows/s. But a node's flows repeat themselves:
the same two endpoints, verdict, event type, policies, service... differing in the time, the
ports and TCP flags (l4), the uuid and the socket cookie (a socket LB translation's). So the
encoder keeps, per distinct rest-of-the-flow (a bounded cache), the Flow message's bytes without
those four fields, made once by protoconv, and appends them as protobuf fields of their own (a
field that comes twice in a message's bytes is merged by every protobuf decoder: Flow.time is
written empty by the template and again with its value). What comes out decodes to exactly the
message protoconv builds (tests/collector/test_publisher_encoder.py checks this on the corpus and
on random flows); it is not byte-for-byte the same, which no consumer relies on. (Columnar
batches, most of the publisher's records, go through collector.batchencoder instead.)

Anything unusual (a lost event, an ICMP flow, a number out of its field's range, a time before
1970) goes through protoconv, which also names a field that does not fit.
"""

from __future__ import annotations

import dataclasses
import operator

from flowscope.flow.model import SCTP, TCP, UDP, Flow, Record
from flowscope.flow.protoconv import flow_to_proto, record_to_response

DEFAULT_TEMPLATES = 4096  # distinct flows-but-for-time-l4-uuid kept (cleared when full)
_UINT32 = 0xFFFFFFFF
_UINT64 = 2**64 - 1
_VARIABLE = ("time_ns", "l4", "uuid", "socket_cookie")
_REST = tuple(f.name for f in dataclasses.fields(Flow) if f.name not in _VARIABLE)
_rest_of = operator.attrgetter(*_REST)


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# ports, lengths, small numbers: looked up, not computed (the per-flow cost is in these calls)
_SMALL = tuple(_varint_slow(i) for i in range(1 << 16))


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of n >= 0."""
    return _SMALL[n] if n < 65536 else _varint_slow(n)


def _tag(field: int, wire: int) -> bytes:
    return varint((field << 3) | wire)


def _delimited(field: int, body: bytes) -> bytes:
    return _tag(field, 2) + varint(len(body)) + body


_FLOW_TIME = _tag(1, 2)  # Flow.time
_FLOW_L4 = _tag(6, 2)  # Flow.l4
_FLOW_UUID = _tag(34, 2)  # Flow.uuid
_FLOW_SOCKET_COOKIE = _tag(32, 0)  # Flow.socket_cookie
_RESPONSE_FLOW = _tag(1, 2)  # GetFlowsResponse.flow
_RESPONSE_TIME = _tag(1001, 2)  # GetFlowsResponse.time
_L4_TAG = {TCP: _tag(1, 2), UDP: _tag(2, 2), SCTP: _tag(5, 2)}  # Layer4's oneof
_PORT_TAGS = (_tag(1, 0), _tag(2, 0))  # source_port, destination_port
_TCP_FLAGS = _tag(3, 2)
# TCPFlags' fields, numbered 1.. in this order (flow.proto)
_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


_last_seconds: list = [-1, b""]  # flows come in time order: one second's varint serves many


def timestamp(time_ns: int) -> bytes:
    """A google.protobuf.Timestamp's bytes (time_ns >= 0)."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    if seconds != _last_seconds[0]:
        _last_seconds[0], _last_seconds[1] = seconds, b"\x08" + varint(seconds) if seconds else b""
    out = _last_seconds[1]
    if nanos:
        out += b"\x10" + varint(nanos)
    return out


class ResponseEncoder:
    """`encode(record)`: the serialized GetFlowsResponse of a Flow or LostEvent."""

    def __init__(self, max_templates: int = DEFAULT_TEMPLATES) -> None:
        self.max_templates = max_templates
        self._templates: dict[tuple, bytes] = {}
        self._flags: dict = {}
        self._nodes: dict[str, bytes] = {}
        self.hits = self.misses = 0
        self._last_key: tuple | None = None
        self._last_template = b""

    def encode(self, record: Record) -> bytes:
        if type(record) is not Flow:
            return record_to_response(record).SerializeToString()
        flow: Flow = record
        l4 = self._l4(flow.l4)
        if l4 is None or flow.time_ns < 0 or not 0 <= flow.socket_cookie <= _UINT64:
            return record_to_response(flow).SerializeToString()
        key = _rest_of(flow)
        # consecutive flows mostly share their template, often with the very same endpoint
        # objects: comparing with the last key is cheaper than hashing (which walks them all)
        if key == self._last_key:
            template = self._last_template
        else:
            try:
                template = self._templates.get(key)
            except TypeError:  # something unhashable in a field: no template
                return record_to_response(flow).SerializeToString()
        if template is None:
            self.misses += 1
            bare = dataclasses.replace(flow, time_ns=0, l4=None, uuid="", socket_cookie=0)
            template = flow_to_proto(bare).SerializeToString()  # raises naming a bad field
            if len(self._templates) >= self.max_templates:
                self._templates.clear()
            self._templates[key] = template
        else:
            self.hits += 1
        self._last_key, self._last_template = key, template
        when = timestamp(flow.time_ns)
        body = template + _FLOW_TIME + varint(len(when)) + when
        if l4:
            body += _FLOW_L4 + varint(len(l4)) + l4
        if flow.socket_cookie:
            body += _FLOW_SOCKET_COOKIE + varint(flow.socket_cookie)
        if flow.uuid:
            uuid = flow.uuid.encode()
            body += _FLOW_UUID + varint(len(uuid)) + uuid
        node = self._nodes.get(flow.node_name)
        if node is None:
            node = _delimited(1000, flow.node_name.encode()) if flow.node_name else b""
            self._nodes[flow.node_name] = node
        return (
            _RESPONSE_FLOW
            + varint(len(body))
            + body
            + node
            + _RESPONSE_TIME
            + varint(len(when))
            + when
        )

    def _l4(self, l4) -> bytes | None:
        """Layer4's bytes (b"": no l4), or None: let protoconv do it."""
        if l4 is None:
            return b""
        tag = _L4_TAG.get(type(l4))
        if tag is None:
            return None  # ICMP: rare, protoconv
        sport, dport = l4.source_port, l4.destination_port
        if not (0 <= sport <= _UINT32 and 0 <= dport <= _UINT32):
            return None
        body = b""
        if sport:
            body += _PORT_TAGS[0] + varint(sport)
        if dport:
            body += _PORT_TAGS[1] + varint(dport)
        if type(l4) is TCP and l4.flags is not None:
            flags = self._flags.get(l4.flags)
            if flags is None:
                flags = b"".join(
                    _tag(i, 0) + b"\x01"
                    for i, name in enumerate(_FLAG_NAMES, 1)
                    if getattr(l4.flags, name)
                )
                self._flags[l4.flags] = flags
            body += _TCP_FLAGS + varint(len(flags)) + flags
        return tag + varint(len(body)) + body
