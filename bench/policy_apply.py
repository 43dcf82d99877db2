"""Apply-to-enforced latency of one NetworkPolicy change with 1,000 policies and 1,000 pods, and
the BPF map memory the node's datapath uses for them. Target (issue 4): p99 <= 100 ms.

A real 1,000-pod lab is too heavy for one machine, so this runs what one node's agent runs for
policy, for real, without the pods' namespaces: the agent's Enforcement against a real etcd and
the real kernel maps (probes.datapath.Datapath loaded into a bpffs directory of its own). The
store holds 20 namespaces x 10 deployments x 5 replicas spread over 10 nodes, and 1,000 policies
of five kinds (pod, namespace and both selectors, expressions, named ports, port ranges, ipBlocks
with except, egress); the pods of the other nodes have identities and ipcache records as their
agents would publish them. 100 pods are this node's endpoints, added through the CNI hook
(EndpointRegistry + Enforcement.endpoint_added) with made-up ifindexes: the policy map is keyed
by that number, and no veth is needed to write maps (programs are never attached).

Each change rewrites one policy's port (a port no other rule uses) with ObjectStore.apply, as
`flowscope apply` does, and the clock stops when a thread polling the kernel's policy map of an
endpoint the policy selects (every 0.5 ms) finds the new port's entry in it. The baseline, in the
same run: the store's own write -> watch delivery (a put on an unwatched key until its watch
event arrives), which every change pays before enforcement starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes as ct
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import netns as pyroute2_netns

from dataplane.agent import ipcache_records
from dataplane.agent.enforcement import Enforcement
from dataplane.agent.ipcache_records import IPRecord
from dataplane.agent.nodedatapath import NodeDatapath
from dataplane.endpoint.endpoint import Endpoint
from dataplane.endpoint.registry import EndpointRegistry
from dataplane.identity.allocator import IdentityAllocator
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.policymap import KernelPolicyMap
from dataplane.policy.compiler import Compiler, namespace_labels, pod_info, security_labels
from dataplane.policy.entry import Direction, EndpointPolicy
from flowscope.apis.objectstore import ObjectStore
from flowscope.clusterinfo import ClusterInfo, NodeInfo
from flowscope.store.etcd import EtcdKV
from flowscope.store.etcd_server import etcd_command, wait_healthy
from flowscope.store.kv import Put
from probes import libbpf
from probes.datapath import POLICY_INNER, POLICY_MAP, Datapath

NAMESPACES, DEPLOYMENTS, REPLICAS = 20, 10, 5  # 1,000 pods
NODES = 10  # pod i runs on node-(i % NODES + 1): 100 pods on node-1, the measured node
POLICIES = 1000
CHANGES = 50
BATCH = 100  # objects per apply
POLL_S = 0.0005
TIMEOUT_S = 10.0
NODE = "node-1"
CHANGED_PORT = 20_000  # policy 0's port, then 20,001, 20,002, ...: ports no other rule allows
BPFFS = Path("/sys/fs/bpf")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- the cluster -------------------------------------------------------------------------------


def namespaces() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": f"ns{n}", "labels": {"team": f"t{n % 4}"}},
        }
        for n in range(NAMESPACES)
    ]


def pods() -> list[dict[str, Any]]:
    out = []
    for n in range(NAMESPACES):
        for d in range(DEPLOYMENTS):
            for r in range(REPLICAS):
                i = len(out)
                ports = [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                ]
                out.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": f"app{d}-{r}",
                            "namespace": f"ns{n}",
                            "labels": {"app": f"app{d}", "tier": f"tier{d % 3}"},
                        },
                        "spec": {
                            "nodeName": f"node-{i % NODES + 1}",
                            "containers": [{"name": "c", "image": "bench", "ports": ports}],
                        },
                    }
                )
    return out


def pod_ip(i: int) -> IPv4Address:
    return IPv4Address(f"10.244.{i // 250}.{i % 250 + 1}")


def policy(i: int, port: int = 8080) -> dict[str, Any]:
    """Policy i of namespace ns(i % 20) selects app((i // 20) % 10), with kind (i // 200) % 5:
    each deployment of each namespace has one policy of each kind. Kind 0 allows `port` from
    the next deployment."""
    n, d, kind = i % NAMESPACES, (i // NAMESPACES) % DEPLOYMENTS, (i // 200) % 5
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": f"app{d}"}}}
    if kind == 0:
        peer = {"podSelector": {"matchLabels": {"app": f"app{(d + 1) % DEPLOYMENTS}"}}}
        spec["ingress"] = [{"from": [peer], "ports": [{"port": port, "protocol": "TCP"}]}]
    elif kind == 1:
        tiers = {"key": "tier", "operator": "In", "values": ["tier0", "tier1"]}
        peer = {
            "namespaceSelector": {"matchLabels": {"team": f"t{i % 4}"}},
            "podSelector": {"matchExpressions": [tiers]},
        }
        spec["ingress"] = [{"from": [peer], "ports": [{"port": "http", "protocol": "TCP"}]}]
    elif kind == 2:
        spec["policyTypes"] = ["Egress"]
        to_ns = {"kubernetes.io/metadata.name": f"ns{(n + 1) % NAMESPACES}"}
        spec["egress"] = [
            {
                "to": [{"namespaceSelector": {"matchLabels": to_ns}}],
                "ports": [{"port": "http", "protocol": "TCP"}],
            },
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        ]
    elif kind == 3:
        spec["policyTypes"] = ["Egress"]
        block = {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", f"192.168.{i % 50}.0/24"]}
        spec["egress"] = [{"to": [{"ipBlock": block}], "ports": [{"port": 443, "protocol": "TCP"}]}]
    else:
        spec["ingress"] = [
            {"from": [{"podSelector": {}}]},
            {"ports": [{"port": 9000, "endPort": 9100, "protocol": "TCP"}]},
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": f"ns{n}", "name": f"pol{i}"},
        "spec": spec,
    }


def cluster_info(netns: str) -> ClusterInfo:
    return ClusterInfo(
        name="bench",
        ipam="overlay",
        vnet_cidr=IPv4Network("10.224.0.0/16"),
        pod_cidr=IPv4Network("10.244.0.0/16"),
        service_cidr=IPv4Network("10.0.0.0/16"),
        gateway=IPv4Address("10.224.0.1"),
        etcd_url="unused",
        nodes=tuple(
            NodeInfo(f"node-{k}", IPv4Address(f"10.224.0.{k + 3}"), netns if k == 1 else "-")
            for k in range(1, NODES + 1)
        ),
    )


def endpoint(obj: dict[str, Any], i: int) -> Endpoint:
    meta = obj["metadata"]
    return Endpoint(
        node=NODE,
        container_id=f"bench{i}",
        ifname="eth0",
        netns=f"/run/netns/bench{i}",
        ip=pod_ip(i),
        pod_mac="02:00:00:00:00:01",
        host_ifname=f"lxcbench{i}",
        host_mac="02:00:00:00:00:02",
        host_ifindex=10_000 + i,  # made up: the endpoint id the maps are keyed by
        mtu=1500,
        pod_namespace=meta["namespace"],
        pod_name=meta["name"],
        pod_uid=f"uid-{i}",
        created="2026-11-28T00:00:00.000+00:00",
    )


# --- the kernel side ---------------------------------------------------------------------------


def memlock(fd: int) -> int:
    """Bytes the kernel charges for a map (its fdinfo `memlock`)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def map_memory(dp: Datapath) -> tuple[dict[str, int], int, int]:
    """Bytes per map of the datapath, plus the endpoints' policy (inner) maps and their count."""
    out = {name: memlock(dp.map_fd(name)) for name in dp.adopted if name != POLICY_INNER}
    inner = count = 0
    for epid in dp.policy.endpoints():
        map_id = dp.policy.map.lookup(ct.c_uint32(epid))
        if map_id is None:
            continue
        fd = libbpf.map_fd_by_id(map_id.value)
        try:
            inner += memlock(fd)
            count += 1
        finally:
            os.close(fd)
    return out, inner, count


def has_port(policy: EndpointPolicy | None, port: int) -> bool:
    return policy is not None and any(
        e.direction == Direction.INGRESS and e.prefix_len == 16 and e.port == port
        for e in policy.entries
    )


class PolicyPoller:
    """Polls one endpoint's policy in the kernel from a thread, through fds of its own."""

    def __init__(self, pin_dir: Path, dp: Datapath) -> None:
        self.fd = libbpf.obj_get(pin_dir / POLICY_MAP)
        self.map = KernelPolicyMap(
            BpfMap(self.fd, ct.c_uint32, ct.c_uint32, name=POLICY_MAP),
            inner_flags=dp.policy.inner_flags,
            inner_entries=dp.policy.inner_entries,
            max_endpoints=dp.policy.max_endpoints,
        )

    def wait(self, epid: int, port: int, old_port: int, start: threading.Event) -> float:
        """perf_counter() when the endpoint's policy holds `port` and no longer `old_port`."""
        start.wait()
        deadline = time.perf_counter() + TIMEOUT_S
        seen = None
        while time.perf_counter() < deadline:
            inner = self.map.map.lookup(ct.c_uint32(epid))  # the inner map id: cheap to poll
            if inner is not None and inner.value != seen:
                seen = inner.value  # swapped whole: a new id is a complete new policy
                found = self.map.get(epid)
                if has_port(found, port) and not has_port(found, old_port):
                    return time.perf_counter()
            time.sleep(POLL_S)
        raise RuntimeError(f"endpoint {epid}: port {port} not enforced after {TIMEOUT_S} s")

    def close(self) -> None:
        os.close(self.fd)


# --- the run -----------------------------------------------------------------------------------


async def populate(kv: EtcdKV, objects: ObjectStore) -> tuple[list[dict], float]:
    """Namespaces, pods, other nodes' identities and ipcache records, policies."""
    started = time.perf_counter()
    all_pods = pods()
    await objects.apply(namespaces())
    for k in range(0, len(all_pods), BATCH):
        await objects.apply(all_pods[k : k + BATCH])
    ns_labels = namespace_labels(namespaces())
    allocators = {f"node-{k}": IdentityAllocator(kv, f"node-{k}") for k in range(2, NODES + 1)}
    records = []
    for i, obj in enumerate(all_pods):
        node = obj["spec"]["nodeName"]
        if node == NODE:
            continue
        identity = await allocators[node].allocate(security_labels(pod_info(obj), ns_labels))
        host = IPv4Address(f"10.224.0.{int(node.split('-')[1]) + 3}")
        meta = obj["metadata"]
        record = IPRecord(pod_ip(i), identity.id, node, host, meta["namespace"], meta["name"])
        records.append(Put(ipcache_records.PREFIX + str(record.ip), record.to_json()))
    for k in range(0, len(records), BATCH):
        await kv.txn([], records[k : k + BATCH])
    for k in range(0, POLICIES, BATCH):
        batch = range(k, min(POLICIES, k + BATCH))
        await objects.apply([policy(i, CHANGED_PORT if i == 0 else 8080) for i in batch])
    return all_pods, time.perf_counter() - started


async def store_latency(kv: EtcdKV, rounds: int) -> list[float]:
    """Seconds from a put until the watch of its key delivers it (the baseline)."""
    key = f"/bench/ping/{uuid.uuid4().hex}"
    _, revision = await kv.range(key)
    events = kv.watch(key, revision + 1)
    out = []
    for k in range(rounds):
        started = time.perf_counter()
        await kv.put(key, str(k).encode())
        await anext(events)
        out.append(time.perf_counter() - started)
    await events.aclose()
    return out


async def bench(kv: EtcdKV, dp: Datapath, pin_dir: Path, netns: str) -> None:
    objects = ObjectStore(kv)
    all_pods, populated = await populate(kv, objects)
    baseline = await store_latency(kv, CHANGES)  # before the agent runs: nothing else waits
    print(
        f"store: {len(all_pods)} pods in {NAMESPACES} namespaces on {NODES} nodes, "
        f"{POLICIES} NetworkPolicies (filled in {populated:.1f} s)",
        flush=True,
    )
    maps = NodeDatapath(dp, netns)
    enf = Enforcement(cluster_info(netns), NODE, kv, maps, IdentityAllocator(kv, NODE))
    started = time.perf_counter()
    await enf.start()
    start_s = time.perf_counter() - started
    runner = asyncio.create_task(enf.run())
    try:
        local = [(i, p) for i, p in enumerate(all_pods) if p["spec"]["nodeName"] == NODE]
        registry = EndpointRegistry(kv, NODE)
        added = []
        for i, obj in local:
            ep = endpoint(obj, i)
            await registry.put(ep)
            t0 = time.perf_counter()
            await enf.endpoint_added(ep)
            added.append(time.perf_counter() - t0)
        enf.compiler = Compiler()  # forget every cache: the next reconcile computes it all
        t0 = time.perf_counter()
        await enf.reconcile()
        full_s = time.perf_counter() - t0
        entries = [len(p.entries) for p in (maps.policy_get(10_000 + i) for i, _ in local) if p]
        print(
            f"node {NODE}: {len(local)} local endpoints; agent start {start_s * 1000:.0f} ms, "
            f"endpoint_added p50 {statistics.median(added) * 1000:.0f} ms, full reconcile "
            f"(caches dropped) {full_s * 1000:.0f} ms; policy entries per endpoint "
            f"{min(entries)}..{max(entries)} (mean {statistics.mean(entries):.0f})",
            flush=True,
        )

        # policy 0 selects app0 of ns0; its pod app0-0 runs on node-1
        selected = policy(0)["metadata"]["namespace"], "app0-0"
        (target,) = [
            i for i, p in local if (p["metadata"]["namespace"], p["metadata"]["name"]) == selected
        ]
        target_epid = 10_000 + target
        poller = PolicyPoller(pin_dir, dp)
        latencies, reconcile_ms = [], []
        old_port = CHANGED_PORT
        switch = sys.getswitchinterval()
        sys.setswitchinterval(POLL_S)  # the polling thread gets the GIL within 0.5 ms
        try:
            for k in range(CHANGES):
                port = CHANGED_PORT + 1 + k
                go = threading.Event()
                seen = asyncio.create_task(
                    asyncio.to_thread(poller.wait, target_epid, port, old_port, go)
                )
                await asyncio.sleep(0.02)  # let the thread start polling
                go.set()
                t0 = time.perf_counter()
                await objects.apply([policy(0, port)])
                latencies.append(await seen - t0)
                reconcile_ms.append(enf.last_reconcile_ms)
                old_port = port
                await asyncio.sleep(0.05)  # let the last reconcile settle
        finally:
            sys.setswitchinterval(switch)
            poller.close()

        ms = [v * 1000 for v in latencies]
        base = [v * 1000 for v in baseline]
        p50, p99 = statistics.median(ms), percentile(ms, 99)
        b50, b99 = statistics.median(base), percentile(base, 99)
        print(
            f"apply -> enforced in the kernel map, {CHANGES} changes of one policy: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p99 <= 100 ms); "
            f"one reconcile (what Enforcement does per change) p50 "
            f"{statistics.median(reconcile_ms):.1f} ms, p99 {percentile(reconcile_ms, 99):.1f} ms"
        )
        print(
            f"baseline: etcd put -> watch delivery, same store: p50 {b50:.2f} ms, p99 {b99:.2f} ms"
            f"; ratio p50 x{p50 / b50:.0f}, p99 x{p99 / b99:.0f}"
        )
        sizes, inner, count = map_memory(dp)
        ipcache_n = len(dp.ipcache.entries())
        rows = ", ".join(
            f"{n} {b / 2**20:.2f}" for n, b in sorted(sizes.items(), key=lambda x: -x[1])
        )
        total = sum(sizes.values()) + inner
        print(
            f"BPF map memory (kernel memlock): {total / 2**20:.1f} MiB in all; policy: "
            f"{count} endpoint maps, {sum(entries)} entries, {inner / 2**20:.2f} MiB "
            f"({inner / max(1, sum(entries)):.0f} B/entry); ipcache {ipcache_n} entries; "
            f"per map MiB: {rows}"
        )
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def main() -> None:
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    netns = f"fsbench-pa{tag}"
    pin_root = BPFFS / f"fsbench-pa{tag}"
    data = Path(tempfile.mkdtemp(prefix="fsbench-etcd"))
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    etcd = subprocess.Popen(
        etcd_command("bench", data / "data", client, peer),
        stdout=subprocess.DEVNULL,
        stderr=open(data / "etcd.log", "wb"),  # noqa: SIM115
    )
    dp = None
    try:
        pyroute2_netns.create(netns)
        pin_root.mkdir()
        dp = Datapath.load(pin_root / "datapath")

        async def run() -> None:
            await wait_healthy(url, 15, log_file=data / "etcd.log")
            kv = EtcdKV(url)
            try:
                await bench(kv, dp, pin_root / "datapath", netns)
            finally:
                await kv.close()

        asyncio.run(run())
    finally:
        if dp is not None:
            dp.close()
        shutil.rmtree(pin_root, ignore_errors=True)
        with contextlib.suppress(OSError):
            pyroute2_netns.remove(netns)
        etcd.terminate()
        try:
            etcd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            etcd.kill()
            etcd.wait()
        shutil.rmtree(data, ignore_errors=True)
        print(f"(whole run {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
