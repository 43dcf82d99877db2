"""The OpenTelemetry exporter kind: flows as OTLP logs and SDK metrics over OTLP/HTTP."""

from exporters.exporter import ExporterKind
from exporters.otel.config import OtelConfig, parse
from exporters.otel.exporter import OtelExporter


def build(config: OtelConfig) -> OtelExporter:
    return OtelExporter(config)


KIND = ExporterKind(name="otel", parse=parse, build=build)

__all__ = ["KIND", "OtelConfig", "OtelExporter"]
