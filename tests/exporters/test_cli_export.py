"""`flowscope export` as a user runs it: a bad file exits 2 naming the field, --check, and a
consumer killed with SIGKILL mid-batch that resumes from its committed offset with nothing lost;
SIGTERM ends it with exit 0 after a flush and commit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from exporters.exporter import record_key
from tests.collector.kafkabroker import Broker, running_broker
from tests.conftest import unique
from tests.exporters.kafkaflows import batch, flow, produce

REPO = Path(__file__).parents[2]
PLUGIN = {"collect": "tests.exporters.collectkind"}


def export(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flowscope.cli.main", "export", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_export(*args: str) -> subprocess.CompletedProcess:
    proc = export(*args)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def write(path: Path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (
            {"source": {"kafka": {"bootstrap": "x:1"}}, "plugins": PLUGIN, "collect": {"pth": 1}},
            "collect.pth: unknown field",
        ),
        ({"source": {"kafka": {"bootstrap": "x"}}}, "source.kafka.bootstrap: 'x' is not host:port"),
        (
            {"source": {"relay": "a:1", "filters": {"allow": ["--verdict NOPE"]}}},
            "source.filters.allow[0]",
        ),
    ],
)
def test_a_bad_file_exits_2_naming_the_field(tmp_path: Path, raw: dict, words: str) -> None:
    path = tmp_path / "export.yaml"
    write(path, raw)
    result = run_export("--config", str(path))
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_check_validates_and_names_the_enabled_exporters(tmp_path: Path) -> None:
    path = tmp_path / "export.yaml"
    write(path, {"source": {"relay": "127.0.0.1:4245"}, "plugins": PLUGIN, "collect": {}})
    result = run_export("--config", str(path), "--check")
    assert result.returncode == 0, result.stderr
    assert "enabled exporters: collect" in result.stdout


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path / "broker") as b:
        yield b


def keys_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.split()[0] for line in path.read_text().splitlines()]


async def wait_for(check, proc: subprocess.Popen, timeout: float) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"export exited {proc.returncode}: {proc.stderr.read()}")
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def test_a_consumer_killed_mid_batch_resumes_from_its_commit(
    broker: Broker, tmp_path: Path
) -> None:
    nodes, per_node, per_batch = ("n1", "n2", "n3"), 20, 5
    values = []
    for n in nodes:
        for first in range(1, per_node + 1, per_batch):
            records = [flow(i, n) for i in range(first, first + per_batch)]
            values.append((n.encode(), batch(n, first, records)))
    await produce(broker.bootstrap, values)
    expected = {record_key(n, 7, s) for n in nodes for s in range(1, per_node + 1)}
    out = tmp_path / "out.txt"
    path = tmp_path / "export.yaml"
    raw = {
        "source": {"kafka": {"bootstrap": broker.bootstrap}, "max_records": 1},
        "plugins": PLUGIN,
        "collect": {"group": unique("fcA"), "path": str(out), "delay_s": 0.4},
    }
    write(path, raw)
    proc = export("--config", str(path))
    try:
        await wait_for(lambda: len(keys_in(out)) >= 2 * per_batch, proc, 40)
        os.kill(proc.pid, signal.SIGKILL)  # mid-batch: every export sleeps 0.4 s
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = keys_in(out)
    assert set(before) < expected  # killed before the end

    write(path, {**raw, "collect": {**raw["collect"], "delay_s": 0}})
    proc = export("--config", str(path))
    try:
        # the dead member's partitions idle until its session times out (~10-15 s)
        await wait_for(lambda: set(keys_in(out)) == expected, proc, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = keys_in(out)
    assert set(after) == expected  # nothing lost
    # resumed from the commit: at most the batch in hand when killed came again, not the start
    again = len(after) - len(expected)
    assert 0 <= again <= per_batch, again
    assert "collect: stopped after" in err
