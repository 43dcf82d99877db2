"""CiliumNetworkPolicy (cilium.io/v2): parsed, validated, and stated as the compiler's Policy.

Pure. What a CNP adds to Kubernetes NetworkPolicy, and how each part is carried:
- L3/L4 (`endpointSelector`, `fromEndpoints`/`toEndpoints`, `toCIDR`/`toCIDRSet`,
  `toEntities` world|cluster|all, `toPorts` with protocol ANY) becomes compiler Rules, enforced by
  the kernel as any NetworkPolicy.
- `toFQDNs` becomes one /32 ipBlock per address the DNS cache holds for the selectors now
  (`to_policy(cnp, fqdn_ips)`): the compiler is run again whenever the cache changes. A rule
  whose peers are all FQDNs with no address yet allows nothing (never "every peer").
- `toPorts[].rules.dns` are the names the node's DNS proxy lets the endpoint ask
  (`dns_selectors`); `toPorts[].rules.http` are the requests the L7 proxy lets through to the
  endpoint's ports (`http_rules`). L7 rules never widen L3/L4: the connection must be allowed
  there first.

Endpoint labels in selectors may carry Cilium's source prefix ("k8s:app"); `io.kubernetes.pod
.namespace` in a peer selector names the peer's namespace (without it a peer selector is limited
to the policy's namespace, as Cilium does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any

from dataplane.fqdn.selector import FQDNSelector, SelectorError
from dataplane.policy.compiler import (
    NAMESPACE_NAME_LABEL,
    PROTOCOLS,
    IPBlock,
    Peer,
    Policy,
    PortSpec,
    Rule,
)
from flowscope.apis import labels as selectors
from flowscope.apis.fields import FieldError, invalid, required, unsupported
from flowscope.apis.labels import Selector

NAMESPACE_KEY = "io.kubernetes.pod.namespace"
ENTITIES = ("world", "cluster", "all")
CNP_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
_RULE_KEYS = {
    "ingress": {"fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "toPorts"},
    "egress": {"toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toFQDNs", "toPorts"},
}
_SPEC_KEYS = {"endpointSelector", "ingress", "egress", "description", "labels"}


class CNPError(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(map(str, errors)))
        self.errors = errors


@dataclass(frozen=True)
class PortRule:
    ports: tuple[PortSpec, ...]  # empty: every port
    dns: tuple[FQDNSelector, ...] | None = None  # None: no DNS rules in this toPorts entry
    http: tuple[Mapping[str, Any], ...] | None = None  # raw rules, parsed by the L7 proxy


@dataclass(frozen=True)
class CNPRule:
    peers: tuple[Peer, ...]  # pods, CIDRs, entities
    every_peer: bool  # no L3 selector at all, or toEntities all
    fqdns: tuple[FQDNSelector, ...]
    port_rules: tuple[PortRule, ...]  # empty: every port

    @property
    def has_l3(self) -> bool:
        return self.every_peer or bool(self.peers) or bool(self.fqdns)


@dataclass(frozen=True)
class CNP:
    namespace: str
    name: str
    endpoint_selector: Selector
    ingress: tuple[CNPRule, ...] | None  # None: does not isolate ingress
    egress: tuple[CNPRule, ...] | None

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return namespace == self.namespace and self.endpoint_selector.matches(labels)


# --- parsing -------------------------------------------------------------------------------------


def _strip(key: str) -> str:
    for prefix in ("k8s:", "any:"):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _label_selector(raw: Any, path: str, errs: list[FieldError]) -> dict[str, Any]:
    """A selector with Cilium's source prefixes taken off its keys; {} on error."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errs.append(invalid(path, raw, "must be a label selector"))
        return {}
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    for key in sorted(unknown):
        errs.append(FieldError(f"{path}.{key}", "Unknown field"))
    obj = {
        "matchLabels": {_strip(k): v for k, v in (raw.get("matchLabels") or {}).items()},
        "matchExpressions": [
            {**e, "key": _strip(str(e.get("key", "")))} for e in raw.get("matchExpressions") or ()
        ],
    }
    found = selectors.selector_errors(obj, path)
    errs += found
    return {} if found else obj


def _peer_from_selector(raw: Any, path: str, errs: list[FieldError]) -> Peer:
    obj = _label_selector(raw, path, errs)
    match = dict(obj.get("matchLabels") or {})
    namespace = match.pop(NAMESPACE_KEY, None)
    pods = selectors.from_label_selector({**obj, "matchLabels": match})
    if namespace is None:
        return Peer(pod_selector=pods)
    ns = selectors.from_match_labels({NAMESPACE_NAME_LABEL: str(namespace)})
    return Peer(pod_selector=pods, namespace_selector=ns)


def _cidr(raw: Any, path: str, errs: list[FieldError]) -> IPv4Network | None:
    try:
        net = ip_network(str(raw), strict=False)
    except ValueError:
        errs.append(invalid(path, raw, "must be a CIDR (10.0.0.0/8)"))
        return None
    if not isinstance(net, IPv4Network):
        errs.append(invalid(path, raw, "IPv6 is not supported by this datapath"))
        return None
    return net


def _ports(raw: Any, path: str, errs: list[FieldError]) -> tuple[PortSpec, ...]:
    out: list[PortSpec] = []
    for i, p in enumerate(raw or ()):
        pp = f"{path}[{i}]"
        if not isinstance(p, Mapping):
            errs.append(invalid(pp, p, "must be an object with port and protocol"))
            continue
        for key in sorted(set(p) - {"port", "protocol", "endPort"}):
            errs.append(FieldError(f"{pp}.{key}", "Unknown field"))
        proto = str(p.get("protocol") or "ANY").upper()
        if proto not in CNP_PROTOCOLS:
            errs.append(unsupported(f"{pp}.protocol", p.get("protocol"), CNP_PROTOCOLS))
            continue
        port: int | str | None = None
        text = str(p.get("port", "0"))
        if text.isdigit():
            port = int(text) or None
            if port is not None and port > 65535:
                errs.append(invalid(f"{pp}.port", p.get("port"), "must be 0-65535"))
                continue
        elif text:
            port = text  # a named port
        end = p.get("endPort")
        protos = ("TCP", "UDP", "SCTP") if proto == "ANY" else (proto,)
        out += [PortSpec(PROTOCOLS[x], port, int(end) if end else None) for x in protos]
    return tuple(out)


def _fqdns(raw: Any, path: str, errs: list[FieldError]) -> tuple[FQDNSelector, ...]:
    out = []
    for i, s in enumerate(raw or ()):
        try:
            out.append(FQDNSelector.parse(s, f"{path}[{i}]"))
        except SelectorError as e:
            key = e.field.rpartition(".")[2]
            value = s.get(key) if isinstance(s, Mapping) and key in s else s
            errs.append(invalid(e.field, value, str(e).removeprefix(f"{e.field}: ")))
    return tuple(out)


def _port_rules(raw: Any, path: str, errs: list[FieldError]) -> tuple[PortRule, ...]:
    out = []
    for i, entry in enumerate(raw or ()):
        ep = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            errs.append(invalid(ep, entry, "must be an object with ports and rules"))
            continue
        for key in sorted(set(entry) - {"ports", "rules"}):
            errs.append(FieldError(f"{ep}.{key}", "Unknown field"))
        rules = entry.get("rules") or {}
        for key in sorted(set(rules) - {"dns", "http"}):
            errs.append(unsupported(f"{ep}.rules.{key}", key, ("dns", "http")))
        dns = _fqdns(rules.get("dns"), f"{ep}.rules.dns", errs) if "dns" in rules else None
        http = None
        if "http" in rules:
            http_raw = rules.get("http") or []
            if not isinstance(http_raw, list):
                errs.append(invalid(f"{ep}.rules.http", http_raw, "must be a list of rules"))
            else:
                http = tuple(http_raw)
        out.append(PortRule(_ports(entry.get("ports"), f"{ep}.ports", errs), dns, http))
    return tuple(out)


def _rule(raw: Any, direction: str, path: str, errs: list[FieldError]) -> CNPRule | None:
    if not isinstance(raw, Mapping):
        errs.append(invalid(path, raw, "must be a rule object"))
        return None
    for key in sorted(set(raw) - _RULE_KEYS[direction]):
        errs.append(FieldError(f"{path}.{key}", "Unknown field"))
    side = "from" if direction == "ingress" else "to"
    peers: list[Peer] = []
    every = False
    for i, sel in enumerate(raw.get(f"{side}Endpoints") or ()):
        peers.append(_peer_from_selector(sel, f"{path}.{side}Endpoints[{i}]", errs))
    for i, c in enumerate(raw.get(f"{side}CIDR") or ()):
        net = _cidr(c, f"{path}.{side}CIDR[{i}]", errs)
        if net is not None:
            peers.append(Peer(ip_block=IPBlock(net)))
    for i, c in enumerate(raw.get(f"{side}CIDRSet") or ()):
        cp = f"{path}.{side}CIDRSet[{i}]"
        if not isinstance(c, Mapping) or "cidr" not in c:
            errs.append(required(f"{cp}.cidr"))
            continue
        net = _cidr(c["cidr"], f"{cp}.cidr", errs)
        excepts = [_cidr(e, f"{cp}.except[{j}]", errs) for j, e in enumerate(c.get("except") or ())]
        if net is not None:
            peers.append(Peer(ip_block=IPBlock(net, tuple(e for e in excepts if e))))
    for i, entity in enumerate(raw.get(f"{side}Entities") or ()):
        if entity not in ENTITIES:
            errs.append(unsupported(f"{path}.{side}Entities[{i}]", entity, ENTITIES))
        elif entity == "all":
            every = True
        elif entity == "world":
            peers.append(Peer(ip_block=IPBlock(IPv4Network("0.0.0.0/0"))))
        else:  # cluster: every pod of every namespace
            peers.append(Peer(selectors.EVERYTHING, selectors.EVERYTHING))
    fqdns = _fqdns(raw.get("toFQDNs"), f"{path}.toFQDNs", errs) if direction == "egress" else ()
    port_rules = _port_rules(raw.get("toPorts"), f"{path}.toPorts", errs)
    has_l3 = any(f"{side}{k}" in raw for k in ("Endpoints", "CIDR", "CIDRSet", "Entities"))
    if not has_l3 and not fqdns:
        every = True  # only toPorts (or nothing): every peer on those ports
    return CNPRule(tuple(peers), every, fqdns, port_rules)


def parse_cnp(obj: Mapping[str, Any]) -> CNP:
    """A CiliumNetworkPolicy object -> CNP; CNPError listing every bad field."""
    errs: list[FieldError] = []
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    if spec is None:
        raise CNPError(
            [required("spec", "a CiliumNetworkPolicy needs a spec (specs is not supported)")]
        )
    if not isinstance(spec, Mapping):
        raise CNPError([invalid("spec", spec, "must be an object")])
    for key in sorted(set(spec) - _SPEC_KEYS):
        errs.append(FieldError(f"spec.{key}", "Unknown field"))
    if "endpointSelector" not in spec:
        errs.append(required("spec.endpointSelector", "{} selects every pod of the namespace"))
    sel = _label_selector(spec.get("endpointSelector") or {}, "spec.endpointSelector", errs)
    rules: dict[str, tuple[CNPRule, ...] | None] = {}
    for direction in ("ingress", "egress"):
        raw = spec.get(direction)
        if raw is None:
            rules[direction] = None
            continue
        if not isinstance(raw, list):
            errs.append(invalid(f"spec.{direction}", raw, "must be a list of rules"))
            rules[direction] = None
            continue
        parsed = [_rule(r, direction, f"spec.{direction}[{i}]", errs) for i, r in enumerate(raw)]
        # an empty list does not isolate (Cilium enforces a direction once it has a rule)
        rules[direction] = tuple(r for r in parsed if r is not None) if raw else None
    if errs:
        raise CNPError(errs)
    return CNP(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name", ""),
        endpoint_selector=selectors.from_label_selector(sel),
        ingress=rules["ingress"],
        egress=rules["egress"],
    )


def check(obj: dict) -> list[FieldError]:
    """The CiliumNetworkPolicy kind's validation (flowscope.apis.kinds)."""
    try:
        parse_cnp(obj)
    except CNPError as e:
        return e.errors
    return []


# --- as the compiler's policy --------------------------------------------------------------------

FQDNAddresses = Callable[[FQDNSelector], Iterable[IPv4Address]]


def _compiled_rule(rule: CNPRule, fqdn_ips: FQDNAddresses) -> Rule | None:
    peers = list(rule.peers)
    for selector in rule.fqdns:
        peers += [
            Peer(ip_block=IPBlock(IPv4Network(f"{ip}/32"))) for ip in sorted(fqdn_ips(selector))
        ]
    if not rule.every_peer and not peers:
        return None  # FQDNs with no address yet: nothing is allowed by this rule
    ports = tuple(p for pr in rule.port_rules for p in pr.ports)
    if rule.port_rules and not ports:
        ports = ()  # toPorts entries without ports: every port
    return Rule(peers=() if rule.every_peer else tuple(peers), ports=ports)


def to_policy(cnp: CNP, fqdn_ips: FQDNAddresses) -> Policy:
    """The L3/L4 part, with the FQDN selectors' addresses as they are now."""

    def rules(direction: tuple[CNPRule, ...] | None) -> tuple[Rule, ...] | None:
        if direction is None:
            return None
        return tuple(r for r in (_compiled_rule(x, fqdn_ips) for x in direction) if r is not None)

    return Policy(
        namespace=cnp.namespace,
        name=cnp.name,
        pod_selector=cnp.endpoint_selector,
        ingress=rules(cnp.ingress),
        egress=rules(cnp.egress),
    )


def fqdn_selectors(cnps: Iterable[CNP]) -> frozenset[FQDNSelector]:
    """Every toFQDNs selector: the names whose answers policy must follow."""
    return frozenset(s for c in cnps for r in c.egress or () for s in r.fqdns)


def dns_selectors(
    cnps: Iterable[CNP], namespace: str, labels: Mapping[str, str]
) -> tuple[FQDNSelector, ...] | None:
    """The names a pod may ask the DNS proxy for: the union of the DNS rules of the CNPs that
    select it; None when none has DNS rules (every name, visibility only)."""
    found: list[FQDNSelector] | None = None
    for cnp in cnps:
        if not cnp.selects(namespace, labels):
            continue
        for rule in cnp.egress or ():
            for pr in rule.port_rules:
                if pr.dns is not None:
                    found = (found or []) + list(pr.dns)
    return None if found is None else tuple(dict.fromkeys(found))


def http_rules(
    cnps: Iterable[CNP], namespace: str, labels: Mapping[str, str]
) -> dict[tuple[int, int], tuple[Mapping[str, Any], ...]]:
    """The HTTP rules guarding a pod's ports, by (protocol, port): what the L7 proxy enforces on
    connections to it. Several rules on one port union (any match allows)."""
    out: dict[tuple[int, int], tuple[Mapping[str, Any], ...]] = {}
    for cnp in cnps:
        if not cnp.selects(namespace, labels):
            continue
        for rule in cnp.ingress or ():
            for pr in rule.port_rules:
                if pr.http is None:
                    continue
                for spec in pr.ports:
                    if isinstance(spec.port, int) and spec.protocol == PROTOCOLS["TCP"]:
                        key = (spec.protocol, spec.port)
                        out[key] = out.get(key, ()) + tuple(pr.http)
    return out
