"""Enforcement: cluster state -> one node's maps, with a fake datapath (the kernel's own tests
are under tests/probes; tests/e2e runs the real thing on a lab)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network

import pytest

from dataplane.agent import ipcache_records
from dataplane.agent.enforcement import Enforcement
from dataplane.endpoint.endpoint import Endpoint
from dataplane.endpoint.registry import EndpointRegistry
from dataplane.identity.allocator import IdentityAllocator
from dataplane.identity.ipcache import IPCacheEntry
from dataplane.identity.model import Reserved
from dataplane.maps.bpfmap import MapError
from dataplane.policy.entry import COOKIE_HOST, COOKIE_NO_POLICY, Direction, EndpointPolicy
from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.clusterinfo import ClusterInfo, NodeInfo
from flowscope.errors import FlowscopeError

NODES = {"n1": IPv4Address("10.224.0.4"), "n2": IPv4Address("10.224.0.5")}


class FakeDatapath:
    """The maps as dicts; survives an Enforcement restart like pinned maps do."""

    def __init__(self) -> None:
        self.attached: list[str] = []
        self.ipcache: dict[IPv4Network, IPCacheEntry] = {}
        self.policies: dict[int, EndpointPolicy] = {}
        self.endpoints: dict[int, tuple] = {}
        self.writes = 0
        self.max_policy_entries = 1 << 20

    async def attach_endpoint(self, host_ifname: str) -> None:
        self.attached.append(host_ifname)

    def ipcache_entries(self) -> dict[IPv4Network, IPCacheEntry]:
        return dict(self.ipcache)

    def ipcache_update(self, upserts: Mapping[IPv4Network, IPCacheEntry]) -> None:
        self.writes += len(upserts)
        self.ipcache.update(upserts)

    def ipcache_delete(self, prefixes: list[IPv4Network]) -> None:
        self.writes += len(prefixes)
        for p in prefixes:
            self.ipcache.pop(p, None)

    def policy_get(self, endpoint_id: int) -> EndpointPolicy | None:
        return self.policies.get(endpoint_id)

    def policy_set(self, endpoint_id: int, policy: EndpointPolicy) -> None:
        if len(policy.entries) > self.max_policy_entries:
            raise MapError(
                f"policy map of endpoint {endpoint_id} is full", hint="raise policy_entries"
            )
        self.writes += 1
        self.policies[endpoint_id] = policy

    def policy_delete(self, endpoint_id: int) -> None:
        self.policies.pop(endpoint_id, None)

    def endpoint_set(self, ifindex, endpoint_id, identity, ip, audit) -> None:
        self.writes += 1
        self.endpoints[ifindex] = (endpoint_id, identity, ip, audit)

    def endpoint_delete(self, ifindex: int) -> None:
        self.endpoints.pop(ifindex, None)


def info(audit: bool = False) -> ClusterInfo:
    return ClusterInfo(
        name="t",
        ipam="overlay",
        vnet_cidr=IPv4Network("10.224.0.0/16"),
        pod_cidr=IPv4Network("10.244.0.0/16"),
        service_cidr=IPv4Network("10.0.0.0/16"),
        gateway=IPv4Address("10.224.0.1"),
        etcd_url="memory://",
        nodes=tuple(NodeInfo(n, ip, f"fs.t.{n}") for n, ip in NODES.items()),
        extra={"policy_audit_mode": audit},
    )


def pod(ns: str, name: str, labels: dict, node: str = "n1") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                }
            ],
        },
    }


def namespace(name: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
    meta: dict = {"name": name, "labels": labels or {}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def deny_ingress(ns: str) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": ns},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def endpoint(node: str, ns: str, name: str, ip: str, ifindex: int) -> Endpoint:
    return Endpoint(
        node=node,
        container_id=f"c-{name}",
        ifname="eth0",
        netns=f"/run/netns/{name}",
        ip=IPv4Address(ip),
        pod_mac="02:00:00:00:00:01",
        host_ifname=f"lxc{name}",
        host_mac="02:00:00:00:00:02",
        host_ifindex=ifindex,
        mtu=1500,
        pod_namespace=ns,
        pod_name=name,
        pod_uid=f"uid-{name}",
        created="2026-11-28T00:00:00.000+00:00",
    )


@contextlib.asynccontextmanager
async def running(kv, node: str, dp: FakeDatapath | None = None, audit: bool = False):
    dp = dp or FakeDatapath()
    enf = Enforcement(info(audit), node, kv, dp, IdentityAllocator(kv, node))
    await enf.start()
    task = asyncio.create_task(enf.run())
    try:
        yield enf, dp
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def add(kv, enf: Enforcement, ep: Endpoint) -> None:
    """What CNIService does around the hooks."""
    await enf.host_link_created(ep.host_ifname)
    await EndpointRegistry(kv, ep.node).put(ep)
    await enf.endpoint_added(ep)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


@pytest.fixture
async def objects(kv) -> ObjectStore:
    store = ObjectStore(kv)
    await store.apply([namespace("x", {"team": "a"}), namespace("y")])
    await store.apply([pod("x", "a", {"app": "a"}), pod("y", "b", {"app": "b"}, node="n2")])
    return store


async def test_a_new_endpoint_is_fully_programmed_before_add_returns(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        ep = endpoint("n1", "x", "a", "10.244.0.10", 7)
        await add(kv, enf, ep)
        assert dp.attached == ["lxca"]
        ident, ipc = dp.endpoints[7][1], dp.ipcache[IPv4Network("10.244.0.10/32")]
        assert ipc.identity == ident and ident >= 256
        assert dp.endpoints[7] == (7, ident, IPv4Address("10.244.0.10"), False)
        # no policy selects the pod: both directions hold the allow-all entry
        assert {e.cookie for e in dp.policies[7].entries} == {COOKIE_NO_POLICY}
        # the record other agents read, and the reserved entries
        record = (await kv.get(ipcache_records.PREFIX + "10.244.0.10")).value
        assert ipcache_records.decode("", record).identity == ident
        assert dp.ipcache[IPv4Network("10.224.0.4/32")].identity == Reserved.HOST
        assert dp.ipcache[IPv4Network("10.224.0.5/32")].identity == Reserved.REMOTE_NODE
        assert dp.ipcache[IPv4Network("0.0.0.0/0")].identity == Reserved.WORLD


async def test_policy_changes_at_runtime_reach_the_maps(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        await add(kv, enf, endpoint("n1", "x", "a", "10.244.0.10", 7))
        await objects.apply([deny_ingress("x")])
        await until(lambda: COOKIE_HOST in {e.cookie for e in dp.policies[7].entries})
        ingress = {e for e in dp.policies[7].entries if e.direction == Direction.INGRESS}
        assert {e.identity for e in ingress} == {Reserved.HOST}  # default deny, host allowed
        await objects.delete([ObjectRef("NetworkPolicy", "x", "deny")])
        await until(lambda: {e.cookie for e in dp.policies[7].entries} == {COOKIE_NO_POLICY})


async def test_relabelling_a_namespace_gives_its_pods_a_new_identity(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        await add(kv, enf, endpoint("n1", "x", "a", "10.244.0.10", 7))
        before = dp.endpoints[7][1]
        await objects.apply([namespace("x", {"team": "b"})])
        await until(lambda: dp.endpoints[7][1] != before)
        after = dp.endpoints[7][1]
        assert dp.ipcache[IPv4Network("10.244.0.10/32")].identity == after
        labels = (await IdentityAllocator(kv, "other").lookup(after)).labels
        assert "k8s:io.cilium.k8s.namespace.labels.team=b" in labels


async def test_namespace_audit_annotation_sets_the_endpoint_flag(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        await add(kv, enf, endpoint("n1", "x", "a", "10.244.0.10", 7))
        assert dp.endpoints[7][3] is False
        await objects.apply(
            [namespace("x", {"team": "a"}, {"policy.flowscope.io/audit-mode": "true"})]
        )
        await until(lambda: dp.endpoints[7][3] is True)


async def test_cluster_wide_audit_mode(kv, objects):
    async with running(kv, "n1", audit=True) as (enf, dp):
        await add(kv, enf, endpoint("n1", "x", "a", "10.244.0.10", 7))
        assert dp.endpoints[7][3] is True


async def test_other_nodes_learn_the_pod_before_add_returns(kv, objects):
    async with running(kv, "n2") as (enf2, dp2), running(kv, "n1") as (enf1, dp1):
        # n2 has applied something: it takes part in the barrier
        await add(kv, enf2, endpoint("n2", "y", "b", "10.244.1.10", 9))
        await add(kv, enf1, endpoint("n1", "x", "a", "10.244.0.10", 7))
        # the ADD on n1 returned: n2's ipcache already has the new pod
        entry = dp2.ipcache.get(IPv4Network("10.244.0.10/32"))
        assert entry is not None and entry.identity == dp1.endpoints[7][1]
        assert entry.node_ip == NODES["n1"]


async def test_a_restarted_agent_adopts_its_maps_without_rewriting_them(kv, objects):
    dp = FakeDatapath()
    async with running(kv, "n1", dp) as (enf, _):
        await add(kv, enf, endpoint("n1", "x", "a", "10.244.0.10", 7))
        await objects.apply([deny_ingress("x")])
        await until(lambda: COOKIE_HOST in {e.cookie for e in dp.policies[7].entries})
    before = (dict(dp.policies), dict(dp.ipcache), dp.endpoints[7][1])
    writes = dp.writes
    async with running(kv, "n1", dp):
        pass
    assert (dict(dp.policies), dict(dp.ipcache), dp.endpoints[7][1]) == before
    # the endpoint row is rewritten once (the new process does not know it); nothing else
    assert dp.writes - writes <= 1


async def test_endpoint_removed_clears_its_state(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        ep = endpoint("n1", "x", "a", "10.244.0.10", 7)
        await add(kv, enf, ep)
        await enf.endpoint_removed(ep)
        assert 7 not in dp.endpoints and 7 not in dp.policies
        assert await kv.get(ipcache_records.PREFIX + "10.244.0.10") is None
        await until(lambda: IPv4Network("10.244.0.10/32") not in dp.ipcache)


async def test_a_full_policy_map_is_reported_and_the_old_policy_kept(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        await add(kv, enf, endpoint("n1", "x", "a", "10.244.0.10", 7))
        before = dp.policies[7]
        dp.max_policy_entries = 1  # the deny policy has two entries (HOST + egress allow-all)
        await objects.apply([deny_ingress("x")])
        await until(lambda: any("policy of" in k for k in enf.problems))
        assert dp.policies[7] == before  # never half-written
        assert "is full" in next(iter(enf.problems.values()))
        dp.max_policy_entries = 1 << 20
        await objects.apply([namespace("x", {"team": "a", "poke": "1"})])  # any change: retry
        await until(lambda: not enf.problems)
        assert COOKIE_HOST in {e.cookie for e in dp.policies[7].entries}


async def test_add_fails_cleanly_when_the_endpoints_policy_cannot_be_written(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        dp.max_policy_entries = 0
        ep = endpoint("n1", "x", "a", "10.244.0.10", 7)
        await EndpointRegistry(kv, ep.node).put(ep)
        with pytest.raises(FlowscopeError, match="is full"):
            await enf.endpoint_added(ep)
        assert ep.key not in enf.local
        assert await kv.get(ipcache_records.PREFIX + "10.244.0.10") is None
        # nothing is left for a later veth that gets the same ifindex, nor reported any more
        assert 7 not in dp.endpoints and 7 not in dp.policies
        assert not enf.problems


def fqdn_cnp(ns: str) -> dict:
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "to-api", "namespace": ns},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "a"}},
            "egress": [
                {
                    "toFQDNs": [{"matchName": "api.example.com"}],
                    "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
                }
            ],
        },
    }


async def test_fqdn_policy_follows_what_dns_answered(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        await add(kv, enf, endpoint("n1", "x", "a", "10.244.0.10", 7))
        await objects.apply([fqdn_cnp("x")])

        def egress() -> set:
            return {e for e in dp.policies[7].entries if e.direction == Direction.EGRESS}

        # isolated, and nothing answered yet: no egress entry at all
        await until(lambda: not egress())
        assert enf.cnps()[0].name == "to-api"
        # an answer the selector wants: a CIDR identity for the /32, an entry for port 80
        assert enf.dns_cache.learn(["api.example.com"], ["192.0.2.7"], 30, now=0)
        enf.fqdn_learned()
        assert await enf.wait_fqdn_applied(enf.dns_cache.version, timeout=5)
        cidr = dp.ipcache[IPv4Network("192.0.2.7/32")]
        assert {(e.identity, e.port) for e in egress()} == {(cidr.identity, 80)}
        # the TTL runs out: the address is no longer allowed
        enf.expire_fqdns(now=10_000)
        await until(lambda: not egress())
        assert IPv4Network("192.0.2.7/32") not in dp.ipcache


async def test_the_cluster_dns_address_carries_the_dns_pods_identity(kv, objects):
    async with running(kv, "n1") as (enf, dp):
        enf.dns_service_ip = IPv4Address("10.0.0.10")
        await objects.apply(
            [namespace("kube-system"), pod("kube-system", "coredns", {"k8s-app": "kube-dns"})]
        )
        await add(kv, enf, endpoint("n1", "kube-system", "coredns", "10.244.0.2", 3))
        await until(lambda: IPv4Network("10.0.0.10/32") in dp.ipcache)
        assert dp.ipcache[IPv4Network("10.0.0.10/32")].identity == dp.endpoints[3][1]
