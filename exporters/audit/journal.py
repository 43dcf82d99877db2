"""The audit files: lines appended to one file and made durable (fsync), rotated by size into
`<path>.1.gz` (newest) ... `<path>.<max_files>.gz`, as logrotate and lumberjack name them.

Durability: `append` writes lines and fsyncs the file before it reports them written; a rotation
fsyncs the directory after each rename. A write that fails (ENOSPC, EIO) is cut back off the file
(ftruncate to the last durable size), so the file never holds a torn line, and the lines stay
with the caller to be written again. A crash can leave a torn last line (cut on open) or a
rotation half done (`<path>.rotating`: finished on open and before every append).

Blocking I/O: the exporter calls these methods in a worker thread.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
from pathlib import Path

_CHUNK = 1 << 16


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Journal:
    def __init__(self, path: str | Path, max_bytes: int, max_files: int, compress: bool) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.compress = compress
        self.rotating = self.path.with_name(self.path.name + ".rotating")
        self._fd: int | None = None
        self.size = 0  # durable bytes in the current file

    def rotated(self, n: int) -> Path:
        """The n-th rotated file (1: the newest)."""
        return self.path.with_name(f"{self.path.name}.{n}{'.gz' if self.compress else ''}")

    def files(self) -> list[Path]:
        """Every file holding lines, oldest first."""
        out = [self.rotated(n) for n in range(self.max_files, 0, -1) if self.rotated(n).exists()]
        if self.rotating.exists():
            out.append(self.rotating)
        return [*out, self.path] if self.path.exists() else out

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._finish_rotation()
        self._open_current()

    def _open_current(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            size = self._last_line_end(fd, size)  # a torn line of a crash: never acknowledged
            os.ftruncate(fd, size)
            os.fsync(fd)
        self._fd, self.size = fd, size

    @staticmethod
    def _last_line_end(fd: int, size: int) -> int:
        end = size
        while end > 0:
            start = max(0, end - _CHUNK)
            block = os.pread(fd, end - start, start)
            i = block.rfind(b"\n")
            if i >= 0:
                return start + i + 1
            end = start
        return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, lines: list[bytes]) -> None:
        """Write the lines (each ending in a newline), removing from `lines` those written and
        fsynced as they are; OSError leaves the rest in `lines` and the file as it was."""
        if self._fd is None:
            self.open()
        self._finish_rotation()
        while lines:
            if self.size and self.size + len(lines[0]) > self.max_bytes:
                self._rotate()
            room = max(self.max_bytes - self.size, len(lines[0]))
            n, used = 0, 0
            while n < len(lines) and used + len(lines[n]) <= room:
                used += len(lines[n])
                n += 1
            self._write(b"".join(lines[:n]))
            del lines[:n]

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            _write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # cutting frees space: it works on a full disk
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def _rotate(self) -> None:
        """The current file becomes `<path>.rotating` (one rename), a new one is opened, and the
        old one is compressed into `<path>.1.gz` with the older ones shifted up."""
        self.close()
        os.rename(self.path, self.rotating)
        _fsync_dir(self.path.parent)
        self._open_current()
        _fsync_dir(self.path.parent)
        self._finish_rotation()

    def _finish_rotation(self) -> None:
        if not self.rotating.exists():
            return
        tmp = self.path.with_name(self.path.name + ".rotated.tmp")
        tmp.unlink(missing_ok=True)  # left by a crash while compressing
        try:
            if self.compress:
                with open(self.rotating, "rb") as src, open(tmp, "wb") as raw:
                    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz:
                        shutil.copyfileobj(src, gz, _CHUNK * 16)
                    raw.flush()
                    os.fsync(raw.fileno())
            else:
                os.link(self.rotating, tmp)
        except OSError:
            tmp.unlink(missing_ok=True)  # the lines stay in .rotating: tried again later
            raise
        self.rotated(self.max_files).unlink(missing_ok=True)
        for n in range(self.max_files - 1, 0, -1):
            if self.rotated(n).exists():
                os.rename(self.rotated(n), self.rotated(n + 1))
        os.rename(tmp, self.rotated(1))
        self.rotating.unlink()
        _fsync_dir(self.path.parent)
