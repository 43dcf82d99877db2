"""What every exporter is: the contract between the export runner (a consumer of the flows topic,
or of the relay) and the exporters it feeds (Prometheus, OpenTelemetry, audit files).

The runner hands an exporter batches of stream records (flows and lost events, each node's order
kept) and commits the batch's Kafka offsets only after the exporter's `flush` returned: so an
exporter that makes its output durable in `flush` (the audit writer fsyncs) loses nothing when it
crashes; at worst it sees a batch again.

Each exporter kind is a module with a KIND: how its section of the config file is read and how an
exporter is made from it.

    kind.parse(raw_section, "prometheus")  -> a frozen config (ConfigError naming the field)
    kind.build(config)                      -> an Exporter
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowscope.errors import FlowscopeError
from flowscope.flow.model import Record


class ConfigError(FlowscopeError):
    """A config value that cannot be used; `field` is its dotted path ("audit.rotate.max_mb")."""

    def __init__(self, field: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}", hint=hint or "fix the export config and retry")
        self.field = field


@dataclass(frozen=True)
class ExportBatch:
    """Records read together. `lag`: per (topic, partition), records on the broker not yet read
    (empty when reading from the relay). `keys`: empty, or one per record, naming it across
    re-deliveries (`record_key`: "<node>:<run_id>:<seq>" from the FlowBatch it came in), so a
    reader of at-least-once output (the audit files) can drop duplicates."""

    records: tuple[Record, ...]
    lag: Mapping[tuple[str, int], int] = field(default_factory=dict)
    keys: tuple[str, ...] = ()


def record_key(node: str, run_id: int, seq: int) -> str:
    """The key of the stream record numbered `seq` by `node`'s agent run `run_id`: a FlowBatch's
    records are first_seq, first_seq + 1, ... in order."""
    return f"{node}:{run_id}:{seq}"


class Exporter(Protocol):
    name: str  # the config section it came from ("prometheus")

    async def start(self) -> None:
        """Open what it writes to (a listener, a file, a connection); errors are FlowscopeError."""

    async def export(self, batch: ExportBatch) -> None: ...

    async def flush(self) -> None:
        """Everything exported so far is durable or sent; the runner commits offsets after it."""

    async def close(self) -> None: ...

    async def reconfigure(self, config: Any) -> bool:
        """Take a changed config in place; False: the runner must close it and build a new one."""


@dataclass(frozen=True)
class ExporterKind:
    name: str  # the config section ("prometheus", "otel", "audit")
    parse: Callable[[Any, str], Any]  # (raw section, field path) -> frozen config
    build: Callable[[Any], Exporter]
    default_group: str = ""  # the Kafka consumer group, when the section names none

    def group(self) -> str:
        return self.default_group or f"flowscope-export-{self.name}"


def parse_model(model: Any, raw: Any, field: str) -> Any:
    """A config section read into a pydantic model (frozen, extra="forbid"); ConfigError naming
    the first bad field by its dotted path ("audit.rotate.max_mbb: unknown field")."""
    from pydantic import ValidationError

    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(field, f"expected a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as e:
        err = e.errors()[0]
        path = ".".join([field, *(str(p) for p in err["loc"])])
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")
        raise ConfigError(path, message) from None
