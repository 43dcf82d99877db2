"""A small exporter kind for the runner's tests: it keeps what it was given, and with `path` it
appends one line per record ("<key> <node> <time_ns>") and fsyncs it in flush, the way the audit
writer makes its output durable. `fail_flushes` makes the first N flushes fail with ENOSPC;
`delay_s` slows every export (to kill a process mid-batch); `replace` makes reconfigure refuse.

Config files name it as a plugin: `plugins: {collect: tests.exporters.collectkind}`."""

from __future__ import annotations

import asyncio
import errno
import os
from dataclasses import dataclass, field
from typing import Any

from exporters.exporter import ConfigError, ExportBatch, ExporterKind

_KEYS = {"path", "delay_s", "label", "replace", "fail_flushes"}
INSTANCES: list[CollectExporter] = []


@dataclass(frozen=True)
class CollectConfig:
    path: str | None = None
    delay_s: float = 0.0
    label: str = ""
    replace: bool = False
    fail_flushes: int = 0


def parse(raw: Any, where: str) -> CollectConfig:
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "unknown field")
    delay = raw.get("delay_s", 0.0)
    if not isinstance(delay, int | float) or delay < 0:
        raise ConfigError(f"{where}.delay_s", f"{delay!r} is not a number >= 0")
    return CollectConfig(
        raw.get("path"),
        float(delay),
        str(raw.get("label", "")),
        bool(raw.get("replace", False)),
        int(raw.get("fail_flushes", 0)),
    )


@dataclass
class CollectExporter:
    config: CollectConfig
    name: str = "collect"
    records: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    flushes: int = 0
    failed_flushes: int = 0
    reconfigured: list = field(default_factory=list)
    started: bool = False
    closed: bool = False
    _unflushed: list = field(default_factory=list)

    async def start(self) -> None:
        self.started = True

    async def export(self, batch: ExportBatch) -> None:
        if self.config.delay_s:
            await asyncio.sleep(self.config.delay_s)
        self.records.extend(batch.records)
        self.keys.extend(batch.keys)
        keys = batch.keys or tuple("-" for _ in batch.records)
        self._unflushed.extend(
            f"{k} {r.node_name} {r.time_ns}\n" for k, r in zip(keys, batch.records, strict=True)
        )

    async def flush(self) -> None:
        if self.failed_flushes < self.config.fail_flushes:
            self.failed_flushes += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.config.path or "memory")
        if self.config.path and self._unflushed:
            with open(self.config.path, "a") as f:
                f.write("".join(self._unflushed))
                f.flush()
                os.fsync(f.fileno())
        self._unflushed.clear()
        self.flushes += 1

    async def close(self) -> None:
        self.closed = True

    async def reconfigure(self, config: Any) -> bool:
        if config.replace or config.path != self.config.path:
            return False
        self.reconfigured.append(config)
        self.config = config
        return True


def build(config: CollectConfig) -> CollectExporter:
    exporter = CollectExporter(config)
    INSTANCES.append(exporter)
    return exporter


KIND = ExporterKind("collect", parse, build)
