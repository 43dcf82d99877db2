"""Attach BPF programs to an interface's tc clsact hooks, in any network namespace, by netlink.

pyroute2's AsyncIPRoute(netns=...) opens its netlink socket inside the namespace while the request
is still sent by this process, so the program fd in the request is this process's fd: no nsenter,
no `tc` binary. Filters are direct-action cls_bpf filters identified by (hook, prio, handle), so
several programs can share an interface's clsact qdisc and each owner removes only its own.
"""

from __future__ import annotations

import contextlib
import enum
import errno
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)
from flowscope.errors import FlowscopeError

NETNS_DIR = Path("/run/netns")
_ETH_P_ALL = 0x0003


class AttachError(FlowscopeError):
    pass


class Hook(enum.Enum):
    INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
    EGRESS = 0xFFFFFFF3  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)


@dataclass(frozen=True)
class TcAttachment:
    """Where a filter sits; enough to find and delete it again, also from another process."""

    netns: str | None  # None: this process's namespace
    ifname: str
    hook: Hook
    prio: int
    handle: int
    name: str


@dataclass(frozen=True)
class TcFilter:
    hook: Hook
    prio: int
    handle: int
    name: str | None


def _route(netns: str | None) -> AsyncIPRoute:
    if netns is None:
        return AsyncIPRoute()
    if not (NETNS_DIR / netns).exists():
        raise AttachError(
            f"network namespace {netns!r} does not exist",
            hint="is the lab node up? (`flowscope lab status`)",
        )
    return AsyncIPRoute(netns=netns, flags=0)  # flags=0: never create the namespace


async def _ifindex(ipr: AsyncIPRoute, netns: str | None, ifname: str) -> int:
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise AttachError(f"no interface {ifname!r} in network namespace {netns or '(own)'}")
    return found[0]


async def attach(
    netns: str | None,
    ifname: str,
    hook: Hook,
    prog_fd: int,
    *,
    name: str,
    prio: int,
    handle: int = 1,
) -> TcAttachment:
    """Create clsact if missing, then add or atomically replace the filter (hook, prio, handle)."""
    async with _route(netns) as ipr:
        index = await _ifindex(ipr, netns, ifname)
        try:
            await ipr.tc("add", "clsact", index)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise AttachError(f"cannot add clsact on {ifname} in {netns}: {e}") from e
        try:
            await ipr.tc(
                "replace-filter",
                "bpf",
                index,
                handle=handle,
                fd=prog_fd,
                name=name,
                parent=hook.value,
                classid=1,
                direct_action=True,
                prio=prio,
                protocol=_ETH_P_ALL,
            )
        except NetlinkError as e:
            raise AttachError(f"cannot attach {name} to {ifname} {hook.name.lower()}: {e}") from e
    return TcAttachment(netns, ifname, hook, prio, handle, name)


async def attach_all(
    netns: str | None,
    ifname: str,
    programs: Iterable[tuple[Hook, int, str]],
    *,
    prio: int,
    handle: int = 1,
) -> tuple[TcAttachment, ...]:
    """Attach each (hook, prog_fd, name) in order, all or nothing: when one fails, the filters
    this call already attached are removed again and the error propagates."""
    done: list[TcAttachment] = []
    try:
        for hook, prog_fd, name in programs:
            done.append(
                await attach(netns, ifname, hook, prog_fd, name=name, prio=prio, handle=handle)
            )
    except BaseException:
        for att in done:
            with contextlib.suppress(FlowscopeError, OSError):
                await detach(att)
        raise
    return tuple(done)


async def detach(att: TcAttachment) -> bool:
    """Delete the filter; False when it (or its namespace or interface) is already gone."""
    if att.netns is not None and not (NETNS_DIR / att.netns).exists():
        return False
    async with _route(att.netns) as ipr:
        found = await ipr.link_lookup(ifname=att.ifname)
        if not found:
            return False
        try:
            await ipr.tc(
                "del-filter",
                "bpf",
                found[0],
                handle=att.handle,
                parent=att.hook.value,
                prio=att.prio,
                protocol=_ETH_P_ALL,
            )
        except NetlinkError as e:
            if e.code in (errno.ENOENT, errno.EINVAL):
                return False
            raise AttachError(f"cannot detach {att.name} from {att.ifname}: {e}") from e
    return True


async def detach_all(attachments: Iterable[TcAttachment]) -> int:
    """Delete each filter; returns how many were there."""
    removed = 0
    for att in attachments:
        removed += await detach(att)
    return removed


async def filters(netns: str | None, ifname: str, hook: Hook) -> list[TcFilter]:
    """The bpf filters on one hook (the clsact qdisc missing means none)."""
    async with _route(netns) as ipr:
        index = await _ifindex(ipr, netns, ifname)
        out = []
        try:
            async for msg in await ipr.get_filters(index=index, parent=hook.value):
                if msg.get_attr("TCA_KIND") != "bpf" or not msg.get("handle"):
                    continue  # the per-prio chain header carries no filter
                out.append(
                    TcFilter(
                        hook=hook,
                        prio=msg["info"] >> 16,
                        handle=msg["handle"],
                        name=msg.get_nested("TCA_OPTIONS", "TCA_BPF_NAME"),
                    )
                )
        except NetlinkError as e:
            if e.code != errno.EINVAL:
                raise
        return out
