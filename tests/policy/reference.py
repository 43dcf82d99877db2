"""NetworkPolicy semantics evaluated directly on pods, as the API documents them (cyclonus' way).

No identities, no entries, no caches: a second, deliberately naive statement of the rules, for
property tests to compare the compiler against. The one implementation choice it shares with the
compiler: an egress named port towards an ipBlock peer matches nothing (a CIDR is not a pod).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, ip_network
from typing import Any

from dataplane.policy.compiler import PROTOCOLS, PodInfo

Obj = Mapping[str, Any]


def _matches(selector: Obj, labels: Mapping[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or ():
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if spec.get("egress") else [])]


class Reference:
    def __init__(
        self,
        policies: Sequence[Obj],
        pods: Sequence[PodInfo],
        namespaces: Mapping[str, Mapping[str, str]],
    ) -> None:
        self.policies, self.pods, self.namespaces = policies, pods, namespaces

    def _selecting(self, pod: PodInfo, policy_type: str) -> list[Obj]:
        return [
            p
            for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and policy_type in _types(p)
            and _matches(p["spec"].get("podSelector") or {}, pod.label_map())
        ]

    def _peer_matches(self, peer: Obj, policy_ns: str, other: PodInfo) -> bool:
        block = peer.get("ipBlock")
        if block is not None:
            if other.ip is None:
                return False
            addr = IPv4Address(other.ip)
            if addr not in ip_network(block["cidr"]):
                return False
            return not any(addr in ip_network(e) for e in block.get("except") or ())
        ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
        if ns_sel is None:
            if other.namespace != policy_ns:
                return False
        elif not _matches(ns_sel, self.namespaces[other.namespace]):
            return False
        return pod_sel is None or _matches(pod_sel, other.label_map())

    @staticmethod
    def _port_matches(
        spec: Obj, port: int, protocol: str, server: PodInfo, peer_is_block: bool, egress: bool
    ) -> bool:
        if (spec.get("protocol") or "TCP") != protocol:
            return False
        want = spec.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            if egress and peer_is_block:
                return False
            return server.named_port(want, PROTOCOLS[protocol]) == port
        return want <= port <= (spec.get("endPort") or want)

    def _direction_allows(
        self,
        local: PodInfo,
        other: PodInfo,
        server: PodInfo,
        port: int,
        protocol: str,
        egress: bool,
    ) -> bool:
        policy_type, rules_key, peers_key = (
            ("Egress", "egress", "to") if egress else ("Ingress", "ingress", "from")
        )
        selecting = self._selecting(local, policy_type)
        if not selecting:
            return True
        for policy in selecting:
            ns = policy["metadata"]["namespace"]
            for rule in policy["spec"].get(rules_key) or ():
                peers = rule.get(peers_key) or []
                matched_peers = (
                    [p for p in peers if self._peer_matches(p, ns, other)] if peers else [{}]
                )
                for peer in matched_peers:
                    ports = rule.get("ports") or []
                    if not ports:
                        return True
                    block = "ipBlock" in peer
                    if any(
                        self._port_matches(s, port, protocol, server, block, egress) for s in ports
                    ):
                        return True
        return False

    def connected(self, src: PodInfo, dst: PodInfo, port: int, protocol: str) -> bool:
        return self._direction_allows(
            src, dst, dst, port, protocol, egress=True
        ) and self._direction_allows(dst, src, dst, port, protocol, egress=False)

    def matrix(self, port: int, protocol: str) -> dict[tuple[str, str], bool]:
        return {
            (str(s), str(d)): self.connected(s, d, port, protocol)
            for s in self.pods
            for d in self.pods
            if s is not d
        }
