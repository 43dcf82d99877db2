"""One node's agent: composes IPAM, the CNI service, routing, masquerading and the lab's pod
runtime around the cluster store. Each part owns its concept; this module only wires them and
keeps them running.

Stopping the agent (SIGTERM, or a crash) leaves the node's datapath in place: pods keep their
network, pinned programs keep running; a restarted agent adopts all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from pathlib import Path

from collector.enrich import Enricher
from collector.flowstream import FlowStream
from collector.node import NodeCollector
from collector.observer import observer_socket, serve_observer
from collector.podcgroups import PodCgroups
from collector.ring import capacity_of
from collector.services import ServiceIndex
from dataplane.agent import routing
from dataplane.agent.enforcement import Enforcement
from dataplane.agent.nodedatapath import NodeDatapath
from dataplane.agent.nodedns import NodeDNS
from dataplane.agent.nodel7 import NodeL7
from dataplane.agent.services import ServiceSync
from dataplane.cni.conf import write_conflist
from dataplane.cni.server import serve_cni
from dataplane.cni.service import CNIService
from dataplane.dns.resolvconf import dns_service_ip
from dataplane.endpoint.endpoint import Endpoint
from dataplane.identity.allocator import IdentityAllocator
from dataplane.ipam import IPAM, PREFIXES_KEY_PREFIX, IPAMConfig, all_node_prefixes
from dataplane.lab.kubelet import Kubelet
from dataplane.maps.kernelevent import TcpState
from flowscope.apis.objectstore import ObjectStore
from flowscope.clusterinfo import ClusterInfo
from flowscope.store.etcd import EtcdKV
from probes.datapath import Datapath
from probes.nodeport import NodePort
from probes.socklb import SocketLB
from probes.tracepoints import TracepointProbes

log = logging.getLogger(__name__)

CT_GC_INTERVAL = 10.0  # seconds; the kernel already ignores expired entries
# a connection opened (or accepted) and closed (or failed, or reset); the states between are
# left in the kernel: they are most of the events a short connection makes
TCP_STATES_REPORTED = frozenset({TcpState.TCP_ESTABLISHED, TcpState.TCP_CLOSE})
DATAPATH_REPORT_INTERVAL = 2.0  # seconds between checks of what could not be programmed


def cni_path() -> list[str]:
    """Where the runtime looks for plugins: ours first (the venv), then Debian's reference ones."""
    return [str(Path(sys.executable).parent), "/usr/lib/cni"]


class DatapathHooks:
    """What the datapath does when an endpoint comes or goes: enforcement (programs, identity,
    policy) and the tracepoint probes' view of the pod's namespace."""

    def __init__(self, enforcement: Enforcement, tracepoints) -> None:
        self.enforcement = enforcement
        self.tracepoints = tracepoints
        self.l7: NodeL7 | None = None  # set once the HTTP proxy runs

    async def host_link_created(self, host_ifname: str) -> None:
        await self.enforcement.host_link_created(host_ifname)

    async def endpoint_added(self, endpoint: Endpoint) -> None:
        await self.enforcement.endpoint_added(endpoint)
        self.watch(endpoint)
        if self.l7 is not None:
            # before the pod runs: its first connect to a guarded port finds the proxy
            await self.l7.endpoint_added(endpoint)

    async def endpoint_removed(self, endpoint: Endpoint) -> None:
        with contextlib.suppress(OSError):
            self.tracepoints.unwatch_netns(os.stat(endpoint.netns).st_ino)
        if self.l7 is not None:
            self.l7.endpoint_removed(endpoint)
        await self.enforcement.endpoint_removed(endpoint)

    def watch(self, endpoint: Endpoint) -> None:
        try:
            self.tracepoints.watch_netns(os.stat(endpoint.netns).st_ino)
        except OSError as e:  # kernel events of this pod are missed, nothing else
            log.warning("endpoint %s: cannot watch its namespace: %s", endpoint.key, e)


class Agent:
    def __init__(self, info: ClusterInfo, node: str, kafka_config: Path | None = None) -> None:
        self.info = info
        self.node = node
        self.kafka_config = kafka_config  # a file of the user's brokers; else the lab's, if any
        self.node_ip = info.node(node).ip
        self.paths = info.paths

    async def run(self, stop: asyncio.Event) -> None:
        kv = EtcdKV(self.info.etcd_url)
        objects = ObjectStore(kv)
        ipam = IPAM(kv, IPAMConfig.from_cluster_info(self.info), self.node, self.node_ip)
        await ipam.ensure_node()
        masquerade = await self._start_masquerade()
        netns = self.paths.node_netns(self.node)
        bpf_dir = self.paths.node_bpf_dir(self.node)
        # compiling takes about a second each, the first time in a process: off the event loop.
        # Both adopt what a previous run pinned (connections, policies, watched namespaces).
        entries = self.info.policy_map_entries
        sizes = {"policy_entries": entries} if entries else {}
        datapath = await asyncio.to_thread(Datapath.load, bpf_dir / "datapath", **sizes)
        tracepoints = await asyncio.to_thread(
            functools.partial(
                TracepointProbes.load, bpf_dir / "tracepoints", tcp_states=TCP_STATES_REPORTED
            )
        )
        node_inode = tracepoints.watch_named_netns(netns)
        tracepoints.attach()

        maps = NodeDatapath(datapath, netns)
        enforcement = Enforcement(self.info, self.node, kv, maps, IdentityAllocator(kv, self.node))
        dns_ip = dns_service_ip(self.info.service_cidr)
        enforcement.dns_service_ip = dns_ip
        await enforcement.start()
        hooks = DatapathHooks(enforcement, tracepoints)
        for local in enforcement.local.values():
            hooks.watch(local.endpoint)
        stream = FlowStream(capacity_of(self.info.extra), node_name=self.node)
        publisher = self._start_publisher(stream)
        # the Observer API (GetFlows, ServerStatus, GetNodes) on a 0600 socket; the relay reads it
        observer = await serve_observer(stream, observer_socket(self.paths, self.node))
        # flows name addresses as Hubble does: "api.example.com", without the root's dot
        cache = enforcement.dns_cache
        enricher = Enricher(
            enforcement,
            self.info.name,
            names=lambda ip: tuple(n.rstrip(".") for n in cache.names_of(ip)),
        )
        collector = NodeCollector(
            self.node,
            enricher,
            stream,
            lambda inode, ifindex: inode == node_inode and enforcement.has_ifindex(ifindex),
        )

        # services: translated at the socket, for every pod of this node (its cgroup)
        socklb = await asyncio.to_thread(SocketLB.load, bpf_dir / "socklb")
        node_cgroup = self.paths.node_cgroup(self.node)
        node_cgroup.mkdir(parents=True, exist_ok=True)
        socklb.attach(node_cgroup)
        socklb.attach_l7(node_cgroup)  # where redirected connections were going, for the proxy
        # NodePort: tc on the uplink (both IPAM modes), before masquerade; adopts pinned maps
        nodeport = await self._start_nodeport()
        services = ServiceSync(
            kv,
            self.node,
            socklb.maps,
            nodeport=nodeport.maps,
            node_ip=str(self.node_ip),
            local_addresses=frozenset({str(dns_ip)}),  # the node's DNS proxy answers there
        )
        await services.start()
        # flows name services by frontend, and the socket LB's clients by their pod's cgroup
        mirror = services.services
        enricher.services = ServiceIndex(lambda: mirror.items.values(), lambda: mirror.version)
        enricher.pods = PodCgroups(
            lambda: [
                (self.paths.pod_cgroup(self.node, local.endpoint.pod_uid), str(local.endpoint.ip))
                for local in enforcement.local.values()
            ]
        )

        # every pod's DNS through the node's proxy: L7 DNS flows, DNS rules, FQDN policy
        node_dns = NodeDNS(self.info, self.node, enforcement, services, stream.publish, enricher)
        await node_dns.start()
        # HTTP rules: pods' connections to guarded ports through the proxy in their namespace
        node_l7 = NodeL7(self.node, enforcement, socklb.l7, stream.publish, enricher)
        await node_l7.start()
        hooks.l7 = node_l7

        service = CNIService(kv, self.node, netns, ipam, hooks)
        socket_path = self.paths.agent_socket(self.node)
        server = await serve_cni(service, socket_path)
        conflist = write_conflist(
            self.paths.cni_conf_dir(self.node), self.info.name, self.node, socket_path
        )
        kubelet = Kubelet(self.info, self.node, objects, conflist, cni_path())
        tasks = [
            asyncio.create_task(self._route_loop(kv), name="routes"),
            asyncio.create_task(kubelet.run(), name="kubelet"),
            asyncio.create_task(enforcement.run(), name="enforcement"),
            asyncio.create_task(services.run(), name="services"),
            asyncio.create_task(
                collector.run_datapath(
                    datapath.ring(), datapath.lost_events, (socklb.ring(), socklb.lost_events)
                ),
                name="flows",
            ),
            asyncio.create_task(collector.run_tracepoints(tracepoints), name="kernel-events"),
            asyncio.create_task(_every(CT_GC_INTERVAL, datapath.ct.gc), name="ct-gc"),
            asyncio.create_task(_every(CT_GC_INTERVAL, nodeport.gc), name="nodeport-gc"),
            asyncio.create_task(node_dns.run(), name="dns-proxy"),
            asyncio.create_task(node_l7.run(), name="l7-proxy"),
        ]
        if masquerade is not None:
            tasks.append(asyncio.create_task(_every(5, masquerade.gc), name="masq-gc"))
        if publisher is not None:
            tasks.append(asyncio.create_task(publisher.run(), name="kafka-publisher"))
        await self._set_node_ready(objects, ipam)
        # after Ready: that status write replaces the conditions this task then adds to
        tasks.append(
            asyncio.create_task(
                self._report_datapath(objects, enforcement, services, node_l7), name="report"
            )
        )
        log.info("agent for %s ready (%s, ipam %s)", self.node, self.node_ip, self.info.ipam)
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        server.close()
        if publisher is not None:
            await publisher.close()  # what the broker did not take stays in the spool
        await node_dns.close()
        await node_l7.close()
        await observer.close(grace=0.5)
        await service.close()
        await kv.close()
        tracepoints.close()  # tracepoint attachments end with this process's fds
        socklb.close()  # the cgroup keeps its programs, the pins keep the maps
        nodeport.close()  # tc programs stay attached, maps pinned
        datapath.close()  # tc programs and maps stay pinned and attached
        for task in done:
            if task is stopped:
                continue
            # every part runs until stopped: one that returns or fails takes the agent down
            # (the lab's supervisor, or the user's `lab up`, restarts it)
            if task.exception():
                raise task.exception()  # type: ignore[misc]
            raise RuntimeError(f"agent task {task.get_name()} ended unexpectedly")

    def _start_publisher(self, stream: FlowStream):
        """The node's Kafka publisher when Kafka is configured (else None: flows stay in the
        node, served by the Observer API alone)."""
        from collector import kafkaconfig
        from collector.publisher import Publisher, spool_dir, stats_path

        config = kafkaconfig.for_agent(self.info.extra, self.kafka_config)
        if config is None:
            return None
        publisher = Publisher(
            stream,
            config,
            spool_dir(self.paths, self.node),
            stats_file=stats_path(self.paths, self.node),
        )
        publisher.start()  # before any flow: an earlier run's gap record comes first
        log.info("publishing flows to Kafka at %s", config.bootstrap_servers)
        return publisher

    async def _start_masquerade(self):
        if self.info.ipam != "overlay":
            return None  # VNET pods are routable as they are
        from probes.masquerade import Masquerade

        # adopts the pinned NAT map of a previous run, so established flows survive a restart
        # compiling takes ~1 s the first time: off the event loop
        masq = await asyncio.to_thread(Masquerade.load, self.paths.node_bpf_dir(self.node) / "masq")
        await masq.attach(
            self.paths.node_netns(self.node), "eth0", self.node_ip, self.info.pod_cidr
        )
        return masq

    async def _start_nodeport(self) -> NodePort:
        nodeport = await asyncio.to_thread(
            NodePort.load, self.paths.node_bpf_dir(self.node) / "nodeport"
        )
        overlay = self.info.ipam == "overlay"
        await nodeport.attach(
            self.paths.node_netns(self.node),
            "eth0",
            self.node_ip,
            native_cidr=self.info.pod_cidr if overlay else None,
            node_ips=[str(n.ip) for n in self.info.nodes],
        )
        return nodeport

    async def _report_datapath(
        self,
        objects: ObjectStore,
        enforcement: Enforcement,
        services: ServiceSync,
        node_l7: NodeL7 | None = None,
    ) -> None:
        """The node's DatapathReady condition: False, with what failed, while anything could
        not be programmed (a full map, above all), so `flowscope get nodes` shows it."""
        reported: dict[str, str] | None = None
        while True:
            problems = dict(enforcement.problems)
            if services.problem:
                problems["services"] = services.problem
            if node_l7 is not None and node_l7.problem:
                problems["l7 redirect"] = node_l7.problem
            if problems != reported:
                message = "; ".join(f"{what}: {why}" for what, why in sorted(problems.items()))
                cond = {
                    "type": "DatapathReady",
                    "status": "False" if problems else "True",
                    "reason": "MapWriteFailed" if problems else "Programmed",
                    "message": message[:1000],
                }

                def mutate(node: dict, cond=cond) -> dict:
                    status = node.setdefault("status", {})
                    others = [
                        c for c in status.get("conditions") or () if c.get("type") != cond["type"]
                    ]
                    status["conditions"] = [*others, cond]
                    return node

                await objects.update("Node", None, self.node, mutate)
                reported = problems
            await asyncio.sleep(DATAPATH_REPORT_INTERVAL)

    async def _route_loop(self, kv) -> None:
        """Reconcile routes now and on every change of prefix ownership."""
        _, revision = await kv.range(PREFIXES_KEY_PREFIX)
        await self._sync_routes(kv)
        async for _event in kv.watch(PREFIXES_KEY_PREFIX, revision + 1):
            await self._sync_routes(kv)

    async def _sync_routes(self, kv) -> None:
        plan = routing.plan_routes(self.info.ipam, self.node, await all_node_prefixes(kv))
        await asyncio.to_thread(
            routing.sync_routes, self.paths.node_netns(self.node), plan.node_routes, None
        )
        await asyncio.to_thread(
            routing.sync_routes, self.paths.fabric_netns, plan.fabric_routes, self.node_ip
        )

    async def _set_node_ready(self, objects, ipam) -> None:
        prefixes = [str(p) for p in await ipam.node_prefixes()]

        def mutate(node: dict) -> dict:
            if self.info.ipam == "overlay" and prefixes:
                node.setdefault("spec", {})["podCIDR"] = prefixes[0]
                node["spec"]["podCIDRs"] = prefixes[:1]
            return node

        await objects.update("Node", None, self.node, mutate)
        await objects.update_status(
            "Node",
            None,
            self.node,
            {
                "addresses": [
                    {"type": "InternalIP", "address": str(self.node_ip)},
                    {"type": "Hostname", "address": self.node},
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady"}],
                "nodeInfo": {"kubeletVersion": "flowscope-0.1", "kernelVersion": _kernel()},
            },
        )


async def _every(seconds: float, fn) -> None:
    """Run a blocking maintenance call (map GC) every few seconds, off the event loop."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(fn)


def _kernel() -> str:
    import platform

    return platform.release()
