"""Netlink sockets inside another network namespace, made on a thread instead of a fork.

pyroute2 (0.9) creates a socket for `IPRoute(netns=...)` in a forked child that enters the
namespace and passes the socket back. Forking a process whose other threads are inside gRPC
(the etcd client) crashes the child (seen: SIGSEGV, "child process is dead, status: -11"). setns(2)
moves only the calling thread, so a short-lived thread can enter the namespace, open the socket
and leave: a socket stays in the namespace it was opened in. Importing this module installs that
strategy into pyroute2; dataplane/ and probes/ import it first.
"""

from __future__ import annotations

import os
import socket
import threading

import pyroute2.netns as _pyroute2_netns

from flowscope.setns import enter_netns


def _netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else os.path.join("/run/netns", netns)


def socket_in_netns(netns: str, family: int, socket_type: int, proto: int) -> socket.socket:
    box: dict[str, object] = {}

    def target() -> None:
        try:
            enter_netns(_netns_path(netns))
            box["sock"] = socket.socket(family, socket_type, proto)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-socket:{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["sock"]  # type: ignore[return-value]


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


_pyroute2_netns.create_socket = _create_socket
