"""Bad input to the real `flowscope-cni` executable: environment and stdin as a runtime gives
them, exit code and the CNI error on stdout checked. No agent, no root needed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from dataplane.cni.protocol import SUPPORTED_VERSIONS
from tests.cni.conftest import PLUGIN

MISSING_SOCKET = "/run/flowscope/does-not-exist/agent.sock"
CONF = {
    "cniVersion": "1.1.0",
    "name": "flowscope",
    "type": "flowscope-cni",
    "agentSocket": MISSING_SOCKET,
}
ENV = {
    "CNI_COMMAND": "DEL",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/run/netns/nothing",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni",
}


def run(env: dict[str, str], stdin: str | bytes | dict = CONF) -> tuple[int, dict]:
    data = json.dumps(stdin) if isinstance(stdin, dict) else stdin
    proc = subprocess.run(
        [PLUGIN],
        input=data.encode() if isinstance(data, str) else data,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        timeout=10,
    )
    out = proc.stdout.decode()
    return proc.returncode, (json.loads(out) if out.strip() else {})


def test_version_answers_locally_and_echoes_the_input_version() -> None:
    rc, out = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
    assert rc == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    rc, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and out["cniVersion"] == "1.1.0"


def test_malformed_json_is_code_6() -> None:
    rc, out = run(ENV, "{not json")
    assert rc == 1 and out["code"] == 6
    assert out["msg"].startswith("error decoding network config from stdin")
    rc, out = run(ENV, "[1, 2]")
    assert rc == 1 and out["code"] == 6 and "not a JSON object" in out["msg"]


@pytest.mark.parametrize(
    ("command", "drop", "named"),
    [
        ("ADD", "CNI_NETNS", "CNI_NETNS"),
        ("ADD", "CNI_CONTAINERID", "CNI_CONTAINERID"),
        ("CHECK", "CNI_IFNAME", "CNI_IFNAME"),
        ("DEL", "CNI_IFNAME", "CNI_IFNAME"),
        ("GC", "CNI_PATH", "CNI_PATH"),
    ],
)
def test_missing_env_is_code_4_naming_the_variable(command: str, drop: str, named: str) -> None:
    env = {k: v for k, v in ENV.items() if k != drop} | {"CNI_COMMAND": command}
    rc, out = run(env)
    assert rc == 1 and out["code"] == 4
    assert out["msg"] == f"required env variables [{named}] missing"


def test_no_command_at_all_is_code_4() -> None:
    rc, out = run({})
    assert rc == 1 and out["code"] == 4 and "CNI_COMMAND" in out["msg"]


def test_unknown_command_is_code_4() -> None:
    rc, out = run(ENV | {"CNI_COMMAND": "FROB"})
    assert rc == 1 and out == {"cniVersion": "1.1.0", "code": 4, "msg": "unknown CNI_COMMAND: FROB"}


@pytest.mark.parametrize("version", ["9.9.9", "0.2.0", "1.2.0"])
def test_unsupported_cni_version_is_code_1(version: str) -> None:
    rc, out = run(ENV, CONF | {"cniVersion": version})
    assert rc == 1 and out["code"] == 1 and out["msg"] == "incompatible CNI versions"
    assert f'config is "{version}"' in out["details"] and "1.1.0" in out["details"]


def test_commands_newer_than_the_config_version_are_code_1() -> None:
    rc, out = run(ENV | {"CNI_COMMAND": "CHECK"}, CONF | {"cniVersion": "0.3.1"})
    assert rc == 1 and out["code"] == 1 and "does not allow CHECK" in out["msg"]
    rc, out = run({"CNI_COMMAND": "STATUS"}, CONF | {"cniVersion": "1.0.0"})
    assert rc == 1 and out["code"] == 1 and "does not allow STATUS" in out["msg"]


@pytest.mark.parametrize(
    ("ifname", "msg"),
    [
        ("eth0123456789abc", "is too long"),
        ("a/b", "contains / or :"),
        ("a:b", "contains / or :"),
        ("a b", "contains / or :"),
        ("..", "is . or .."),
    ],
)
def test_bad_ifname_is_code_4(ifname: str, msg: str) -> None:
    rc, out = run(ENV | {"CNI_IFNAME": ifname})
    assert rc == 1 and out["code"] == 4
    assert out["msg"].startswith("CNI_IFNAME: ") and msg in out["msg"]


def test_fifteen_byte_ifname_is_fine() -> None:
    # passes validation and gets as far as the (absent) agent
    rc, out = run(ENV | {"CNI_IFNAME": "eth0123456789ab"})
    assert rc == 1 and out["code"] == 11


def test_bad_container_id_is_code_4() -> None:
    rc, out = run(ENV | {"CNI_CONTAINERID": "-bad id"})
    assert rc == 1 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"]


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({k: v for k, v in CONF.items() if k != "name"}, "missing network name"),
        (CONF | {"name": "bad name"}, "invalid characters found in network name"),
        ({k: v for k, v in CONF.items() if k != "agentSocket"}, "agentSocket"),
        (CONF | {"agentSocket": "relative.sock"}, "agentSocket"),
        (CONF | {"mtu": 10}, "mtu"),
        (CONF | {"agentTimeout": -1}, "agentTimeout"),
    ],
)
def test_invalid_network_config_is_code_7(conf: dict, field: str) -> None:
    rc, out = run(ENV, conf)
    assert rc == 1 and out["code"] == 7 and field in out["msg"]


def test_bad_cni_args_is_code_4() -> None:
    rc, out = run(ENV | {"CNI_ARGS": "K8S_POD_NAME=a;garbage"})
    assert rc == 1 and out["code"] == 4 and "CNI_ARGS" in out["msg"] and "garbage" in out["msg"]


def test_add_into_a_missing_netns_is_code_4() -> None:
    rc, out = run(ENV | {"CNI_COMMAND": "ADD", "CNI_NETNS": "/run/netns/nothing-here"})
    assert rc == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"]


def test_add_into_the_plugins_own_netns_is_code_4() -> None:
    rc, out = run(ENV | {"CNI_COMMAND": "ADD", "CNI_NETNS": "/proc/self/ns/net"})
    assert rc == 1 and out["code"] == 4 and "should not be the same" in out["msg"]


@pytest.mark.parametrize("command", ["DEL", "CHECK", "GC"])
def test_agent_down_is_try_again_later_naming_the_socket(command: str) -> None:
    started = time.monotonic()
    rc, out = run(ENV | {"CNI_COMMAND": command})
    assert time.monotonic() - started < 5
    assert rc == 1 and out["code"] == 11
    assert MISSING_SOCKET in out["msg"] and "unreachable" in out["msg"]


def test_agent_down_on_status_is_plugin_not_available() -> None:
    rc, out = run({"CNI_COMMAND": "STATUS"})
    assert rc == 1 and out["code"] == 50 and MISSING_SOCKET in out["msg"]


@pytest.fixture
def silent_agent() -> Iterator[str]:
    """A socket that accepts and never answers: a hung agent."""
    path = tempfile.mkdtemp(prefix="fscni") + "/hung.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield path
    finally:
        stop.set()
        t.join()
        for s in [*held, srv]:
            s.close()
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


def test_hung_agent_is_a_bounded_wait_then_try_again_later(silent_agent: str) -> None:
    started = time.monotonic()
    rc, out = run(ENV, CONF | {"agentSocket": silent_agent, "agentTimeout": 0.5})
    assert 0.4 < time.monotonic() - started < 5
    assert rc == 1 and out["code"] == 11 and "did not answer DEL within 0.5s" in out["msg"]


def test_errors_carry_the_config_version() -> None:
    rc, out = run(ENV, CONF | {"cniVersion": "1.0.0", "mtu": 1})
    assert rc == 1 and out["cniVersion"] == "1.0.0"
