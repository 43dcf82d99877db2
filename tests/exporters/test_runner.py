"""The export runner against a real broker: records go through export -> flush -> commit, the
committed offsets are exactly what was flushed, a failing flush is retried without a commit, the
file is reloaded on change (in place, replaced, rejected when bad, removed), and a stop flushes
and commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from exporters.exporter import ConfigError, ExporterKind
from exporters.runner import Runner
from flowscope.errors import FlowscopeError
from tests.collector.kafkabroker import Broker, running_broker
from tests.conftest import unique
from tests.exporters import collectkind
from tests.exporters.kafkaflows import batch, committed, flow, produce
from tests.exporters.relayserver import Observer, serving

KINDS = {"collect": collectkind.KIND}


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path / "broker") as b:
        yield b


def write(path: Path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def running(runner: Runner) -> asyncio.Task:
    await runner.start()
    return asyncio.create_task(runner.run())


async def test_records_flow_through_and_reloads_apply(broker: Broker, tmp_path: Path) -> None:
    collectkind.INSTANCES.clear()
    group = unique("frA")
    out = tmp_path / "out.txt"
    path = tmp_path / "export.yaml"
    raw = {
        "source": {"kafka": {"bootstrap": broker.bootstrap}, "max_records": 1},
        "collect": {"group": group, "path": str(out), "label": "one"},
    }
    write(path, raw)
    nodes = ("n1", "n2", "n3")
    await produce(broker.bootstrap, [(n.encode(), batch(n, 1, [flow(i, n)])) for i, n in
                                     enumerate(nodes)])  # fmt: skip
    runner = Runner(path, kinds=KINDS, reload_poll=0.05)
    task = await running(runner)
    try:
        (first,) = collectkind.INSTANCES
        await until(lambda: len(first.records) == 3)
        await until(lambda: runner.pipelines["collect"].stats.commits == 3)
        assert await committed(broker.bootstrap, group) == 3  # one Kafka record per node
        assert sorted(line.split()[1] for line in out.read_text().splitlines()) == list(nodes)

        # a changed setting the exporter takes in place: the same exporter, no rejoin
        write(path, {**raw, "collect": {**raw["collect"], "label": "two"}})
        await until(lambda: runner.reloads == 1)
        assert [c.label for c in first.reconfigured] == ["two"]
        assert [first] == collectkind.INSTANCES

        # a broken file: logged, the running config stays and keeps exporting
        path.write_text("source: [\n")
        await until(lambda: runner.rejected == 1)
        write(path, {**raw, "collect": {**raw["collect"], "label": "two", "nope": 1}})
        await until(lambda: runner.rejected == 2)
        await produce(broker.bootstrap, [(b"n1", batch("n1", 2, [flow(10, "n1")]))])
        await until(lambda: len(first.records) == 4)

        # a change it cannot take: closed (after flush and commit), a new one built; the
        # consumer stays in its group (no rejoin)
        source = runner.pipelines["collect"].source
        write(path, {**raw, "collect": {**raw["collect"], "label": "three", "replace": True}})
        await until(lambda: runner.reloads == 2)
        assert runner.pipelines["collect"].source is source
        assert first.closed and len(collectkind.INSTANCES) == 2
        second = collectkind.INSTANCES[1]
        assert second.started and not second.closed
        await produce(broker.bootstrap, [(b"n2", batch("n2", 2, [flow(11, "n2")]))])
        await until(lambda: len(second.records) == 1)
        assert second.records[0].time_ns == flow(11, "n2").time_ns  # resumed, nothing again

        # the section disabled: its pipeline stops
        write(path, {**raw, "collect": {"enabled": False}})
        await until(lambda: runner.reloads == 3)
        assert runner.pipelines == {} and second.closed
    finally:
        runner.stop()
        await asyncio.wait_for(task, 40)
    assert await committed(broker.bootstrap, group) == 5
    assert len(out.read_text().splitlines()) == 5


async def test_a_failing_flush_commits_nothing_until_it_succeeds(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    collectkind.INSTANCES.clear()
    group = unique("frB")
    path = tmp_path / "export.yaml"
    write(
        path,
        {
            "source": {"kafka": {"bootstrap": broker.bootstrap}},
            "collect": {"group": group, "fail_flushes": 3},
        },
    )
    caplog.set_level("ERROR", logger="exporters.runner")
    await produce(broker.bootstrap, [(b"n1", batch("n1", 1, [flow(1, "n1"), flow(2, "n1")]))])
    runner = Runner(path, kinds=KINDS)
    task = await running(runner)
    try:
        (exporter,) = collectkind.INSTANCES
        await until(lambda: exporter.failed_flushes == 2)
        assert await committed(broker.bootstrap, group) == 0
        assert exporter.flushes == 0
        await until(lambda: runner.pipelines["collect"].stats.commits == 1, timeout=30)
        # export was called once: the batch is not handed over again, only flushed again
        assert len(exporter.records) == 2
        assert await committed(broker.bootstrap, group) == 1
    finally:
        runner.stop()
        await asyncio.wait_for(task, 40)
    failures = [r.getMessage() for r in caplog.records if "flush failed" in r.getMessage()]
    assert len(failures) == 3
    assert "No space left on device" in failures[0] and "2 records not committed" in failures[0]


async def test_start_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "export.yaml"
    write(path, {"source": {"relay": "127.0.0.1:1"}, "collect": {"enabled": False}})
    with pytest.raises(ConfigError, match="no exporter enabled"):
        await Runner(path, kinds=KINDS).start()

    closed: list[str] = []

    class Busy:
        name = "busy"

        async def start(self) -> None:
            raise FlowscopeError("cannot listen on 127.0.0.1:9965: address in use")

        async def close(self) -> None:
            closed.append("busy")

    busy = ExporterKind("busy", lambda raw, where: raw, lambda c: Busy())  # type: ignore[arg-type,return-value]
    write(path, {"source": {"relay": "127.0.0.1:1"}, "collect": {}, "busy": {}})
    collectkind.INSTANCES.clear()
    runner = Runner(path, kinds={**KINDS, "busy": busy})
    with pytest.raises(FlowscopeError, match="address in use"):
        await runner.start()
    # the exporter started before it was stopped again: nothing left running
    assert runner.pipelines == {}
    assert collectkind.INSTANCES[0].closed


async def test_without_kafka_the_relay_feeds_the_exporter(tmp_path: Path) -> None:
    collectkind.INSTANCES.clear()
    servicer = Observer([flow(1, "n1"), flow(2, "n2")], [flow(3, "n1")])
    async with serving(servicer) as address:
        path = tmp_path / "export.yaml"
        write(
            path,
            {
                "source": {"relay": address, "filters": {"allow": ["--from-namespace shop"]}},
                "collect": {},
            },
        )
        runner = Runner(path, kinds=KINDS)
        task = await running(runner)
        try:
            (exporter,) = collectkind.INSTANCES
            await until(lambda: len(exporter.records) == 3)
            assert [r.node_name for r in exporter.records] == ["n1", "n2", "n1"]
            assert exporter.keys == []  # no seqs from the relay: no keys
            assert exporter.flushes >= 1
            assert len(servicer.requests[0].whitelist) == 1  # the filter ran at the relay
        finally:
            runner.stop()
            await asyncio.wait_for(task, 20)
    assert exporter.closed
