"""`policy trace`: would a new connection pass, and which rule (or which default deny) decides.

The answer is the datapath's: the source endpoint's egress entries and the destination endpoint's
ingress entries, each asked through EndpointPolicy.decide with the peer's identity and CIDR
identity, exactly as the kernel programs look them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from dataplane.identity.model import Labels, Reserved
from dataplane.policy.compiler import (
    PROTOCOL_NAMES,
    CompiledPolicy,
    Compiler,
    PodInfo,
    Policy,
    RuleRef,
    cidr_identity_of,
    security_labels,
)
from dataplane.policy.entry import COOKIE_HOST, COOKIE_NO_POLICY, Direction, PolicyEntry
from flowscope.errors import FlowscopeError


@dataclass(frozen=True)
class Party:
    """One end of the traced connection: a pod, or an address outside the cluster."""

    name: str  # "ns/pod", or the address
    identity: int
    cidr_identity: int  # 0: no ipBlock prefix covers the address
    ip: IPv4Address | None
    labels: tuple[str, ...] = ()
    pod: PodInfo | None = None
    node: str | None = None  # set for a node's address: the node's name

    def identity_seen_by(self, local: PodInfo) -> int:
        """Its identity as the datapath of `local`'s node sees it (the ipcache's view): a node's
        address is the host on its own node and a remote node everywhere else."""
        if self.node is None:
            return self.identity
        return int(Reserved.HOST if self.node == local.node else Reserved.REMOTE_NODE)

    def describe(self) -> str:
        cidr = f", CIDR identity {self.cidr_identity}" if self.cidr_identity else ""
        return f"{self.name} (identity {self.identity}{cidr})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pod": self.pod is not None,
            "ip": str(self.ip) if self.ip else None,
            "identity": self.identity,
            "cidr_identity": self.cidr_identity,
            "labels": list(self.labels),
        }


@dataclass(frozen=True)
class DirectionVerdict:
    direction: Direction
    endpoint: str  # the local endpoint whose policy decides ("ns/pod")
    allowed: bool
    policies: tuple[str, ...]  # the policies selecting the endpoint in this direction
    entry: PolicyEntry | None  # the entry that allowed it
    rule: RuleRef | None  # the rule that entry came from (None: no policy, host, or denied)
    reason: str

    def to_json(self) -> dict[str, Any]:
        entry = None
        if self.entry is not None:
            e = self.entry
            entry = {
                "identity": e.identity,
                "protocol": e.protocol,
                "port": e.port,
                "prefix_len": e.prefix_len,
                "cookie": e.cookie,
            }
        rule = None
        if self.rule is not None:
            r = self.rule
            rule = {
                "namespace": r.namespace,
                "policy": r.policy,
                "direction": r.direction.name.lower(),
                "rule_index": r.rule_index,
                "peer_index": r.peer_index,
                "description": r.description,
            }
        return {
            "direction": self.direction.name.lower(),
            "endpoint": self.endpoint,
            "verdict": "ALLOWED" if self.allowed else "DENIED",
            "allowed": self.allowed,
            "selected_by": list(self.policies),
            "entry": entry,
            "rule": rule,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Trace:
    source: Party
    destination: Party
    port: int
    protocol: int
    egress: DirectionVerdict | None  # None: the source is outside the cluster
    ingress: DirectionVerdict | None  # None: the destination is outside the cluster

    @property
    def allowed(self) -> bool:
        return all(v.allowed for v in (self.egress, self.ingress) if v is not None)

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.protocol, str(self.protocol))

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source.to_json(),
            "to": self.destination.to_json(),
            "port": self.port,
            "protocol": self.protocol_name,
            "egress": self.egress.to_json() if self.egress else None,
            "ingress": self.ingress.to_json() if self.ingress else None,
            "verdict": "ALLOWED" if self.allowed else "DENIED",
            "allowed": self.allowed,
        }

    def render(self) -> str:
        """Readable text, laid out as `cilium policy trace` lays it out."""
        lines = [
            f"Tracing From: {self.source.describe()} => To: {self.destination.describe()} "
            f"Port: {self.port}/{self.protocol_name}",
            "",
        ]
        for party, role in ((self.source, "From"), (self.destination, "To")):
            if party.labels:
                lines.append(f"{role} labels: [{' '.join(party.labels)}]")
        for verdict, name in ((self.egress, "Egress"), (self.ingress, "Ingress")):
            lines.append("")
            if verdict is None:
                outside = self.source if name == "Egress" else self.destination
                lines.append(f"{name}: {outside.name} is outside the cluster; no policy applies")
                continue
            lines.append(f"{name} of {verdict.endpoint}:")
            if verdict.policies:
                lines.append(f"  selected by: {_names(verdict.policies)}")
            lines.append(f"  {verdict.reason}")
            if verdict.entry is not None:
                e = verdict.entry
                what = (
                    "any protocol"
                    if e.protocol == 0
                    else (f"{PROTOCOL_NAMES.get(e.protocol, e.protocol)} {e.port}/{e.prefix_len}")
                )
                lines.append(
                    f"  matched entry: identity {e.identity}, {what}, cookie {e.cookie:#x}"
                )
            lines.append(f"  {name.lower()} verdict: {'ALLOWED' if verdict.allowed else 'DENIED'}")
        lines += ["", f"Final verdict: {'ALLOWED' if self.allowed else 'DENIED'}"]
        return "\n".join(lines)


def _names(policies: Sequence[str], shown: int = 8) -> str:
    """A readable list: the first few names, then how many more (-o json lists them all)."""
    if len(policies) <= shown:
        return ", ".join(policies)
    return f"{', '.join(policies[:shown])} and {len(policies) - shown} more"


def _party(
    end: PodInfo | IPv4Address,
    pods: Iterable[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    identities: Mapping[Labels, int],
    cidr_identities: Mapping[IPv4Network, int],
    node_ips: Mapping[IPv4Address, str],
) -> Party:
    if isinstance(end, IPv4Address):
        owner = next((p for p in pods if p.ip == end), None)
        if owner is None:
            cidr = cidr_identity_of(end, cidr_identities)
            node = node_ips.get(end)
            if node is not None:
                label = Reserved.REMOTE_NODE.label
                return Party(
                    f"{end} (node {node})",
                    int(Reserved.REMOTE_NODE),
                    cidr,
                    end,
                    (label,),
                    node=node,
                )
            # as the ipcache has it: the longest covering CIDR identity's prefix, else world
            labels = (f"cidr:{_covering(end, cidr_identities)}",) if cidr else ()
            return Party(
                str(end), cidr or int(Reserved.WORLD), cidr, end, labels or (Reserved.WORLD.label,)
            )
        end = owner
    lbls = security_labels(end, namespaces)
    ident = identities.get(lbls)
    if ident is None:
        raise FlowscopeError(
            f"pod {end} has no identity yet",
            hint="identities are allocated by the agent of the pod's node; is it running?",
        )
    cidr = cidr_identity_of(end.ip, cidr_identities) if end.ip is not None else 0
    return Party(str(end), ident, cidr, end.ip, tuple(sorted(lbls)), end)


def _covering(address: IPv4Address, cidr_identities: Mapping[IPv4Network, int]) -> IPv4Network:
    return max((p for p in cidr_identities if address in p), key=lambda p: p.prefixlen)


def _verdict(
    compiled: CompiledPolicy,
    direction: Direction,
    local: Party,
    peer: Party,
    port: int,
    protocol: int,
) -> DirectionVerdict:
    assert local.pod is not None
    policies = compiled.selected_by.get(local.pod.key, {}).get(direction, ())
    entry = compiled.endpoints[local.pod.key].decide(
        direction, peer.identity_seen_by(local.pod), peer.cidr_identity, protocol, port
    )
    dname = direction.name.lower()
    service = f"{PROTOCOL_NAMES.get(protocol, protocol)}/{port}"
    rule = None
    if entry is None:
        seen = peer.identity_seen_by(local.pod)
        who = peer.describe() if seen == peer.identity else f"{peer.name} (identity {seen})"
        reason = (
            f"denied: default deny for {dname} of {local.name} (policies selecting it: "
            f"{_names(policies)}); no rule of theirs allows {who} on {service}"
        )
    elif entry.cookie == COOKIE_NO_POLICY:
        reason = f"allowed: no policy selects {local.name} for {dname}"
    elif entry.cookie == COOKIE_HOST:
        reason = "allowed: the node's own host may always reach its pods (kubelet probes)"
    else:
        rule = compiled.cookies.get(entry.cookie)
        reason = f"allowed by {rule.description if rule else f'cookie {entry.cookie:#x}'}"
    return DirectionVerdict(direction, local.name, entry is not None, policies, entry, rule, reason)


def trace(
    policies: Iterable[Mapping[str, Any] | Policy],
    pods: Iterable[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    identities: Mapping[Labels, int],
    cidr_identities: Mapping[IPv4Network, int],
    source: PodInfo | IPv4Address,
    destination: PodInfo | IPv4Address,
    port: int,
    protocol: int,
    *,
    compiler: Compiler | None = None,
    node_ips: Mapping[IPv4Address, str] | None = None,
) -> Trace:
    """The datapath's verdict on a new connection from `source` to `destination`:`port`.

    An address that is a pod's IP stands for that pod; a node's address (`node_ips`: address ->
    node name) is the host to pods on that node and a remote node to the others; any other address
    is outside the cluster: the identity of its longest covering CIDR identity's prefix, or
    reserved:world, as the ipcache (dataplane/identity/ipcache.py) gives it."""
    pods = list(pods)
    node_ips = node_ips or {}
    src = _party(source, pods, namespaces, identities, cidr_identities, node_ips)
    dst = _party(destination, pods, namespaces, identities, cidr_identities, node_ips)
    wanted = {p.pod.key for p in (src, dst) if p.pod is not None}
    compiled = (compiler or Compiler()).compile(
        policies, pods, namespaces, identities, cidr_identities, local=lambda p: p.key in wanted
    )
    egress = _verdict(compiled, Direction.EGRESS, src, dst, port, protocol) if src.pod else None
    ingress = _verdict(compiled, Direction.INGRESS, dst, src, port, protocol) if dst.pod else None
    return Trace(src, dst, port, protocol, egress, ingress)
