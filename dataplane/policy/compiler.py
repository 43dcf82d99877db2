"""Kubernetes NetworkPolicy -> per-endpoint allow entries (pure: no I/O, no clocks, no globals).

Inputs are what the cluster store holds (policies as validated and defaulted by flowscope.apis),
the pods, the namespaces' labels and the identity numbers the agents allocated: one per pod label
set (model.pod_labels) and one per ipBlock prefix (CIDR identities). Selectors select identities,
as Cilium's do, so two pods with the same labels in the same namespace are indistinguishable peers.

Semantics (networking.k8s.io/v1), and how each maps onto entries:
- A pod no policy selects in a direction gets one allow-all entry (COOKIE_NO_POLICY) for it.
- A pod some policy selects in a direction (policyTypes, explicit or implied) is isolated there:
  it gets the union of the allow entries of every rule of every such policy, nothing else
  (an empty rule list = default deny). Ingress isolation also allows the node's host (kubelet
  probes), as Kubernetes requires, with COOKIE_HOST.
- A rule without peers (`from`/`to` missing or empty) allows every identity (0), world included.
  A peer is podSelector (limited to the policy's namespace), namespaceSelector, both (AND), or an
  ipBlock: every CIDR identity whose prefix lies inside `cidr` and not inside an `except` (the
  datapath gives a peer the CIDR identity of the longest prefix covering it, so identities of other
  policies' longer prefixes must be selected too); reserved:world by 0.0.0.0/0 without excepts.
- Ports: a number, a number..endPort range (LPM port prefixes), a name, or only a protocol (all its
  ports); no ports = every protocol and port (protocol 0). Named ports resolve against the local
  pod's containerPorts for ingress and each peer identity's pods' containerPorts for egress (a pod
  without that name/protocol matches nothing). Egress named ports towards ipBlock peers match
  nothing: a CIDR identity stands for many addresses, not for pods with containerPorts.
Policies only ever add allow entries, so several policies simply union.
"""

from __future__ import annotations

import copy
import gc
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Any

from dataplane.identity import model
from dataplane.identity.model import Labels, Reserved
from dataplane.policy.entry import (
    ANY_IDENTITY,
    ANY_PROTOCOL,
    COOKIE_HOST,
    COOKIE_NO_POLICY,
    Direction,
    EndpointPolicy,
    PolicyEntry,
    allow_all,
    port_prefixes,
)
from flowscope.apis import labels as selectors
from flowscope.apis.labels import Selector

PROTOCOLS: dict[str, int] = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in PROTOCOLS.items()}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
ALL_PORTS = (0, 0xFFFF)

PodKey = tuple[str, str]  # (namespace, name)


# --- pods and namespaces, as the compiler sees them ---


@dataclass(frozen=True)
class ContainerPort:
    port: int
    protocol: int  # 6/17/132
    name: str | None = None


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    ip: IPv4Address | None = None
    node: str | None = None
    ports: tuple[ContainerPort, ...] = ()

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def named_port(self, name: str, protocol: int) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None


def pod_info(obj: Mapping[str, Any]) -> PodInfo:
    """A Pod object (as stored) -> PodInfo. Ports without a protocol are TCP, as defaulted."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    ports = []
    for container in spec.get("containers") or ():
        for p in container.get("ports") or ():
            proto = PROTOCOLS.get(p.get("protocol") or "TCP")
            if proto is not None and p.get("containerPort"):
                ports.append(ContainerPort(int(p["containerPort"]), proto, p.get("name")))
    ip = status.get("podIP")
    return PodInfo(
        namespace=meta.get("namespace") or "default",
        name=meta["name"],
        labels=tuple(sorted((meta.get("labels") or {}).items())),
        ip=IPv4Address(ip) if ip and ":" not in ip else None,
        node=spec.get("nodeName"),
        ports=tuple(ports),
    )


def namespace_labels(objs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Namespace objects -> {name: labels}, each with kubernetes.io/metadata.name as defaulted."""
    out = {}
    for obj in objs:
        name = obj["metadata"]["name"]
        out[name] = {**(obj["metadata"].get("labels") or {}), NAMESPACE_NAME_LABEL: name}
    return out


def labels_of_namespace(
    namespaces: Mapping[str, Mapping[str, str]], namespace: str
) -> Mapping[str, str]:
    found = namespaces.get(namespace)
    return found if found is not None else {NAMESPACE_NAME_LABEL: namespace}


def security_labels(pod: PodInfo, namespaces: Mapping[str, Mapping[str, str]]) -> Labels:
    """The label set whose identity the pod has (what the allocator is asked for)."""
    return model.pod_labels(
        pod.namespace, pod.label_map(), labels_of_namespace(namespaces, pod.namespace)
    )


# --- policies, parsed once ---


@dataclass(frozen=True)
class IPBlock:
    cidr: IPv4Network
    excepts: tuple[IPv4Network, ...] = ()

    def __str__(self) -> str:
        return f"{self.cidr}" + (
            f" except {','.join(map(str, self.excepts))}" if self.excepts else ""
        )


@dataclass(frozen=True)
class Peer:
    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IPBlock | None = None
    ipv6: bool = False  # an IPv6 ipBlock: selects nothing in this IPv4 datapath

    def __str__(self) -> str:
        if self.ipv6:
            return "ipBlock (IPv6, not enforced)"
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaceSelector {_selector_text(self.namespace_selector)}")
        if self.pod_selector is not None:
            parts.append(f"podSelector {_selector_text(self.pod_selector)}")
        return " and ".join(parts)


@dataclass(frozen=True)
class PortSpec:
    protocol: int
    port: int | str | None = None  # None: every port of `protocol`
    end_port: int | None = None

    def __str__(self) -> str:
        name = PROTOCOL_NAMES[self.protocol]
        if self.port is None:
            return f"{name}/*"
        if self.end_port is not None and self.end_port != self.port:
            return f"{name}/{self.port}-{self.end_port}"
        return f"{name}/{self.port}"


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...]  # empty: every peer
    ports: tuple[PortSpec, ...]  # empty: every protocol and port

    @cached_property
    def has_named_ports(self) -> bool:
        return any(isinstance(p.port, str) for p in self.ports)


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: Selector
    ingress: tuple[Rule, ...] | None  # None: the policy does not affect ingress
    egress: tuple[Rule, ...] | None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...] | None:
        return self.ingress if direction is Direction.INGRESS else self.egress


def _selector_text(sel: Selector) -> str:
    return "{}" if sel.empty else f"{{{sel}}}"


def _selector(obj: Mapping[str, Any] | None) -> Selector | None:
    return None if obj is None else selectors.from_label_selector(obj)


def _parse_peer(obj: Mapping[str, Any]) -> Peer:
    block = obj.get("ipBlock")
    if block is not None:
        cidr = ip_network(block["cidr"], strict=False)
        if not isinstance(cidr, IPv4Network):
            return Peer(ipv6=True)
        excepts = tuple(
            n
            for n in (ip_network(e, strict=False) for e in block.get("except") or ())
            if isinstance(n, IPv4Network)
        )
        return Peer(ip_block=IPBlock(cidr, excepts))
    return Peer(_selector(obj.get("podSelector")), _selector(obj.get("namespaceSelector")))


def _parse_port(obj: Mapping[str, Any]) -> PortSpec:
    proto = PROTOCOLS[obj.get("protocol") or "TCP"]
    port = obj.get("port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    return PortSpec(proto, port, obj.get("endPort"))


def _parse_rule(obj: Mapping[str, Any], peers_key: str) -> Rule:
    return Rule(
        peers=tuple(_parse_peer(p) for p in obj.get(peers_key) or ()),
        ports=tuple(_parse_port(p) for p in obj.get("ports") or ()),
    )


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A NetworkPolicy object (validated) -> Policy. policyTypes are implied when missing."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    types = spec.get("policyTypes") or ["Ingress", *(["Egress"] if spec.get("egress") else [])]
    return Policy(
        namespace=meta.get("namespace") or "default",
        name=meta["name"],
        pod_selector=selectors.from_label_selector(spec.get("podSelector") or {}),
        ingress=tuple(_parse_rule(r, "from") for r in spec.get("ingress") or ())
        if "Ingress" in types
        else None,
        egress=tuple(_parse_rule(r, "to") for r in spec.get("egress") or ())
        if "Egress" in types
        else None,
    )


def required_prefixes(policies: Iterable[Mapping[str, Any] | Policy]) -> set[IPv4Network]:
    """Every ipBlock prefix (cidr and each except) the policies use: each needs a CIDR identity
    before compiling, so that the datapath can tell addresses inside an except apart."""
    out: set[IPv4Network] = set()
    for pol in policies:
        p = pol if isinstance(pol, Policy) else parse_policy(pol)
        for rules in (p.ingress, p.egress):
            for rule in rules or ():
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        out.add(peer.ip_block.cidr)
                        out.update(peer.ip_block.excepts)
    return out


# --- cookies: which rule an entry came from ---


@dataclass(frozen=True)
class RuleRef:
    namespace: str
    policy: str
    direction: Direction
    rule_index: int
    peer_index: int | None  # None: the rule has no peers (every peer)
    description: str

    def __str__(self) -> str:
        return self.description


_RESERVED_COOKIES = frozenset({COOKIE_NO_POLICY, COOKIE_HOST})


def _cookie_seed(key: tuple[str, str, int, int, int]) -> int:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _describe(
    policy: Policy, direction: Direction, index: int, rule: Rule, peer: int | None
) -> str:
    where = "from" if direction is Direction.INGRESS else "to"
    who = "any peer" if peer is None else str(rule.peers[peer])
    ports = ", ".join(map(str, rule.ports)) if rule.ports else "any port"
    return f"{policy} {direction.name.lower()} rule {index}: {where} {who} on {ports}"


def rule_keys(p: Policy) -> list[tuple[str, str, int, int, int]]:
    """The cookie keys of one policy: (namespace, policy, direction, rule, peer or -1)."""
    return [
        (p.namespace, p.name, int(d), i, j)
        for d in Direction
        for i, rule in enumerate(p.rules(d) or ())
        for j in (range(len(rule.peers)) if rule.peers else (-1,))
    ]


def assign_cookies(policies: Sequence[Policy]) -> dict[tuple[str, str, int, int, int], int]:
    """A u32 cookie for every (namespace, policy, direction, rule, peer or -1).

    A hash of the key, so a rule keeps its cookie while other policies come and go (the maps of
    other endpoints need not change); collisions probe on, in key order."""
    keys = sorted(key for p in policies for key in rule_keys(p))
    used: set[int] = set()
    out = {}
    for key in keys:
        cookie = _cookie_seed(key)
        while cookie in used or cookie in _RESERVED_COOKIES:
            cookie = (cookie + 1) & 0xFFFFFFFF
        used.add(cookie)
        out[key] = cookie
    return out


# --- selecting identities ---


def _prefix_inside(inner: IPv4Network, outer: IPv4Network) -> bool:
    if inner.prefixlen < outer.prefixlen:
        return False
    shift = 32 - outer.prefixlen
    return (int(inner.network_address) >> shift) == (int(outer.network_address) >> shift)


@dataclass
class _NamespaceGroup:
    """The pod identities of one namespace that carry the same namespace labels."""

    namespace: str
    namespace_labels: dict[str, str]
    members: list[tuple[int, dict[str, str]]] = field(default_factory=list)


class IdentityIndex:
    """Pod and CIDR identities, indexed for selector evaluation, with results cached."""

    def __init__(
        self,
        identities: Mapping[Labels, int],
        cidr_identities: Mapping[IPv4Network, int],
        pods_by_identity: Mapping[int, Sequence[PodInfo]],
    ) -> None:
        groups: dict[tuple[str, frozenset], _NamespaceGroup] = {}
        for lbls, ident in identities.items():
            ns = model.namespace_of(lbls)
            if ns is None:
                continue  # not a pod identity
            ns_labels = model.namespace_label_map(lbls)
            gkey = (ns, frozenset(ns_labels.items()))
            group = groups.get(gkey)
            if group is None:
                group = groups[gkey] = _NamespaceGroup(ns, ns_labels)
            group.members.append((ident, model.pod_label_map(lbls)))
        self._groups = list(groups.values())
        self._by_namespace: dict[str, list[_NamespaceGroup]] = defaultdict(list)
        for g in self._groups:
            self._by_namespace[g.namespace].append(g)
        self.pod_identities = frozenset(i for g in self._groups for i, _ in g.members)
        self.cidr_identities = dict(cidr_identities)
        self.pods_by_identity = pods_by_identity
        self._cache: dict[tuple, frozenset[int]] = {}

    def select_pods(
        self, namespace_selector: Selector | None, pod_selector: Selector | None, namespace: str
    ) -> frozenset[int]:
        """Pod identities matching a peer's selectors; no namespaceSelector: only `namespace`."""
        key = (namespace_selector, pod_selector, namespace if namespace_selector is None else None)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if namespace_selector is None:
            groups: Iterable[_NamespaceGroup] = self._by_namespace.get(namespace, ())
        else:
            groups = (g for g in self._groups if namespace_selector.matches(g.namespace_labels))
        out = frozenset(
            ident
            for g in groups
            for ident, pod_labels in g.members
            if pod_selector is None or pod_selector.matches(pod_labels)
        )
        self._cache[key] = out
        return out

    def select_block(self, block: IPBlock) -> frozenset[int]:
        key = ("ipBlock", block)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = {
            ident
            for prefix, ident in self.cidr_identities.items()
            if _prefix_inside(prefix, block.cidr)
            and not any(_prefix_inside(prefix, e) for e in block.excepts)
        }
        if block.cidr.prefixlen == 0 and not block.excepts:
            out.add(int(Reserved.WORLD))
        result = frozenset(out)
        self._cache[key] = result
        return result

    def select_peer(self, peer: Peer, namespace: str) -> frozenset[int]:
        if peer.ipv6:
            return frozenset()
        if peer.ip_block is not None:
            return self.select_block(peer.ip_block)
        return self.select_pods(peer.namespace_selector, peer.pod_selector, namespace)


# --- compiling ---


@dataclass(frozen=True)
class CompiledPolicy:
    """What the compiler produced for a set of local endpoints."""

    # An endpoint whose policy did not change since the previous compile of the same Compiler
    # gets the very same EndpointPolicy object, so `new is old` tells the agent to skip it.
    endpoints: Mapping[PodKey, EndpointPolicy]
    cookies: Mapping[int, RuleRef]  # every rule of every policy
    # per endpoint and direction, the policies that select it ("ns/name"); absent: none
    selected_by: Mapping[PodKey, Mapping[Direction, tuple[str, ...]]]
    # pods whose label set has no identity yet: they cannot be selected as peers
    unresolved: tuple[PodKey, ...] = ()


_new = object.__new__


def _entry(
    direction: Direction, identity: int, protocol: int, port: int, plen: int, cookie: int
) -> PolicyEntry:
    """PolicyEntry(...) without the frozen dataclass __init__ (a field at a time through
    object.__setattr__), which costs twice as much; entries are built by the million."""
    e = _new(PolicyEntry)
    e.__dict__.update(
        direction=direction,
        identity=identity,
        protocol=protocol,
        port=port,
        prefix_len=plen,
        cookie=cookie,
    )
    return e


@lru_cache(maxsize=4096)
def _prefixes(start: int, end: int) -> tuple[tuple[int, int], ...]:
    return tuple(port_prefixes(start, end))


def _spec_prefixes(spec: PortSpec, resolve: Callable[[str, int], int | None]) -> tuple:
    """(port, prefix_len) pairs covering the spec's ports; a name resolves through `resolve`."""
    if spec.port is None:
        return _prefixes(*ALL_PORTS)
    if isinstance(spec.port, str):
        number = resolve(spec.port, spec.protocol)
        return () if number is None else _prefixes(number, number)
    return _prefixes(spec.port, spec.end_port if spec.end_port is not None else spec.port)


def _no_names(name: str, protocol: int) -> None:
    return None


class Compiler:
    """Compiles policies for endpoints; reuse one instance to keep its caches across compiles.

    Caches, all checked against their inputs (never trusted blindly):
    - parsed policies, by object identity of the stored dict;
    - each rule's entries, by (policy, rule) while the identity universe (pod and CIDR
      identities, the pods' named ports) is unchanged;
    - each endpoint's EndpointPolicy, while the rule entry sets it is made of are the same.
    So after one policy changes, only its rules are recompiled and only the endpoints it selects
    (before or after) are re-unioned; the rest costs a selector match per (policy, pod)."""

    def __init__(self) -> None:
        self._universe: tuple | None = None
        self._index: IdentityIndex | None = None
        self._rule_cache: dict[tuple, tuple[Policy, frozenset[PolicyEntry]]] = {}
        self._parsed: dict[str, tuple[Any, Policy]] = {}
        self._endpoints: dict[PodKey, tuple[tuple, EndpointPolicy]] = {}
        # cookies: each policy's keys and refs, kept while its Policy object is the same; the
        # numbering is redone only when the set of keys changes (a rule or peer added/removed)
        self._keys: dict[str, tuple[Policy, list[tuple]]] = {}
        self._all_keys: list[tuple] | None = None
        self._cookies: dict[tuple, int] = {}
        self._refs: dict[str, tuple[Policy, list[tuple[int, RuleRef]]]] = {}
        self._table: dict[int, RuleRef] = {}
        self._labels: dict[PodKey, tuple[PodInfo, Any, Labels]] = {}  # security labels per pod

    def _policies(self, objs: Iterable[Mapping[str, Any] | Policy]) -> list[Policy]:
        out = []
        seen: dict[str, tuple[Any, Policy]] = {}
        for obj in objs:
            if isinstance(obj, Policy):
                out.append(obj)
                continue
            meta = obj["metadata"]
            key = f"{meta.get('namespace') or 'default'}/{meta['name']}"
            spec = obj.get("spec")
            cached = self._parsed.get(key)
            # an unchanged spec parses to the same Policy object, which keeps its rules' cache
            # entries hitting by identity; compared by value, so dicts mutated in place are seen
            if cached is not None and cached[0] == spec:
                seen[key] = cached
            else:
                seen[key] = (copy.deepcopy(spec), parse_policy(obj))
            out.append(seen[key][1])
        self._parsed = seen
        return out

    def _cookie_table(self, parsed: Sequence[Policy]) -> dict[int, RuleRef]:
        """cookie -> RuleRef for every rule and peer; after one policy changes, only its refs
        are made again (the numbering of all keys is redone only when the key set changes)."""
        keys: dict[str, tuple[Policy, list[tuple]]] = {}
        all_keys: list[tuple] = []
        for policy in parsed:
            name = f"{policy.namespace}/{policy.name}"
            hit = self._keys.get(name)
            mine = hit[1] if hit is not None and hit[0] is policy else rule_keys(policy)
            keys[name] = (policy, mine)
            all_keys.extend(mine)
        self._keys = keys
        renumbered = all_keys != self._all_keys
        if renumbered:
            self._all_keys = all_keys
            self._cookies = assign_cookies(parsed)
            self._refs, self._table = {}, {}
        table = dict(self._table)
        refs: dict[str, tuple[Policy, list[tuple[int, RuleRef]]]] = {}
        for name, (policy, mine) in keys.items():
            hit = self._refs.get(name)
            if hit is not None and hit[0] is policy:
                refs[name] = hit
                continue
            for cookie, _ in hit[1] if hit is not None else ():
                table.pop(cookie, None)
            made = []
            for key in mine:
                _, _, d, i, j = key
                direction = Direction(d)
                rule = (policy.rules(direction) or ())[i]
                peer = None if j < 0 else j
                ref = RuleRef(
                    policy.namespace,
                    policy.name,
                    direction,
                    i,
                    peer,
                    _describe(policy, direction, i, rule, peer),
                )
                made.append((self._cookies[key], ref))
                table[self._cookies[key]] = ref
            refs[name] = (policy, made)
        for name in self._refs.keys() - refs.keys():  # deleted policies
            for cookie, _ in self._refs[name][1]:
                table.pop(cookie, None)
        self._refs, self._table = refs, table
        return table

    def compile(
        self,
        policies: Iterable[Mapping[str, Any] | Policy],
        pods: Iterable[PodInfo],
        namespaces: Mapping[str, Mapping[str, str]],
        identities: Mapping[Labels, int],
        cidr_identities: Mapping[IPv4Network, int],
        *,
        local: Callable[[PodInfo], bool] | None = None,
    ) -> CompiledPolicy:
        """Entries for every local pod (`local`: a filter, default every pod)."""
        # Millions of small acyclic objects: the cyclic GC would rescan them over and over
        # (half the time of a large compile) and can free nothing, so it pauses meanwhile.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._compile(policies, pods, namespaces, identities, cidr_identities, local)
        finally:
            if paused:
                gc.enable()

    def _compile(
        self,
        policies: Iterable[Mapping[str, Any] | Policy],
        pods: Iterable[PodInfo],
        namespaces: Mapping[str, Mapping[str, str]],
        identities: Mapping[Labels, int],
        cidr_identities: Mapping[IPv4Network, int],
        local: Callable[[PodInfo], bool] | None,
    ) -> CompiledPolicy:
        pods = list(pods)
        parsed = self._policies(policies)
        pods_by_identity: dict[int, list[PodInfo]] = defaultdict(list)
        unresolved = []
        labels_of: dict[PodKey, tuple[PodInfo, Any, Labels]] = {}
        for pod in pods:
            ns_labels = namespaces.get(pod.namespace)
            hit = self._labels.get(pod.key)
            if hit is not None and hit[0] is pod and hit[1] == ns_labels:
                labels = hit[2]
            else:
                labels = security_labels(pod, namespaces)
            labels_of[pod.key] = (pod, ns_labels, labels)
            ident = identities.get(labels)
            if ident is None:
                unresolved.append(pod.key)
            else:
                pods_by_identity[ident].append(pod)
        self._labels = labels_of
        universe = (
            frozenset(identities.items()),
            frozenset(cidr_identities.items()),
            frozenset((i, frozenset(p.ports for p in ps)) for i, ps in pods_by_identity.items()),
        )
        if universe != self._universe or self._index is None:
            self._universe = universe
            self._index = IdentityIndex(identities, cidr_identities, pods_by_identity)
            self._rule_cache = {}
        index = self._index

        cookie_table = self._cookie_table(parsed)
        cookies = self._cookies
        by_namespace: dict[str, list[Policy]] = defaultdict(list)
        for p in parsed:
            by_namespace[p.namespace].append(p)

        endpoints: dict[PodKey, EndpointPolicy] = {}
        selected_by: dict[PodKey, dict[Direction, tuple[str, ...]]] = {}
        selector_hits: dict[tuple[Selector, tuple], bool] = {}
        previous, self._endpoints = self._endpoints, {}
        for pod in pods:
            if local is not None and not local(pod):
                continue
            pieces: list[frozenset[PolicyEntry]] = []
            chosen: dict[Direction, list[str]] = {Direction.INGRESS: [], Direction.EGRESS: []}
            for policy in by_namespace.get(pod.namespace, ()):
                skey = (policy.pod_selector, pod.labels)
                hit = selector_hits.get(skey)
                if hit is None:
                    hit = selector_hits[skey] = policy.pod_selector.matches(pod.label_map())
                if not hit:
                    continue
                for direction in Direction:
                    rules = policy.rules(direction)
                    if rules is None:
                        continue
                    chosen[direction].append(str(policy))
                    for i, rule in enumerate(rules):
                        pieces.append(
                            self._rule_entries(index, policy, direction, i, rule, pod, cookies)
                        )
            made = (tuple(pieces), bool(chosen[Direction.INGRESS]), bool(chosen[Direction.EGRESS]))
            before = previous.get(pod.key)
            if before is not None and before[0] == made:  # the same sets: identity compares
                result = before[1]
            else:
                extra = [
                    _HOST_INGRESS if chosen[Direction.INGRESS] else _NO_POLICY[Direction.INGRESS]
                ]
                if not chosen[Direction.EGRESS]:
                    extra.append(_NO_POLICY[Direction.EGRESS])
                result = EndpointPolicy(frozenset(extra).union(*pieces))
            self._endpoints[pod.key] = (made, result)
            endpoints[pod.key] = result
            selected_by[pod.key] = {d: tuple(names) for d, names in chosen.items() if names}
        live = {(p.namespace, p.name) for p in parsed}
        for stale in [k for k in self._rule_cache if (k[0], k[1]) not in live]:
            del self._rule_cache[stale]  # deleted policies
        return CompiledPolicy(endpoints, cookie_table, selected_by, tuple(unresolved))

    def _rule_entries(
        self,
        index: IdentityIndex,
        policy: Policy,
        direction: Direction,
        i: int,
        rule: Rule,
        pod: PodInfo,
        cookies: Mapping[tuple, int],
    ) -> frozenset[PolicyEntry]:
        # ingress named ports depend on the local pod's containerPorts; nothing else does
        local_ports = pod.ports if direction is Direction.INGRESS and rule.has_named_ports else None
        ckey = (policy.namespace, policy.name, direction, i, local_ports)
        hit = self._rule_cache.get(ckey)
        if hit is not None and (hit[0] is policy or hit[0] == policy):
            return hit[1]
        resolve = pod.named_port if direction is Direction.INGRESS else _no_names
        out: list[PolicyEntry] = []
        for j in range(len(rule.peers)) if rule.peers else (None,):
            cookie = cookies[
                (policy.namespace, policy.name, int(direction), i, -1 if j is None else j)
            ]
            if j is None:
                peer_ids: Iterable[int] = (ANY_IDENTITY,)
                block_peer = False
            else:
                peer = rule.peers[j]
                peer_ids = index.select_peer(peer, policy.namespace)
                block_peer = peer.ip_block is not None
            if not rule.ports:
                out.extend(
                    _entry(direction, ident, ANY_PROTOCOL, 0, 0, cookie) for ident in peer_ids
                )
                continue
            for spec in rule.ports:
                if isinstance(spec.port, str) and direction is Direction.EGRESS:
                    if block_peer:
                        continue  # see the module docstring
                    out.extend(self._egress_named(index, direction, spec, peer_ids, j, cookie))
                    continue
                prefixes = _spec_prefixes(spec, resolve)
                proto = spec.protocol
                out.extend(
                    _entry(direction, ident, proto, port, plen, cookie)
                    for ident in peer_ids
                    for port, plen in prefixes
                )
        result = frozenset(out)
        self._rule_cache[ckey] = (policy, result)
        return result

    @staticmethod
    def _egress_named(
        index: IdentityIndex,
        direction: Direction,
        spec: PortSpec,
        peer_ids: Iterable[int],
        peer_index: int | None,
        cookie: int,
    ) -> list[PolicyEntry]:
        """A named destination port: resolved per peer identity against its pods' ports."""
        assert isinstance(spec.port, str)
        if peer_index is None:
            peer_ids = index.pod_identities  # "any peer": only pods have named ports
        out = []
        for ident in peer_ids:
            numbers = {
                n
                for pod in index.pods_by_identity.get(ident, ())
                if (n := pod.named_port(spec.port, spec.protocol)) is not None
            }
            for n in sorted(numbers):
                out.extend(
                    _entry(direction, ident, spec.protocol, port, plen, cookie)
                    for port, plen in _prefixes(n, n)
                )
        return out


_HOST_INGRESS = PolicyEntry(Direction.INGRESS, int(Reserved.HOST), ANY_PROTOCOL, 0, 0, COOKIE_HOST)
_NO_POLICY = {d: allow_all(d) for d in Direction}


def compile_policies(
    policies: Iterable[Mapping[str, Any] | Policy],
    pods: Iterable[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    identities: Mapping[Labels, int],
    cidr_identities: Mapping[IPv4Network, int],
    *,
    local: Callable[[PodInfo], bool] | None = None,
) -> CompiledPolicy:
    """One-shot compile (a fresh Compiler); `local` picks the endpoints to compile (default all)."""
    return Compiler().compile(policies, pods, namespaces, identities, cidr_identities, local=local)


def on_node(node: str) -> Callable[[PodInfo], bool]:
    """`local` for an agent: the pods scheduled on `node`."""
    return lambda pod: pod.node == node


def cidr_identity_of(address: IPv4Address | str, cidr_identities: Mapping[IPv4Network, int]) -> int:
    """The CIDR identity the datapath gives an address: the longest covering prefix's, or 0."""
    addr = int(ip_address(address))
    best, best_len = 0, -1
    for prefix, ident in cidr_identities.items():
        shift = 32 - prefix.prefixlen
        if prefix.prefixlen > best_len and (addr >> shift) == (
            int(prefix.network_address) >> shift
        ):
            best, best_len = ident, prefix.prefixlen
    return best
