"""The audit exporter: every flow and lost event the filters keep, one Hubble JSON line each
(a GetFlowsResponse, as `hubble observe -o json` prints it) with "flowscope_key" added: the
record's key from the runner ("<node>:<run_id>:<seq>"), or, without one (from the relay), a hash
of the line. Records are delivered at least once; a reader drops lines whose key it has seen.

`flush` writes the lines and fsyncs; only then does the runner commit the offsets. A write that
fails (a full disk) raises FlowscopeError saying so, and the lines are kept: the runner commits
nothing, logs it and calls flush again with backoff until the write succeeds; none is lost.
`stalled` says why writing fails meanwhile (None while it works).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import time
from typing import Any

from exporters.audit.config import AuditConfig
from exporters.audit.fieldmask import apply_mask, mask_tree
from exporters.audit.journal import Journal
from exporters.audit.redact import redact_flow
from exporters.exporter import ExportBatch
from flowscope.errors import FlowscopeError
from flowscope.flow.model import Flow, Record
from flowscope.flow.timestamp import format_rfc3339

log = logging.getLogger(__name__)
KEY_FIELD = "flowscope_key"


class _Format:
    """What a config asks of each line: filters, redaction, field mask."""

    def __init__(self, config: AuditConfig) -> None:
        self.selection = config.selection()
        self.redaction = config.redact.rules()
        self.mask = mask_tree(config.field_mask)

    def line(self, record: Record, key: str | None) -> bytes | None:
        if not self.selection.matches(record):
            return None
        out: dict[str, Any]
        if isinstance(record, Flow):
            flow = apply_mask(redact_flow(record.to_dict(), self.redaction), self.mask)
            out = {"flow": flow}
        else:
            out = {"lost_events": record.to_dict()}
        if record.node_name:
            out["node_name"] = record.node_name
        out["time"] = format_rfc3339(record.time_ns)
        if key is None:
            text = json.dumps(out, separators=(",", ":"))
            key = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]
        out[KEY_FIELD] = key
        return (json.dumps(out, separators=(",", ":")) + "\n").encode()


class AuditExporter:
    def __init__(self, config: AuditConfig, name: str = "audit") -> None:
        self.name = name
        self.config = config
        self._format = _Format(config)
        self._journal = self._journal_of(config)
        self._pending: list[bytes] = []  # lines not yet durable
        self.written = 0  # lines made durable
        self.stalled: str | None = None  # why writing fails now (None: it does not)
        self._stalled_at = 0.0

    @staticmethod
    def _journal_of(config: AuditConfig) -> Journal:
        r = config.rotate
        return Journal(config.path, r.max_bytes, r.max_files, r.compress)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._journal.open)
        except OSError as e:
            raise FlowscopeError(
                f"audit: cannot open {self.config.path}: {e.strerror}",
                hint="check audit.path: its directory must be writable by flowscope export",
            ) from None
        log.info("audit: writing %s", self.config.path)

    async def export(self, batch: ExportBatch) -> None:
        keys = batch.keys if len(batch.keys) == len(batch.records) else None
        for i, record in enumerate(batch.records):
            line = self._format.line(record, keys[i] if keys else None)
            if line is not None:
                self._pending.append(line)

    async def flush(self) -> None:
        if not self._pending:
            return
        before = len(self._pending)
        try:
            await asyncio.to_thread(self._journal.append, self._pending)
        except OSError as e:
            self.written += before - len(self._pending)  # written before the failure
            reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
            if self.stalled is None:
                self._stalled_at = time.monotonic()
            self.stalled = f"{reason} writing {self.config.path}"
            # the runner logs this and calls flush again later; the lines stay here meanwhile
            raise FlowscopeError(
                f"audit: {self.stalled} ({len(self._pending)} lines waiting); "
                "offsets are not committed until they are written",
                hint="free space on the audit file's disk (or lower audit.rotate.max_files); "
                "writing resumes by itself",
            ) from None
        self.written += before
        if self.stalled is not None:
            log.warning(
                "audit: writing %s again after %.1f s",
                self.config.path,
                time.monotonic() - self._stalled_at,
            )
            self.stalled = None

    async def close(self) -> None:
        await asyncio.to_thread(self._journal.close)

    async def reconfigure(self, config: Any) -> bool:
        if not isinstance(config, AuditConfig) or not config.same_output(self.config):
            return False
        self._format = _Format(config)  # lines already pending keep the old format
        self.config = config
        return True
