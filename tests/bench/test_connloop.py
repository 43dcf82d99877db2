"""The benchmarks' C connection load (bench/connloop.c): builds, accepts, counts, refuses."""

from __future__ import annotations

import json
import subprocess

import pytest

from bench import connloop
from tests.conftest import free_port


@pytest.fixture(scope="module")
def binary() -> str:
    return str(connloop.binary())


def test_counts_connections_to_its_acceptor(binary: str) -> None:
    port = free_port()
    acceptor = subprocess.Popen([binary, "accept", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert acceptor.stdout is not None
        assert acceptor.stdout.readline().strip() == "listening"
        out = subprocess.run(
            [binary, "connect", "127.0.0.1", str(port), "0.3"],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout)
        assert result["ok"] > 0 and result["failed"] == 0
        assert result["seconds"] >= 0.3
    finally:
        acceptor.kill()
        acceptor.wait()


def test_refused_connections_count_as_failed(binary: str) -> None:
    out = subprocess.run(
        [binary, "connect", "127.0.0.1", str(free_port()), "0.1"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["ok"] == 0 and result["failed"] > 0


def test_bad_arguments_exit_2_saying_why(binary: str) -> None:
    bad_ip = subprocess.run([binary, "connect", "nope", "80", "1"], capture_output=True, text=True)
    assert bad_ip.returncode == 2 and "nope is not an IPv4 address" in bad_ip.stderr
    usage = subprocess.run([binary, "frobnicate"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_an_edited_source_gets_its_own_binary(tmp_path, monkeypatch) -> None:
    source = tmp_path / "connloop.c"
    source.write_bytes(connloop.SOURCE.read_bytes() + b"\n/* edited */\n")
    monkeypatch.setattr(connloop, "SOURCE", source)
    monkeypatch.setattr(connloop, "CACHE_DIR", tmp_path / "cache")
    built = connloop.binary()
    assert built.parent == tmp_path / "cache" and built.exists()
    assert connloop.binary() == built  # cached: not rebuilt
    assert not list(built.parent.glob("*.tmp"))
