"""The benchmarks' workloads mean what the benchmarks assume, checked in a second without a lab:
bench.datapath's 20 policies allow exactly the measured traffic, and bench.policy_apply's change
moves the port its poller waits for. (The benchmarks print timings; nothing here times anything.)
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

from bench import datapath, policy_apply
from dataplane.policy.compiler import (
    Compiler,
    namespace_labels,
    pod_info,
    required_prefixes,
)
from dataplane.policy.trace import trace
from flowscope.apis.objectstore import ObjectStore
from flowscope.store.memory import MemoryKV
from tests.policy.truthtable import allocate

TCP = 6


async def test_datapath_policies_allow_the_measured_ports_and_deny_the_probe_port() -> None:
    objects = datapath.workload()
    policies = datapath.policies("10.244.0.0/16")
    store = ObjectStore(MemoryKV())
    await store.apply(objects)
    await store.apply(policies)  # valid NetworkPolicies, all 20 of them
    assert len(await store.list("NetworkPolicy")) == 20

    nss = namespace_labels(o for o in objects if o["kind"] == "Namespace")
    pods = {}
    for n, obj in enumerate(o for o in objects if o["kind"] == "Pod"):
        info = pod_info(obj)
        pods[info.name] = dataclasses.replace(info, ip=IPv4Address(f"10.244.0.{n + 10}"))
    ids, cidrs = allocate(pods.values(), nss, required_prefixes(policies))

    def allowed(server: str, port: int) -> bool:
        result = trace(
            policies, pods.values(), nss, ids, cidrs, pods["client"], pods[server], port, TCP
        )
        # both directions are enforced: the client's egress and the server's ingress
        assert result.egress is not None and result.ingress is not None
        return result.allowed

    for server in ("server", "local"):
        for port in (datapath.SERVED_PORT, datapath.IPERF_PORT, datapath.ACCEPT_PORT):
            assert allowed(server, port), (server, port)
        assert not allowed(server, datapath.DENIED_PORT)


def test_policy_apply_change_moves_the_polled_port() -> None:
    pods = [pod_info(p) for p in policy_apply.pods()]
    nss = namespace_labels(policy_apply.namespaces())
    first = [policy_apply.policy(i) for i in range(policy_apply.POLICIES)]
    first[0] = policy_apply.policy(0, policy_apply.CHANGED_PORT)
    ids, cidrs = allocate(pods, nss, required_prefixes(first))
    target = ("ns0", "app0-0")
    assert policy_apply.policy(0)["spec"]["podSelector"] == {"matchLabels": {"app": "app0"}}
    assert [p.node for p in pods if p.key == target] == [policy_apply.NODE]

    compiler = Compiler()
    before = compiler.compile(first, pods, nss, ids, cidrs).endpoints[target]
    second = [policy_apply.policy(0, policy_apply.CHANGED_PORT + 1), *first[1:]]
    after = compiler.compile(second, pods, nss, ids, cidrs).endpoints[target]
    old, new = policy_apply.CHANGED_PORT, policy_apply.CHANGED_PORT + 1
    assert policy_apply.has_port(before, old) and not policy_apply.has_port(before, new)
    assert policy_apply.has_port(after, new) and not policy_apply.has_port(after, old)
