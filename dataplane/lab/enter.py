"""Joining a pod: its cgroup first, then its network namespace (stdlib only: the responder and
forked probe children import it, and must start fast)."""

from __future__ import annotations

import os

from flowscope.setns import enter_netns


def enter(netns_path: str | None, cgroup: str | None) -> None:
    """Move the calling process into `cgroup` and the calling thread into `netns_path`.

    The cgroup comes first so every socket opened afterwards is charged to the pod: the socket
    load balancer's cgroup hooks see pod traffic as the pod's.
    """
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if netns_path:
        enter_netns(netns_path)
