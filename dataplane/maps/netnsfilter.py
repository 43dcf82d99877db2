"""The set of network namespaces a node's tracepoint probes report (probes/tracepoints.c
`netns_watch`).

Tracepoints fire for every namespace of the machine; a node agent watches its node namespace and
its pods' namespaces, by inode number (what `stat` shows for /run/netns/<name> and what the kernel
has in `net->ns.inum`). The probes drop every event from a namespace not in the set before doing
anything else.
"""

from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

from dataplane.maps.bpfmap import BpfMap
from flowscope.errors import NotFound, UsageError

NETNS_RUN_DIR = Path("/run/netns")
_WATCHED = ct.c_uint8(1)


def netns_inode(name: str | None = None) -> int:
    """Inode number of the named namespace (/run/netns/<name>); None: this process's own."""
    if name is None:
        return os.stat("/proc/self/ns/net").st_ino
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"netns: {name!r} is not a network namespace name")
    path = NETNS_RUN_DIR / name
    try:
        return os.stat(path).st_ino
    except FileNotFoundError as e:
        raise NotFound(
            f"netns: no network namespace {name!r} ({path} does not exist)",
            hint="list them with `ip netns list`",
        ) from e


def _key(inode: int) -> ct.c_uint32:
    if not 0 < inode < 2**32:
        raise UsageError(f"netns inode: {inode} is not a namespace inode number")
    return ct.c_uint32(inode)


class NetnsFilter:
    """Add and remove watched namespaces; changes take effect for the next event."""

    def __init__(self, bpfmap: BpfMap) -> None:
        self.map = bpfmap

    def watch(self, inode: int) -> None:
        self.map.update(_key(inode), _WATCHED)

    def unwatch(self, inode: int) -> bool:
        """Stop reporting the namespace; False when it was not watched."""
        return self.map.delete(_key(inode))

    def inodes(self) -> set[int]:
        keys, _ = self.map.dump()
        return {int(k) for k in keys}

    def __contains__(self, inode: int) -> bool:
        return self.map.lookup(_key(inode)) is not None
