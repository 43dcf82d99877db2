"""A pod sandbox: the network namespace, cgroup and run dir that stand for the pod, and its
process.

Like a container runtime's pause container: the namespace and cgroup exist before the network is
plumbed (CNI ADD needs the namespace) and outlive any one process in them. The run dir holds what
the runtime writes for the pod, like kubelet's pod dir: its resolv.conf, which every process
entering the pod sees as /etc/resolv.conf.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dataplane.lab import netns
from flowscope.paths import ClusterPaths


@dataclass(frozen=True)
class Sandbox:
    netns: str  # namespace name under /run/netns
    cgroup: Path
    run_dir: Path | None = None  # files of the pod (resolv.conf); None: it has none

    @property
    def resolv_conf(self) -> str | None:
        """The pod's resolv.conf, if the runtime wrote one (dnsPolicy Default: none)."""
        if self.run_dir is None:
            return None
        path = self.run_dir / "resolv.conf"
        return str(path) if path.exists() else None

    @property
    def netns_path(self) -> str:
        return str(netns.path(self.netns))

    @classmethod
    def for_pod(cls, paths: ClusterPaths, node: str, pod_uid: str) -> Sandbox:
        return cls(
            paths.pod_netns(pod_uid),
            paths.pod_cgroup(node, pod_uid),
            paths.node_dir(node) / "sandboxes" / pod_uid,
        )

    def exists(self) -> bool:
        return netns.exists(self.netns)

    def create(self, resolv_conf: str | None = None) -> None:
        """Make the namespace, cgroup and run dir; `resolv_conf` is the pod's file's text."""
        netns.create(self.netns)
        self.cgroup.mkdir(parents=True, exist_ok=True)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            target = self.run_dir / "resolv.conf"
            if resolv_conf is None:
                target.unlink(missing_ok=True)
            else:
                tmp = target.with_suffix(".tmp")
                tmp.write_text(resolv_conf)
                tmp.replace(target)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def running(self) -> bool:
        return bool(self.pids())

    def start_responder(
        self, pod_name: str, tcp: list[int], udp: list[int], log: Path
    ) -> subprocess.Popen:
        """Start the pod's responder inside the sandbox; returns once it is listening."""
        argv = [sys.executable, "-m", "dataplane.lab.responder", "--name", pod_name]
        argv += ["--netns", self.netns_path, "--cgroup", str(self.cgroup)]
        if self.resolv_conf:
            argv += ["--resolv-conf", self.resolv_conf]
        for port in tcp:
            argv += ["--tcp", str(port)]
        for port in udp:
            argv += ["--udp", str(port)]
        return self.start(argv, f"pod {pod_name}'s responder", log)

    def start(self, argv: list[str], what: str, log: Path) -> subprocess.Popen:
        """Start a pod's server, which joins the sandbox itself and prints `ready` once it
        serves; returns then.

        The caller keeps the Popen to reap it; after an agent restart the orphaned servers
        are reaped by init, and the sandbox's cgroup says whether the pod still runs.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # "ready ..." once every port is bound
        proc.stdout.close()
        if not ready.startswith(b"ready"):
            proc.wait()
            raise RuntimeError(f"{what} failed to start; see {log}")
        return proc

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill every process of the pod, then remove its cgroup and namespace (idempotent)."""
        if self.cgroup.exists():
            kill = self.cgroup / "cgroup.kill"
            if self.pids():
                kill.write_text("1")
            deadline = time.monotonic() + timeout
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
            with contextlib.suppress(FileNotFoundError):
                self.cgroup.rmdir()
        netns.remove(self.netns)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def remove_cgroup_tree(root: Path) -> None:
    """Kill everything under `root` and remove the cgroups, deepest first (for `lab down`)."""
    if not root.exists():
        return
    kill = root / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -w[0].count("/")):
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
