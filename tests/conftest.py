"""Shared fixtures: a real etcd per test session, unique names for kernel objects."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


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
    proc = subprocess.Popen(
        [
            binary,
            "--name",
            "test",
            "--data-dir",
            str(data),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"test=http://127.0.0.1:{peer}",
            "--heartbeat-interval",
            "10",
            "--election-timeout",
            "100",
            "--max-txn-ops",
            "20000",
            "--max-request-bytes",
            "33554432",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(Path(data) / "etcd.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"etcd did not become healthy; see {data}/etcd.log")
            time.sleep(0.05)
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
