"""kube-proxy's iptables mode, as text: the iptables-restore input its proxier writes for a set
of ClusterIP service ports (the benchmark baseline of bench.services). Pure functions.

The shape follows kubernetes pkg/proxy/iptables/proxier.go (syncProxyRules, v1.28+):
- nat: PREROUTING and OUTPUT jump to KUBE-SERVICES, POSTROUTING to KUBE-POSTROUTING (kube-proxy
  ensures these jumps with `iptables -I` at start-up; here they are part of the same restore);
  KUBE-SERVICES holds one rule per service port,
  `-m comment --comment "NS/NAME:PORT cluster IP" -m tcp -p tcp -d VIP --dport P -j KUBE-SVC-H`,
  and ends with the jump to KUBE-NODEPORTS for local destinations; each KUBE-SVC-H first marks
  traffic from outside the cluster CIDR for masquerade, then picks an endpoint with
  `-m statistic --mode random --probability 1/(n-i)` (the last one without); each KUBE-SEP-H
  marks hairpin traffic (`-s EP -j KUBE-MARK-MASQ`) and DNATs to the endpoint;
  KUBE-POSTROUTING masquerades what carries mark 0x4000.
- filter: KUBE-FORWARD (drop INVALID, accept marked and established), and the empty chains
  kube-proxy keeps for services without endpoints, firewalls and health-check ports, with their
  jumps from INPUT, FORWARD and OUTPUT.
- Chain names: "KUBE-SVC-" / "KUBE-SEP-" + the first 16 characters of base32(sha256(
  "NS/NAME:PORT" + protocol [+ "IP:PORT"])), exactly kube-proxy's, so real names match
  (default/kubernetes:https tcp -> KUBE-SVC-NPX46M4PTMTKRN6Y).

Not modelled (not exercised by pod -> ClusterIP traffic): session affinity (`-m recent`),
traffic policies Local (KUBE-SVL-*), external IPs, LoadBalancer firewalls (KUBE-FW-*),
NodePort rules inside KUBE-NODEPORTS.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

MASQ_MARK = "0x4000"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: IPv4Address
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One port of a ClusterIP service and its ready endpoints (kube-proxy's ServicePortName +
    serviceInfo + endpoints)."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # "TCP" | "UDP"
    cluster_ip: IPv4Address
    port: int
    endpoints: tuple[Endpoint, ...]

    @property
    def port_name_string(self) -> str:
        """ServicePortName.String(): "NS/NAME:PORT", or "NS/NAME" for an unnamed port."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_chain(sp: ServicePort) -> str:
    return "KUBE-SVC-" + _hash16(sp.port_name_string + sp.protocol.lower())


def endpoint_chain(sp: ServicePort, ep: Endpoint) -> str:
    return "KUBE-SEP-" + _hash16(sp.port_name_string + sp.protocol.lower() + str(ep))


def probability(n: int) -> str:
    """The statistic match of the i-th of n endpoints is 1/(n - i), printed as kube-proxy does."""
    return f"{1.0 / n:0.10f}"


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"' if " " in text else f"-m comment --comment {text}"


def ruleset(services: Sequence[ServicePort], cluster_cidr: IPv4Network | str) -> str:
    """iptables-restore input (use --noflush on a namespace whose nat and filter tables are
    empty) for `services`, in the given order (kube-proxy's is Go map order: arbitrary).
    Services without endpoints get no nat rules (kube-proxy REJECTs them in filter; the
    benchmark has none)."""
    cidr = IPv4Network(cluster_cidr)
    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    nat_rules = [
        f"-A PREROUTING {_comment('kubernetes service portals')} -j KUBE-SERVICES",
        f"-A OUTPUT {_comment('kubernetes service portals')} -j KUBE-SERVICES",
        f"-A POSTROUTING {_comment('kubernetes postrouting rules')} -j KUBE-POSTROUTING",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        "-A KUBE-POSTROUTING "
        + _comment("kubernetes service traffic requiring SNAT")
        + " -j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    for sp in services:
        if not sp.endpoints:
            continue
        proto = sp.protocol.lower()
        svc = service_chain(sp)
        name = sp.port_name_string
        match = (
            f"{_comment(f'{name} cluster IP')} -m {proto} -p {proto}"
            f" -d {sp.cluster_ip} --dport {sp.port}"
        )
        nat_chains.append(svc)
        nat_rules.append(f"-A KUBE-SERVICES {match} -j {svc}")
        nat_rules.append(f"-A {svc} {match} ! -s {cidr} -j KUBE-MARK-MASQ")
        n = len(sp.endpoints)
        for i, ep in enumerate(sp.endpoints):
            pick = f" -m statistic --mode random --probability {probability(n - i)}"
            nat_rules.append(
                f"-A {svc} {_comment(f'{name} -> {ep}')}"
                + (pick if i < n - 1 else "")
                + f" -j {endpoint_chain(sp, ep)}"
            )
        for ep in sp.endpoints:
            sep = endpoint_chain(sp, ep)
            nat_chains.append(sep)
            nat_rules.append(f"-A {sep} {_comment(name)} -s {ep.ip} -j KUBE-MARK-MASQ")
            nat_rules.append(
                f"-A {sep} {_comment(name)} -m {proto} -p {proto} -j DNAT --to-destination {ep}"
            )
    nat_rules.append(
        "-A KUBE-SERVICES "
        + _comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
        + " -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    )

    filter_chains = [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ]
    new = "-m conntrack --ctstate NEW"
    filter_rules = [
        f"-A INPUT {new} {_comment('kubernetes load balancer firewall')} -j KUBE-PROXY-FIREWALL",
        f"-A INPUT {_comment('kubernetes health check service ports')} -j KUBE-NODEPORTS",
        f"-A INPUT {new} {_comment('kubernetes externally-visible service portals')}"
        " -j KUBE-EXTERNAL-SERVICES",
        f"-A FORWARD {new} {_comment('kubernetes load balancer firewall')} -j KUBE-PROXY-FIREWALL",
        f"-A FORWARD {_comment('kubernetes forwarding rules')} -j KUBE-FORWARD",
        f"-A FORWARD {new} {_comment('kubernetes service portals')} -j KUBE-SERVICES",
        f"-A FORWARD {new} {_comment('kubernetes externally-visible service portals')}"
        " -j KUBE-EXTERNAL-SERVICES",
        f"-A OUTPUT {new} {_comment('kubernetes load balancer firewall')} -j KUBE-PROXY-FIREWALL",
        f"-A OUTPUT {new} {_comment('kubernetes service portals')} -j KUBE-SERVICES",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f"-A KUBE-FORWARD {_comment('kubernetes forwarding rules')}"
        f" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
        f"-A KUBE-FORWARD {_comment('kubernetes forwarding conntrack rule')}"
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    lines = ["*filter"]
    lines += [f":{c} - [0:0]" for c in filter_chains]
    lines += [*filter_rules, "COMMIT", "*nat"]
    lines += [f":{c} - [0:0]" for c in nat_chains]
    lines += [*nat_rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def empty_tables() -> str:
    """iptables-restore input (without --noflush) that flushes nat and filter and deletes their
    user chains: what removes a ruleset() from a namespace where nothing else uses them."""
    return "*filter\nCOMMIT\n*nat\nCOMMIT\n"


def rule_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


def service_ports(
    services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]
) -> list[ServicePort]:
    """The service ports kube-proxy would program from these Services and EndpointSlices:
    ClusterIP set, endpoints ready (absent condition counts as ready), the slice port of the
    same name and protocol; in the order of `services`."""
    by_service: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            by_service.setdefault((meta.get("namespace", "default"), owner), []).append(s)
    out = []
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            continue
        ns, name = meta.get("namespace", "default"), meta["name"]
        for p in spec.get("ports") or ():
            protocol = p.get("protocol") or "TCP"
            port_name = p.get("name") or ""
            eps: set[Endpoint] = set()
            for s in by_service.get((ns, name), ()):
                ports = [
                    sp["port"]
                    for sp in s.get("ports") or ()
                    if (sp.get("name") or "") == port_name
                    and (sp.get("protocol") or "TCP") == protocol
                    and sp.get("port")
                ]
                for ep in s.get("endpoints") or ():
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    for addr in ep.get("addresses") or ():
                        eps.update(Endpoint(IPv4Address(addr), port) for port in ports)
            ordered = tuple(sorted(eps))
            out.append(
                ServicePort(ns, name, port_name, protocol, IPv4Address(ip), int(p["port"]), ordered)
            )
    return out
