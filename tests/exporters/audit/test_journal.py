"""The audit files: size rotation into gzip files, recovery after a crash, and a full disk
(a tmpfs of a few pages, mounted and unmounted by the test)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from exporters.audit import KEY_FIELD, KIND
from exporters.audit.journal import Journal
from exporters.exporter import ExportBatch, record_key
from flowscope.errors import FlowscopeError
from tests.exporters.otel.flows import tcp_flow


def _read(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.splitlines(keepends=True)


def _numbered(n: int, width: int = 100) -> list[bytes]:
    return [f"{i:0{width - 1}d}\n".encode() for i in range(n)]


def test_rotation_keeps_max_files_compressed_and_every_line_in_order(tmp_path) -> None:
    j = Journal(tmp_path / "a.jsonl", max_bytes=1000, max_files=3, compress=True)
    j.open()
    lines = _numbered(35)  # 100 bytes each: 10 a file
    for start in range(0, 35, 7):  # appends that straddle file boundaries
        chunk = lines[start : start + 7]
        j.append(chunk)
        assert chunk == []  # all written
    j.close()
    files = j.files()
    assert [f.name for f in files] == ["a.jsonl.3.gz", "a.jsonl.2.gz", "a.jsonl.1.gz", "a.jsonl"]
    assert all(os.path.getsize(f) <= 1000 for f in files if f.suffix != ".gz")
    # 35 lines of 100 bytes: three full files of 10 and the current one of 5; none fell off
    assert [len(_read(f)) for f in files] == [10, 10, 10, 5]
    assert [line for f in files for line in _read(f)] == lines


def test_rotation_drops_the_oldest_beyond_max_files(tmp_path) -> None:
    j = Journal(tmp_path / "a.jsonl", max_bytes=1000, max_files=2, compress=False)
    j.open()
    lines = _numbered(45)
    j.append(list(lines))
    j.close()
    assert [f.name for f in j.files()] == ["a.jsonl.2", "a.jsonl.1", "a.jsonl"]
    assert [line for f in j.files() for line in _read(f)] == lines[20:]


def test_torn_last_line_is_cut_on_open(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')  # a crash in the middle of a write
    j = Journal(path, 1 << 20, 5, True)
    j.open()
    j.append([b'{"d":4}\n'])
    j.close()
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n{"d":4}\n'


def test_half_done_rotation_is_finished_on_open(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    (tmp_path / "a.jsonl.rotating").write_bytes(b"old\n")  # a crash after the rename
    (tmp_path / "a.jsonl.rotated.tmp").write_bytes(b"junk")  # ... while compressing
    (tmp_path / "a.jsonl.1.gz").write_bytes(gzip.compress(b"older\n"))
    j = Journal(path, 1 << 20, 5, True)
    j.open()
    j.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.jsonl.1.gz", "a.jsonl.2.gz"]
    assert _read(tmp_path / "a.jsonl.1.gz") == [b"old\n"]
    assert _read(tmp_path / "a.jsonl.2.gz") == [b"older\n"]


async def test_exporter_rotates_and_every_record_is_in_the_files(tmp_path) -> None:
    config = KIND.parse(
        {"path": str(tmp_path / "audit.jsonl"), "rotate": {"max_mb": 0.01, "max_files": 50}},
        "audit",
    )
    exp = KIND.build(config)
    await exp.start()
    n = 0
    for _ in range(20):
        records = tuple(tcp_flow(n + i) for i in range(25))
        keys = tuple(record_key("n1", 1, n + i + 1) for i in range(25))
        await exp.export(ExportBatch(records, keys=keys))
        await exp.flush()
        n += 25
    await exp.close()
    files = exp._journal.files()
    assert len(files) > 10
    assert all(f.name.endswith(".gz") for f in files[:-1])
    keys = [json.loads(line)[KEY_FIELD] for f in files for line in _read(f)]
    assert keys == [f"n1:1:{i}" for i in range(1, n + 1)]
    assert exp.written == n


@contextlib.contextmanager
def _tmpfs(path: Path, size_kb: int):
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.privileged
async def test_disk_full_stops_committing_and_loses_nothing(tmp_path) -> None:
    with _tmpfs(tmp_path / "disk", 64) as disk:
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            while True:  # fill it to the last block
                f.write(b"x" * 4096)
                f.flush()
        exp = KIND.build(KIND.parse({"path": str(disk / "audit.jsonl")}, "audit"))
        os.truncate(filler, os.path.getsize(filler) - 4096)  # room to open, not to write all
        await exp.start()
        records = tuple(tcp_flow(i) for i in range(100))
        keys = tuple(record_key("n1", 1, i + 1) for i in range(100))
        await exp.export(ExportBatch(records, keys=keys))
        for _ in range(2):  # the runner commits nothing and tries again later
            with pytest.raises(FlowscopeError, match="disk full") as e:
                await exp.flush()
            assert "offsets are not committed" in str(e.value)
            assert exp.stalled is not None
            on_disk = (disk / "audit.jsonl").read_bytes()
            assert on_disk == b"" or on_disk.endswith(b"\n")  # no torn line
        filler.unlink()  # space again
        await exp.flush()
        assert exp.stalled is None
        await exp.close()
        lines = (disk / "audit.jsonl").read_text().splitlines()
        assert [json.loads(line)[KEY_FIELD] for line in lines] == list(keys)
        assert exp.written == 100


async def test_a_failed_flush_keeps_the_lines(tmp_path) -> None:
    """An injected writer fault (EIO): flush raises, nothing is lost, the next flush writes."""
    exp = KIND.build(KIND.parse({"path": str(tmp_path / "audit.jsonl")}, "audit"))
    await exp.start()
    journal = exp._journal
    real = journal.append
    failing = True

    def append(lines):
        if failing:
            raise OSError(5, "Input/output error")
        real(lines)

    journal.append = append
    await exp.export(ExportBatch((tcp_flow(1), tcp_flow(2))))
    with pytest.raises(FlowscopeError, match="Input/output error"):
        await exp.flush()
    failing = False
    await exp.export(ExportBatch((tcp_flow(3),)))
    await exp.flush()
    await exp.close()
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 3
