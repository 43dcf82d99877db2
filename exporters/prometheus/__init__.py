"""Prometheus exporter: Hubble's flow metrics (hubble_*) with Hubble's options, a cardinality
limit per metric, and flowscope's pipeline metrics (flowscope_*), served on /metrics.

    from exporters.prometheus import KIND
    exporter = KIND.build(KIND.parse({"listen": "127.0.0.1:9965"}, "prometheus"))
"""

from __future__ import annotations

from typing import Any

from exporters.exporter import ExporterKind
from exporters.prometheus.config import PrometheusConfig, parse
from exporters.prometheus.exporter import PrometheusExporter


def build(config: Any) -> PrometheusExporter:
    return PrometheusExporter(config)


KIND = ExporterKind(name="prometheus", parse=parse, build=build)

__all__ = ["KIND", "PrometheusConfig", "PrometheusExporter", "parse"]
