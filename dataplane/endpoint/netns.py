"""Work inside another network namespace without moving the process or forking.

A network namespace is per thread: a worker thread enters the target namespace, does its work
(creating a netlink socket there, writing /proc/sys/net), and returns to its own namespace before
the thread is reused. The event loop's thread never changes namespace. This costs ~0.1 ms where
pyroute2's `netns=` forks a child (~13 ms measured).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2 import AsyncIPRoute

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)
NETNS_RUN_DIR = Path("/run/netns")


def netns_path(netns: str) -> str:
    """A namespace given by name (as `ip netns` names it) or by path, as a path."""
    return netns if "/" in netns else str(NETNS_RUN_DIR / netns)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Call `fn` in the calling thread while it is inside the namespace at `path` (blocking)."""
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return fn()
            finally:
                _setns(own)  # failing here would leave a pool thread in the wrong namespace
        finally:
            os.close(own)
    finally:
        os.close(target)


def write_sysctls(path: str, values: dict[str, str]) -> None:
    """Write /proc/sys entries (keys like "net/ipv4/conf/lxc1/forwarding") inside `path`."""

    def write() -> None:
        for key, value in values.items():
            with open(f"/proc/sys/{key}", "w") as fh:
                fh.write(value)

    run_in_netns(path, write)


async def open_rtnl(netns: str) -> AsyncIPRoute:
    """An rtnetlink socket bound to the namespace `netns` (name or path); caller closes it.

    Raises FileNotFoundError when the namespace does not exist (never creates one, unlike
    pyroute2's `netns=` with its default O_CREAT).
    """
    path = netns_path(netns)
    sock = await asyncio.to_thread(
        run_in_netns,
        path,
        lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE),
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        ipr = AsyncIPRoute(use_socket=sock, groups=0)
        await ipr.setup_endpoint()
    except BaseException:
        sock.close()
        raise
    return ipr
