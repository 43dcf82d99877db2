"""The cluster's DNS records, a pure function of its Services and EndpointSlices.

What CoreDNS's kubernetes plugin serves (with `pods insecure`, TTL 5), for zone cluster.local:
- NAME.NS.svc: A = the ClusterIP; for a headless service the ready endpoints' IPs; an
  ExternalName service is a CNAME. AAAA and other types of an existing name: NOERROR, empty.
- _PORT._PROTO.NAME.NS.svc: SRV for a named port (target the service, or each endpoint of a
  headless one); SRV on NAME.NS.svc lists every port.
- HOST.NAME.NS.svc: an endpoint of a headless service (its hostname, else its dashed IP).
- A-B-C-D.NS.pod: A A.B.C.D; ns.dns: the DNS service's address; the apex has SOA and NS.
- Unknown names in the zone: NXDOMAIN with the SOA (negative caching for TTL seconds).
- PTR for ClusterIPs and headless endpoints; other reverse names and every name outside the zone
  are not ours: `resolve` returns None and the server forwards them (or refuses).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.SRV import SRV

TTL = 5  # seconds, the kubernetes plugin's default
DOMAIN = "cluster.local"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
REVERSE_ZONE = dns.name.from_text("in-addr.arpa.")
IN = dns.rdataclass.IN
_T = dns.rdatatype


@dataclass(frozen=True)
class Port:
    name: str
    protocol: str  # TCP | UDP | SCTP
    port: int


@dataclass(frozen=True)
class Endpoint:
    ip: str
    hostname: str | None
    ports: tuple[Port, ...]

    @property
    def label(self) -> str:
        """Its name under a headless service: the hostname it asked for, else its dashed IP."""
        return (self.hostname or self.ip.replace(".", "-")).lower()


@dataclass(frozen=True)
class ServiceRecord:
    namespace: str
    name: str
    cluster_ip: str | None  # None: headless (or ExternalName)
    external_name: str | None
    ports: tuple[Port, ...]
    endpoints: tuple[Endpoint, ...]  # those published: ready (or all with publishNotReady)


@dataclass(frozen=True)
class ClusterRecords:
    services: Mapping[tuple[str, str], ServiceRecord] = field(default_factory=dict)
    namespaces: frozenset[str] = frozenset()
    reverse: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # IP -> FQDNs
    domain: str = DOMAIN
    dns_ip: str | None = None  # the DNS service's address, for ns.dns.DOMAIN
    serial: int = 1  # SOA serial: bumped on every change, as CoreDNS does


@dataclass(frozen=True)
class Answer:
    rcode: int
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()


# -- building -----------------------------------------------------------------------------------
def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _ipv4(text: Any) -> str | None:
    """The dotted quad, or None (inet_pton is strict: four decimal parts, no leading zeros)."""
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except (OSError, TypeError, ValueError):
        return None


def _ports(raw: Iterable[Mapping[str, Any]] | None, key: str) -> tuple[Port, ...]:
    out = []
    for p in raw or ():
        if isinstance(p.get(key), int):
            out.append(Port(str(p.get("name") or ""), str(p.get("protocol") or "TCP"), p[key]))
    return tuple(out)


def _published(slices: Iterable[Mapping[str, Any]], not_ready_too: bool) -> tuple[Endpoint, ...]:
    """The endpoints DNS publishes, one per IP (ports merged across slices), sorted by IP."""
    by_ip: dict[str, Endpoint] = {}
    for s in slices:
        if s.get("addressType", "IPv4") != "IPv4":
            continue
        ports = _ports(s.get("ports"), "port")
        for ep in s.get("endpoints") or ():
            ready = (ep.get("conditions") or {}).get("ready")
            if ready is False and not not_ready_too:  # absent means ready, as in the API
                continue
            hostname = ep.get("hostname") if isinstance(ep.get("hostname"), str) else None
            for address in ep.get("addresses") or ():
                ip = _ipv4(address)
                if ip is None:
                    continue
                old = by_ip.get(ip)
                merged = tuple(dict.fromkeys((*(old.ports if old else ()), *ports)))
                by_ip[ip] = Endpoint(ip, hostname or (old.hostname if old else None), merged)
    return tuple(by_ip[ip] for ip in sorted(by_ip, key=socket.inet_aton))


def cluster_records(
    services: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    namespaces: Iterable[str] = (),
    *,
    domain: str = DOMAIN,
    dns_ip: str | None = None,
    serial: int = 1,
) -> ClusterRecords:
    slices_of: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in slices:
        meta = _meta(s)
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            slices_of.setdefault((meta.get("namespace") or "default", owner), []).append(s)
    records: dict[tuple[str, str], ServiceRecord] = {}
    reverse: dict[str, list[str]] = {}
    for svc in services:
        meta, spec = _meta(svc), svc.get("spec") or {}
        ns, name = meta.get("namespace") or "default", meta.get("name")
        if not name:
            continue
        ns, name = ns.lower(), name.lower()
        fqdn = f"{name}.{ns}.svc.{domain}."
        external = spec.get("externalName") if spec.get("type") == "ExternalName" else None
        cluster_ip = None if external else _ipv4(spec.get("clusterIP"))
        endpoints: tuple[Endpoint, ...] = ()
        if cluster_ip is None and not external:
            endpoints = _published(
                slices_of.get((ns, name), ()), bool(spec.get("publishNotReadyAddresses"))
            )
            for ep in endpoints:
                reverse.setdefault(ep.ip, []).append(f"{ep.label}.{fqdn}")
        elif cluster_ip:
            reverse.setdefault(cluster_ip, []).append(fqdn)
        records[(ns, name)] = ServiceRecord(
            ns, name, cluster_ip, external, _ports(spec.get("ports"), "port"), endpoints
        )
    return ClusterRecords(
        services=records,
        namespaces=frozenset(n.lower() for n in namespaces) | {ns for ns, _ in records},
        reverse={ip: tuple(sorted(names)) for ip, names in reverse.items()},
        domain=domain,
        dns_ip=dns_ip,
        serial=serial,
    )


# -- answering ----------------------------------------------------------------------------------
def _rrset(owner: dns.name.Name, rdatas: Iterable[dns.rdata.Rdata]) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(owner, TTL, list(rdatas))


def _a(ip: str) -> A:
    return A(IN, _T.A, ip)


def _unique(rrsets: Iterable[dns.rrset.RRset]) -> tuple[dns.rrset.RRset, ...]:
    """One glue record per name (an endpoint with two ports is one target)."""
    return tuple({r.name: r for r in rrsets}.values())


def _soa(records: ClusterRecords, zone: dns.name.Name) -> dns.rrset.RRset:
    soa = SOA(
        IN,
        _T.SOA,
        dns.name.from_text("ns.dns", zone),
        dns.name.from_text("hostmaster", zone),
        records.serial & 0xFFFFFFFF,
        7200,
        1800,
        86400,
        TTL,
    )
    return _rrset(zone, [soa])


@functools.lru_cache(maxsize=8)
def _zone(domain: str) -> dns.name.Name:
    return dns.name.from_text(domain)


def _service_name(svc: ServiceRecord, zone: dns.name.Name) -> dns.name.Name:
    """NAME.NS.svc.DOMAIN, built from labels (parsing text costs more than the whole answer)."""
    return dns.name.Name((svc.name.encode(), svc.namespace.encode(), b"svc", *zone.labels))


class _Lookup:
    """One question against the records; each method returns the Answer for its name shape."""

    def __init__(self, records: ClusterRecords, qname: dns.name.Name, qtype: int) -> None:
        self.records = records
        self.zone = _zone(records.domain)
        self.qname = qname
        self.qtype = qtype

    def nxdomain(self) -> Answer:
        return Answer(dns.rcode.NXDOMAIN, authority=(_soa(self.records, self.zone),))

    def nodata(self) -> Answer:
        return Answer(dns.rcode.NOERROR, authority=(_soa(self.records, self.zone),))

    def data(
        self,
        by_type: Mapping[int, list[dns.rdata.Rdata]],
        additional: tuple[dns.rrset.RRset, ...] = (),
    ) -> Answer:
        """The name exists with these records: answer the asked type (ANY: all), else empty."""
        if self.qtype == _T.ANY:
            wanted = [t for t, rd in by_type.items() if rd]
        elif by_type.get(self.qtype):
            wanted = [self.qtype]
        elif by_type.get(_T.CNAME):
            wanted = [_T.CNAME]  # an alias answers every type
        else:
            return self.nodata()
        answer = tuple(_rrset(self.qname, by_type[t]) for t in wanted)
        extra = additional if _T.SRV in wanted else ()
        return Answer(dns.rcode.NOERROR, answer, additional=extra)

    def service(self, svc: ServiceRecord) -> Answer:
        by_type: dict[int, list[dns.rdata.Rdata]] = {}
        additional: list[dns.rrset.RRset] = []
        own = _service_name(svc, self.zone)
        if svc.external_name:
            target = dns.name.from_text(svc.external_name.rstrip(".") + ".")
            by_type[_T.CNAME] = [CNAME(IN, _T.CNAME, target)]
        elif svc.cluster_ip:
            by_type[_T.A] = [_a(svc.cluster_ip)]
            by_type[_T.SRV] = [SRV(IN, _T.SRV, 0, 100, p.port, own) for p in svc.ports]
            additional.append(_rrset(own, [_a(svc.cluster_ip)]))
        else:
            by_type[_T.A] = [_a(ep.ip) for ep in svc.endpoints]
            pairs = [(ep, p) for ep in svc.endpoints for p in ep.ports]
            weight = max(1, 100 // max(1, len(pairs)))
            by_type[_T.SRV] = []
            for ep, p in pairs:
                target = dns.name.from_text(ep.label, own)
                by_type[_T.SRV].append(SRV(IN, _T.SRV, 0, weight, p.port, target))
                additional.append(_rrset(target, [_a(ep.ip)]))
        return self.data(by_type, _unique(additional))

    def named_port(self, svc: ServiceRecord, port: str, proto: str) -> Answer:
        own = _service_name(svc, self.zone)
        srv: list[dns.rdata.Rdata] = []
        additional: list[dns.rrset.RRset] = []

        def matches(p: Port) -> bool:
            return p.name.lower() == port and p.protocol.lower() == proto

        if svc.cluster_ip:
            for p in svc.ports:
                if matches(p):
                    srv.append(SRV(IN, _T.SRV, 0, 100, p.port, own))
                    additional = [_rrset(own, [_a(svc.cluster_ip)])]
        else:
            pairs = [(ep, p) for ep in svc.endpoints for p in ep.ports if matches(p)]
            weight = max(1, 100 // max(1, len(pairs)))
            for ep, p in pairs:
                target = dns.name.from_text(ep.label, own)
                srv.append(SRV(IN, _T.SRV, 0, weight, p.port, target))
                additional.append(_rrset(target, [_a(ep.ip)]))
        named = any(matches(p) for p in svc.ports)
        if not srv and not named:
            return self.nxdomain()
        return self.data({_T.SRV: srv}, _unique(additional))

    def in_zone(self, labels: tuple[str, ...]) -> Answer:
        records = self.records
        match labels:
            case ():
                ns_target = dns.name.from_text("ns.dns", self.zone)
                by_type: dict[int, list[dns.rdata.Rdata]] = {_T.NS: [NS(IN, _T.NS, ns_target)]}
                if self.qtype in (_T.SOA, _T.ANY):
                    return Answer(dns.rcode.NOERROR, (_soa(records, self.zone),))
                return self.data(by_type)
            case ("dns",) | ("svc",) | ("pod",):
                return self.nodata()
            case ("ns", "dns") if records.dns_ip:
                return self.data({_T.A: [_a(records.dns_ip)]})
            case (ns, "svc"):
                return self.nodata() if ns in records.namespaces else self.nxdomain()
            case (name, ns, "svc"):
                svc = records.services.get((ns, name))
                return self.service(svc) if svc else self.nxdomain()
            case (port, proto, name, ns, "svc") if port.startswith("_") and proto.startswith("_"):
                svc = records.services.get((ns, name))
                if svc is None:
                    return self.nxdomain()
                return self.named_port(svc, port[1:], proto[1:])
            case (host, name, ns, "svc"):
                svc = records.services.get((ns, name))
                if svc is None:
                    return self.nxdomain()
                if host.startswith("_") and any(
                    p.protocol.lower() == host[1:] and p.name for p in svc.ports
                ):
                    return self.nodata()  # _proto.NAME.NS.svc: above the named-port records
                for ep in svc.endpoints:
                    if ep.label == host:
                        return self.data({_T.A: [_a(ep.ip)]})
                return self.nxdomain()
            case (dashed, _ns, "pod"):
                ip = _ipv4(dashed.replace("-", ".")) if dashed.count("-") == 3 else None
                return self.data({_T.A: [_a(ip)]}) if ip else self.nxdomain()
        return self.nxdomain()

    def reverse(self, labels: tuple[str, ...]) -> Answer | None:
        if len(labels) != 4:
            return None
        ip = _ipv4(".".join(reversed(labels)))
        names = self.records.reverse.get(ip) if ip else None
        if not names:
            return None  # not ours: falls through to the upstreams, as CoreDNS's fallthrough
        ptrs = [PTR(IN, _T.PTR, dns.name.from_text(n)) for n in names]
        return self.data({_T.PTR: ptrs})


def _labels(name: dns.name.Name) -> tuple[str, ...]:
    return tuple(label.decode("latin-1").lower() for label in name.labels)


def resolve(records: ClusterRecords, qname: dns.name.Name, qtype: int) -> Answer | None:
    """The answer to (qname, qtype, class IN); None when the name is not the cluster's."""
    lookup = _Lookup(records, qname, qtype)
    if qname.is_subdomain(lookup.zone):
        return lookup.in_zone(_labels(qname.relativize(lookup.zone)))
    if qname.is_subdomain(REVERSE_ZONE) and qtype in (_T.PTR, _T.ANY):
        return lookup.reverse(_labels(qname.relativize(REVERSE_ZONE)))
    return None
