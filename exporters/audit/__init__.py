"""The audit exporter kind: Hubble JSON lines in size-rotated, compressed, fsynced files."""

from exporters.audit.config import AuditConfig, parse
from exporters.audit.exporter import KEY_FIELD, AuditExporter
from exporters.exporter import ExporterKind


def build(config: AuditConfig) -> AuditExporter:
    return AuditExporter(config)


KIND = ExporterKind(name="audit", parse=parse, build=build)

__all__ = ["KEY_FIELD", "KIND", "AuditConfig", "AuditExporter"]
