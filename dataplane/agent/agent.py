"""One node's agent: composes IPAM, the CNI service, routing, masquerading and the lab's pod
runtime around the cluster store. Each part owns its concept; this module only wires them and
keeps them running.

Stopping the agent (SIGTERM, or a crash) leaves the node's datapath in place: pods keep their
network, pinned programs keep running; a restarted agent adopts all of it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from dataplane.agent import routing
from dataplane.cni.conf import write_conflist
from dataplane.cni.server import serve_cni
from dataplane.cni.service import CNIService
from dataplane.ipam import IPAM, PREFIXES_KEY_PREFIX, IPAMConfig, all_node_prefixes
from dataplane.lab.kubelet import Kubelet
from flowscope.apis.objectstore import ObjectStore
from flowscope.clusterinfo import ClusterInfo
from flowscope.store.etcd import EtcdKV

log = logging.getLogger(__name__)


def cni_path() -> list[str]:
    """Where the runtime looks for plugins: ours first (the venv), then Debian's reference ones."""
    return [str(Path(sys.executable).parent), "/usr/lib/cni"]


class EndpointHooks:
    """What the datapath does when an endpoint comes or goes (policy and identity join later)."""

    async def host_link_created(self, host_ifname: str) -> None:
        log.debug("host link created: %s", host_ifname)

    async def endpoint_added(self, endpoint) -> None:
        log.debug("endpoint added: %s", endpoint)

    async def endpoint_removed(self, endpoint) -> None:
        log.debug("endpoint removed: %s", endpoint)


class Agent:
    def __init__(self, info: ClusterInfo, node: str) -> None:
        self.info = info
        self.node = node
        self.node_ip = info.node(node).ip
        self.paths = info.paths

    async def run(self, stop: asyncio.Event) -> None:
        kv = EtcdKV(self.info.etcd_url)
        objects = ObjectStore(kv)
        ipam = IPAM(kv, IPAMConfig.from_cluster_info(self.info), self.node, self.node_ip)
        await ipam.ensure_node()
        masquerade = await self._start_masquerade()

        service = CNIService(kv, self.node, self.paths.node_netns(self.node), ipam, EndpointHooks())
        socket_path = self.paths.agent_socket(self.node)
        server = await serve_cni(service, socket_path)
        conflist = write_conflist(
            self.paths.cni_conf_dir(self.node), self.info.name, self.node, socket_path
        )
        kubelet = Kubelet(self.info, self.node, objects, conflist, cni_path())
        tasks = [
            asyncio.create_task(self._route_loop(kv), name="routes"),
            asyncio.create_task(kubelet.run(), name="kubelet"),
        ]
        if masquerade is not None:
            tasks.append(asyncio.create_task(self._masquerade_gc(masquerade), name="masq-gc"))
        await self._set_node_ready(objects, ipam)
        log.info("agent for %s ready (%s, ipam %s)", self.node, self.node_ip, self.info.ipam)
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        server.close()
        await service.close()
        await kv.close()
        for task in done:
            if task is stopped:
                continue
            # every part runs until stopped: one that returns or fails takes the agent down
            # (the lab's supervisor, or the user's `lab up`, restarts it)
            if task.exception():
                raise task.exception()  # type: ignore[misc]
            raise RuntimeError(f"agent task {task.get_name()} ended unexpectedly")

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

    async def _masquerade_gc(self, masq) -> None:
        while True:
            await asyncio.sleep(5)
            await asyncio.to_thread(masq.gc)

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


def _kernel() -> str:
    import platform

    return platform.release()
