"""The `otel:` section of the export config.

    otel:
      endpoint: http://127.0.0.1:4318     # OTLP/HTTP: the base URL (/v1/logs, /v1/metrics added);
                                          # grpc: the collector's address (http://host:4317;
                                          # https:// for TLS)
      protocol: http/protobuf             # or grpc
      headers: {x-api-key: secret}
      timeout: 10                         # seconds per export request, retries included
      compression: none                   # or gzip
      batch: {max_queue_size: 2048, max_export_batch_size: 512, schedule_delay_ms: 1000}
      logs: {enabled: true, body: json}   # body: json (the Hubble JSON line) or summary (compact)
      metrics: {enabled: true, interval_ms: 10000}
      resource: {deployment.environment.name: prod}   # added to the resource attributes

`protocol` picks the OTLP transport: http/protobuf (OTLP/HTTP, port 4318 by convention) or grpc
(OTLP/gRPC, port 4317); headers become HTTP headers or gRPC metadata.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exporters.exporter import parse_model


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BatchConfig(_Section):
    max_queue_size: int = Field(2048, ge=1)
    max_export_batch_size: int = Field(512, ge=1)
    schedule_delay_ms: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> BatchConfig:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self


class LogsConfig(_Section):
    enabled: bool = True
    body: Literal["json", "summary"] = "json"


class MetricsConfig(_Section):
    enabled: bool = True
    interval_ms: int = Field(10_000, ge=100)


class OtelConfig(_Section):
    enabled: bool = True  # read by the runner
    group: str = ""  # the Kafka consumer group (the runner's)
    endpoint: str = "http://localhost:4318"
    protocol: str = "http/protobuf"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(10.0, gt=0)
    compression: Literal["none", "gzip"] = "none"
    batch: BatchConfig = BatchConfig()
    logs: LogsConfig = LogsConfig()
    metrics: MetricsConfig = MetricsConfig()
    resource: dict[str, str] = Field(default_factory=dict)

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"{value!r} is not an http:// or https:// URL "
                "(OTLP/HTTP: http://host:4318; gRPC: http://host:4317, https:// for TLS)"
            )
        return value.rstrip("/")

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        if value not in ("http/protobuf", "grpc"):
            raise ValueError(f"{value!r}: use http/protobuf or grpc")
        return value

    def signal_url(self, signal: str) -> str:
        """Where one signal ("logs", "metrics") goes: OTLP/HTTP's URL as
        OTEL_EXPORTER_OTLP_ENDPOINT builds it; gRPC's collector address (one for all signals)."""
        return self.endpoint if self.protocol == "grpc" else f"{self.endpoint}/v1/{signal}"

    def __hash__(self) -> int:  # dict fields: hash what identifies the config
        return hash(self.model_dump_json())


def parse(raw: object, field: str) -> OtelConfig:
    return parse_model(OtelConfig, raw, field)
