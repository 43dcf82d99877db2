"""Running a service's parts together: all of them until one ends, and level-triggered loops.

A part of a long-running service (a mirror following the store, a reconcile loop) is meant to
run until cancelled; one that returns or fails takes the whole service down, visibly, so that
its supervisor restarts it rather than leaving it half alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any


async def run_together(parts: Mapping[str, Coroutine[Any, Any, Any]], what: str) -> None:
    """Run every part until one ends; re-raise its error, or say which one returned."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in parts.items()]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        ended = ", ".join(sorted(t.get_name() for t in done))
        raise RuntimeError(f"{what}: {ended} ended unexpectedly")
    finally:
        for task in tasks:
            task.cancel()


async def on_change(changed: asyncio.Event, act: Callable[[], Awaitable[None]]) -> None:
    """Act after each change, coalesced: changes during an action make one more action."""
    while True:
        await changed.wait()
        changed.clear()
        await act()
