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
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"export exited {proc.returncode}: {err}")
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


def lab_info(extra: dict):  # type: ignore[no-untyped-def]
    from ipaddress import IPv4Address, IPv4Network

    from flowscope.clusterinfo import ClusterInfo

    return ClusterInfo(
        "fsx", "overlay", IPv4Network("10.224.0.0/24"), IPv4Network("10.244.0.0/16"),
        IPv4Network("10.96.0.0/16"), IPv4Address("10.224.0.1"), "http://127.0.0.1:2379",
        extra=extra,
    )  # fmt: skip


def test_without_a_source_section_the_labs_broker_or_relay_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from flowscope import clusterinfo
    from flowscope.cli.export import cluster_source
    from flowscope.cli.main import main
    from flowscope.errors import ClusterNotUp

    kafka = {"kafka": {"bootstrap": "127.0.0.1:39092", "topics": {"flows": "fs.flows"}}}
    labs = {"withkafka": lab_info(kafka), "relayonly": lab_info({"relay": {"address": "x:4245"}})}

    def load(name: str):  # type: ignore[no-untyped-def]
        if name not in labs:
            raise ClusterNotUp(name)
        return labs[name]

    monkeypatch.setattr(clusterinfo, "load", load)
    assert cluster_source("withkafka") == {
        "kafka": {"bootstrap": "127.0.0.1:39092", "topics": {"flows": "fs.flows"}}
    }
    assert cluster_source("relayonly") == {"relay": {"address": "x:4245"}}
    assert cluster_source("nolab") is None

    path = tmp_path / "export.yaml"
    write(path, {"plugins": PLUGIN, "collect": {}})
    assert main(["--cluster", "withkafka", "export", "--config", str(path), "--check"]) == 0
    assert "enabled exporters: collect" in capsys.readouterr().out
    assert main(["--cluster", "nolab", "export", "--config", str(path), "--check"]) == 2
    assert "source: missing" in capsys.readouterr().err


async def test_an_unreachable_broker_is_reported_and_sigterm_still_ends_it(
    tmp_path: Path,
) -> None:
    from tests.conftest import free_port

    port = free_port()  # nothing listens there
    path = tmp_path / "export.yaml"
    write(
        path,
        {"source": {"kafka": {"bootstrap": f"127.0.0.1:{port}"}}, "plugins": PLUGIN, "collect": {}},
    )
    log = tmp_path / "err.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowscope.cli.main", "export", "--config", str(path)],
            cwd=REPO,
            stderr=err,
        )
    try:
        reported = f"cannot reach the Kafka brokers at 127.0.0.1:{port}"
        await wait_for(lambda: log.read_text().count(reported) >= 2, proc, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "retrying in" in text and "Traceback" not in text
