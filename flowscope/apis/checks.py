"""The apiserver's semantic validation, per kind, for what the OpenAPI schema cannot express.

Each function takes an object that already passed the schema (so types are right, but any field
may be absent or null) and returns its FieldErrors in the apiserver's words.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flowscope.apis import fields, labels, names
from flowscope.apis.fields import FieldError, child, index

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
NODE_PORT_RANGE = (30000, 32767)
TRAFFIC_POLICIES = ("Cluster", "Local")
MAX_AFFINITY_SECONDS = 86400  # a day, as the apiserver's MaxClientIPServiceAffinitySeconds
POLICY_TYPES = ("Ingress", "Egress")
RESTART_POLICIES = ("Always", "OnFailure", "Never")


def _map(obj: Any, key: str) -> dict:
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if isinstance(v, dict) else {}


def _list(obj: Any, key: str) -> list:
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if isinstance(v, list) else []


def _port_number(path: str, value: Any, *, required: bool = True) -> list[FieldError]:
    if value is None:
        return [fields.required(path)] if required else []
    if not 1 <= value <= 65535:
        return [fields.invalid(path, value, "must be between 1 and 65535, inclusive")]
    return []


def _protocol(path: str, value: Any) -> list[FieldError]:
    if value is not None and value not in PROTOCOLS:
        return [fields.unsupported(path, value, PROTOCOLS)]
    return []


def _int_or_port_name(path: str, value: Any) -> list[FieldError]:
    """targetPort / NetworkPolicy port: a number 1-65535 or an IANA port name."""
    if isinstance(value, int):
        return _port_number(path, value)
    if isinstance(value, str):
        if value.isdigit():
            return [
                fields.invalid(path, value, "must be a number or a port name, not a numeric string")
            ]
        return [fields.invalid(path, value, r) for r in names.port_name(value)]
    return []


def namespace(obj: dict) -> list[FieldError]:
    return []


def node(obj: dict) -> list[FieldError]:
    errs = []
    cidr = _map(obj, "spec").get("podCIDR")
    if cidr:
        errs += _cidr_errors("spec.podCIDR", cidr)
    return errs


def pod(obj: dict) -> list[FieldError]:
    spec = _map(obj, "spec")
    errs: list[FieldError] = []
    containers = _list(spec, "containers")
    if not containers:
        errs.append(fields.required("spec.containers"))
    seen_containers: set[str] = set()
    seen_ports: set[str] = set()
    for i, c in enumerate(containers):
        p = index("spec.containers", i)
        cname = c.get("name")
        if not cname:
            errs.append(fields.required(child(p, "name")))
        else:
            errs += [fields.invalid(child(p, "name"), cname, r) for r in names.dns1123_label(cname)]
            if cname in seen_containers:
                errs.append(fields.duplicate(child(p, "name"), cname))
            seen_containers.add(cname)
        if not c.get("image"):
            errs.append(fields.required(child(p, "image")))
        for j, port in enumerate(_list(c, "ports")):
            pp = index(child(p, "ports"), j)
            errs += _port_number(child(pp, "containerPort"), port.get("containerPort"))
            host_port = port.get("hostPort")
            if host_port:
                errs += _port_number(child(pp, "hostPort"), host_port)
            errs += _protocol(child(pp, "protocol"), port.get("protocol"))
            pname = port.get("name")
            if pname:
                errs += [
                    fields.invalid(child(pp, "name"), pname, r) for r in names.port_name(pname)
                ]
                if pname in seen_ports:
                    errs.append(fields.duplicate(child(pp, "name"), pname))
                seen_ports.add(pname)
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in RESTART_POLICIES:
        errs.append(fields.unsupported("spec.restartPolicy", policy, RESTART_POLICIES))
    node_name = spec.get("nodeName")
    if node_name:
        errs += [
            fields.invalid("spec.nodeName", node_name, r)
            for r in names.dns1123_subdomain(node_name)
        ]
    return errs


def service(obj: dict) -> list[FieldError]:
    spec = _map(obj, "spec")
    errs: list[FieldError] = []
    stype = spec.get("type") or "ClusterIP"
    if stype not in SERVICE_TYPES:
        errs.append(fields.unsupported("spec.type", stype, SERVICE_TYPES))
    cluster_ip = spec.get("clusterIP")
    headless = cluster_ip == "None"
    if cluster_ip and not headless:
        try:
            ipaddress.IPv4Address(cluster_ip)
        except ValueError:
            errs.append(
                fields.invalid(
                    "spec.clusterIP",
                    cluster_ip,
                    'must be a valid IPv4 address or "None" (headless)',
                )
            )
    if headless and stype != "ClusterIP":
        errs.append(
            fields.invalid("spec.clusterIP", cluster_ip, 'may only be "None" for type ClusterIP')
        )
    ports = _list(spec, "ports")
    if not ports and not headless:
        errs.append(fields.required("spec.ports"))
    port_names: set[str] = set()
    port_keys: set[tuple[int, str]] = set()
    node_port_keys: set[tuple[int, str]] = set()
    for i, port in enumerate(ports):
        p = index("spec.ports", i)
        pname = port.get("name")
        if not pname:
            if len(ports) > 1:
                errs.append(fields.required(child(p, "name")))
        else:
            errs += [fields.invalid(child(p, "name"), pname, r) for r in names.dns1123_label(pname)]
            if pname in port_names:
                errs.append(fields.duplicate(child(p, "name"), pname))
            port_names.add(pname)
        number = port.get("port")
        errs += _port_number(child(p, "port"), number)
        protocol = port.get("protocol") or "TCP"
        errs += _protocol(child(p, "protocol"), port.get("protocol"))
        if number is not None:
            if (number, protocol) in port_keys:
                errs.append(fields.duplicate(p, {"port": number, "protocol": protocol}))
            port_keys.add((number, protocol))
        if port.get("targetPort") is not None:
            errs += _int_or_port_name(child(p, "targetPort"), port.get("targetPort"))
        node_port = port.get("nodePort")
        if node_port:
            if stype == "ClusterIP":
                errs.append(
                    fields.forbidden(
                        child(p, "nodePort"), "may not be used when `type` is 'ClusterIP'"
                    )
                )
            elif not NODE_PORT_RANGE[0] <= node_port <= NODE_PORT_RANGE[1]:
                errs.append(
                    fields.invalid(
                        child(p, "nodePort"),
                        node_port,
                        "provided port is not in the valid range. The range of valid ports is "
                        f"{NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}",
                    )
                )
            elif (node_port, protocol) in node_port_keys:
                # the same nodePort for 53/TCP and 53/UDP is fine; twice for one protocol is not
                errs.append(fields.duplicate(child(p, "nodePort"), node_port))
            node_port_keys.add((node_port, protocol))
    errs += labels.label_map_errors(spec.get("selector"), "spec.selector")
    errs += _affinity_errors(spec)
    errs += _traffic_policy_errors(spec, stype)
    return errs


def _affinity_errors(spec: dict) -> list[FieldError]:
    affinity = spec.get("sessionAffinity")
    if affinity is not None and affinity not in ("None", "ClientIP"):
        return [fields.unsupported("spec.sessionAffinity", affinity, ("ClientIP", "None"))]
    config = spec.get("sessionAffinityConfig")
    if affinity != "ClientIP":
        if config:
            return [
                fields.forbidden(
                    "spec.sessionAffinityConfig", "must not be set when session affinity is None"
                )
            ]
        return []
    timeout = _map(_map(spec, "sessionAffinityConfig"), "clientIP").get("timeoutSeconds")
    if timeout is not None and not 0 < timeout <= MAX_AFFINITY_SECONDS:
        return [
            fields.invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                timeout,
                f"must be greater than 0 and less than {MAX_AFFINITY_SECONDS}",
            )
        ]
    return []


def _traffic_policy_errors(spec: dict, stype: str) -> list[FieldError]:
    errs: list[FieldError] = []
    for f in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.get(f)
        if value is not None and value not in TRAFFIC_POLICIES:
            errs.append(fields.unsupported(f"spec.{f}", value, TRAFFIC_POLICIES))
    external = spec.get("externalTrafficPolicy")
    if external and stype == "ClusterIP" and not spec.get("externalIPs"):
        errs.append(
            fields.invalid(
                "spec.externalTrafficPolicy",
                external,
                "may only be set for externally-accessible services",
            )
        )
    return errs


def _cidr_errors(path: str, value: str) -> list[FieldError]:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return [
            fields.invalid(
                path, value, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
            )
        ]
    return []


def _peer_errors(peer: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    selectors = [k for k in ("podSelector", "namespaceSelector") if peer.get(k) is not None]
    block = peer.get("ipBlock")
    if block is not None and selectors:
        errs.append(fields.forbidden(path, "may not specify both ipBlock and another peer"))
    if block is None and not selectors:
        errs.append(fields.required(path, "must specify a peer"))
    for k in selectors:
        errs += labels.selector_errors(peer[k], child(path, k))
    if block is not None:
        bp = child(path, "ipBlock")
        cidr = block.get("cidr")
        if not cidr:
            errs.append(fields.required(child(bp, "cidr")))
            return errs
        cidr_errs = _cidr_errors(child(bp, "cidr"), cidr)
        errs += cidr_errs
        for j, exc in enumerate(block.get("except") or ()):
            ep = index(child(bp, "except"), j)
            exc_errs = _cidr_errors(ep, exc)
            errs += exc_errs
            if cidr_errs or exc_errs:
                continue
            outer, inner = ipaddress.ip_network(cidr), ipaddress.ip_network(exc)
            if (
                outer.version != inner.version
                or not inner.subnet_of(outer)  # type: ignore[arg-type]
                or inner.prefixlen <= outer.prefixlen
            ):
                errs.append(fields.invalid(ep, exc, "must be a strict subset of `cidr`"))
    return errs


def _policy_port_errors(port: dict, path: str) -> list[FieldError]:
    errs = _protocol(child(path, "protocol"), port.get("protocol"))
    number = port.get("port")
    end = port.get("endPort")
    if number is not None:
        errs += _int_or_port_name(child(path, "port"), number)
    if end is not None:
        if number is None:
            errs.append(
                fields.required(
                    child(path, "port"), "must be specified when `endPort` is specified"
                )
            )
        elif not isinstance(number, int):
            errs.append(
                fields.invalid(
                    child(path, "endPort"), end, "may not be specified when `port` is non-numeric"
                )
            )
        elif end < number:
            errs.append(
                fields.invalid(
                    child(path, "endPort"), end, "must be greater than or equal to `port`"
                )
            )
        elif not 1 <= end <= 65535:
            errs.append(
                fields.invalid(
                    child(path, "endPort"), end, "must be between 1 and 65535, inclusive"
                )
            )
    return errs


def network_policy(obj: dict) -> list[FieldError]:
    spec = _map(obj, "spec")
    errs = labels.selector_errors(spec.get("podSelector"), "spec.podSelector")
    types = _list(spec, "policyTypes")
    seen: set[str] = set()
    for i, t in enumerate(types):
        p = index("spec.policyTypes", i)
        if t not in POLICY_TYPES:
            errs.append(fields.unsupported(p, t, POLICY_TYPES))
        elif t in seen:
            errs.append(fields.duplicate(p, t))
        seen.add(t)
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(_list(spec, direction)):
            rp = index(f"spec.{direction}", i)
            for j, port in enumerate(_list(rule, "ports")):
                errs += _policy_port_errors(port, index(child(rp, "ports"), j))
            for j, peer in enumerate(_list(rule, peers_key)):
                errs += _peer_errors(peer, index(child(rp, peers_key), j))
    return errs


def endpoint_slice(obj: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    address_type = obj.get("addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        errs.append(fields.unsupported("addressType", address_type, ("IPv4", "IPv6", "FQDN")))
    if len(_list(obj, "endpoints")) > 1000:
        errs.append(
            fields.FieldError("endpoints", "Too many", detail="must have at most 1000 items")
        )
    return errs


# --- apps/v1 workloads ---

DEPLOYMENT_STRATEGIES = ("RollingUpdate", "Recreate")


def _non_negative(path: str, value: Any) -> list[FieldError]:
    if isinstance(value, int) and value < 0:
        return [fields.invalid(path, value, "must be greater than or equal to 0")]
    return []


def _int_or_percent(path: str, value: Any) -> tuple[list[FieldError], int | None]:
    """maxSurge/maxUnavailable: a count >= 0 or "N%"; the errors, and the percent if one."""
    if isinstance(value, int):
        return _non_negative(path, value), None
    if isinstance(value, str):
        digits = value.removesuffix("%")
        if not value.endswith("%") or not digits.isdigit():
            return [
                fields.invalid(
                    path,
                    value,
                    "a valid percent string must be a numeric string "
                    "followed by an ending '%' (e.g. '1%',  or '93%')",
                )
            ], None
        return [], int(digits)
    return [], None


def _pod_template(obj: dict, path: str, selector: Any, *, restart: str | None) -> list[FieldError]:
    """A workload's spec.template: present, labelled to match the selector, a valid pod spec."""
    template = _map(obj, "spec").get("template")
    if not isinstance(template, dict):
        return [fields.required(path)]
    errs: list[FieldError] = []
    tmeta = _map(template, "metadata")
    tlabels = tmeta.get("labels") or {}
    errs += labels.label_map_errors(tlabels, child(path, "metadata.labels"))
    selects = isinstance(selector, dict) and selector and isinstance(tlabels, dict)
    if selects and not labels.from_label_selector(selector).matches(tlabels):
        errs.append(
            fields.invalid(
                child(path, "metadata.labels"),
                tlabels,
                "`selector` does not match template `labels`",
            )
        )
    # the pod checks speak of spec.*: the same fields here live under <path>.spec.*
    for e in pod({"spec": template.get("spec") or {}}):
        errs.append(fields.FieldError(f"{path}.{e.path}", e.type, e.value, e.detail))
    policy = _map(template, "spec").get("restartPolicy")
    if restart is not None and policy is not None and policy != restart:
        errs.append(fields.unsupported(child(path, "spec.restartPolicy"), policy, (restart,)))
    return errs


def _replicated(obj: dict) -> list[FieldError]:
    """What Deployments and ReplicaSets share: replicas, selector, template, minReadySeconds."""
    spec = _map(obj, "spec")
    errs = _non_negative("spec.replicas", spec.get("replicas"))
    errs += _non_negative("spec.minReadySeconds", spec.get("minReadySeconds"))
    selector = spec.get("selector")
    if selector is None:
        errs.append(fields.required("spec.selector"))
    elif not selector.get("matchLabels") and not selector.get("matchExpressions"):
        what = str(obj.get("kind") or "").lower()
        errs.append(
            fields.invalid("spec.selector", selector, f"empty selector is invalid for {what}")
        )
    else:
        errs += labels.selector_errors(selector, "spec.selector")
    errs += _pod_template(obj, "spec.template", selector, restart="Always")
    return errs


def deployment(obj: dict) -> list[FieldError]:
    spec = _map(obj, "spec")
    errs = _replicated(obj)
    errs += _non_negative("spec.revisionHistoryLimit", spec.get("revisionHistoryLimit"))
    # checked as the apiserver does, after defaulting: an absent deadline is 600 seconds
    deadline = spec.get("progressDeadlineSeconds", 600)
    min_ready = spec.get("minReadySeconds") or 0
    if isinstance(deadline, int) and deadline <= min_ready:
        errs.append(
            fields.invalid(
                "spec.progressDeadlineSeconds",
                deadline,
                "must be greater than minReadySeconds",
            )
        )
    strategy = _map(spec, "strategy")
    stype = strategy.get("type")
    if stype is not None and stype not in DEPLOYMENT_STRATEGIES:
        errs.append(fields.unsupported("spec.strategy.type", stype, DEPLOYMENT_STRATEGIES))
    rolling = strategy.get("rollingUpdate")
    if rolling is not None and stype == "Recreate":
        errs.append(
            fields.forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            )
        )
    elif isinstance(rolling, dict):
        p = "spec.strategy.rollingUpdate"
        surge = rolling.get("maxSurge")
        unavailable = rolling.get("maxUnavailable")
        surge_errs, _ = _int_or_percent(child(p, "maxSurge"), surge)
        unavail_errs, unavail_pct = _int_or_percent(child(p, "maxUnavailable"), unavailable)
        errs += surge_errs + unavail_errs
        if unavail_pct is not None and unavail_pct > 100:
            errs.append(
                fields.invalid(
                    child(p, "maxUnavailable"), unavailable, "must not be greater than 100%"
                )
            )
        if _is_zero(surge) and _is_zero(unavailable):
            errs.append(
                fields.invalid(
                    child(p, "maxUnavailable"),
                    unavailable,
                    "may not be 0 when `maxSurge` is 0",
                )
            )
    return errs


def _is_zero(value: Any) -> bool:
    return value in (0, "0%")


def replica_set(obj: dict) -> list[FieldError]:
    return _replicated(obj)
