"""Shared fixtures: a real etcd per test session, unique names for kernel objects."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flowscope.store import KV, MemoryKV
from flowscope.store.etcd import EtcdKV
from flowscope.store.etcd_server import etcd_command, wait_healthy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str = "t") -> str:
    """A short unique name for a test's namespaces, links and clusters."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real etcd server on loopback for this test session."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.fail("etcd is not installed: run `make setup` (Debian package etcd-server)")
    data = tmp_path_factory.mktemp("etcd")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    argv = etcd_command("test", data, client, peer)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(data) / "etcd.log", "wb"),  # noqa: SIM115
    )
    try:
        # its own thread: pytest-asyncio may already run a loop in this one
        with ThreadPoolExecutor(1) as pool:
            pool.submit(
                asyncio.run, wait_healthy(url, 15, log_file=Path(data) / "etcd.log")
            ).result()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix of its own for each test sharing the session's etcd."""
    return f"/t/{uuid.uuid4().hex[:8]}"


def is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KV]:
    """The same test against MemoryKV and against the real etcd (a key prefix of its own)."""
    if request.param == "memory":
        store: KV = MemoryKV()
    else:
        url = request.getfixturevalue("etcd_url")
        store = EtcdKV(url, prefix=request.getfixturevalue("etcd_prefix"))
    try:
        yield store
    finally:
        await store.close()
