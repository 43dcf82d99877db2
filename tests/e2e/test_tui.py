"""`flowscope tui` on a live 2-node lab, driven in tmux as a user would: live flows from the
relay, a filter typed into the bar (applied by the relay), a drop's details and the service map
on screen. The tmux session is the test's own and is killed in the end, also when it fails."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import pytest

from tests.conftest import unique
from tests.e2e.lab import Lab, client_and_server, running_lab, until

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

NS = "tuie"
# only port 81 may reach the server: the client's connections to port 80 are dropped
DENY_80 = f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: only-81, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Ingress]
  ingress:
  - ports: [{{port: 81, protocol: TCP}}]
"""


class Tmux:
    def __init__(self, session: str) -> None:
        self.session = session

    def start(self, command: str) -> None:
        # a shell first, the command typed into it: a command started with the session can
        # read the terminal's size before tmux has set it
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.session, "-x", "120", "-y", "40"],
            check=True,
        )
        time.sleep(0.3)
        self.keys(command, literal=True)
        self.keys("Enter")

    def keys(self, *keys: str, literal: bool = False) -> None:
        flag = ["-l"] if literal else []
        cmd = ["tmux", "send-keys", "-t", self.session, *flag, "--", *keys]  # keys may start "-"
        subprocess.run(cmd, check=True)

    def pane(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.session],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True)


def on_screen(tmux: Tmux, *texts: str, what: str, timeout: float = 20) -> str:
    """The pane once it shows every one of `texts`; AssertionError with the pane after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pane = tmux.pane()
        if all(t in pane for t in texts):
            return pane
        assert time.monotonic() < deadline, f"{what}: not on screen in {timeout} s:\n{pane}"
        time.sleep(0.2)


def test_tui_live_flows_filter_drop_details_and_service_map() -> None:
    with running_lab(
        unique("tui"), "--nodes", "2", "--ipam", "overlay", workload=client_and_server(NS), pods=2
    ) as lab:
        run_tui(lab)


def run_tui(lab: Lab) -> None:
    assert lab.probe(f"{NS}/client", f"{NS}/server:80")["connected"]
    lab.apply(DENY_80)
    until(
        lambda: not lab.probe(f"{NS}/client", f"{NS}/server:80", timeout=0.5)["connected"],
        "the policy dropping port 80",
    )
    tmux = Tmux(unique("fstui"))
    command = shlex.join([sys.executable, "-m", "flowscope", "--cluster", lab.name, "tui"])
    try:
        tmux.start(f"clear; TERM=xterm-256color exec {command}")
        pane = on_screen(
            tmux,
            f"{NS}/client",
            f"{NS}/server",
            "FORWARDED",
            "connected to relay",
            what="live flows",
            timeout=30,
        )
        assert "DROPPED" in pane  # the history the relay holds has both

        # a filter in observe's language, typed into the bar: only drops remain
        tmux.keys("/")
        tmux.keys("--verdict DROPPED --from-pod " + NS + "/client", literal=True)
        tmux.keys("Enter")
        time.sleep(1)
        lab.probe(f"{NS}/client", f"{NS}/server:80", timeout=0.5)  # one more, live
        # drops were on screen before too: wait for a table of drops only
        deadline = time.monotonic() + 20
        while True:
            pane = tmux.pane()
            table = pane.split("TIME", 1)[-1]
            if "POLICY_DENIED" in table and "FORWARDED" not in table and "ALLOWED" not in table:
                break
            assert time.monotonic() < deadline, f"the filtered drops: not on screen:\n{pane}"
            time.sleep(0.2)

        # the selected (newest) drop's details
        tmux.keys("Enter")
        pane = on_screen(tmux, "DROPPED POLICY_DENIED", "flow.verdict", what="the details")
        assert f"{NS}/client -> {NS}/server 80/TCP" in pane

        # the service map: the client's workload and the server's, joined by a drop
        tmux.keys("m")
        pane = on_screen(tmux, f"▶ {NS}/server", "DROPPED", what="the service map")
        assert f"{NS}/client ──" in pane and f"{NS}/client -> {NS}/server: DROPPED" in pane
        tmux.keys("q")
    finally:
        tmux.kill()
