"""`flowscope lab ...`: bring a lab cluster up and down, look at it, and reach into its pods."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from ipaddress import IPv4Address, IPv4Network

from flowscope import clusterinfo
from flowscope.connect import cluster_store
from flowscope.errors import FlowscopeError, NotFound, UsageError

WORLD_SOURCE = "world"  # `lab probe world TARGET`: from the lab's outside host


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="a cluster of network namespaces on this machine")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND")
    lab_sub.required = True

    p = lab_sub.add_parser("up", help="build the cluster (idempotent)")
    p.add_argument("--name", help="cluster name (default: --cluster)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--ipam", choices=("vnet", "overlay"), default="overlay")
    p.add_argument(
        "--pod-cidr",
        type=IPv4Network,
        help="overlay: private pod CIDR (default 10.244.0.0/16); vnet: a separate pod subnet",
    )
    p.add_argument("--vnet-cidr", type=IPv4Network, default=IPv4Network("10.224.0.0/16"))
    p.add_argument(
        "--lb-pool",
        type=IPv4Network,
        help="addresses for LoadBalancer Services, routed to the nodes (default 10.226.0.0/24)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for nodes")
    p.add_argument(
        "--policy-audit-mode",
        action="store_true",
        help="cluster-wide policy audit mode: would-be policy drops pass and show as AUDIT",
    )
    p.add_argument(
        "--policy-map-entries",
        type=_positive,
        metavar="N",
        help="the most policy entries one endpoint may have (default 65536)",
    )
    p.add_argument(
        "--flow-ring-capacity",
        type=_positive,
        metavar="N",
        help="flows each node's collector keeps for observe (default 65535, as Hubble's ring)",
    )
    p.add_argument(
        "--kafka",
        action="store_true",
        help="also run a Kafka-protocol broker (Tansu) on loopback with the flowscope topics",
    )
    p.add_argument(
        "--kafka-partitions",
        type=_positive,
        default=3,
        metavar="N",
        help="partitions of each flowscope topic (with --kafka; default 3)",
    )
    p.set_defaults(func=cmd_up)

    p = lab_sub.add_parser("down", help="remove everything the cluster made")
    p.add_argument("--name", help="cluster name (default: --cluster)")
    p.set_defaults(func=cmd_down)

    p = lab_sub.add_parser("status", help="nodes, agents, pods and their IPs")
    p.add_argument("--name", help="cluster name (default: --cluster)")
    p.set_defaults(func=cmd_status)

    p = lab_sub.add_parser("exec", help="run a command inside a pod")
    p.add_argument("pod", metavar="NS/POD")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(func=cmd_exec)

    p = lab_sub.add_parser(
        "probe", help="connect from a pod (or the outside host) to a target; exit 0 if answered"
    )
    p.add_argument(
        "pod", metavar="NS/POD|world", help="a pod, or `world`: the lab's host outside the cluster"
    )
    p.add_argument(
        "target",
        metavar="TARGET:PORT",
        help="NS/POD, an IP, or a name the pod resolves (NAME, NAME.NS, NAME.NS.svc.cluster.local)",
    )
    p.add_argument("--protocol", choices=("TCP", "UDP"), default="TCP", type=str.upper)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_probe)

    p = lab_sub.add_parser(
        "traffic",
        help="keep pods calling each other, the services and the outside world (live flows)",
    )
    p.add_argument("--every", type=float, default=0.5, help="seconds between calls (0.5)")
    p.add_argument("--for", dest="duration", type=float, help="stop after this many seconds")
    p.add_argument("--detach", action="store_true", help="run as a lab daemon (`lab down` ends it)")
    p.set_defaults(func=cmd_traffic)

    p = lab_sub.add_parser("matrix", help="probe every pod pair at once; print reachability")
    p.add_argument(
        "--namespaces", help="comma-separated, e.g. x,y,z (default: every non-system namespace)"
    )
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--protocol", choices=("TCP", "UDP"), default="TCP", type=str.upper)
    p.add_argument("--timeout", type=float, default=1.0, help="seconds until a probe is blocked")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_matrix)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _name(args: argparse.Namespace) -> str:
    return args.name or args.cluster


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from dataplane.lab import cluster, topology

    opts = cluster.UpOptions(
        name=_name(args),
        nodes=args.nodes,
        ipam=args.ipam,
        vnet_cidr=args.vnet_cidr,
        pod_cidr=args.pod_cidr,
        lb_pool=args.lb_pool or topology.DEFAULT_LB_POOL,
        timeout=args.timeout,
        policy_audit_mode=args.policy_audit_mode,
        policy_map_entries=args.policy_map_entries,
        flow_ring_capacity=args.flow_ring_capacity,
        kafka=args.kafka,
        kafka_partitions=args.kafka_partitions,
    )
    info, was_up = cluster.up(opts, _say)
    if was_up:
        print(f"cluster {info.name!r} was already up; repaired what was missing")
    else:
        print(f"cluster {info.name!r} up: {len(info.nodes)} nodes, ipam {info.ipam}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from dataplane.lab import cluster

    name = _name(args)
    if not cluster.down(name, _say):
        raise FlowscopeError(
            f"no lab cluster {name!r} is up: nothing to remove",
            hint="`flowscope lab up` builds one",
        )
    print(f"cluster {name!r} removed")
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    from dataplane.lab import cluster

    info = clusterinfo.load(_name(args))
    async with cluster_store(info) as store:
        nodes = await store.list("Node")
        pods = await store.list("Pod")
    print(
        f"cluster {info.name}: ipam {info.ipam}, VNET {info.vnet_cidr}, "
        f"pod CIDR {info.pod_cidr or '(from the VNET)'}, store {info.etcd_url}"
    )
    _print_kafka(info)
    print(f"\n{'NODE':<10} {'IP':<15} {'AGENT':<14} READY")
    for st in cluster.node_statuses(info, nodes):
        agent = f"pid {st.agent_pid}" if st.agent_pid else "DOWN"
        print(f"{st.name:<10} {st.ip:<15} {agent:<14} {'yes' if st.ready else 'no'}")
    print(f"\n{'NAMESPACE':<16} {'POD':<24} {'NODE':<10} {'IP':<15} PHASE")
    for pod in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        meta, status = pod["metadata"], pod.get("status", {})
        print(
            f"{meta['namespace']:<16} {meta['name']:<24} "
            f"{pod.get('spec', {}).get('nodeName', '<none>'):<10} "
            f"{status.get('podIP', '<none>'):<15} {status.get('phase', 'Pending')}"
        )
    return 0


def _print_kafka(info: clusterinfo.ClusterInfo) -> None:
    from dataplane.lab import daemons
    from dataplane.lab import kafka as lab_kafka

    kafka = lab_kafka.of(info)
    if kafka is None:
        return
    pid = daemons.pid_of(info.paths.run_dir / f"{lab_kafka.DAEMON_NAME}.pid")
    print(
        f"kafka {kafka.bootstrap} ({f'pid {pid}' if pid else 'DOWN'}): "
        f"topics {', '.join(kafka.topics)}, {kafka.partitions} partitions"
    )


def _split_pod(ref: str) -> tuple[str, str]:
    ns, sep, name = ref.partition("/")
    if not sep:
        ns, name = "default", ref
    if not ns or not name:
        raise UsageError(f"{ref!r} is not a pod reference; write NAMESPACE/POD")
    return ns, name


async def _pod(store, ref: str) -> dict:
    ns, name = _split_pod(ref)
    pod = await store.get("Pod", ns, name)
    if pod is None:
        raise NotFound(
            f'pods "{name}" not found in namespace "{ns}"',
            hint=f"`flowscope get pods -n {ns}` lists them",
        )
    return pod


async def _sandbox_of(cluster_name: str, ref: str):
    from dataplane.lab.cluster import pod_sandbox

    info = clusterinfo.load(cluster_name)
    async with cluster_store(info) as store:
        return pod_sandbox(info, await _pod(store, ref))


def cmd_exec(args: argparse.Namespace) -> int:
    import asyncio

    from dataplane.lab.podexec import exec_in_pod

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("no command given; write `flowscope lab exec NS/POD -- CMD...`")
    sandbox = asyncio.run(_sandbox_of(args.cluster, args.pod))
    return exec_in_pod(sandbox, argv)


async def resolve_target(store, target: str) -> str | None:
    """NS/POD -> its pod IP; an IP as it is; None for a name (the pod resolves it by DNS)."""
    try:
        return str(IPv4Address(target))
    except ValueError:
        pass
    if "/" in target:
        pod = await _pod(store, target)
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            raise FlowscopeError(f"pod {target} has no IP yet", hint="wait until it is Running")
        return ip
    return None


def split_target(text: str) -> tuple[str, int]:
    target, sep, port_text = text.rpartition(":")
    if not sep or not target:
        raise UsageError(f"{text!r}: write TARGET:PORT, e.g. backend/db:5432")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"{text!r}: port {port} is out of range 1-65535")
    return target, port


def cmd_probe(args: argparse.Namespace) -> int:
    import asyncio

    from dataplane.lab.cluster import pod_sandbox
    from dataplane.lab.fabric import world_netns
    from dataplane.lab.netns import NETNS_DIR
    from dataplane.lab.podexec import collect, fork_in, fork_in_pod
    from dataplane.lab.probe import probe, probe_name

    target, port = split_target(args.target)
    from_world = args.pod == WORLD_SOURCE
    info = clusterinfo.load(args.cluster)

    async def lookup():
        async with cluster_store(info) as store:
            sandbox = None if from_world else pod_sandbox(info, await _pod(store, args.pod))
            return sandbox, await resolve_target(store, target)

    sandbox, ip = asyncio.run(lookup())
    if from_world and ip is None:
        raise UsageError(
            f"{args.target!r}: the outside host has no cluster DNS; give an IP "
            "(a node's, a LoadBalancer's) or NS/POD"
        )
    source = WORLD_SOURCE if from_world else "/".join(_split_pod(args.pod))
    if ip is None:
        run = functools.partial(probe_name, source, target, target)
    else:
        run = functools.partial(probe, source, target, ip)
    if sandbox is None:
        netns_path = str(NETNS_DIR / world_netns(info.paths))
        pid, fd = fork_in(netns_path, None, None, lambda: run(port, args.protocol, args.timeout))
    else:
        pid, fd = fork_in_pod(sandbox, lambda: run(port, args.protocol, args.timeout))
    result = collect(pid, fd)
    where = f"{result['ip'] or '?'}:{port}/{args.protocol}"
    if args.output == "json":
        print(json.dumps(result))
    elif result["connected"]:
        print(
            f"{source} -> {target} ({where}): answered by "
            f"{result['answer']!r} in {result['latency_ms']:.2f} ms"
        )
    else:
        print(f"{source} -> {target} ({where}): no answer ({result['error']})")
    return 0 if result["connected"] else 1


def cmd_traffic(args: argparse.Namespace) -> int:
    from dataplane.lab import daemons, traffic

    info = clusterinfo.load(args.cluster)
    if args.every <= 0:
        raise UsageError(f"--every {args.every}: give a positive number of seconds")
    if args.detach:
        argv = [sys.executable, "-m", "flowscope", "--cluster", args.cluster, "lab", "traffic"]
        argv += ["--every", str(args.every)]
        if args.duration:
            argv += ["--for", str(args.duration)]
        daemon = daemons.Daemon("traffic", tuple(argv), info.paths.run_dir)
        pid = daemons.pid_of(daemon.pidfile)
        if pid is None:
            pid = daemons.start(daemon)
        _say(
            f"traffic: pid {pid}, a call every {args.every}s; `lab down` ends it "
            f"(log: {daemon.log})"
        )
        return 0
    made = traffic.run(info, args.every, args.duration, say=lambda line: print(line, flush=True))
    _say(f"traffic: {made} calls")
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    import asyncio

    from dataplane.lab import matrix

    namespaces = None
    if args.namespaces is not None:
        namespaces = [ns.strip() for ns in args.namespaces.split(",") if ns.strip()]
        if not namespaces:
            raise UsageError("--namespaces: name at least one namespace, e.g. x,y,z")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: out of range 1-65535")
    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout}: give a positive number of seconds")

    async def lookup():
        info = clusterinfo.load(args.cluster)
        async with cluster_store(info) as store:
            missing = [ns for ns in namespaces or () if not await store.namespace_exists(ns)]
            return info, missing, await store.list("Pod")

    info, missing, pods = asyncio.run(lookup())
    if missing:
        raise NotFound(
            f"namespace{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}",
            hint="`flowscope get namespaces` lists them",
        )
    selected = matrix.select_pods(pods, namespaces)
    if not selected:
        where = ", ".join(namespaces) if namespaces else "any non-system namespace"
        raise FlowscopeError(
            f"no Running pods in {where}: nothing to probe",
            hint="`flowscope get pods -A` shows the pods and their phases",
        )
    try:
        results = matrix.probe_matrix(info.paths, selected, args.port, args.protocol, args.timeout)
    except RuntimeError as exc:
        raise FlowscopeError(str(exc), hint="`flowscope lab status` shows the pods") from None
    if args.output == "json":
        print("\n".join(r.to_json() for r in results))
    else:
        print(matrix.table_of(selected, results))
    return 0
