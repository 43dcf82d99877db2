"""EtcdKV beyond the shared contract: prefixes, an unreachable store, a watch across a restart."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowscope.errors import FlowscopeError
from flowscope.store.etcd import EtcdKV
from flowscope.store.etcd_server import etcd_command, wait_healthy
from tests.conftest import free_port

pytestmark = pytest.mark.etcd


class OwnEtcd:
    """An etcd of the test's own, so the test may stop and restart it."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.client, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.log = data / "etcd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = etcd_command("t", self.data / "data", self.client, self.peer)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[OwnEtcd]:
    etcd = OwnEtcd(tmp_path)
    try:
        yield etcd
    finally:
        etcd.stop()


async def test_prefix_is_transparent_and_isolating(etcd_url: str, etcd_prefix: str) -> None:
    a, b = EtcdKV(etcd_url, prefix=etcd_prefix + "/a"), EtcdKV(etcd_url, prefix=etcd_prefix + "/b")
    raw = EtcdKV(etcd_url)
    try:
        await a.put("/k", b"from-a")
        assert await b.get("/k") is None
        got = await a.get("/k")
        assert got is not None and got.key == "/k"
        under = await raw.get(etcd_prefix + "/a/k")
        assert under is not None and under.value == b"from-a"
    finally:
        for kv in (a, b, raw):
            await kv.close()


async def test_unreachable_store_is_a_clear_error() -> None:
    kv = EtcdKV(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(FlowscopeError) as err:
            await asyncio.wait_for(kv.get("/x"), 15)
        text = str(err.value)
        assert "cannot reach the cluster store at http://127.0.0.1:" in text
        assert "flowscope lab status" in text
    finally:
        await kv.close()


def test_bad_url_is_refused() -> None:
    with pytest.raises(FlowscopeError, match="bad cluster store URL"):
        EtcdKV("not a url")


def test_etcd_command_sizes_transactions_for_big_applies(tmp_path: Path) -> None:
    cmd = etcd_command("n1", tmp_path, 2379, 2380)
    assert cmd[cmd.index("--max-txn-ops") + 1] == "20000"
    assert cmd[cmd.index("--max-request-bytes") + 1] == "33554432"
    assert cmd[cmd.index("--listen-client-urls") + 1] == "http://127.0.0.1:2379"
    assert cmd[cmd.index("--initial-cluster") + 1] == "n1=http://127.0.0.1:2380"


async def test_wait_healthy_names_the_log_when_etcd_never_comes(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    with pytest.raises(FlowscopeError) as err:
        await wait_healthy(f"http://127.0.0.1:{free_port()}", 0.3, log_file=log)
    assert str(log) in str(err.value)


async def test_watch_resumes_after_etcd_restart_without_losing_events(own_etcd: OwnEtcd) -> None:
    own_etcd.start()
    await wait_healthy(own_etcd.url, 10, own_etcd.log)
    kv = EtcdKV(own_etcd.url)
    writer = EtcdKV(own_etcd.url)
    it = None
    try:
        start = await kv.put("/w/before", b"0")
        it = aiter(kv.watch("/w/", start))
        first = await asyncio.wait_for(anext(it), 5)
        assert first.kv.key == "/w/before"

        own_etcd.stop()  # the watch stream breaks here
        await asyncio.sleep(0.3)
        own_etcd.start()
        await wait_healthy(own_etcd.url, 10, own_etcd.log)
        await writer.put("/w/after-1", b"1")
        await writer.put("/w/after-2", b"2")

        got = [await asyncio.wait_for(anext(it), 15) for _ in range(2)]
        assert [e.kv.key for e in got] == ["/w/after-1", "/w/after-2"]
        assert got[0].kv.mod_revision < got[1].kv.mod_revision
    finally:
        if it is not None:
            await it.aclose()  # type: ignore[attr-defined]
        await kv.close()
        await writer.close()
