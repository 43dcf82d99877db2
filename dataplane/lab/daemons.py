"""The lab's long-running processes (etcd, controller, one agent per node): started detached with
a log and a pid file each, found again by pid file, stopped by PID.

A pid file records the process start time too, so a PID the kernel has since reused for somebody
else's process is never mistaken for ours, and never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Daemon:
    name: str
    argv: tuple[str, ...]
    run_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.name}.log"


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command may contain spaces and parentheses: fields count from the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # a zombie is not running
    return fields[19]


def start(daemon: Daemon, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    daemon.run_dir.mkdir(parents=True, exist_ok=True)
    with open(daemon.log, "ab") as log:
        proc = subprocess.Popen(
            list(daemon.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    daemon.pidfile.write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
    return proc.pid


def pid_of(pidfile: Path) -> int | None:
    """The PID in `pidfile` if that very process still runs, else None."""
    try:
        pid_text, started = pidfile.read_text().split()
    except (FileNotFoundError, ValueError):
        return None
    pid = int(pid_text)
    return pid if _start_time(pid) == started else None


def stop(pidfile: Path, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; True if a process was running."""
    pid = pid_of(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_of(pidfile) is not None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.02)
        _reap(pid)
    pidfile.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
        os.waitpid(pid, os.WNOHANG)
