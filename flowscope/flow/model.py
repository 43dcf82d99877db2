"""The flow record: Hubble's model (cilium api/v1/flow/flow.proto), in Python.

One Flow is one observed packet or decision. Field and enum names are Hubble's, and `to_json`
writes what `hubble observe -o json` prints for it: a GetFlowsResponse in protobuf's JSON mapping
with the .proto field names ({"flow": {...}, "node_name": ..., "time": ...}; enums by name,
64-bit integers as strings, zero values left out, wrappers such as is_reply as plain values).
So tools that read Hubble's output read ours, and `from_json` reads Hubble's back (fields we do not
model, such as ethernet, are skipped).

Our extensions: `policy_cookie`, the u32 the datapath's policy entry carries, naming the
policy and rule that allowed or denied the flow (dataplane/policy/entry.py),
`kernel_drop_reason`, the kernel's own reason for a drop seen by the tracepoint probes, and
`service_translation`, the service address and the backend the socket LB chose, on the TRANSLATED
event of a translation and on the packets of the connection it translated (Hubble's
destination_service names the service but not which address and backend were involved).
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from flowscope.flow.dropreason import DropReason
from flowscope.flow.timestamp import format_rfc3339, now_ns, parse_rfc3339


class Verdict(enum.IntEnum):
    VERDICT_UNKNOWN = 0
    FORWARDED = 1
    DROPPED = 2
    ERROR = 3
    AUDIT = 4
    REDIRECTED = 5
    TRACED = 6
    TRANSLATED = 7


class FlowType(enum.IntEnum):
    UNKNOWN_TYPE = 0
    L3_L4 = 1
    L7 = 2
    SOCK = 3


class TraceObservationPoint(enum.IntEnum):
    UNKNOWN_POINT = 0
    TO_PROXY = 1
    TO_HOST = 2
    TO_STACK = 3
    TO_OVERLAY = 4
    TO_ENDPOINT = 101
    FROM_ENDPOINT = 5
    FROM_PROXY = 6
    FROM_HOST = 7
    FROM_STACK = 8
    FROM_OVERLAY = 9
    FROM_NETWORK = 10
    TO_NETWORK = 11
    FROM_CRYPTO = 12
    TO_CRYPTO = 13

    @property
    def datapath_code(self) -> int:
        """The number Cilium's datapath uses (trace event sub_type): to-endpoint is 0 there."""
        return 0 if self is TraceObservationPoint.TO_ENDPOINT else self.value

    @property
    def label(self) -> str:
        """'to-endpoint', as Hubble's compact output names it."""
        return self.name.lower().replace("_", "-")


class TrafficDirection(enum.IntEnum):
    TRAFFIC_DIRECTION_UNKNOWN = 0
    INGRESS = 1
    EGRESS = 2


class IPVersion(enum.IntEnum):
    IP_NOT_USED = 0
    IPv4 = 1
    IPv6 = 2


class LostEventSource(enum.IntEnum):
    UNKNOWN_LOST_EVENT_SOURCE = 0
    PERF_EVENT_RING_BUFFER = 1  # the datapath's ring was full: the reader fell behind
    OBSERVER_EVENTS_QUEUE = 2  # the observer's queue (here: a client's queue) was full
    HUBBLE_RING_BUFFER = 3  # overwritten in the flow ring before a reader got to it
    # flowscope's own (numbers from 200001, clear of Hubble's)
    PUBLISHER_QUEUE = 200001  # the Kafka publisher fell behind the stream (its queue was full)
    PUBLISHER_SPOOL = 200002  # the publisher's spool hit its bound: the oldest were dropped
    AGENT_RESTART = 200003  # the agent restarted: events while none ran may be missing
    COLLECTOR_DECODE = 200004  # the collector could not decode or name drained records


class MessageType(enum.IntEnum):
    """Cilium monitor message types: a flow's event_type.type."""

    UNSPEC = 0
    DROP = 1
    DEBUG = 2
    CAPTURE = 3
    TRACE = 4
    POLICY_VERDICT = 5
    TRACE_SOCK = 7  # a socket-level service translation (Cilium's MessageTypeTraceSock)
    ACCESS_LOG = 129
    AGENT = 130


class SocketTranslationPoint(enum.IntEnum):
    """Where a socket-level translation was observed (Hubble's sock_xlate_point)."""

    SOCK_XLATE_POINT_UNKNOWN = 0
    SOCK_XLATE_POINT_PRE_DIRECTION_FWD = 1  # before service address -> backend
    SOCK_XLATE_POINT_POST_DIRECTION_FWD = 2  # after it
    SOCK_XLATE_POINT_PRE_DIRECTION_REV = 3  # before backend -> service address (replies)
    SOCK_XLATE_POINT_POST_DIRECTION_REV = 4

    @property
    def label(self) -> str:
        """'post-xlate-fwd', as Hubble's printer names the type of such a flow."""
        when, _, way = self.name.removeprefix("SOCK_XLATE_POINT_").partition("_DIRECTION_")
        return f"{when.lower()}-xlate-{way.lower()}" if way else "unknown"


class PolicyMatchType(enum.IntEnum):
    """policy_match_type of policy-verdict events (Cilium's monitor API numbers)."""

    NONE = 0
    L3_ONLY = 1
    L3_L4 = 2
    L4_ONLY = 3
    ALL = 4

    @property
    def label(self) -> str:
        return {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all"}[self.value]


E = TypeVar("E", bound=enum.IntEnum)


def _enum_out(value: enum.IntEnum | int) -> str | int:
    return value.name if isinstance(value, enum.IntEnum) else value


def _enum_in(cls: type[E], raw: Any, field: str) -> E | int:
    """An enum from its JSON form: the name, or a number (kept as int when the name is unknown)."""
    if raw is None:
        return cls(0)
    if isinstance(raw, str):
        try:
            return cls[raw]
        except KeyError:
            raise ValueError(f"{field}: {raw!r} is not a {cls.__name__}") from None
    if isinstance(raw, int) and not isinstance(raw, bool):
        try:
            return cls(raw)
        except ValueError:
            return raw
    raise ValueError(f"{field}: {raw!r} is not a {cls.__name__}")


def _uint(raw: Any, field: str) -> int:
    """A protobuf integer from JSON: a number, or a string for 64-bit ones."""
    if raw is None:
        return 0
    if isinstance(raw, bool):
        raise ValueError(f"{field}: {raw!r} is not an integer")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: {raw!r} is not an integer") from None


def _obj(raw: Any, field: str) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"{field}: expected an object, got {type(raw).__name__}")
    return raw


def _strings(raw: Any, field: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ValueError(f"{field}: expected a list of strings")
    return tuple(raw)


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    """Leave out what protobuf's JSON mapping leaves out: zero values and empty lists/messages."""
    return {k: v for k, v in d.items() if v not in (0, "", None, (), [], {})}


TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
# The order Hubble's summary lists set flags in ("TCP Flags: SYN, ACK").
_SUMMARY_FLAG_ORDER = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR", "NS")


@dataclass(frozen=True)
class TCPFlags:
    FIN: bool = False
    SYN: bool = False
    RST: bool = False
    PSH: bool = False
    ACK: bool = False
    URG: bool = False
    ECE: bool = False
    CWR: bool = False
    NS: bool = False

    @classmethod
    def from_bits(cls, bits: int) -> TCPFlags:
        """From the TCP header's flag bits (FIN 0x01 ... CWR 0x80, NS 0x100); frozen, so one
        object per combination serves every flow."""
        return _tcp_flags(cls, bits)

    def summary_names(self) -> list[str]:
        return [n for n in _SUMMARY_FLAG_ORDER if getattr(self, n)]

    def to_dict(self) -> dict[str, bool]:
        return {n: True for n in TCP_FLAG_NAMES if getattr(self, n)}

    @classmethod
    def from_dict(cls, raw: Any) -> TCPFlags:
        raw = _obj(raw, "l4.TCP.flags")
        unknown = set(raw) - set(TCP_FLAG_NAMES)
        if unknown:
            raise ValueError(f"l4.TCP.flags: unknown flag {sorted(unknown)[0]!r}")
        return cls(**{n: bool(raw.get(n, False)) for n in TCP_FLAG_NAMES})


@functools.cache
def _tcp_flags(cls: type[TCPFlags], bits: int) -> TCPFlags:
    return cls(*(bool(bits & (1 << i)) for i in range(9)))


@dataclass(frozen=True)
class TCP:
    source_port: int = 0
    destination_port: int = 0
    flags: TCPFlags | None = None

    def to_dict(self) -> dict:
        flags = self.flags.to_dict() if self.flags else None
        return _prune(
            {
                "source_port": self.source_port,
                "destination_port": self.destination_port,
                "flags": flags,
            }
        )

    @classmethod
    def from_dict(cls, raw: dict) -> TCP:
        flags = raw.get("flags")
        return cls(
            _uint(raw.get("source_port"), "l4.TCP.source_port"),
            _uint(raw.get("destination_port"), "l4.TCP.destination_port"),
            TCPFlags.from_dict(flags) if flags is not None else None,
        )


@dataclass(frozen=True)
class UDP:
    source_port: int = 0
    destination_port: int = 0

    def to_dict(self) -> dict:
        return _prune({"source_port": self.source_port, "destination_port": self.destination_port})

    @classmethod
    def from_dict(cls, raw: dict) -> UDP:
        return cls(
            _uint(raw.get("source_port"), "l4.UDP.source_port"),
            _uint(raw.get("destination_port"), "l4.UDP.destination_port"),
        )


@dataclass(frozen=True)
class SCTP:
    source_port: int = 0
    destination_port: int = 0

    def to_dict(self) -> dict:
        return _prune({"source_port": self.source_port, "destination_port": self.destination_port})

    @classmethod
    def from_dict(cls, raw: dict) -> SCTP:
        return cls(
            _uint(raw.get("source_port"), "l4.SCTP.source_port"),
            _uint(raw.get("destination_port"), "l4.SCTP.destination_port"),
        )


@dataclass(frozen=True)
class ICMPv4:
    type: int = 0
    code: int = 0

    def to_dict(self) -> dict:
        return _prune({"type": self.type, "code": self.code})

    @classmethod
    def from_dict(cls, raw: dict) -> ICMPv4:
        return cls(
            _uint(raw.get("type"), "l4.ICMPv4.type"), _uint(raw.get("code"), "l4.ICMPv4.code")
        )


@dataclass(frozen=True)
class ICMPv6:
    type: int = 0
    code: int = 0

    def to_dict(self) -> dict:
        return _prune({"type": self.type, "code": self.code})

    @classmethod
    def from_dict(cls, raw: dict) -> ICMPv6:
        return cls(
            _uint(raw.get("type"), "l4.ICMPv6.type"), _uint(raw.get("code"), "l4.ICMPv6.code")
        )


L4 = TCP | UDP | ICMPv4 | ICMPv6 | SCTP
_L4_CLASSES: dict[str, type] = {c.__name__: c for c in (TCP, UDP, ICMPv4, ICMPv6, SCTP)}


def _l4_to_dict(l4: L4) -> dict:
    return {type(l4).__name__: l4.to_dict()}


def _l4_from_dict(raw: Any) -> L4 | None:
    raw = _obj(raw, "l4")
    if not raw:
        return None
    if len(raw) != 1:
        raise ValueError(f"l4: expected one of {sorted(_L4_CLASSES)}, got {sorted(raw)}")
    ((name, body),) = raw.items()
    cls = _L4_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"l4: {name!r} is not one of {sorted(_L4_CLASSES)}")
    return cls.from_dict(_obj(body, f"l4.{name}"))


@dataclass(frozen=True)
class IP:
    source: str
    destination: str
    ip_version: IPVersion = IPVersion.IPv4
    encrypted: bool = False

    def to_dict(self) -> dict:
        return _prune(
            {
                "source": self.source,
                "destination": self.destination,
                "ipVersion": _enum_out(self.ip_version),
                "encrypted": self.encrypted or None,
            }
        )

    @classmethod
    def from_dict(cls, raw: Any) -> IP:
        raw = _obj(raw, "IP")
        return cls(
            raw.get("source", ""),
            raw.get("destination", ""),
            _enum_in(IPVersion, raw.get("ipVersion"), "IP.ipVersion"),
            bool(raw.get("encrypted", False)),
        )


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str

    def to_dict(self) -> dict:
        return _prune({"name": self.name, "kind": self.kind})

    @classmethod
    def from_dict(cls, raw: Any) -> Workload:
        raw = _obj(raw, "workloads[]")
        return cls(raw.get("name", ""), raw.get("kind", ""))


@dataclass(frozen=True)
class Endpoint:
    id: int = 0  # the endpoint's ID on its node (Hubble: "ID")
    identity: int = 0
    namespace: str = ""
    labels: tuple[str, ...] = ()  # "k8s:app=web", as Cilium prints labels
    pod_name: str = ""
    workloads: tuple[Workload, ...] = ()
    cluster_name: str = ""

    def to_dict(self) -> dict:
        return _prune(
            {
                "ID": self.id,
                "identity": self.identity,
                "cluster_name": self.cluster_name,
                "namespace": self.namespace,
                "labels": list(self.labels),
                "pod_name": self.pod_name,
                "workloads": [w.to_dict() for w in self.workloads],
            }
        )

    @classmethod
    def from_dict(cls, raw: Any, field: str) -> Endpoint:
        raw = _obj(raw, field)
        return cls(
            id=_uint(raw.get("ID"), f"{field}.ID"),
            identity=_uint(raw.get("identity"), f"{field}.identity"),
            namespace=raw.get("namespace", ""),
            labels=_strings(raw.get("labels"), f"{field}.labels"),
            pod_name=raw.get("pod_name", ""),
            workloads=tuple(Workload.from_dict(w) for w in raw.get("workloads") or ()),
            cluster_name=raw.get("cluster_name", ""),
        )


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str

    def to_dict(self) -> dict:
        return _prune({"name": self.name, "namespace": self.namespace})

    @classmethod
    def from_dict(cls, raw: Any, field: str) -> Service:
        raw = _obj(raw, field)
        return cls(raw.get("name", ""), raw.get("namespace", ""))


@dataclass(frozen=True)
class ServiceTranslation:
    """Our extension: the service address a socket asked for and the backend it was given."""

    service_ip: str
    service_port: int
    backend_ip: str
    backend_port: int

    def to_dict(self) -> dict:
        return _prune(
            {
                "service_ip": self.service_ip,
                "service_port": self.service_port,
                "backend_ip": self.backend_ip,
                "backend_port": self.backend_port,
            }
        )

    @classmethod
    def from_dict(cls, raw: Any) -> ServiceTranslation:
        raw = _obj(raw, "flow.service_translation")
        return cls(
            raw.get("service_ip", ""),
            _uint(raw.get("service_port"), "flow.service_translation.service_port"),
            raw.get("backend_ip", ""),
            _uint(raw.get("backend_port"), "flow.service_translation.backend_port"),
        )


@dataclass(frozen=True)
class EventType:
    """CiliumEventType: the monitor message type and its sub-type (trace point, drop reason)."""

    type: int
    sub_type: int = 0

    @classmethod
    def trace(cls, point: TraceObservationPoint) -> EventType:
        return cls(MessageType.TRACE, point.datapath_code)

    @classmethod
    def drop(cls, reason: int) -> EventType:
        return cls(MessageType.DROP, reason)

    @classmethod
    def policy_verdict(cls) -> EventType:
        return cls(MessageType.POLICY_VERDICT, 0)

    @classmethod
    def trace_sock(cls, point: SocketTranslationPoint) -> EventType:
        return cls(MessageType.TRACE_SOCK, point.value)  # Hubble: sub_type = the xlate point

    def to_dict(self) -> dict:
        return _prune({"type": int(self.type), "sub_type": int(self.sub_type)})

    @classmethod
    def from_dict(cls, raw: Any) -> EventType:
        raw = _obj(raw, "event_type")
        return cls(
            _uint(raw.get("type"), "event_type.type"),
            _uint(raw.get("sub_type"), "event_type.sub_type"),
        )


@dataclass(frozen=True)
class NetworkInterface:
    index: int
    name: str

    def to_dict(self) -> dict:
        return _prune({"index": self.index, "name": self.name})

    @classmethod
    def from_dict(cls, raw: Any) -> NetworkInterface:
        raw = _obj(raw, "interface")
        return cls(_uint(raw.get("index"), "interface.index"), raw.get("name", ""))


@dataclass(frozen=True)
class Policy:
    """A policy that allowed or denied a flow (Hubble's *_allowed_by / *_denied_by)."""

    name: str
    namespace: str = ""
    labels: tuple[str, ...] = ()
    revision: int = 0
    kind: str = "NetworkPolicy"

    def to_dict(self) -> dict:
        return _prune(
            {
                "name": self.name,
                "namespace": self.namespace,
                "labels": list(self.labels),
                "revision": str(self.revision) if self.revision else None,  # uint64: a string
                "kind": self.kind,
            }
        )

    @classmethod
    def from_dict(cls, raw: Any, field: str) -> Policy:
        raw = _obj(raw, field)
        return cls(
            raw.get("name", ""),
            raw.get("namespace", ""),
            _strings(raw.get("labels"), f"{field}.labels"),
            _uint(raw.get("revision"), f"{field}.revision"),
            raw.get("kind", ""),
        )


class L7FlowType(enum.IntEnum):
    UNKNOWN_L7_TYPE = 0
    REQUEST = 1
    RESPONSE = 2
    SAMPLE = 3


@dataclass(frozen=True)
class DNS:
    """A DNS query or response seen by the DNS proxy (Hubble's flow.DNS)."""

    query: str = ""  # the name asked for, fully qualified with the trailing dot
    ips: tuple[str, ...] = ()  # addresses in the answer (A/AAAA)
    ttl: int = 0  # the smallest TTL of the answer's address records
    cnames: tuple[str, ...] = ()
    observation_source: str = ""  # "proxy"
    rcode: int = 0  # 0 NOERROR, 3 NXDOMAIN, ...
    qtypes: tuple[str, ...] = ()  # "A", "AAAA"
    rrtypes: tuple[str, ...] = ()  # the answer's record types

    def to_dict(self) -> dict:
        return _prune(
            {
                "query": self.query,
                "ips": list(self.ips),
                "ttl": self.ttl,
                "cnames": list(self.cnames),
                "observation_source": self.observation_source,
                "rcode": self.rcode,
                "qtypes": list(self.qtypes),
                "rrtypes": list(self.rrtypes),
            }
        )

    @classmethod
    def from_dict(cls, raw: Any) -> DNS:
        raw = _obj(raw, "flow.l7.dns")
        return cls(
            raw.get("query", ""),
            _strings(raw.get("ips"), "flow.l7.dns.ips"),
            _uint(raw.get("ttl"), "flow.l7.dns.ttl"),
            _strings(raw.get("cnames"), "flow.l7.dns.cnames"),
            raw.get("observation_source", ""),
            _uint(raw.get("rcode"), "flow.l7.dns.rcode"),
            _strings(raw.get("qtypes"), "flow.l7.dns.qtypes"),
            _strings(raw.get("rrtypes"), "flow.l7.dns.rrtypes"),
        )


@dataclass(frozen=True)
class HTTPHeader:
    key: str
    value: str


@dataclass(frozen=True)
class HTTP:
    """An HTTP request or response seen by the L7 proxy (Hubble's flow.HTTP). Sensitive header
    values and query strings are redacted before a flow is made (never stored in the clear)."""

    code: int = 0  # the status; 0 on a request
    method: str = ""
    url: str = ""
    protocol: str = ""  # "HTTP/1.1"
    headers: tuple[HTTPHeader, ...] = ()

    def to_dict(self) -> dict:
        return _prune(
            {
                "code": self.code,
                "method": self.method,
                "url": self.url,
                "protocol": self.protocol,
                "headers": [_prune({"key": h.key, "value": h.value}) for h in self.headers],
            }
        )

    @classmethod
    def from_dict(cls, raw: Any) -> HTTP:
        raw = _obj(raw, "flow.l7.http")
        headers = []
        for i, h in enumerate(raw.get("headers") or ()):
            h = _obj(h, f"flow.l7.http.headers[{i}]")
            headers.append(HTTPHeader(str(h.get("key", "")), str(h.get("value", ""))))
        return cls(
            _uint(raw.get("code"), "flow.l7.http.code"),
            raw.get("method", ""),
            raw.get("url", ""),
            raw.get("protocol", ""),
            tuple(headers),
        )


@dataclass(frozen=True)
class Layer7:
    """The L7 record of a flow of Type L7 (Hubble's flow.Layer7): one DNS or HTTP message."""

    type: L7FlowType | int = L7FlowType.UNKNOWN_L7_TYPE
    latency_ns: int = 0  # on a response: since its request
    dns: DNS | None = None
    http: HTTP | None = None

    def to_dict(self) -> dict:
        d = _prune(
            {
                "type": _enum_out(self.type) if self.type else None,
                "latency_ns": str(self.latency_ns) if self.latency_ns else None,  # uint64
            }
        )
        if self.dns is not None:  # a oneof member: present even when empty
            d["dns"] = self.dns.to_dict()
        if self.http is not None:
            d["http"] = self.http.to_dict()
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> Layer7:
        raw = _obj(raw, "flow.l7")
        return cls(
            _enum_in(L7FlowType, raw.get("type"), "flow.l7.type"),
            _uint(raw.get("latency_ns"), "flow.l7.latency_ns"),
            DNS.from_dict(raw["dns"]) if raw.get("dns") is not None else None,
            HTTP.from_dict(raw["http"]) if raw.get("http") is not None else None,
        )


def _response_line(key: str, body: dict, node_name: str, time_ns: int) -> str:
    out: dict[str, Any] = {key: body}
    if node_name:
        out["node_name"] = node_name
    out["time"] = format_rfc3339(time_ns)
    return json.dumps(out, separators=(",", ":"))


def _response_object(text: str | bytes | dict) -> dict:
    if isinstance(text, dict):
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    return _obj(obj, "GetFlowsResponse")


_POLICY_LISTS = ("egress_allowed_by", "ingress_allowed_by", "egress_denied_by", "ingress_denied_by")


@dataclass(frozen=True)
class Flow:
    time_ns: int  # nanoseconds since the epoch, UTC (Hubble: "time")
    verdict: Verdict | int = Verdict.VERDICT_UNKNOWN
    drop_reason: int = 0  # Hubble's DropReason number (133 POLICY_DENIED); 0 unless dropped
    ip: IP | None = None
    l4: L4 | None = None
    l7: Layer7 | None = None  # on flows of Type L7
    source: Endpoint | None = None
    destination: Endpoint | None = None
    type: FlowType | int = FlowType.L3_L4
    node_name: str = ""
    source_names: tuple[str, ...] = ()
    destination_names: tuple[str, ...] = ()
    event_type: EventType | None = None
    source_service: Service | None = None
    destination_service: Service | None = None
    traffic_direction: TrafficDirection | int = TrafficDirection.TRAFFIC_DIRECTION_UNKNOWN
    policy_match_type: int = 0
    trace_observation_point: TraceObservationPoint | int = TraceObservationPoint.UNKNOWN_POINT
    is_reply: bool | None = None  # None: not known whether it is a reply
    interface: NetworkInterface | None = None
    sock_xlate_point: SocketTranslationPoint | int = SocketTranslationPoint.SOCK_XLATE_POINT_UNKNOWN
    socket_cookie: int = 0
    cgroup_id: int = 0
    egress_allowed_by: tuple[Policy, ...] = ()
    ingress_allowed_by: tuple[Policy, ...] = ()
    egress_denied_by: tuple[Policy, ...] = ()
    ingress_denied_by: tuple[Policy, ...] = ()
    policy_cookie: int | None = None  # our extension: the policy entry's cookie
    kernel_drop_reason: str = ""  # our extension: the kernel's skb drop reason ("NO_SOCKET")
    service_translation: ServiceTranslation | None = None  # our extension (see the top)
    summary: str = ""  # Hubble: "Summary"
    uuid: str = ""

    @property
    def drop_reason_desc(self) -> DropReason | int:
        try:
            return DropReason(self.drop_reason)
        except ValueError:
            return self.drop_reason

    def to_dict(self) -> dict[str, Any]:
        """The Flow message as protobuf's JSON mapping writes it (field order: the .proto's)."""
        d: dict[str, Any] = {
            "time": format_rfc3339(self.time_ns),
            "uuid": self.uuid,
            "verdict": _enum_out(self.verdict),
            "drop_reason": self.drop_reason,
            "IP": self.ip.to_dict() if self.ip else None,
            "l4": _l4_to_dict(self.l4) if self.l4 else None,
            "l7": self.l7.to_dict() if self.l7 else None,
            "source": self.source.to_dict() if self.source else None,
            "destination": self.destination.to_dict() if self.destination else None,
            "Type": _enum_out(self.type) if self.type else None,
            "node_name": self.node_name,
            "source_names": list(self.source_names),
            "destination_names": list(self.destination_names),
            "event_type": self.event_type.to_dict() if self.event_type else None,
            "source_service": self.source_service.to_dict() if self.source_service else None,
            "destination_service": (
                self.destination_service.to_dict() if self.destination_service else None
            ),
            "traffic_direction": (
                _enum_out(self.traffic_direction) if self.traffic_direction else None
            ),
            "policy_match_type": self.policy_match_type,
            "trace_observation_point": (
                _enum_out(self.trace_observation_point) if self.trace_observation_point else None
            ),
            "drop_reason_desc": _enum_out(self.drop_reason_desc) if self.drop_reason else None,
            "interface": self.interface.to_dict() if self.interface else None,
            "sock_xlate_point": (
                _enum_out(self.sock_xlate_point) if self.sock_xlate_point else None
            ),
            "socket_cookie": str(self.socket_cookie) if self.socket_cookie else None,  # uint64
            "cgroup_id": str(self.cgroup_id) if self.cgroup_id else None,
        }
        d = _prune(d)
        if self.verdict == Verdict.VERDICT_UNKNOWN:
            d.pop("verdict", None)
        if self.is_reply is not None:  # a BoolValue: present even when false
            d["is_reply"] = self.is_reply
        for name in _POLICY_LISTS:
            policies = getattr(self, name)
            if policies:
                d[name] = [p.to_dict() for p in policies]
        if self.policy_cookie is not None:
            d["policy_cookie"] = self.policy_cookie
        if self.kernel_drop_reason:
            d["kernel_drop_reason"] = self.kernel_drop_reason
        if self.service_translation is not None:
            d["service_translation"] = self.service_translation.to_dict()
        if self.summary:
            d["Summary"] = self.summary
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> Flow:
        """A Flow from its JSON mapping; ValueError naming the field that is wrong."""
        raw = _obj(raw, "flow")
        if "time" not in raw:
            raise ValueError("flow.time: missing")
        drop_reason = _uint(raw.get("drop_reason"), "flow.drop_reason")
        if not drop_reason and raw.get("drop_reason_desc") is not None:
            drop_reason = int(_enum_in(DropReason, raw["drop_reason_desc"], "drop_reason_desc"))
        l4 = raw.get("l4")
        is_reply = raw.get("is_reply")
        if is_reply is not None and not isinstance(is_reply, bool):
            raise ValueError(f"flow.is_reply: {is_reply!r} is not a boolean")
        cookie = raw.get("policy_cookie")
        return cls(
            time_ns=parse_rfc3339(raw["time"]),
            verdict=_enum_in(Verdict, raw.get("verdict"), "flow.verdict"),
            drop_reason=drop_reason,
            ip=IP.from_dict(raw["IP"]) if raw.get("IP") else None,
            l4=_l4_from_dict(l4) if l4 else None,
            l7=Layer7.from_dict(raw["l7"]) if raw.get("l7") else None,
            source=Endpoint.from_dict(raw["source"], "flow.source") if raw.get("source") else None,
            destination=(
                Endpoint.from_dict(raw["destination"], "flow.destination")
                if raw.get("destination")
                else None
            ),
            type=_enum_in(FlowType, raw.get("Type"), "flow.Type"),
            node_name=raw.get("node_name", ""),
            source_names=_strings(raw.get("source_names"), "flow.source_names"),
            destination_names=_strings(raw.get("destination_names"), "flow.destination_names"),
            event_type=EventType.from_dict(raw["event_type"]) if raw.get("event_type") else None,
            source_service=(
                Service.from_dict(raw["source_service"], "flow.source_service")
                if raw.get("source_service")
                else None
            ),
            destination_service=(
                Service.from_dict(raw["destination_service"], "flow.destination_service")
                if raw.get("destination_service")
                else None
            ),
            traffic_direction=_enum_in(
                TrafficDirection, raw.get("traffic_direction"), "flow.traffic_direction"
            ),
            policy_match_type=_uint(raw.get("policy_match_type"), "flow.policy_match_type"),
            trace_observation_point=_enum_in(
                TraceObservationPoint,
                raw.get("trace_observation_point"),
                "flow.trace_observation_point",
            ),
            is_reply=is_reply,
            interface=NetworkInterface.from_dict(raw["interface"])
            if raw.get("interface")
            else None,
            sock_xlate_point=_enum_in(
                SocketTranslationPoint, raw.get("sock_xlate_point"), "flow.sock_xlate_point"
            ),
            socket_cookie=_uint(raw.get("socket_cookie"), "flow.socket_cookie"),
            cgroup_id=_uint(raw.get("cgroup_id"), "flow.cgroup_id"),
            **{
                name: tuple(
                    Policy.from_dict(p, f"flow.{name}[{i}]")
                    for i, p in enumerate(raw.get(name) or ())
                )
                for name in _POLICY_LISTS
            },
            policy_cookie=_uint(cookie, "flow.policy_cookie") if cookie is not None else None,
            kernel_drop_reason=str(raw.get("kernel_drop_reason") or ""),
            service_translation=(
                ServiceTranslation.from_dict(raw["service_translation"])
                if raw.get("service_translation")
                else None
            ),
            summary=raw.get("Summary", ""),
            uuid=raw.get("uuid", ""),
        )

    def to_json(self) -> str:
        """One line as `hubble observe -o json` prints it: a GetFlowsResponse."""
        return _response_line("flow", self.to_dict(), self.node_name, self.time_ns)

    @classmethod
    def from_json(cls, text: str | bytes | dict) -> Flow:
        """A Flow from a GetFlowsResponse line (or from a bare Flow object)."""
        obj = _response_object(text)
        return cls.from_dict(obj.get("flow", obj))


@dataclass(frozen=True)
class LostEvent:
    """Events that were lost before anyone saw them, and where (Hubble's LostEvent)."""

    source: LostEventSource | int
    num_events_lost: int
    cpu: int | None = None
    time_ns: int = 0
    node_name: str = ""

    @classmethod
    def now(
        cls, source: LostEventSource, num_events_lost: int, cpu: int | None = None, node_name=""
    ) -> LostEvent:
        return cls(source, num_events_lost, cpu, now_ns(), node_name)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = _prune(
            {
                "source": _enum_out(self.source) if self.source else None,
                "num_events_lost": str(self.num_events_lost) if self.num_events_lost else None,
            }
        )
        if self.cpu is not None:  # an Int32Value: present even when 0
            d["cpu"] = self.cpu
        return d

    def to_json(self) -> str:
        return _response_line("lost_events", self.to_dict(), self.node_name, self.time_ns)

    @classmethod
    def from_json(cls, text: str | bytes | dict) -> LostEvent:
        obj = _response_object(text)
        raw = _obj(obj.get("lost_events"), "lost_events")
        cpu = raw.get("cpu")
        return cls(
            source=_enum_in(LostEventSource, raw.get("source"), "lost_events.source"),
            num_events_lost=_uint(raw.get("num_events_lost"), "lost_events.num_events_lost"),
            cpu=_uint(cpu, "lost_events.cpu") if cpu is not None else None,
            time_ns=parse_rfc3339(obj["time"]) if obj.get("time") else 0,
            node_name=obj.get("node_name", ""),
        )


Record = Flow | LostEvent


def record_from_json(text: str | bytes | dict) -> Record:
    """A Flow or a LostEvent from one GetFlowsResponse line; ValueError for anything else."""
    obj = _response_object(text)
    if "flow" in obj:
        return Flow.from_json(obj)
    if "lost_events" in obj:
        return LostEvent.from_json(obj)
    raise ValueError(f"not a flow or lost_events response: keys {sorted(obj)}")
