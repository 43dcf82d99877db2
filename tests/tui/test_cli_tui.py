"""`flowscope tui`'s command line: what fails before the screen is taken, with the flag named and
a non-zero exit."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.fakecluster import CLI, write_cluster


@pytest.fixture
def cli():
    root = Path(tempfile.mkdtemp(prefix="fstuicli"))
    name = unique("tui")
    write_cluster(root, name, nodes=("node-1",))
    try:
        yield CLI(root, name)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_bad_filter_flag_is_named_exit_2(cli: CLI) -> None:
    proc = cli("tui", "--relay", "127.0.0.1:1", "--to-port", "eighty")
    assert proc.returncode == 2 and "--to-port" in proc.stderr


def test_a_cluster_without_a_relay_says_what_to_do(cli: CLI) -> None:
    proc = cli("tui")
    assert proc.returncode == 1
    assert "has no relay" in proc.stderr and "--relay" in proc.stderr


def test_one_source_only_and_a_positive_scrollback(cli: CLI) -> None:
    both = cli("tui", "--relay", "127.0.0.1:1", "--kafka", "127.0.0.1:2")
    assert both.returncode == 2 and "give one source" in both.stderr
    zero = cli("tui", "--relay", "127.0.0.1:1", "--scrollback", "0")
    assert zero.returncode == 2 and "--scrollback" in zero.stderr
    tls = cli("tui", "--tls")
    assert tls.returncode == 2 and "--relay" in tls.stderr


def test_an_unknown_cluster_is_not_up() -> None:
    proc = CLI(Path(tempfile.gettempdir()), unique("nocl"))("tui")
    assert proc.returncode != 0 and "lab up" in proc.stderr
