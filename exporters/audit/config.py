"""The `audit:` section of the export config.

audit:
  path: /var/log/flowscope/audit.jsonl   # the file written; rotated ones beside it
  rotate: {max_mb: 50, max_files: 5, compress: true}
  allow: ["--namespace prod"]            # observe's flags, or FlowFilter JSON objects
  deny: ["--verdict TRANSLATED"]
  field_mask: []                         # Flow field paths to keep; empty: all of it
  redact: {enabled: true, headers: [Authorization, Proxy-Authorization, Cookie, Set-Cookie],
           url_query: true, url_userinfo: true}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from exporters.audit.fieldmask import check_paths
from exporters.audit.filters import selection_of
from exporters.audit.redact import DEFAULT_HEADERS, Redaction
from exporters.exporter import ConfigError, parse_model
from flowscope.flow.protofilter import FlowSelection


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RotateConfig(_Section):
    max_mb: float = Field(50, gt=0)
    max_files: int = Field(5, ge=1)
    compress: bool = True

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


class RedactConfig(_Section):
    enabled: bool = True
    headers: tuple[str, ...] = DEFAULT_HEADERS
    url_query: bool = True
    url_userinfo: bool = True

    def rules(self) -> Redaction:
        return Redaction(self.enabled, self.headers, self.url_query, self.url_userinfo)


class AuditConfig(_Section):
    enabled: bool = True  # read by the runner
    group: str = ""  # the Kafka consumer group (the runner's)
    path: str = Field(min_length=1)
    rotate: RotateConfig = RotateConfig()
    allow: tuple[str | dict[str, Any], ...] = ()
    deny: tuple[str | dict[str, Any], ...] = ()
    field_mask: tuple[str, ...] = ()
    redact: RedactConfig = RedactConfig()

    def selection(self, field: str = "audit") -> FlowSelection:
        return selection_of(self.allow, self.deny, field)

    def same_output(self, other: AuditConfig) -> bool:
        """The same files written the same way (what reconfigure cannot change in place)."""
        return (self.path, self.rotate) == (other.path, other.rotate)


def parse(raw: object, field: str) -> AuditConfig:
    config: AuditConfig = parse_model(AuditConfig, raw, field)
    config.selection(field)  # refuse bad filters now, naming the item
    for i, path in enumerate(config.field_mask):
        if check_paths([path]):
            raise ConfigError(
                f"{field}.field_mask[{i}]",
                f"{path!r} is not a Flow field path",
                hint="use the Flow's .proto field names, e.g. source.pod_name, IP.source, verdict",
            )
    return config
