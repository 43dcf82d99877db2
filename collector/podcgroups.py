"""Which local pod a cgroup id belongs to: the socket LB's events name the connecting task's
cgroup (bpf_get_current_cgroup_id), and every pod's processes live in the pod's own cgroup
(ClusterPaths.pod_cgroup), whose id is the cgroup directory's inode number on cgroup v2.

Hubble finds the client of a socket translation the same way (cgroup id -> pod metadata).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

RESCAN_INTERVAL = 1.0  # seconds: a cgroup that is no pod's (a host process) misses every time


def cgroup_id(path: Path | str) -> int:
    """The id the kernel gives a cgroup v2 directory (its inode number)."""
    return os.stat(path).st_ino


class PodCgroups:
    """cgroup id -> the pod's IP, for the pods `pods()` lists as (cgroup directory, pod IP).

    Learnt lazily: an unknown id rescans the pods' directories, at most once per
    RESCAN_INTERVAL. Ids are not reused by the kernel, so a remembered one never names
    another pod; the entries of deleted pods are dropped at the next rescan."""

    def __init__(
        self,
        pods: Callable[[], Iterable[tuple[Path | str, str]]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pods = pods
        self._clock = clock
        self._ips: dict[int, str] = {}
        self._scanned = float("-inf")

    def ip_of(self, cgroup: int) -> str | None:
        ip = self._ips.get(cgroup)
        if ip is None and cgroup and self._clock() - self._scanned >= RESCAN_INTERVAL:
            self.rescan()
            ip = self._ips.get(cgroup)
        return ip

    def rescan(self) -> None:
        ips: dict[int, str] = {}
        for path, ip in self._pods():
            try:
                ips[cgroup_id(path)] = ip
            except OSError:
                continue  # the pod is going away (or its sandbox is not made yet)
        self._ips = ips
        self._scanned = self._clock()
