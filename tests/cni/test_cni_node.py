"""flowscope-cni on a node of our own: run as containerd runs it, served by a real CNIService with
the real IPAM, plumbing real veths, checked with real packets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from dataplane.cni.protocol import (
    CHECK_FAILED,
    ENDPOINT_EXISTS,
    INTERNAL,
    POOL_EXHAUSTED,
    UNKNOWN_CONTAINER,
    CNIError,
)
from dataplane.endpoint.endpoint import host_ifname
from flowscope.store.memory import MemoryKV
from tests.cni.conftest import NODE_IP, Agent, Node, links, ping, running_agent

pytestmark = pytest.mark.privileged


def ip_of(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


async def test_add_gives_a_pod_that_reaches_the_node_and_a_neighbour_on_the_first_packet(
    agent: Agent, node: Node
) -> None:
    pod_a, pod_b = node.pod(), node.pod()
    a = await agent.cni("ADD", pod_a, "ca")
    b = await agent.cni("ADD", pod_b, "cb")
    # the 1.1.0 result: host veth, pod interface in its sandbox, a /32 behind the link-local gw
    assert a["cniVersion"] == "1.1.0"
    host, pod = a["interfaces"]
    assert host["name"] == host_ifname("ca", "eth0") and "sandbox" not in host
    assert pod == {"name": "eth0", "mac": pod["mac"], "mtu": 1500, "sandbox": pod_a}
    assert a["ips"] == [
        {"address": a["ips"][0]["address"], "gateway": "169.254.1.1", "interface": 1}
    ]
    assert a["ips"][0]["address"].endswith("/32") and ip_of(a) != ip_of(b)
    assert a["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    # first try, one packet, one second: no ARP, no DAD in the way
    assert await ping(pod_a, str(NODE_IP))
    assert await ping(pod_a, ip_of(b))
    assert await ping(pod_b, ip_of(a))
    # registered, and the datapath hook ran before ADD answered
    (ep,) = [e for e in await agent.service.registry.list() if e.container_id == "ca"]
    assert str(ep.ip) == ip_of(a) and ep.pod_name == "ca" and ep.pod_namespace == "default"
    assert ep.pod_mac == pod["mac"] and ep.host_mac == host["mac"] and ep.netns == pod_a
    assert [e.container_id for e in agent.hooks.added] == ["ca", "cb"]
    # the datapath saw each host veth before it came up
    assert agent.hooks.links == [e.host_ifname for e in agent.hooks.added]


async def test_duplicate_add_is_refused_and_leaves_the_first_endpoint_working(
    agent: Agent, node: Node
) -> None:
    pod = node.pod()
    first = await agent.cni("ADD", pod, "c1")
    with pytest.raises(CNIError) as err:
        await agent.cni("ADD", pod, "c1")
    assert err.value.code == ENDPOINT_EXISTS
    assert "c1/eth0 already exists" in err.value.msg and ip_of(first) in err.value.msg
    assert await ping(pod, str(NODE_IP))
    await agent.cni("CHECK", pod, "c1", prev_result=first)
    assert [lease.owner for lease in await agent.service.ipam.leases()] == ["c1/eth0"]


async def test_del_twice_and_check_before_and_after(agent: Agent, node: Node) -> None:
    pod = node.pod()
    result = await agent.cni("ADD", pod, "c1")
    await agent.cni("CHECK", pod, "c1", prev_result=result)
    await agent.cni("DEL", pod, "c1", prev_result=result)
    await agent.cni("DEL", pod, "c1", prev_result=result)  # the spec: DEL must be repeatable
    await agent.cni("DEL", "", "c1")  # ... also without netns or prevResult
    assert host_ifname("c1", "eth0") not in await links(node.netns)
    assert await links(pod.rsplit("/", 1)[1]) == ["lo"]
    assert await agent.service.ipam.leases() == []
    assert await agent.service.registry.list() == []
    assert [e.container_id for e in agent.hooks.removed] == ["c1"]
    with pytest.raises(CNIError) as err:
        await agent.cni("CHECK", pod, "c1", prev_result=result)
    assert err.value.code == UNKNOWN_CONTAINER
    assert "no endpoint for container c1 interface eth0" in err.value.msg


async def test_check_names_what_is_missing(agent: Agent, node: Node) -> None:
    pod = node.pod()
    result = await agent.cni("ADD", pod, "c1")
    subprocess.run(["ip", "-n", pod.rsplit("/", 1)[1], "route", "del", "default"], check=True)
    with pytest.raises(CNIError) as err:
        await agent.cni("CHECK", pod, "c1", prev_result=result)
    assert err.value.code == CHECK_FAILED
    assert "default route via 169.254.1.1 is missing" in err.value.msg


async def test_exhausted_pool_is_a_clear_error_at_once_and_leaks_nothing(node: Node) -> None:
    async with running_agent(node, MemoryKV(), max_pods=2) as agent:
        for cid in ("c1", "c2"):
            await agent.cni("ADD", node.pod(), cid)
        before = await links(node.netns)
        started = time.monotonic()
        with pytest.raises(CNIError) as err:
            await agent.cni("ADD", node.pod(), "c3")
        assert time.monotonic() - started < 2
        assert err.value.code == POOL_EXHAUSTED
        assert "exhausted" in err.value.msg and "n1" in err.value.msg
        assert await links(node.netns) == before
        assert len(await agent.service.ipam.leases()) == 2
        await agent.cni("DEL", "", "c3")  # the runtime's DEL after a failed ADD succeeds
        await agent.cni("DEL", "", "c1")
        await agent.cni("ADD", node.pod(), "c4")  # the freed address serves again


async def test_a_failure_midway_rolls_everything_back(agent: Agent, node: Node) -> None:
    agent.hooks.fail_add = True
    pod = node.pod()
    with pytest.raises(CNIError) as err:
        await agent.cni("ADD", pod, "c1")
    assert err.value.code == INTERNAL and "datapath refused the endpoint" in err.value.msg
    assert host_ifname("c1", "eth0") not in await links(node.netns)
    assert await links(pod.rsplit("/", 1)[1]) == ["lo"]
    assert await agent.service.ipam.leases() == []
    assert await agent.service.registry.list() == []
    agent.hooks.fail_add = False
    await agent.cni("ADD", pod, "c1")  # nothing in the way of a retry
    assert await ping(pod, str(NODE_IP))


async def test_existing_interface_in_the_pod_is_an_error_and_is_left_alone(
    agent: Agent, node: Node
) -> None:
    pod = node.pod()
    await agent.cni("ADD", pod, "c1")
    with pytest.raises(CNIError) as err:  # another container id, same netns and ifname
        await agent.cni("ADD", pod, "c2")
    assert "interface eth0 already exists" in err.value.msg
    assert await ping(pod, str(NODE_IP))
    assert [lease.owner for lease in await agent.service.ipam.leases()] == ["c1/eth0"]


async def test_concurrent_adds_get_distinct_addresses_and_all_work(
    agent: Agent, node: Node
) -> None:
    pods = [node.pod() for _ in range(8)]
    results = await asyncio.gather(*(agent.cni("ADD", p, f"c{i}") for i, p in enumerate(pods)))
    ips = [ip_of(r) for r in results]
    assert len(set(ips)) == len(ips)
    assert all(await asyncio.gather(*(ping(p, str(NODE_IP)) for p in pods)))
    await asyncio.gather(*(agent.cni("DEL", p, f"c{i}") for i, p in enumerate(pods)))
    assert not [n for n in await links(node.netns) if n.startswith("lxc")]


async def test_gc_removes_what_is_not_valid(agent: Agent, node: Node) -> None:
    keep_pod, gone_pod = node.pod(), node.pod()
    await agent.cni("ADD", keep_pod, "keep")
    await agent.cni("ADD", gone_pod, "gone")
    await agent.service.ipam.allocate("leaked/eth0")  # a lease whose endpoint never came
    await agent.cni("GC", valid_attachments=[{"containerID": "keep", "ifname": "eth0"}])
    assert [lease.owner for lease in await agent.service.ipam.leases()] == ["keep/eth0"]
    assert [e.container_id for e in await agent.service.registry.list()] == ["keep"]
    assert host_ifname("gone", "eth0") not in await links(node.netns)
    assert await ping(keep_pod, str(NODE_IP))


async def test_status_ready_and_versions_old_results(agent: Agent, node: Node) -> None:
    await agent.cni("STATUS")
    conf = json.loads(agent.conflist.read_text())
    conf["cniVersion"], conf["cniVersions"] = "0.4.0", ["0.4.0"]
    agent.conflist.write_text(json.dumps(conf))
    result = await agent.cni("ADD", node.pod(), "old")
    assert result["cniVersion"] == "0.4.0"
    assert result["ips"][0]["version"] == "4"
    assert all("mtu" not in i for i in result["interfaces"])


@pytest.mark.etcd
async def test_on_real_etcd(node: Node, etcd_url: str, etcd_prefix: str) -> None:
    from flowscope.store.etcd import EtcdKV

    kv = EtcdKV(etcd_url, prefix=etcd_prefix)
    try:
        async with running_agent(node, kv) as agent:
            pod = node.pod()
            result = await agent.cni("ADD", pod, "c1")
            assert await ping(pod, str(NODE_IP))
            stored = await kv.get("/flowscope/endpoints/n1/c1/eth0")
            assert stored is not None and ip_of(result).encode() in stored.value
            await agent.cni("DEL", pod, "c1")
            assert await kv.get("/flowscope/endpoints/n1/c1/eth0") is None
    finally:
        await kv.close()
