"""The socket LB's TRANSLATED events (probes/socklb.py decode_events) as flows, in Hubble's shape
for socket-level translations (its TraceSock flows: event type 7, sock_xlate_point,
socket_cookie, cgroup_id, Type SOCK).

One flow per translation, at SOCK_XLATE_POINT_POST_DIRECTION_FWD (the connect() or sendmsg() has
been translated: verdict TRANSLATED, as Hubble gives post-translation events). Unlike Hubble's
post-translation flow, whose IP.destination is the backend, ours keeps the address the socket asked
for, the service's (IP.destination and the destination port), names the Service
(destination_service), and carries the chosen backend in `service_translation`; the destination
endpoint is the backend's pod. So one record says client -> service -> backend. The source is the
client pod, found by its cgroup (the port is not known yet at connect time, as in Hubble).
"""

from __future__ import annotations

from collector.enrich import Enricher
from collector.translations import Link, RecentTranslations
from flowscope.flow.model import (
    IP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    ServiceTranslation,
    SocketTranslationPoint,
    Verdict,
)
from probes.socklb import Translation

_IPPROTO_TCP, _IPPROTO_UDP = 6, 17
POINT = SocketTranslationPoint.SOCK_XLATE_POINT_POST_DIRECTION_FWD
EVENT_TYPE = EventType.trace_sock(POINT)


def translation_flow(
    t: Translation,
    enricher: Enricher,
    node: str,
    wall_offset: int,
    links: RecentTranslations | None = None,
) -> Flow:
    """The flow of one translation; remembers it in `links` for the connection's packets."""
    proto = int(t.proto)
    vip, backend_ip = str(t.vip), str(t.backend_ip)
    client = enricher.pod_ip(t.cgroup_id)
    # the socket LB translates ClusterIP and LoadBalancer addresses, and NodePorts at this node's
    # own address (hairpin): an address that is no Service's frontend is the node's
    service = enricher.service_at(vip, t.vport, proto) or enricher.node_port(t.vport, proto)
    xlate = ServiceTranslation(vip, t.vport, backend_ip, t.backend_port)
    time_ns = t.ktime_ns + wall_offset
    if links is not None and client is not None:
        links.remember((client, backend_ip, t.backend_port, proto), Link(service, xlate), time_ns)
    l4 = TCP(0, t.vport) if proto == _IPPROTO_TCP else UDP(0, t.vport)
    return Flow(
        time_ns=time_ns,
        verdict=Verdict.TRANSLATED,
        ip=IP(client or "", vip),
        l4=l4,
        source=enricher.by_ip(client) if client else Endpoint(),
        destination=enricher.by_ip(backend_ip),
        type=FlowType.SOCK,
        node_name=node,
        event_type=EVENT_TYPE,
        destination_service=service,
        is_reply=False,  # a translation is the client's own connect or send
        sock_xlate_point=POINT,
        socket_cookie=t.sock_cookie,
        cgroup_id=t.cgroup_id,
        service_translation=xlate,
        summary="TCP" if proto == _IPPROTO_TCP else "UDP",  # as Hubble's sock flows
    )
