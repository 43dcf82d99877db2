"""flowscope.supervise: parts run together until one ends; changes coalesce."""

from __future__ import annotations

import asyncio

import pytest

from flowscope.supervise import on_change, run_together


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_failing_part_takes_the_others_down_with_its_error() -> None:
    cancelled = asyncio.Event()

    async def watched() -> None:
        try:
            await forever()
        finally:
            cancelled.set()

    async def fails() -> None:
        raise ValueError("broken input")

    with pytest.raises(ValueError, match="broken input"):
        await run_together({"a": watched(), "b": fails()}, "svc")
    await asyncio.sleep(0)
    assert cancelled.is_set()


async def test_a_part_that_returns_is_named() -> None:
    async def returns() -> None:
        return None

    with pytest.raises(RuntimeError, match="svc: quitter ended unexpectedly"):
        await run_together({"loop": forever(), "quitter": returns()}, "svc")


async def test_changes_during_an_action_make_one_more_action() -> None:
    changed = asyncio.Event()
    runs: list[int] = []
    gate = asyncio.Event()

    async def act() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            await gate.wait()

    task = asyncio.create_task(on_change(changed, act))
    try:
        changed.set()
        while not runs:
            await asyncio.sleep(0)
        for _ in range(5):  # five changes while the first action runs
            changed.set()
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert runs == [0, 1]
    finally:
        task.cancel()
