"""Joining a pod: its cgroup first, then its network namespace, then its view of
/etc/resolv.conf (stdlib only: the responder and forked probe children import it, and must start
fast)."""

from __future__ import annotations

import ctypes
import os

from flowscope.setns import enter_netns

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
RESOLV_CONF = "/etc/resolv.conf"
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def bind_resolv_conf(path: str) -> None:
    """Show `path` as /etc/resolv.conf to this process and its children only.

    As `ip netns exec` does with /etc/netns/NAME/resolv.conf: a private mount namespace (whose
    mounts vanish with its last process), made a slave first so that the bind mount cannot
    propagate back to the host's mounts, then a bind mount over the file. The process must be
    single-threaded (a forked child, or before any thread starts).
    """
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
    _check(
        _libc.mount(path.encode(), RESOLV_CONF.encode(), None, MS_BIND, None),
        f"bind mount {path} on {RESOLV_CONF}",
    )


def enter(netns_path: str | None, cgroup: str | None, resolv_conf: str | None = None) -> None:
    """Move the calling process into `cgroup`, the calling thread into `netns_path`, and show
    `resolv_conf` (when the pod has one) as /etc/resolv.conf.

    The cgroup comes first so every socket opened afterwards is charged to the pod: the socket
    load balancer's cgroup hooks see pod traffic as the pod's.
    """
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if netns_path:
        enter_netns(netns_path)
    if resolv_conf and os.path.exists(resolv_conf):
        bind_resolv_conf(resolv_conf)
