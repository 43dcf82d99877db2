"""Fixtures for BPF program tests: a private bpffs directory; lab-style overlay nodes."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.probes.overlay import Overlay

BPFFS = Path("/sys/fs/bpf")


@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A bpffs directory of this test's own, removed with everything pinned in it."""
    root = BPFFS / unique("fstest-masq-")
    root.mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        assert not root.exists(), f"could not remove {root}"


@pytest.fixture(scope="module")
def overlay() -> Iterator[Overlay]:
    """Two lab-style overlay nodes, their pods and an outside host (tests/probes/overlay.py),
    built once for the module that asks and torn down after it."""
    ov = Overlay()
    try:
        asyncio.run(ov.build())
        yield ov
    finally:
        ov.close()
