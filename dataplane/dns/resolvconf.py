"""The resolv.conf a pod gets, as kubelet writes it, and the cluster DNS service's address.

dnsPolicy ClusterFirst (the default): the cluster DNS, the search path NS.svc.DOMAIN svc.DOMAIN
DOMAIN and ndots:5, so that `web` and `web.other` resolve as services first. Default: the node's
resolver (no file of ours: the host's /etc/resolv.conf stays). None: only spec.dnsConfig. A
pod's dnsConfig adds nameservers, searches and options to the first two, as in Kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from dataplane.dns.records import DOMAIN

DNS_SERVICE = ("kube-system", "kube-dns")
DNS_SERVICE_INDEX = 10  # 10.0.0.10 in 10.0.0.0/16, as AKS and kubeadm place it
NDOTS = 5


def dns_service_ip(service_cidr: IPv4Network) -> IPv4Address:
    """The kube-dns ClusterIP: the 10th address of the service CIDR."""
    return service_cidr[DNS_SERVICE_INDEX]


def resolv_conf(pod: Mapping[str, Any], dns_ip: IPv4Address, domain: str = DOMAIN) -> str | None:
    """The file's text for `pod`, or None when the pod uses the node's resolver."""
    spec = pod.get("spec") or {}
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if spec.get("hostNetwork") and policy == "ClusterFirst":
        policy = "Default"  # as kubelet: host-network pods keep the node's resolver
    config = spec.get("dnsConfig") or {}
    if policy == "Default" and not config:
        return None
    nameservers: list[str] = []
    searches: list[str] = []
    options: dict[str, str | None] = {}
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        nameservers = [str(dns_ip)]
        searches = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]
        options = {"ndots": str(NDOTS)}
    for ns in config.get("nameservers") or ():
        if ns not in nameservers:
            nameservers.append(str(ns))
    for search in config.get("searches") or ():
        if search not in searches:
            searches.append(str(search))
    for option in config.get("options") or ():
        if option.get("name"):
            options[str(option["name"])] = option.get("value")
    lines = [f"nameserver {ns}" for ns in nameservers[:3]]  # glibc reads at most three
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append(
            "options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items())
        )
    return "\n".join(lines) + "\n"
