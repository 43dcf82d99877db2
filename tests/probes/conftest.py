"""Fixtures for BPF program tests: a private bpffs directory, a loaded masquerade instance."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unique

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
