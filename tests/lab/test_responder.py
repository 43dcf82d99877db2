"""The pod responder, inside a namespace of its own, probed the way `lab probe` does."""

from __future__ import annotations

import contextlib
import os

import pytest

from dataplane.lab import netns
from dataplane.lab.podexec import collect, fork_in_pod, run_in_pods
from dataplane.lab.probe import probe
from dataplane.lab.responder import answer
from dataplane.lab.sandbox import Sandbox
from tests.conftest import unique


def test_answers() -> None:
    peer = ("10.0.0.9", 4242)
    assert answer("web", "/", peer) == "web"
    assert answer("web", "/hostname", peer) == "web"
    assert answer("web", "/clientip", peer) == "10.0.0.9:4242"
    assert answer("web", "/echo?msg=hi", peer) == "hi"
    assert answer("web", "echo hello there", peer) == "hello there"
    assert answer("web", "clientip", peer) == "10.0.0.9:4242"


@pytest.fixture
def sandbox(tmp_path):
    box = Sandbox(f"fs.{unique('resp')}.pod", tmp_path / "cg")
    if os.geteuid() != 0:
        pytest.fail("needs root (run via `make test`)")
    from flowscope.paths import CGROUP_ROOT

    box = Sandbox(box.netns, CGROUP_ROOT / "tests" / unique("cg"))
    box.create()
    try:
        yield box
    finally:
        box.destroy()
        netns.remove(box.netns)
        assert not box.exists() and not box.cgroup.exists()
        for parent in (box.cgroup.parent, CGROUP_ROOT):  # shared: only when nobody uses them
            with contextlib.suppress(OSError):
                parent.rmdir()


@pytest.mark.privileged
def test_responder_serves_tcp_and_udp_in_its_pod(sandbox: Sandbox, tmp_path) -> None:
    proc = sandbox.start_responder("web-1", [80, 8080], [53], tmp_path / "resp.log")
    assert proc.pid in sandbox.pids()  # joined the pod's cgroup
    jobs = [
        (sandbox, lambda port=port, proto=proto: probe("x/y", "t", "127.0.0.1", port, proto, 1))
        for port, proto in ((80, "TCP"), (8080, "TCP"), (53, "UDP"), (81, "TCP"))
    ]
    results = run_in_pods(jobs)
    assert [r["connected"] for r in results] == [True, True, True, False]
    assert {r["answer"] for r in results[:3]} == {"web-1"}
    assert results[3]["error"]  # refused, and says so
    # the root namespace has no such server: the probe really ran inside the pod
    root = probe("root", "t", "127.0.0.1", 8080, "TCP", 0.5)
    assert not root["connected"] or root["answer"] != "web-1"
    sandbox.destroy()
    assert proc.wait(timeout=5) is not None


@pytest.mark.privileged
def test_child_errors_come_back(sandbox: Sandbox) -> None:
    def boom() -> None:
        raise ValueError("nope")

    pid, fd = fork_in_pod(sandbox, boom)
    with pytest.raises(RuntimeError, match="ValueError: nope"):
        collect(pid, fd)
