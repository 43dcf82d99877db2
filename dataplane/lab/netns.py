"""Network namespaces of the lab: create, list, remove, and run a function inside one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as _netns

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)
from dataplane.endpoint.netns import run_in_netns, write_sysctls

T = TypeVar("T")
NETNS_DIR = Path("/run/netns")


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def create(name: str) -> None:
    """Create the namespace `name` unless it exists (idempotent), with loopback up."""
    if not exists(name):
        _netns.create(name)
    run_in(name, _loopback_up)


def remove(name: str) -> None:
    if exists(name):
        _netns.remove(name)


def list_with_prefix(prefix: str) -> list[str]:
    return sorted(n for n in _netns.listnetns() if n.startswith(prefix))


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` inside namespace `name` (this thread enters it and comes back)."""
    return run_in_netns(str(path(name)), fn)


def set_sysctls(name: str, values: dict[str, str]) -> None:
    """Write sysctls (keys like 'net.ipv4.ip_forward') inside namespace `name`."""
    write_sysctls(str(path(name)), {k.replace(".", "/"): v for k, v in values.items()})


def _loopback_up() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
