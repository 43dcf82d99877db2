"""Defaulting as the apiserver does it, for the fields flowscope reads (in place; per kind)."""

from __future__ import annotations

from typing import Any


def _ports_protocol(ports: list | None) -> None:
    for port in ports or ():
        if isinstance(port, dict) and not port.get("protocol"):
            port["protocol"] = "TCP"


def namespace(obj: dict[str, Any]) -> None:
    # the apiserver labels every namespace with its name, so namespaceSelector can pick one by name
    meta = obj.setdefault("metadata", {})
    labels = meta.get("labels") or {}
    labels["kubernetes.io/metadata.name"] = meta.get("name", "")
    meta["labels"] = labels


def pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    for c in spec.get("containers") or ():
        _ports_protocol(c.get("ports"))
    spec.setdefault("restartPolicy", "Always")


DEFAULT_AFFINITY_SECONDS = 10800  # three hours, as the apiserver's default


def service(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if not spec.get("type"):
        spec["type"] = "ClusterIP"
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "ClientIP":
        client_ip = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        if client_ip.get("timeoutSeconds") is None:
            client_ip["timeoutSeconds"] = DEFAULT_AFFINITY_SECONDS
        spec["sessionAffinityConfig"] = {
            **(spec.get("sessionAffinityConfig") or {}),
            "clientIP": client_ip,
        }
    if not spec.get("internalTrafficPolicy"):
        spec["internalTrafficPolicy"] = "Cluster"
    if spec["type"] in ("NodePort", "LoadBalancer") and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    for port in spec.get("ports") or ():
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") is None and port.get("port") is not None:
            port["targetPort"] = port["port"]


def network_policy(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("podSelector") is None:
        spec["podSelector"] = {}
    if not spec.get("policyTypes"):
        # every policy affects ingress; one with egress rules affects egress too
        spec["policyTypes"] = ["Ingress", *(["Egress"] if spec.get("egress") else [])]
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or ():
            _ports_protocol(rule.get("ports"))


def _pod_template(spec: dict[str, Any]) -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        pod(template)


def deployment(obj: dict[str, Any]) -> None:
    # apps/v1 SetDefaults_Deployment
    spec = obj.setdefault("spec", {})
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    strategy = spec.setdefault("strategy", {})
    if not strategy.get("type"):
        strategy["type"] = "RollingUpdate"
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.get("rollingUpdate") or {}
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
        strategy["rollingUpdate"] = rolling
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    if spec.get("progressDeadlineSeconds") is None:
        spec["progressDeadlineSeconds"] = 600
    _pod_template(spec)


def replica_set(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    _pod_template(spec)
