"""Network namespaces of the lab, and running a function inside one.

setns(2) moves only the calling thread, so work that must happen "inside" a namespace (sysctls,
sockets bound there) runs on a short-lived thread of its own and never moves the caller.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as _netns

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)

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
    """Run `fn` on a fresh thread inside namespace `name` and return its result."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _netns.setns(str(path(name)), flags=0)
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def set_sysctls(name: str, values: dict[str, str]) -> None:
    """Write sysctls (keys like 'net.ipv4.ip_forward') inside namespace `name`."""

    def write() -> None:
        for key, value in values.items():
            with open(f"/proc/sys/{key.replace('.', '/')}", "w") as f:
                f.write(value)

    run_in(name, write)


def _loopback_up() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def current_is(name: str) -> bool:
    """Whether this thread is in namespace `name` (compares inode numbers)."""
    return os.stat(path(name)).st_ino == os.stat("/proc/thread-self/ns/net").st_ino
