"""Running code inside a pod: a command (`lab exec`) or a Python function in a forked child
(`lab probe`, `lab matrix`), so that the caller itself never changes namespace or cgroup."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from dataplane.lab.enter import enter
from dataplane.lab.sandbox import Sandbox


def exec_in_pod(sandbox: Sandbox, argv: Sequence[str]) -> int:
    """Run `argv` inside the pod, with the caller's terminal; returns its exit code."""
    resolv_conf = sandbox.resolv_conf
    try:
        return subprocess.call(
            list(argv),
            preexec_fn=lambda: enter(sandbox.netns_path, str(sandbox.cgroup), resolv_conf),
        )
    except FileNotFoundError:
        return 127


def fork_in_pod(sandbox: Sandbox, fn: Callable[[], Any]) -> tuple[int, int]:
    """Start `fn` in a child that has joined the pod; returns (pid, fd to read its JSON result)."""
    return fork_in(sandbox.netns_path, str(sandbox.cgroup), sandbox.resolv_conf, fn)


def fork_in(
    netns_path: str, cgroup: str | None, resolv_conf: str | None, fn: Callable[[], Any]
) -> tuple[int, int]:
    """Start `fn` in a child inside `netns_path` (and `cgroup`, with `resolv_conf`, when given):
    a pod, or a lab host that is not one (the outside world)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(read_fd)
            enter(netns_path, cgroup, resolv_conf)
            payload = json.dumps({"ok": fn()}).encode()
        except BaseException as exc:
            payload = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
            code = 1
        try:
            os.write(write_fd, payload)
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def collect(pid: int, fd: int) -> Any:
    """Wait for a child of fork_in_pod and return what `fn` returned (re-raising its error)."""
    chunks = []
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"error": "child died without a result"}')
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["ok"]


def run_in_pods(jobs: Sequence[tuple[Sandbox, Callable[[], Any]]]) -> list[Any]:
    """Run each job in its pod, all at once; results (or exceptions) in job order."""
    started = [fork_in_pod(sandbox, fn) for sandbox, fn in jobs]
    results: list[Any] = []
    for pid, fd in started:
        try:
            results.append(collect(pid, fd))
        except RuntimeError as exc:
            results.append(exc)
    return results
