"""Netlink sockets inside another network namespace, and new namespaces, made on a thread
instead of a fork.

pyroute2 (0.9) creates a socket for `IPRoute(netns=...)` in a forked child that enters the
namespace and passes the socket back. Forking a process whose other threads are inside gRPC
(the etcd client) crashes the child (seen: SIGSEGV, "child process is dead, status: -11"). setns(2)
moves only the calling thread, so a short-lived thread can enter the namespace, open the socket
and leave: a socket stays in the namespace it was opened in. A new namespace is made the same
way: a thread unshares its own network namespace and bind-mounts it under /run/netns. Importing
this module installs both into pyroute2 (netns.create_socket, netns.create); dataplane/ and
probes/ import it first.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

import pyroute2.netns as _pyroute2_netns

from flowscope import setns
from flowscope.setns import CLONE_NEWNET, on_own_thread

_libc = ctypes.CDLL(None, use_errno=True)


def _netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else os.path.join("/run/netns", netns)


def socket_in_netns(netns: str, family: int, socket_type: int, proto: int) -> socket.socket:
    """`netns` is a name under /run/netns or a path."""
    return setns.socket_in_netns(_netns_path(netns), family, socket_type, proto)


def _create_socket(
    netns: str | None = None,
    family: int = socket.AF_INET,
    socket_type: int = socket.SOCK_STREAM,
    proto: int = 0,
    fileno: int | None = None,
    flags: int = os.O_CREAT,
    libc=None,
    timeout=None,
) -> socket.socket:
    if fileno is not None and netns is not None:
        raise TypeError("you can not specify both fileno and netns")
    if fileno is not None:
        return socket.socket(fileno=fileno)
    if netns is None:
        return socket.socket(family, socket_type, proto)
    return socket_in_netns(netns, family, socket_type, proto)


def create_netns(netns: str, libc=None) -> None:
    """pyroute2's netns.create, on a thread: unshare(CLONE_NEWNET) moves only that thread."""

    def make() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare: {os.strerror(err)}")
        # pyroute2's own bind mount (shared /run/netns, the mount point), of this thread's ns
        _pyroute2_netns._create(netns, libc, pid=f"self/task/{threading.get_native_id()}")

    on_own_thread(make, name=f"netns-create:{netns}")


_pyroute2_netns.create_socket = _create_socket
_pyroute2_netns.create = create_netns
