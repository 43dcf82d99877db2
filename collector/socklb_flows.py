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

from typing import NamedTuple

from collector.enrich import Enricher
from collector.translations import Key, Link, RecentTranslations
from flowscope.flow.model import (
    IP,
    TCP,
    UDP,
    Endpoint,
    EventType,
    Flow,
    FlowType,
    Service,
    ServiceTranslation,
    SocketTranslationPoint,
    Verdict,
)
from probes.socklb import Translation

_IPPROTO_TCP, _IPPROTO_UDP = 6, 17
POINT = SocketTranslationPoint.SOCK_XLATE_POINT_POST_DIRECTION_FWD
EVENT_TYPE = EventType.trace_sock(POINT)


class TranslationNames(NamedTuple):
    """What names a translation, found once per distinct (cgroup, frontend, backend)."""

    client: str | None  # the client pod's IP (None: the cgroup is no known pod's)
    service: Service | None
    translation: ServiceTranslation
    proto: int
    source: Endpoint
    destination: Endpoint

    @property
    def link_key(self) -> Key | None:
        """The key of the connection's later packets (collector.translations), if any."""
        if self.client is None:
            return None
        t = self.translation
        return (self.client, t.backend_ip, t.backend_port, self.proto)

    @property
    def link(self) -> Link:
        return Link(self.service, self.translation)


def translation_names(
    enricher: Enricher,
    cgroup_id: int,
    vip: str,
    vport: int,
    backend_ip: str,
    backend_port: int,
    proto: int,
) -> TranslationNames:
    """The names of a translation, as they are now."""
    client = enricher.pod_ip(cgroup_id)
    # the socket LB translates ClusterIP and LoadBalancer addresses, and NodePorts at this node's
    # own address (hairpin): an address that is no Service's frontend is the node's
    service = enricher.service_at(vip, vport, proto) or enricher.node_port(vport, proto)
    return TranslationNames(
        client=client,
        service=service,
        translation=ServiceTranslation(vip, vport, backend_ip, backend_port),
        proto=proto,
        source=enricher.by_ip(client) if client else Endpoint(),
        destination=enricher.by_ip(backend_ip),
    )


def translation_flow(
    t: Translation,
    enricher: Enricher,
    node: str,
    wall_offset: int,
    links: RecentTranslations | None = None,
) -> Flow:
    """The flow of one translation; remembers it in `links` for the connection's packets."""
    names = translation_names(
        enricher, t.cgroup_id, str(t.vip), t.vport, str(t.backend_ip), t.backend_port, int(t.proto)
    )
    time_ns = t.ktime_ns + wall_offset
    if links is not None and names.link_key is not None:
        links.remember(names.link_key, names.link, time_ns)
    return named_translation_flow(names, time_ns, t.sock_cookie, t.cgroup_id, node)


def named_translation_flow(
    names: TranslationNames, time_ns: int, sock_cookie: int, cgroup_id: int, node: str
) -> Flow:
    """The flow of a translation from its names (the one builder of the per-event and the
    columnar path)."""
    xlate = names.translation
    tcp = names.proto == _IPPROTO_TCP
    return Flow(
        time_ns=time_ns,
        verdict=Verdict.TRANSLATED,
        ip=IP(names.client or "", xlate.service_ip),
        l4=TCP(0, xlate.service_port) if tcp else UDP(0, xlate.service_port),
        source=names.source,
        destination=names.destination,
        type=FlowType.SOCK,
        node_name=node,
        event_type=EVENT_TYPE,
        destination_service=names.service,
        is_reply=False,  # a translation is the client's own connect or send
        sock_xlate_point=POINT,
        socket_cookie=sock_cookie,
        cgroup_id=cgroup_id,
        service_translation=xlate,
        summary="TCP" if tcp else "UDP",  # as Hubble's sock flows
    )
