"""setns(2) for network namespaces, stdlib only (forked children, the pod responder and the DNS
pod use it; importing pyroute2 would cost a DNS pod half a second at start).

It moves only the calling thread: a process's other threads stay where they are.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def on_own_thread(fn: Callable[[], T], *, name: str) -> T:
    """Run `fn` on a short-lived thread and return its result or re-raise its exception: for
    what must happen in another namespace (setns(2), unshare(2) move only the calling thread)
    without moving the caller."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def socket_in_netns(path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket made inside the network namespace at `path` by a short-lived thread: setns(2)
    moves only that thread, and a socket stays in the namespace it was made in."""

    def make() -> socket.socket:
        enter_netns(path)
        return socket.socket(family, kind, proto)

    return on_own_thread(make, name=f"netns-socket:{path}")
