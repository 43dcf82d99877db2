"""`flowscope export`'s engine: every enabled exporter fed by a source of its own, the config
file followed, a clean stop.

One Pipeline per enabled section: source -> exporter.export(batch) -> exporter.flush() ->
source.commit(offsets of that batch). Nothing is committed before the exporter's flush returned,
so what was committed is durable (or sent) downstream. When export or flush fails (a full disk, a
backend away), nothing is committed; the failure is logged and the same step is tried again with
backoff: `export` again with the same batch when export raised, `flush` again when flush raised
(an exporter keeps what it was given until a flush succeeds).

The Runner reloads the file when it changes (polled: mtime, size, inode): a file that does not
parse is logged with the field and the running config stays; a changed section is offered to its
exporter (`reconfigure`) or its pipeline is stopped (flush, commit, close) and a new one started;
a changed source or group restarts the pipelines it feeds; sections added or removed start or
stop theirs. `stop()` (SIGTERM, SIGINT) ends every pipeline after its batch in hand is flushed and
committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.config import ExportConfig, SectionConfig, SourceConfig, load_config
from exporters.exporter import ConfigError, Exporter, ExporterKind
from exporters.source import Backoff, Pending, Source, make_source
from flowscope.errors import FlowscopeError

log = logging.getLogger(__name__)

RELOAD_POLL_S = 1.0
PROGRESS_EVERY_S = 30.0
REVIVE_AFTER_S = 5.0


@dataclass
class PipelineStats:
    batches: int = 0
    records: int = 0
    commits: int = 0
    failures: int = 0  # export or flush attempts that raised


class Pipeline:
    """One exporter and its source."""

    def __init__(
        self,
        section: SectionConfig,
        source_config: SourceConfig,
        *,
        make: Callable[..., Source] = make_source,
        progress_every: float = PROGRESS_EVERY_S,
    ) -> None:
        self.section = section
        self.source_config = source_config
        self.name = section.name
        self.stats = PipelineStats()
        self.exporter: Exporter | None = None
        self.source: Source | None = None
        self._make = make
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._progress_every = progress_every
        self.failed: BaseException | None = None  # why the pipeline ended, if not by stop()
        self.failed_at = 0.0

    async def start(self) -> None:
        """Build and start the exporter (its errors, e.g. a port in use, are raised), then
        run: join the source and feed the exporter in a task."""
        exporter = self.section.kind.build(self.section.config)
        await exporter.start()
        self._side_topics(exporter)
        self.exporter = exporter
        self.source = self._make(
            self.source_config, self.name, self.section.group, lambda: self._stopping
        )
        self._task = asyncio.create_task(self._run(), name=f"export-{self.name}")

    async def _run(self) -> None:
        try:
            await self.source.start()
            last_report = time.monotonic()
            while not self._stopping:
                pending = await self.source.next_batch()
                async with self.source.handing:
                    await self._deliver(pending)
                if time.monotonic() - last_report >= self._progress_every:
                    last_report = time.monotonic()
                    self._report(pending)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not self._stopping:
                self.failed, self.failed_at = e, time.monotonic()
                log.error("%s: stopped: %s", self.name, e)

    async def _deliver(self, pending: Pending) -> None:
        """export, flush, commit; each failing step tried again (nothing committed before)."""
        batch = pending.batch
        exported = not batch.records
        flushed = not batch.records
        backoff = Backoff()
        while True:
            try:
                if not exported:
                    await self.exporter.export(batch)
                    exported = True
                if not flushed:
                    await self.exporter.flush()
                    flushed = True
                await self.source.commit(pending)
                break
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as e:
                self.stats.failures += 1
                step = "export" if not exported else "flush" if not flushed else "commit"
                if self._stopping:
                    log.error(
                        "%s: %s failed while stopping (%s): %d records not committed; they are"
                        " read again on the next start",
                        self.name, step, e, len(batch.records),
                    )  # fmt: skip
                    return
                wait = backoff.take()
                log.error(
                    "%s: %s failed: %s; %d records not committed, retrying in %.1fs",
                    self.name, step, _describe(e), len(batch.records), wait,
                )  # fmt: skip
                await asyncio.sleep(wait)
        if batch.records:
            self.stats.batches += 1
            self.stats.records += len(batch.records)
        if pending.offsets:
            self.stats.commits += 1

    def _report(self, pending: Pending) -> None:
        lag = sum(pending.batch.lag.values())
        log.info(
            "%s: %d records in %d batches exported, %d commits, lag %d, %d skipped, %d duplicates",
            self.name, self.stats.records, self.stats.batches, self.stats.commits, lag,
            self.source.stats.malformed, self.source.stats.duplicates,
        )  # fmt: skip

    async def reconfigure(self, section: SectionConfig) -> bool:
        """Hand the exporter a changed config between batches; False: it wants a new one."""
        async with self.source.handing:
            taken = await self.exporter.reconfigure(section.config)
        if taken:
            self.section = section
        return taken

    def _side_topics(self, exporter: Exporter) -> None:
        """An exporter that reports the agents' publishers (spool depth, agent state) follows
        the nodes topic of the same brokers, when the source is Kafka."""
        watch = getattr(exporter, "watch_nodes", None)
        if watch is not None and self.source_config.kafka is not None:
            watch(self.source_config.kafka)

    async def replace_exporter(self, section: SectionConfig) -> None:
        """Close the exporter and start a new one from `section`, between batches (everything
        handed over is flushed and committed by then); the source and its group membership
        stay. A new exporter that cannot start is raised (the caller stops the pipeline)."""
        async with self.source.handing:
            await self.exporter.close()
            self.exporter = None
            try:
                exporter = section.kind.build(section.config)
                await exporter.start()
                self._side_topics(exporter)
            except BaseException:
                self._stopping = True  # nothing to feed: the loop must not take another batch
                raise
            self.exporter, self.section = exporter, section

    async def stop(self) -> None:
        """After the batch in hand is flushed and committed: close the source and exporter."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 30)
            except TimeoutError:
                self._task.cancel()
                log.error("%s: did not stop in 30 s; cancelled", self.name)
            except asyncio.CancelledError:
                pass
        if self.exporter is not None:  # every batch handed over was flushed (or is logged)
            try:
                await self.exporter.close()
            except Exception as e:
                log.error("%s: close failed: %s", self.name, _describe(e))
        if self.source is not None:
            await self.source.close()
        log.info("%s: stopped after %d records", self.name, self.stats.records)

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} ({e.filename or type(e).__name__})"
    return str(e) or type(e).__name__


@dataclass(frozen=True)
class FileStamp:
    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


class Runner:
    """All pipelines of one config file."""

    def __init__(
        self,
        path: Path | str,
        *,
        kinds: Mapping[str, ExporterKind] | None = None,
        default_source: Any = None,
        reload_poll: float = RELOAD_POLL_S,
        progress_every: float = PROGRESS_EVERY_S,
    ) -> None:
        self.path = Path(path)
        self.kinds = kinds
        self.default_source = default_source
        self.reload_poll = reload_poll
        self.progress_every = progress_every
        self.config: ExportConfig | None = None
        self.pipelines: dict[str, Pipeline] = {}
        self.reloads = 0  # configs taken after the first
        self.rejected = 0  # changed files that did not parse
        self._stop = asyncio.Event()
        self._stamp: FileStamp | None = None

    def load(self) -> ExportConfig:
        return load_config(self.path, kinds=self.kinds, default_source=self.default_source)

    async def start(self) -> None:
        """Read the file and start every enabled exporter; a bad file or an exporter that
        cannot start is raised (the command exits non-zero); nothing is left running."""
        self._stamp = FileStamp.of(self.path)
        config = self.load()
        if not config.sections:
            raise ConfigError(
                str(self.path),
                "no exporter enabled",
                hint="add a prometheus, otel or audit section (or set enabled: true)",
            )
        try:
            for section in config.sections:
                await self._start(section, config.source)
        except BaseException:
            await self.stop_all()
            raise
        self.config = config

    async def _start(self, section: SectionConfig, source: SourceConfig) -> None:
        pipeline = Pipeline(section, source, progress_every=self.progress_every)
        await pipeline.start()
        self.pipelines[section.name] = pipeline
        log.info("%s: started (group %s)", section.name, section.group)

    def stop(self) -> None:
        """Ask run() to end (signal handlers call this)."""
        self._stop.set()

    async def run(self) -> None:
        """Until stop(): follow the file and apply its changes; then stop every pipeline."""
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.reload_poll)
                if self._stop.is_set():
                    break
                await self.check_file()
                await self.revive()
        finally:
            await self.stop_all()

    async def revive(self) -> None:
        """A pipeline that ended on an error (its source failed for good) is started again,
        at most once per REVIVE_AFTER_S: it resumes from its group's last commit."""
        now = time.monotonic()
        for name, pipeline in list(self.pipelines.items()):
            if pipeline.failed is None or now - pipeline.failed_at < REVIVE_AFTER_S:
                continue
            log.warning("%s: restarting after: %s", name, pipeline.failed)
            await self._stop_one(name)
            try:
                await self._start(pipeline.section, pipeline.source_config)
            except FlowscopeError as e:
                log.error("%s: cannot start: %s", name, e)

    async def check_file(self) -> bool:
        """Apply the file if it changed; True when a new config was taken."""
        stamp = FileStamp.of(self.path)
        if stamp == self._stamp or stamp is None:
            return False
        self._stamp = stamp
        try:
            config = self.load()
        except FlowscopeError as e:
            self.rejected += 1
            log.error("%s changed but cannot be used: %s; the running config stays", self.path, e)
            return False
        await self.apply(config)
        self.reloads += 1
        return True

    async def apply(self, new: ExportConfig) -> None:
        old = self.config
        assert old is not None
        source_changed = new.source != old.source
        failed: set[str] = set()
        for name in list(self.pipelines):
            section = new.section(name)
            pipeline = self.pipelines[name]
            if section is None:
                log.info("%s: removed or disabled in %s; stopping", name, self.path)
                await self._stop_one(name)
            elif source_changed or section.group != pipeline.section.group:
                log.info("%s: source or group changed; restarting", name)
                await self._stop_one(name)
            elif section.config != pipeline.section.config or section.kind != pipeline.section.kind:
                if section.kind == pipeline.section.kind and await pipeline.reconfigure(section):
                    log.info("%s: reconfigured in place", name)
                else:
                    log.info("%s: config changed; replacing the exporter", name)
                    try:
                        await pipeline.replace_exporter(section)
                    except FlowscopeError as e:
                        log.error("%s: the new exporter cannot start: %s; stopped", name, e)
                        await self._stop_one(name)
                        failed.add(name)
        for section in new.sections:
            if section.name not in self.pipelines and section.name not in failed:
                try:
                    await self._start(section, new.source)
                except FlowscopeError as e:
                    log.error("%s: cannot start: %s", section.name, e)
        self.config = new

    async def _stop_one(self, name: str) -> None:
        pipeline = self.pipelines.pop(name)
        await pipeline.stop()

    async def stop_all(self) -> None:
        pipelines, self.pipelines = list(self.pipelines.values()), {}
        await asyncio.gather(*(p.stop() for p in pipelines))
