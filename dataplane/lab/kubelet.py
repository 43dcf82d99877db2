"""The lab's pod runtime, what kubelet and containerd are on a real node.

It watches the pods bound to its node and makes each one real: a sandbox (network namespace,
cgroup, and the resolv.conf kubelet would write for the pod's dnsPolicy), CNI ADD through the
node's conflist exactly as containerd runs a plugin, the pod's server, and the pod's status (IP,
Ready) written back. The server is the responder on every containerPort, or, for a pod whose image
is CoreDNS's, the cluster DNS server (dataplane.dns.server). A deleted pod is
torn down in reverse. What it started is recorded under the node's run dir, so that a restarted
agent adopts running pods instead of re-plumbing them, and removes those deleted meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dataplane.cni.runtime import CNIError, invoke_plugin
from dataplane.dns.resolvconf import dns_service_ip, resolv_conf
from dataplane.lab.sandbox import Sandbox
from flowscope.apis.conditions import is_ready
from flowscope.clusterinfo import ClusterInfo

log = logging.getLogger(__name__)
IFNAME = "eth0"
RETRY_SECONDS = 2.0
RESYNC_EVERY = 5  # retry rounds
DNS_IMAGES = frozenset({"coredns"})  # image names (any registry, any tag) run as the cluster DNS


def image_name(image: str) -> str:
    """`mcr.microsoft.com/oss/kubernetes/coredns:v1.9.4` -> `coredns`."""
    last = image.rsplit("/", 1)[-1]
    return last.split("@", 1)[0].split(":", 1)[0]


def runs_cluster_dns(pod: dict) -> bool:
    return any(
        image_name(c.get("image") or "") in DNS_IMAGES
        for c in pod.get("spec", {}).get("containers", [])
    )


def container_id(pod_uid: str) -> str:
    return pod_uid.replace("-", "")


def container_ports(pod: dict) -> tuple[list[int], list[int]]:
    tcp: set[int] = set()
    udp: set[int] = set()
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports", []) or []:
            proto = port.get("protocol", "TCP")
            (udp if proto == "UDP" else tcp).add(int(port["containerPort"]))
    return sorted(tcp), sorted(udp)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PodRecord:
    """What the runtime did for one pod, kept on disk for adoption after a restart."""

    uid: str
    namespace: str
    name: str
    container_id: str
    ip: str
    result: dict

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class Kubelet:
    def __init__(
        self,
        info: ClusterInfo,
        node: str,
        objects,  # flowscope.apis.objectstore.ObjectStore
        conflist: Path,
        cni_path: list[str],
    ) -> None:
        self.info = info
        self.node = node
        self.objects = objects
        self.conflist = conflist
        self.cni_path = cni_path
        self.records_dir = info.paths.node_dir(node) / "pods"
        self.logs_dir = info.paths.node_dir(node) / "logs"
        self._locks: dict[str, asyncio.Lock] = {}
        self._procs: list[subprocess.Popen] = []
        self._tasks: set[asyncio.Task] = set()  # kept so they are not garbage-collected
        self._pending: dict[str, dict] = {}  # uid -> pod that failed and waits for a retry

    # -- records --------------------------------------------------------------------------------
    def _record_path(self, uid: str) -> Path:
        return self.records_dir / f"{uid}.json"

    def _load_record(self, uid: str) -> PodRecord | None:
        try:
            return PodRecord(**json.loads(self._record_path(uid).read_text()))
        except FileNotFoundError:
            return None

    def _save_record(self, record: PodRecord) -> None:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._record_path(record.uid).with_suffix(".tmp")
        tmp.write_text(record.to_json())
        tmp.replace(self._record_path(record.uid))

    def known_uids(self) -> set[str]:
        if not self.records_dir.exists():
            return set()
        return {p.stem for p in self.records_dir.glob("*.json")}

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        await self._resync()
        retry = asyncio.create_task(self._retry_loop())
        try:
            async for event in self.objects.watch("Pod"):
                pod = event.object
                if pod.get("spec", {}).get("nodeName") != self.node:
                    continue
                uid = pod["metadata"]["uid"]
                if event.type == "DELETED":
                    self._pending.pop(uid, None)
                    record = self._load_record(uid)
                    if record:
                        await self._serialized(uid, self._teardown(record))
                    continue
                task = asyncio.create_task(self._serialized(uid, self._ensure(pod)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            retry.cancel()

    async def _resync(self) -> None:
        """Tear down pods recorded here that the store no longer has (deleted while we were
        down, or between a list and a watch); restart the server of a pod whose process died
        (restartPolicy Always: a DNS server that lost the store for too long exits)."""
        mine = {
            p["metadata"]["uid"]: p
            for p in await self.objects.list("Pod")
            if p.get("spec", {}).get("nodeName") == self.node
        }
        known = self.known_uids()
        for uid in known - mine.keys():
            record = self._load_record(uid)
            if record:
                await self._serialized(uid, self._teardown(record))
        for uid in known & mine.keys():
            if uid not in self._pending and not self._sandbox(uid).running():
                log.warning("pod %s: its process exited; restarting it", uid)
                await self._serialized(uid, self._ensure(mine[uid]))

    def _sandbox(self, uid: str) -> Sandbox:
        return Sandbox.for_pod(self.info.paths, self.node, uid)

    async def _serialized(self, uid: str, work) -> None:
        lock = self._locks.setdefault(uid, asyncio.Lock())
        async with lock:
            await work

    async def _retry_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            rounds += 1
            if rounds % RESYNC_EVERY == 0:
                await self._resync()
            self._procs = [p for p in self._procs if p.poll() is None]  # reap exited responders
            for uid, pod in list(self._pending.items()):
                await self._serialized(uid, self._ensure(pod))

    # -- one pod --------------------------------------------------------------------------------
    async def _ensure(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        sandbox = Sandbox.for_pod(self.info.paths, self.node, uid)
        record = self._load_record(uid)
        try:
            if record is None or not sandbox.exists():
                record = await self._create(pod, sandbox)
            if not sandbox.running():
                log_file = self.logs_dir / f"{ns}_{name}_{uid}.log"
                if runs_cluster_dns(pod):
                    argv = self._dns_argv(sandbox)
                    start = functools.partial(sandbox.start, argv, f"pod {name}'s DNS server")
                    proc = await asyncio.to_thread(start, log_file)
                else:
                    tcp, udp = container_ports(pod)
                    proc = await asyncio.to_thread(
                        sandbox.start_responder, name, tcp, udp, log_file
                    )
                self._procs.append(proc)
            self._pending.pop(uid, None)
            if pod.get("status", {}).get("podIP") != record.ip or not is_ready(pod):
                await self._set_status(pod, record)
        except Exception as exc:
            log.warning("pod %s/%s: %s (retrying)", ns, name, exc)
            self._pending[uid] = pod
            await self._set_failed(pod, exc)

    def _dns_argv(self, sandbox: Sandbox) -> list[str]:
        """The cluster DNS server of a DNS pod: the store from the host, sockets in the pod."""
        argv = [sys.executable, "-m", "dataplane.dns.server", "--etcd", self.info.etcd_url]
        argv += ["--netns", sandbox.netns_path, "--cgroup", str(sandbox.cgroup)]
        argv += ["--dns-ip", str(dns_service_ip(self.info.service_cidr))]
        for upstream in self.info.extra.get("dns_upstreams") or ():
            argv += ["--upstream", str(upstream)]
        return argv

    async def _create(self, pod: dict, sandbox: Sandbox) -> PodRecord:
        meta = pod["metadata"]
        cid = container_id(meta["uid"])
        text = resolv_conf(pod, dns_service_ip(self.info.service_cidr))
        await asyncio.to_thread(sandbox.create, text)
        result = await self._cni("ADD", meta["uid"], meta["namespace"], meta["name"], cid, sandbox)
        ip = result["ips"][0]["address"].split("/")[0]
        record = PodRecord(meta["uid"], meta["namespace"], meta["name"], cid, ip, result)
        self._save_record(record)
        log.info("pod %s/%s: %s on %s", meta["namespace"], meta["name"], ip, self.node)
        return record

    async def _teardown(self, record: PodRecord) -> None:
        sandbox = Sandbox.for_pod(self.info.paths, self.node, record.uid)
        await asyncio.to_thread(sandbox.destroy)  # processes first, as containerd stops tasks
        try:
            await self._cni(
                "DEL",
                record.uid,
                record.namespace,
                record.name,
                record.container_id,
                sandbox,
                prev_result=record.result,
            )
        except CNIError as exc:
            log.warning("pod %s/%s: CNI DEL failed: %s", record.namespace, record.name, exc)
            return  # keep the record: the next sync retries the DEL
        self._record_path(record.uid).unlink(missing_ok=True)
        log.info("pod %s/%s: removed from %s", record.namespace, record.name, self.node)

    async def _cni(
        self,
        command: str,
        uid: str,
        namespace: str,
        name: str,
        cid: str,
        sandbox: Sandbox,
        prev_result: dict | None = None,
    ) -> dict:
        """Run the node's CNI plugin chain for one pod, with the arguments containerd passes."""
        return await invoke_plugin(
            command,
            self.conflist,
            container_id=cid,
            netns_path=sandbox.netns_path,
            ifname=IFNAME,
            cni_args={
                "K8S_POD_NAMESPACE": namespace,
                "K8S_POD_NAME": name,
                "K8S_POD_UID": uid,
                "K8S_POD_INFRA_CONTAINER_ID": cid,
            },
            cni_path=self.cni_path,
            run_in_netns=self.info.paths.node_netns(self.node),
            prev_result=prev_result,
        )

    async def _set_status(self, pod: dict, record: PodRecord) -> None:
        started = pod.get("status", {}).get("startTime") or now()
        containers = pod.get("spec", {}).get("containers", [])
        status = {
            "phase": "Running",
            "hostIP": str(self.info.node(self.node).ip),
            "podIP": record.ip,
            "podIPs": [{"ip": record.ip}],
            "startTime": started,
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": started}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": c.get("name", "main"),
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "image": c.get("image", ""),
                    "state": {"running": {"startedAt": started}},
                }
                for c in containers
            ],
        }
        meta = pod["metadata"]
        await self.objects.update_status("Pod", meta["namespace"], meta["name"], status)

    async def _set_failed(self, pod: dict, exc: Exception) -> None:
        meta = pod["metadata"]
        reason = "FailedCreatePodSandBox"
        message = str(exc)
        status = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": reason, "message": message},
            ],
            "containerStatuses": [
                {
                    "name": c.get("name", "main"),
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ContainerCreating", "message": message}},
                }
                for c in pod.get("spec", {}).get("containers", [])
            ],
        }
        try:
            await self.objects.update_status("Pod", meta["namespace"], meta["name"], status)
        except Exception as status_exc:  # the pod may be gone; the retry loop will see
            log.debug("status of %s/%s: %s", meta["namespace"], meta["name"], status_exc)
