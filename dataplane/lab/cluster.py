"""`lab up`, `lab down`, `lab status`: the lab cluster's life cycle.

up: plan -> fabric, nodes, outside host -> etcd -> cluster.json -> seed objects (namespaces,
nodes, the kube-dns Service and its DNS pods) -> controller and one agent per node -> wait until
every node is Ready and the cluster DNS answers. Each step is idempotent, so `up` on a cluster
that is up with the same shape repairs what is missing (a dead agent, say) and changes nothing else.
down: stops what the pid files name, kills every process left in the cluster's cgroups, removes
namespaces, pinned objects, cgroups, CNI config and state; it also cleans up after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from collector.ring import CAPACITY_KEY
from dataplane.dns.resolvconf import DNS_SERVICE, dns_service_ip
from dataplane.lab import daemons, fabric, netns, topology
from dataplane.lab import kafka as lab_kafka
from dataplane.lab.sandbox import Sandbox, remove_cgroup_tree
from flowscope import clusterinfo
from flowscope.apis.conditions import is_ready
from flowscope.clusterinfo import ClusterInfo, NodeInfo
from flowscope.errors import FlowscopeError
from flowscope.paths import ClusterPaths, valid_cluster_name

WORLD_TCP_PORTS = (80, 8080)
WORLD_UDP_PORTS = (8081,)
Progress = Callable[[str], None]
DNS_IMAGE = "flowscope/coredns:lab"  # the pod runtime runs pods of a coredns image as the DNS
DNS_LABELS = {"k8s-app": "kube-dns"}
DNS_REPLICAS = 2  # on the first nodes, as CoreDNS's two replicas


@dataclass(frozen=True)
class UpOptions:
    name: str
    nodes: int = 3
    ipam: str = "overlay"
    vnet_cidr: IPv4Network = topology.DEFAULT_VNET_CIDR
    pod_cidr: IPv4Network | None = None
    lb_pool: IPv4Network = topology.DEFAULT_LB_POOL
    timeout: float = 60.0
    policy_audit_mode: bool = False  # cluster-wide: would-be policy drops pass as AUDIT
    policy_map_entries: int | None = None  # per endpoint; None: the datapath's default
    flow_ring_capacity: int | None = None  # flows each node keeps; None: the collector's default
    kafka: bool = False  # also run a Kafka-protocol broker (Tansu) with the flowscope topics
    kafka_partitions: int = lab_kafka.DEFAULT_PARTITIONS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python() -> list[str]:
    return [sys.executable, "-m", "flowscope"]


def _daemon(paths: ClusterPaths, name: str, argv: list[str]) -> daemons.Daemon:
    return daemons.Daemon(name, tuple(argv), paths.run_dir)


def agent_daemon(paths: ClusterPaths, node: str) -> daemons.Daemon:
    return _daemon(
        paths, f"agent-{node}", [*_python(), "--cluster", paths.cluster, "agent", "--node", node]
    )


def controller_daemon(paths: ClusterPaths) -> daemons.Daemon:
    return _daemon(paths, "controller", [*_python(), "--cluster", paths.cluster, "controller"])


def world_daemons(paths: ClusterPaths, plan: topology.LabPlan) -> list[daemons.Daemon]:
    """Each outside host's responder, and the outside world's DNS server on the first host."""
    out = []
    for host in plan.outside:
        argv = [
            sys.executable,
            "-m",
            "dataplane.lab.responder",
            "--name",
            host.name,
            "--netns",
            str(netns.path(fabric.world_netns(paths, host.name))),
        ]
        argv += [a for p in WORLD_TCP_PORTS for a in ("--tcp", str(p))]
        argv += [a for p in WORLD_UDP_PORTS for a in ("--udp", str(p))]
        out.append(
            _daemon(
                paths, fabric.world_netns(paths, host.name).removeprefix(paths.netns_prefix), argv
            )
        )
    resolver = [
        sys.executable,
        "-m",
        "dataplane.lab.resolver",
        "--netns",
        str(netns.path(fabric.world_netns(paths))),
        "--ttl",
        str(topology.OUTSIDE_TTL),
    ]
    for host in plan.outside:
        resolver += [a for name in host.names for a in ("--name", f"{name}={host.ip}")]
    out.append(_daemon(paths, "resolver", resolver))
    return out


def relay_daemon(paths: ClusterPaths, address: str) -> daemons.Daemon:
    argv = [*_python(), "--cluster", paths.cluster, "relay", "--listen-address", address]
    return _daemon(paths, "relay", argv)


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, int(port))) == 0


def _ensure_relay(info: ClusterInfo, progress: Progress) -> ClusterInfo:
    """The cluster's relay (the merged Observer API): on 127.0.0.1:4245 unless another lab has
    that port, then on a free one; its address goes into cluster.json for `observe`."""
    from collector import relay

    recorded = relay.recorded_address(info)
    if recorded and daemons.pid_of(relay_daemon(info.paths, recorded).pidfile) is not None:
        return info
    candidates = [recorded] if recorded else [relay.DEFAULT_ADDRESS]
    candidates += [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    for address in candidates:
        if _listening(address):
            continue  # somebody else's (another lab's relay)
        daemon = relay_daemon(info.paths, address)
        daemons.start(daemon)
        deadline = time.monotonic() + 15
        while daemons.pid_of(daemon.pidfile) is not None and time.monotonic() < deadline:
            if _listening(address):
                break
            time.sleep(0.1)
        time.sleep(0.2)  # one that lost a race for the port exits at once
        if daemons.pid_of(daemon.pidfile) is not None and _listening(address):
            break
        daemons.stop(daemon.pidfile)
    else:
        raise FlowscopeError(
            "the relay did not start", hint=f"read {info.paths.run_dir / 'relay.log'}"
        )
    progress(f"relay: Observer API of all nodes on {address}")
    if address != recorded:
        info = relay.with_address(info, address)
        clusterinfo.save(info)
    return info


def _check_same_shape(info: ClusterInfo, opts: UpOptions, plan: topology.LabPlan) -> None:
    differences = []
    if info.ipam != opts.ipam:
        differences.append(f"--ipam {info.ipam}")
    if len(info.nodes) != opts.nodes:
        differences.append(f"--nodes {len(info.nodes)}")
    if info.vnet_cidr != plan.vnet_cidr:
        differences.append(f"--vnet-cidr {info.vnet_cidr}")
    if info.pod_cidr != plan.pod_cidr:
        differences.append(f"--pod-cidr {info.pod_cidr}")
    if info.lb_pool not in (None, plan.lb_pool):
        differences.append(f"--lb-pool {info.lb_pool}")
    if info.policy_audit_mode != opts.policy_audit_mode:
        differences.append("--policy-audit-mode" if info.policy_audit_mode else "no audit mode")
    if differences:
        raise FlowscopeError(
            f"cluster {info.name!r} is already up with {', '.join(differences)}",
            hint=f"run `flowscope lab down --name {info.name}` first, or repeat its options",
        )


def up(opts: UpOptions, progress: Progress) -> tuple[ClusterInfo, bool]:
    """Bring the cluster up (or repair it); returns its info and whether it was already up."""
    if not valid_cluster_name(opts.name):
        raise FlowscopeError(
            f"--name: {opts.name!r} is not a valid cluster name",
            hint="use 1-20 lowercase letters, digits and '-', starting and ending alphanumeric",
        )
    paths = ClusterPaths(opts.name)
    plan = topology.plan(
        opts.name, opts.nodes, opts.ipam, opts.vnet_cidr, opts.pod_cidr, lb_pool=opts.lb_pool
    )
    existing: ClusterInfo | None = None
    if paths.state_file.exists():
        existing = clusterinfo.load(opts.name)
        _check_same_shape(existing, opts, plan)
    started = time.monotonic()

    progress(
        f"network: fabric, {len(plan.nodes)} nodes, {len(plan.outside)} outside hosts "
        f"({plan.ipam} IPAM)"
    )
    fabric.build_fabric(paths, plan)
    for node in plan.nodes:
        fabric.build_node(paths, plan, node)
    fabric.build_world(paths, plan)
    fabric.route_lb_pool(paths, plan)
    for node in plan.nodes:
        paths.node_cgroup(node.name).mkdir(parents=True, exist_ok=True)

    info = existing or _start_store(paths, plan, progress, opts)
    if existing is None:
        clusterinfo.save(info)
    info = _ensure_kafka(info, opts, progress)
    info = _ensure_relay(info, progress)
    asyncio.run(_seed(info))

    for daemon in [controller_daemon(paths), *world_daemons(paths, plan)]:
        if daemons.pid_of(daemon.pidfile) is None:
            daemons.start(daemon)
    for node in plan.nodes:
        daemon = agent_daemon(paths, node.name)
        if daemons.pid_of(daemon.pidfile) is None:
            progress(f"agent: starting for {node.name}")
            daemons.start(daemon)
    asyncio.run(_wait_nodes_ready(info, opts.timeout, progress))
    asyncio.run(_wait_dns(info, opts.timeout, progress))
    progress(f"cluster {opts.name!r} is up ({time.monotonic() - started:.1f}s)")
    return info, existing is not None


def _ensure_kafka(info: ClusterInfo, opts: UpOptions, progress: Progress) -> ClusterInfo:
    """Start (or restart) the broker when asked to or when the cluster has one; before the
    agents, so they find its bootstrap address in cluster.json when they start."""
    recorded = lab_kafka.of(info)
    if not opts.kafka and recorded is None:
        return info
    kafka = lab_kafka.start(info.paths, opts.kafka_partitions, recorded)
    progress(
        f"kafka: Tansu broker on {kafka.bootstrap}, topics {', '.join(kafka.topics)} "
        f"({kafka.partitions} partitions)"
    )
    if kafka != recorded:
        info = lab_kafka.with_kafka(info, kafka)
        clusterinfo.save(info)
    return info


def _start_store(
    paths: ClusterPaths, plan: topology.LabPlan, progress: Progress, opts: UpOptions
) -> ClusterInfo:
    from flowscope.store.etcd_server import etcd_command, wait_healthy

    data_dir = paths.lib_dir / "etcd"
    data_dir.mkdir(parents=True, exist_ok=True)
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    daemon = daemons.Daemon(
        "etcd", tuple(etcd_command(paths.cluster, data_dir, client, peer)), paths.run_dir
    )
    progress(f"store: etcd on {url} (data in {data_dir})")
    daemons.start(daemon)
    asyncio.run(wait_healthy(url, 20.0, log_file=daemon.log))
    return ClusterInfo(
        name=paths.cluster,
        ipam=plan.ipam,
        vnet_cidr=plan.vnet_cidr,
        pod_cidr=plan.pod_cidr,
        service_cidr=plan.service_cidr,
        gateway=plan.gateway,
        etcd_url=url,
        nodes=tuple(NodeInfo(n.name, n.ip, paths.node_netns(n.name)) for n in plan.nodes),
        extra={
            "world_ip": str(plan.world_ip),
            # the cluster DNS forwards other names to the outside world's resolver
            "dns_upstreams": [str(plan.world_ip)],
            "outside_hosts": {
                h.name: {"ip": str(h.ip), "names": list(h.names)} for h in plan.outside
            },
            "lb_pool": str(plan.lb_pool),
            "policy_audit_mode": opts.policy_audit_mode,
            "policy_map_entries": opts.policy_map_entries,
            **({CAPACITY_KEY: opts.flow_ring_capacity} if opts.flow_ring_capacity else {}),
        },
    )


async def _seed(info: ClusterInfo) -> None:
    """The objects a new cluster has: namespaces default and kube-system, and its nodes."""
    from flowscope.connect import cluster_store

    async with cluster_store(info) as store:
        objects: list[dict] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in ("default", "kube-system")
            if await store.get("Namespace", None, ns) is None
        ]
        for node in info.nodes:
            if await store.get("Node", None, node.name) is None:
                objects.append(
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": {
                            "name": node.name,
                            "labels": {
                                "kubernetes.io/hostname": node.name,
                                "kubernetes.io/os": "linux",
                                "flowscope.io/cluster": info.name,
                            },
                        },
                        "spec": {},
                    }
                )
        objects += [o for o in dns_objects(info) if await _absent(store, o)]
        if objects:
            await store.apply(objects, internal=True)


async def _absent(store, obj: dict) -> bool:
    meta = obj["metadata"]
    return await store.get(obj["kind"], meta.get("namespace"), meta["name"]) is None


def dns_objects(info: ClusterInfo) -> list[dict]:
    """The kube-dns Service at the service CIDR's 10th address, and its DNS pods."""
    ns, name = DNS_SERVICE
    ports = [
        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {**DNS_LABELS, "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "selector": dict(DNS_LABELS),
            "clusterIP": str(dns_service_ip(info.service_cidr)),
            "ports": [
                {"name": p["name"], "port": 53, "protocol": p["protocol"], "targetPort": 53}
                for p in ports
            ],
        },
    }
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"coredns-{node.name}", "namespace": ns, "labels": DNS_LABELS},
            "spec": {
                "nodeName": node.name,
                "dnsPolicy": "Default",  # the DNS itself uses the node's resolver, as CoreDNS
                "containers": [{"name": "coredns", "image": DNS_IMAGE, "ports": ports}],
            },
        }
        for node in info.nodes[:DNS_REPLICAS]
    ]
    return [service, *pods]


async def _wait_dns(info: ClusterInfo, timeout: float, progress: Progress) -> None:
    """Until every DNS pod answers for kube-dns and the Service has them as ready endpoints."""
    from flowscope.connect import cluster_store

    ns, name = DNS_SERVICE
    want = str(dns_service_ip(info.service_cidr))
    deadline = time.monotonic() + timeout
    async with cluster_store(info) as store:
        while True:
            pods = [
                p
                for p in await store.list("Pod", ns)
                if (p.get("metadata", {}).get("labels") or {}).get("k8s-app") == "kube-dns"
            ]
            ready_ips = {
                a
                for s in await store.list("EndpointSlice", ns)
                if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
                for e in s.get("endpoints") or ()
                if (e.get("conditions") or {}).get("ready") is not False
                for a in e.get("addresses") or ()
            }
            answering = [
                p
                for p in pods
                if p.get("status", {}).get("podIP") in ready_ips
                and await asyncio.to_thread(_dns_answers, info, p, f"{name}.{ns}", want)
            ]
            if pods and len(answering) == len(pods):
                progress(f"cluster DNS answers at {want} ({len(pods)} pods)")
                return
            if time.monotonic() > deadline:
                silent = [p for p in pods if p not in answering]
                raise FlowscopeError(
                    f"the cluster DNS did not answer within {timeout:.0f}s "
                    f"({len(answering)}/{len(pods)} DNS pods answering)"
                    + "".join(_dns_pod_diagnosis(info, p, ready_ips) for p in silent),
                    hint=f"read the pod logs under {info.paths.run_dir}/nodes/*/logs",
                )
            await asyncio.sleep(0.1)


def _dns_pod_diagnosis(info: ClusterInfo, pod: dict, ready_ips: set[str]) -> str:
    """Why one DNS pod does not count as answering, with the end of its log: a lab that
    failed to come up is often gone (a CI clean-up) before anyone reads its files."""
    meta, status = pod["metadata"], pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        why = f"no pod IP yet (phase {status.get('phase', 'unknown')})"
    elif ip not in ready_ips:
        why = f"{ip} is not a ready endpoint of the DNS service"
    else:
        why = f"no answer at {ip}:53"
    node = (pod.get("spec") or {}).get("nodeName", "")
    if not node:
        return f"\n  {meta['name']}: not scheduled"
    pod_logs = info.paths.node_dir(node) / "logs"
    agent_log = agent_daemon(info.paths, node).log
    lines: list[str] = []
    for log_file in sorted(pod_logs.glob(f"{meta['namespace']}_{meta['name']}_*.log")):
        lines += _read_lines(log_file)[-8:]
    lines += [line for line in _read_lines(agent_log) if meta["name"] in line][-5:]
    shown = "".join(f"\n    | {line}" for line in lines) or "\n    | (nothing logged)"
    return f"\n  {meta['name']} on {node}: {why}; its server's and agent's logs say:{shown}"


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _dns_answers(info: ClusterInfo, pod: dict, service: str, want: str) -> bool:
    """Whether the DNS server of `pod` answers A for `service` with `want` (asked from inside
    the pod's own namespace, at its pod IP: the lab's addresses stay out of the host's)."""
    import dns.exception
    import dns.message
    import dns.query

    from flowscope.netns_sockets import socket_in_netns

    sandbox = pod_sandbox(info, pod)
    query = dns.message.make_query(f"{service}.svc.cluster.local.", "A")
    try:
        with socket_in_netns(sandbox.netns_path, socket.AF_INET, socket.SOCK_DGRAM, 0) as sock:
            reply = dns.query.udp(query, pod["status"]["podIP"], timeout=0.5, sock=sock)
    except (OSError, dns.exception.DNSException):
        return False
    return any(rd.to_text() == want for rrset in reply.answer for rd in rrset)


async def _wait_nodes_ready(info: ClusterInfo, timeout: float, progress: Progress) -> None:
    from flowscope.connect import cluster_store

    async with cluster_store(info) as store:
        deadline = time.monotonic() + timeout
        reported: set[str] = set()
        while True:
            ready = {n["metadata"]["name"] for n in await store.list("Node") if is_ready(n)}
            for name in sorted(ready - reported):
                progress(f"node {name} is Ready")
            reported |= ready
            if ready >= {n.name for n in info.nodes}:
                return
            for node in info.nodes:
                daemon = agent_daemon(info.paths, node.name)
                if node.name not in ready and daemons.pid_of(daemon.pidfile) is None:
                    raise FlowscopeError(
                        f"the agent of {node.name} exited during start-up",
                        hint=f"read {daemon.log}, then `flowscope lab down` and try again",
                    )
            if time.monotonic() > deadline:
                missing = sorted({n.name for n in info.nodes} - ready)
                raise FlowscopeError(
                    f"nodes not Ready after {timeout:.0f}s: {', '.join(missing)}",
                    hint=f"read the agent logs in {info.paths.run_dir}",
                )
            await asyncio.sleep(0.1)


def down(name: str, progress: Progress) -> bool:
    """Remove everything of cluster `name`; False when there was nothing to remove."""
    paths = ClusterPaths(name)
    found = False
    run_dir = paths.run_dir
    # agents first (so nothing re-creates pods), then every process in the cluster's cgroups
    for pidfile in sorted(run_dir.glob("*.pid")) if run_dir.exists() else []:
        if pidfile.stem == "etcd":
            continue
        if daemons.stop(pidfile):
            progress(f"stopped {pidfile.stem}")
        found = True
    if paths.cgroup_dir.exists():
        remove_cgroup_tree(paths.cgroup_dir)
        progress(f"removed cgroups {paths.cgroup_dir}")
        found = True
    if daemons.stop(run_dir / "etcd.pid"):
        progress("stopped etcd")
        found = True
    removed = fabric.teardown(paths)
    if removed:
        progress(f"removed {len(removed)} network namespaces")
        found = True
    for path in [
        paths.bpf_dir,
        *paths.cni_conf_dirs(),
        run_dir,
        paths.lib_dir,
    ]:
        if path.exists():
            shutil.rmtree(path)
            progress(f"removed {path}")
            found = True
    # the shared parents go too once the last cluster is gone
    for parent in (
        run_dir.parent,
        paths.lib_dir.parent,
        paths.bpf_dir.parent,
        paths.cgroup_dir.parent,
    ):
        with contextlib.suppress(OSError):
            parent.rmdir()
    return found


@dataclass(frozen=True)
class NodeStatus:
    name: str
    ip: str
    agent_pid: int | None
    ready: bool


def node_statuses(info: ClusterInfo, nodes: list[dict]) -> list[NodeStatus]:
    by_name = {n["metadata"]["name"]: n for n in nodes}
    out = []
    for node in info.nodes:
        out.append(
            NodeStatus(
                node.name,
                str(node.ip),
                daemons.pid_of(agent_daemon(info.paths, node.name).pidfile),
                is_ready(by_name.get(node.name, {})),
            )
        )
    return out


def pod_sandbox(info: ClusterInfo, pod: dict) -> Sandbox:
    node = pod.get("spec", {}).get("nodeName")
    meta = pod["metadata"]
    if not node or not pod.get("status", {}).get("podIP"):
        raise FlowscopeError(
            f"pod {meta['namespace']}/{meta['name']} is not running yet",
            hint=f"wait a moment, then check `flowscope get pods -n {meta['namespace']} -o wide`",
        )
    return Sandbox.for_pod(info.paths, node, meta["uid"])
