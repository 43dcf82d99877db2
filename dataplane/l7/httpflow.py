"""The L7 flows the HTTP proxy emits, as Cilium's proxy access log becomes Hubble flows.

A request is one flow of type L7 (event ACCESS_LOG, l7.type REQUEST) from the client to the
original destination; its response is another (l7.type RESPONSE, is_reply, the ends swapped, the
latency since the request). The IP and TCP parts are those of the client's original connection.
Headers and URLs are redacted here, the only place flows get them from. Pure.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dataplane.l7.httpmessage import RequestHead, ResponseHead
from dataplane.l7.redact import Redaction
from flowscope.flow.dropreason import DropReason
from flowscope.flow.model import (
    HTTP,
    IP,
    TCP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    HTTPHeader,
    IPVersion,
    L7FlowType,
    Layer7,
    MessageType,
    TrafficDirection,
    Verdict,
)
from flowscope.flow.timestamp import now_ns

log = logging.getLogger(__name__)

Address = tuple[str, int]
Describe = Callable[[str], Endpoint | None]


def _no_endpoint(_ip: str) -> Endpoint | None:
    return None


@dataclass(frozen=True)
class Connection:
    """One proxied connection: who called, where it meant to go, how flows name them."""

    client: Address
    original_dst: Address
    node_name: str = ""
    direction: TrafficDirection = TrafficDirection.INGRESS
    describe: Describe = field(default=_no_endpoint, compare=False)

    @functools.cached_property
    def client_endpoint(self) -> Endpoint | None:
        # looked up once per connection: a connection's ends do not move
        return self._describe(self.client[0])

    @functools.cached_property
    def destination_endpoint(self) -> Endpoint | None:
        return self._describe(self.original_dst[0])

    def _describe(self, ip: str) -> Endpoint | None:
        try:
            return self.describe(ip)
        except Exception:  # a flow without its endpoint beats a request that fails
            log.exception("l7 flows: describing %s failed", ip)
            return None

    def url(self, request: RequestHead | None) -> str:
        """http://<Host header or original destination><target>, as Hubble shows it."""
        if request is None:
            return ""
        if request.target.startswith(("http://", "https://")):
            return request.target  # absolute-form: already a URL
        host = request.host
        if not host:
            ip, port = self.original_dst
            host = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        target = request.target if request.target.startswith("/") else f"/{request.target}"
        return f"http://{host}{target}"


@functools.lru_cache(maxsize=4096)
def _ip(src: str, dst: str) -> IP:
    # cached: a connection's requests share it, and parsing addresses per flow shows in the CPU
    version = IPVersion.IPv6 if ipaddress.ip_address(src).version == 6 else IPVersion.IPv4
    return IP(src, dst, version)


def _headers(headers: tuple[tuple[str, str], ...], redaction: Redaction) -> tuple[HTTPHeader, ...]:
    return tuple(HTTPHeader(n, v) for n, v in redaction.headers_of(headers))


def request_flow(
    conn: Connection,
    request: RequestHead | None,
    verdict: Verdict,
    redaction: Redaction,
    *,
    time_ns: int | None = None,
    summary: str = "",
) -> Flow:
    """A REQUEST flow; `request` is None when the request could not be read (bad input). A
    denied request carries the 403 it was answered with, as Cilium's access log record of a
    denial does (so `observe --http-status 403` finds it: no response flow follows)."""
    (cip, cport), (dip, dport) = conn.client, conn.original_dst
    http = HTTP(
        code=403 if verdict == Verdict.DROPPED else 0,
        method=request.method if request else "",
        url=redaction.url(conn.url(request)),
        protocol=request.protocol if request else "HTTP/1.1",
        headers=_headers(request.headers, redaction) if request else (),
    )
    return Flow(
        time_ns=time_ns if time_ns is not None else now_ns(),
        verdict=verdict,
        drop_reason=DropReason.POLICY_DENIED if verdict == Verdict.DROPPED else 0,
        ip=_ip(cip, dip),
        l4=TCP(cport, dport),
        l7=Layer7(L7FlowType.REQUEST, 0, http=http),
        source=conn.client_endpoint,
        destination=conn.destination_endpoint,
        type=FlowType.L7,
        node_name=conn.node_name,
        event_type=EventType(MessageType.ACCESS_LOG, 0),
        traffic_direction=conn.direction,
        is_reply=False,
        summary=summary,
    )


def response_flow(
    conn: Connection,
    request: RequestHead,
    response: ResponseHead,
    latency_ns: int,
    redaction: Redaction,
    *,
    verdict: Verdict = Verdict.FORWARDED,
    time_ns: int | None = None,
    summary: str = "",
) -> Flow:
    """A RESPONSE flow: the ends swapped, is_reply, the latency since the request was read."""
    (cip, cport), (dip, dport) = conn.client, conn.original_dst
    http = HTTP(
        code=response.code,
        method=request.method,
        url=redaction.url(conn.url(request)),
        protocol=response.protocol,
        headers=_headers(response.headers, redaction),
    )
    return Flow(
        time_ns=time_ns if time_ns is not None else now_ns(),
        verdict=verdict,
        ip=_ip(dip, cip),
        l4=TCP(dport, cport),
        l7=Layer7(L7FlowType.RESPONSE, max(latency_ns, 0), http=http),
        source=conn.destination_endpoint,
        destination=conn.client_endpoint,
        type=FlowType.L7,
        node_name=conn.node_name,
        event_type=EventType(MessageType.ACCESS_LOG, 0),
        traffic_direction=conn.direction,
        is_reply=True,
        summary=summary,
    )
