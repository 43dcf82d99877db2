"""Hubble's context options: which labels say where a flow came from and went to.

    sourceContext=pod|namespace          the first non-empty of these names the source
    destinationContext=workload-name     ... and the destination
    sourceIngressContext / sourceEgressContext / destination{Ingress,Egress}Context
                                         override them for flows of that traffic direction
    labelsContext=source_namespace,destination_pod,traffic_direction
                                         one label each, in Hubble's order

The label values are computed as Hubble's pkg/hubble/metrics/api/context.go computes them;
"workload" (namespace/workload, like "pod") is the one identifier Hubble names in its docs whose
value we define ourselves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from flowscope.flow.model import Endpoint, Flow, TrafficDirection

IDENTIFIERS = (
    "identity",
    "namespace",
    "pod",
    "pod-short",
    "pod-name",
    "dns",
    "ip",
    "reserved-identity",
    "workload",
    "workload-name",
    "app",
)
# labelsContext's labels, in the order Hubble puts them
CONTEXT_LABELS = (
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_app",
    "traffic_direction",
)
_KEYS = {
    "sourcecontext": "source",
    "sourceingresscontext": "source_ingress",
    "sourceegresscontext": "source_egress",
    "destinationcontext": "destination",
    "destinationingresscontext": "destination_ingress",
    "destinationegresscontext": "destination_egress",
    "labelscontext": "labels",
}
OPTION_NAMES = (
    "sourceContext",
    "sourceIngressContext",
    "sourceEgressContext",
    "destinationContext",
    "destinationIngressContext",
    "destinationEgressContext",
    "labelsContext",
)
_SHORT_POD = re.compile(r"^(.+?)(-[a-z0-9]+){1,2}$")
_APP_LABELS = ("k8s:app.kubernetes.io/name", "k8s:k8s-app", "k8s:app")
_KUBE_APISERVER = "reserved:kube-apiserver"


class ContextError(ValueError):
    """A context option that cannot be used; `option` names it ("sourceContext")."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


def is_context_option(key: str) -> bool:
    return key.lower() in _KEYS


@dataclass(frozen=True)
class ContextOptions:
    source: tuple[str, ...] = ()
    source_ingress: tuple[str, ...] = ()
    source_egress: tuple[str, ...] = ()
    destination: tuple[str, ...] = ()
    destination_ingress: tuple[str, ...] = ()
    destination_egress: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # labelsContext, in CONTEXT_LABELS order

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> ContextOptions:
        """From Hubble's option names (any case); ContextError naming a bad option."""
        fields: dict[str, tuple[str, ...]] = {}
        for key, value in options.items():
            attr = _KEYS.get(key.lower())
            if attr is None:
                continue
            if attr == "labels":
                wanted = [v.strip() for v in value.split(",")]
                bad = [v for v in wanted if v not in CONTEXT_LABELS]
                if bad:
                    raise ContextError(key, f"{bad[0]!r} is not one of {', '.join(CONTEXT_LABELS)}")
                fields[attr] = tuple(v for v in CONTEXT_LABELS if v in wanted)
                continue
            ids = tuple(v.strip().lower() for v in value.split("|"))
            bad = [v for v in ids if v not in IDENTIFIERS]
            if bad:
                raise ContextError(key, f"{bad[0]!r} is not one of {'|'.join(IDENTIFIERS)}")
            fields[attr] = ids
        return cls(**fields)

    def label_names(self) -> tuple[str, ...]:
        names = list(self.labels)
        if self.source:
            names.append("source")
        if self.destination:
            names.append("destination")
        return tuple(names)

    def label_values(self, flow: Flow, invert: bool = False) -> tuple[str, ...]:
        """The values of label_names() for this flow (invert: source and destination swapped,
        as Hubble does for metrics counted on responses)."""
        values = list(_labels_context(self.labels, flow, invert)) if self.labels else []
        direction = flow.traffic_direction
        src_ids = self.source
        if self.source_ingress and direction == TrafficDirection.INGRESS:
            src_ids = self.source_ingress
        elif self.source_egress and direction == TrafficDirection.EGRESS:
            src_ids = self.source_egress
        dst_ids = self.destination
        if self.destination_ingress and direction == TrafficDirection.INGRESS:
            dst_ids = self.destination_ingress
        elif self.destination_egress and direction == TrafficDirection.EGRESS:
            dst_ids = self.destination_egress
        src = next((v for i in src_ids if (v := _identify(i, flow, True))), "")
        dst = next((v for i in dst_ids if (v := _identify(i, flow, False))), "")
        if invert:
            src, dst = dst, src
        if self.source:
            values.append(src)
        if self.destination:
            values.append(dst)
        return tuple(values)


def app_of(labels: tuple[str, ...]) -> str:
    for label in labels:
        for app in _APP_LABELS:
            if label.startswith(app + "="):
                value = label[len(app) + 1 :]
                if value:
                    return value
    return ""


def _workload_name(ep: Endpoint | None) -> str:
    return ep.workloads[0].name if ep is not None and ep.workloads else ""


def _identify(identifier: str, flow: Flow, source: bool) -> str:
    ep = flow.source if source else flow.destination
    namespace = ep.namespace if ep else ""
    match identifier:
        case "namespace":
            return namespace
        case "identity":
            return ",".join(ep.labels) if ep else ""
        case "pod":
            pod = ep.pod_name if ep else ""
            return f"{namespace}/{pod}" if namespace else pod
        case "pod-short":
            pod = _SHORT_POD.sub(r"\1", ep.pod_name) if ep else ""
            return f"{namespace}/{pod}" if namespace else pod
        case "pod-name":
            return ep.pod_name if ep else ""
        case "dns":
            return ",".join(flow.source_names if source else flow.destination_names)
        case "ip":
            if flow.ip is None:
                return ""
            return flow.ip.source if source else flow.ip.destination
        case "reserved-identity":
            labels = ep.labels if ep else ()
            if _KUBE_APISERVER in labels:
                return _KUBE_APISERVER
            return next((lb for lb in labels if lb.startswith("reserved:")), "")
        case "workload":
            name = _workload_name(ep)
            return f"{namespace}/{name}" if name and namespace else name
        case "workload-name":
            return _workload_name(ep)
        case "app":
            return app_of(ep.labels) if ep else ""
    return ""


def _labels_context(wanted: tuple[str, ...], flow: Flow, invert: bool) -> list[str]:
    src, dst = flow.source, flow.destination
    src_ip = flow.ip.source if flow.ip else ""
    dst_ip = flow.ip.destination if flow.ip else ""
    if invert:
        src, dst, src_ip, dst_ip = dst, src, dst_ip, src_ip
    out = []
    for label in wanted:
        end, _, what = label.partition("_")
        ep = src if end == "source" else dst
        match label:
            case "source_ip":
                out.append(src_ip)
            case "destination_ip":
                out.append(dst_ip)
            case "traffic_direction":
                d = flow.traffic_direction
                known = d != TrafficDirection.TRAFFIC_DIRECTION_UNKNOWN
                out.append(TrafficDirection(d).name.lower() if known else "unknown")
            case _ if what == "pod":
                out.append(ep.pod_name if ep else "")
            case _ if what == "namespace":
                out.append(ep.namespace if ep else "")
            case _ if what == "workload":
                out.append(_workload_name(ep))
            case _:
                out.append(app_of(ep.labels) if ep else "")
    return out
