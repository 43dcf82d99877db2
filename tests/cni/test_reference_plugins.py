"""flowscope-cni side by side with Debian's reference plugins (bridge + host-local, plugins 1.1.1,
spec up to 1.0.0) on the same kind of network config, run the same way by the same runtime.

Both networks live inside our own node namespace (the bridge too), never in the root namespace.
Where flowscope deliberately differs, the test asserts the difference and says why.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from dataplane.cni.protocol import CNIError
from dataplane.cni.runtime import invoke_plugin
from flowscope.store.memory import MemoryKV
from tests.cni.conftest import PLUGIN, Agent, Node, ping, running_agent

REFERENCE = "/usr/lib/cni"
BRIDGE = f"{REFERENCE}/bridge"


@dataclass
class Pair:
    """The two networks on one node: the reference's conflist and ours, both at cniVersion 1.0.0
    (the newest the reference plugins speak)."""

    node: Node
    ours: Agent
    reference: dict[str, Any]

    async def ref(self, command: str, netns: str = "", cid: str = "", **kw: Any) -> dict:
        return await invoke_plugin(
            command,
            self.reference,
            container_id=cid,
            netns_path=netns,
            ifname="eth0",
            cni_args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": cid},
            cni_path=[REFERENCE],
            run_in_netns=self.node.netns,
            **kw,
        )


@pytest.fixture
async def pair(node: Node) -> AsyncIterator[Pair]:
    data = tempfile.mkdtemp(prefix="fscniref")
    reference = {
        "cniVersion": "1.0.0",
        "name": "refnet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "fsrefbr0",
                "isGateway": True,
                # a /30: one address for the gateway, one for a pod
                "ipam": {"type": "host-local", "subnet": "10.250.200.0/30", "dataDir": data},
            }
        ],
    }
    async with running_agent(node, MemoryKV(), max_pods=1) as ours:
        conf = json.loads(ours.conflist.read_text())
        conf["cniVersion"], conf["cniVersions"] = "1.0.0", ["1.0.0"]
        ours.conflist.write_text(json.dumps(conf))
        try:
            yield Pair(node, ours, reference)
        finally:
            subprocess.run(["rm", "-rf", data], check=False)


def shape(value: Any) -> Any:
    """The JSON types of a value, keys kept: what "same result shape" compares."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


async def raises(call) -> CNIError:
    started = time.monotonic()
    with pytest.raises(CNIError) as err:
        await call
    assert time.monotonic() - started < 3  # at once, never a hang
    return err.value


@pytest.mark.privileged
async def test_same_result_shape(pair: Pair) -> None:
    ref = await pair.ref("ADD", pair.node.pod(), "c1")
    ours = await pair.ours.cni("ADD", pair.node.pod(), "c1")
    assert ref["cniVersion"] == ours["cniVersion"] == "1.0.0"
    # the reference leaves out "routes" when it has none (host-local had none configured)
    assert set(ref) == {"cniVersion", "interfaces", "ips", "dns"}
    assert set(ours) == {"cniVersion", "interfaces", "ips", "routes", "dns"}
    # every interface: name, mac, and sandbox for the container's; the same JSON types
    for result in (ref, ours):
        assert {k for i in result["interfaces"] for k in i} <= {"name", "mac", "sandbox"}
        assert [i for i in result["interfaces"] if "sandbox" in i][-1]["name"] == "eth0"
    assert (
        shape(ref["ips"])
        == shape(ours["ips"])
        == [{"address": "str", "gateway": "str", "interface": "int"}]
    )
    for result in (ref, ours):
        index = result["ips"][0]["interface"]
        assert result["interfaces"][index]["name"] == "eth0"
    assert shape(ref["dns"]) == shape(ours["dns"]) == {}
    # The reference has a bridge among its interfaces; flowscope has no bridge (routed veths, as
    # Cilium) and reports the default route it installs in the pod.
    assert shape(ours["routes"]) == [{"dst": "str", "gw": "str"}]
    assert len(ref["interfaces"]) == 3 and len(ours["interfaces"]) == 2


@pytest.mark.privileged
async def test_duplicate_add_fails_in_both_and_the_first_pod_keeps_working(pair: Pair) -> None:
    ref_pod, our_pod = pair.node.pod(), pair.node.pod()
    ref_first = await pair.ref("ADD", ref_pod, "c1")
    await pair.ours.cni("ADD", our_pod, "c1")
    ref_err = await raises(pair.ref("ADD", ref_pod, "c1"))
    our_err = await raises(pair.ours.cni("ADD", our_pod, "c1"))
    assert "already exists" in ref_err.msg and "already exists" in our_err.msg
    # Different codes: the reference has no code for it (999, internal); flowscope names it (102).
    assert (ref_err.code, our_err.code) == (999, 102)
    assert await ping(ref_pod, ref_first["ips"][0]["gateway"])
    assert await ping(our_pod, "10.250.0.1")


@pytest.mark.privileged
async def test_repeated_del_succeeds_in_both_and_check_after_del_fails_in_both(pair: Pair) -> None:
    ref_pod, our_pod = pair.node.pod(), pair.node.pod()
    ref = await pair.ref("ADD", ref_pod, "c1")
    ours = await pair.ours.cni("ADD", our_pod, "c1")
    await pair.ref("CHECK", ref_pod, "c1", prev_result=ref)
    await pair.ours.cni("CHECK", our_pod, "c1", prev_result=ours)
    for _ in range(2):
        await pair.ref("DEL", ref_pod, "c1", prev_result=ref)
        await pair.ours.cni("DEL", our_pod, "c1", prev_result=ours)
    ref_err = await raises(pair.ref("CHECK", ref_pod, "c1", prev_result=ref))
    our_err = await raises(pair.ours.cni("CHECK", our_pod, "c1", prev_result=ours))
    # The reference fails on the first missing piece with an internal error; flowscope answers
    # "container unknown" (3): nothing of the attachment is left to clean up.
    assert ref_err.code == 999 and "container c1" in ref_err.msg
    assert our_err.code == 3 and "no endpoint for container c1" in our_err.msg


@pytest.mark.privileged
async def test_exhausted_range_fails_at_once_in_both(pair: Pair) -> None:
    await pair.ref("ADD", pair.node.pod(), "c1")
    await pair.ours.cni("ADD", pair.node.pod(), "c1")
    ref_err = await raises(pair.ref("ADD", pair.node.pod(), "c2"))
    our_err = await raises(pair.ours.cni("ADD", pair.node.pod(), "c2"))
    assert "no IP addresses available" in ref_err.msg
    # flowscope gives exhaustion its own code (100) so a runtime or operator can tell it apart
    assert ref_err.code == 999 and our_err.code == 100 and "exhausted" in our_err.msg


# --- bad input, no namespaces needed -------------------------------------------------------------

CONFS = {
    BRIDGE: {
        "cniVersion": "1.0.0",
        "name": "refnet",
        "type": "bridge",
        "ipam": {"type": "host-local", "subnet": "10.250.200.0/30"},
    },
    PLUGIN: {
        "cniVersion": "1.0.0",
        "name": "flowscope",
        "type": "flowscope-cni",
        "agentSocket": "/run/flowscope/none/agent.sock",
    },
}
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/run/netns/none",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": REFERENCE,
}


def run_both(env: dict[str, str], conf: Any = None) -> dict[str, tuple[int, dict]]:
    out = {}
    for binary, default in CONFS.items():
        doc = default if conf is None else conf(default)
        data = doc if isinstance(doc, str) else json.dumps(doc)
        proc = subprocess.run(
            [binary], input=data.encode(), env=env, capture_output=True, timeout=10
        )
        text = proc.stdout.decode().strip()
        out[binary] = (proc.returncode, json.loads(text) if text else {})
    return out


def codes(results: dict[str, tuple[int, dict]]) -> tuple[tuple[int, int], tuple[int, int]]:
    (rc_ref, ref), (rc_ours, ours) = results[BRIDGE], results[PLUGIN]
    return (rc_ref, ref.get("code", 0)), (rc_ours, ours.get("code", 0))


def test_malformed_json_same_code() -> None:
    r = run_both(ENV, lambda _: "{garbage")
    assert codes(r) == ((1, 6), (1, 6))


def test_missing_env_same_code_naming_the_variable() -> None:
    r = run_both({k: v for k, v in ENV.items() if k != "CNI_NETNS"})
    assert codes(r) == ((1, 4), (1, 4))
    assert all("CNI_NETNS" in out["msg"] for _, out in r.values())
    # CNI_PATH: the spec lists it optional for ADD; the reference demands it anyway, flowscope
    # (which delegates to no plugin) does not, and gets as far as the agent (absent here).
    r = run_both({k: v for k, v in ENV.items() if k != "CNI_PATH"} | {"CNI_COMMAND": "DEL"})
    assert codes(r) == ((1, 4), (1, 11))
    assert "CNI_PATH" in r[BRIDGE][1]["msg"]


def test_unknown_command_same_code_and_message() -> None:
    r = run_both(ENV | {"CNI_COMMAND": "FROB"})
    assert codes(r) == ((1, 4), (1, 4))
    assert r[BRIDGE][1]["msg"] == r[PLUGIN][1]["msg"] == "unknown CNI_COMMAND: FROB"


def test_unsupported_version_same_code_and_message() -> None:
    r = run_both(ENV, lambda conf: conf | {"cniVersion": "9.9.9"})
    assert codes(r) == ((1, 1), (1, 1))
    assert r[BRIDGE][1]["msg"] == r[PLUGIN][1]["msg"] == "incompatible CNI versions"
    # 1.1.0: flowscope speaks it, the reference (1.1.1 plugins) does not
    r = run_both(ENV | {"CNI_COMMAND": "DEL"}, lambda conf: conf | {"cniVersion": "1.1.0"})
    assert codes(r)[0] == (1, 1) and codes(r)[1] == (1, 11)


def test_long_ifname_same_code() -> None:
    r = run_both(ENV | {"CNI_IFNAME": "eth0123456789abcdef"})
    assert codes(r) == ((1, 4), (1, 4))
    assert all("too long" in out["msg"] for _, out in r.values())


def test_missing_network_name_same_code() -> None:
    r = run_both(ENV, lambda conf: {k: v for k, v in conf.items() if k != "name"})
    assert codes(r) == ((1, 7), (1, 7))


def test_no_command_at_all_differs_deliberately() -> None:
    # The reference prints its "about" text and exits 0; flowscope treats a missing CNI_COMMAND
    # like any missing variable (error 4, exit 1): a runtime that forgot it should hear so.
    r = run_both({})
    assert r[BRIDGE][0] == 0
    assert codes(r)[1] == (1, 4) and "CNI_COMMAND" in r[PLUGIN][1]["msg"]
