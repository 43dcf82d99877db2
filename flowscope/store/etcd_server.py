"""How the lab runs its etcd (Debian's etcd-server): the command line and the wait for health."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from flowscope.errors import FlowscopeError


def etcd_command(name: str, data_dir: Path | str, client_port: int, peer_port: int) -> list[str]:
    """A single-member etcd on loopback, sized so a 1,000-object apply is one transaction."""
    binary = shutil.which("etcd")
    if binary is None:
        raise FlowscopeError(
            "etcd is not installed", hint="run `make setup` (Debian package etcd-server)"
        )
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        binary,
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        f"{name}={peer}",
        # one member on loopback: short raft timers make startup take ~0.1 s instead of ~1 s
        "--heartbeat-interval",
        "10",
        "--election-timeout",
        "100",
        # an apply is all-or-nothing, so its objects must fit in one transaction
        "--max-txn-ops",
        "20000",
        "--max-request-bytes",
        "33554432",
    ]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return json.loads(r.read()).get("health") in ("true", True)
    except (OSError, ValueError, urllib.error.URLError):
        return False


async def wait_healthy(url: str, timeout: float, log_file: Path | str | None = None) -> None:
    """Return once etcd at `url` reports healthy; raise a FlowscopeError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        if await asyncio.to_thread(_healthy, url):
            return
        if time.monotonic() > deadline:
            where = f"read {log_file}" if log_file else "read the etcd log in the cluster run dir"
            raise FlowscopeError(
                f"etcd at {url} did not become healthy within {timeout:g} s",
                hint=f"{where}; `flowscope lab down` then `flowscope lab up` starts it afresh",
            )
        await asyncio.sleep(0.05)
