"""`flowscope policy trace`: the datapath's verdict on a connection, and the rule behind it.

Exit status: 0 allowed, 1 denied, 2 anything else (bad arguments, unknown pod, no cluster), so
that scripts can branch on the verdict.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

from dataplane.identity.allocator import IdentityAllocator
from dataplane.identity.model import CIDR_ID_BASE, MIN_CLUSTER_ID, Identity, Labels, cidr_of
from dataplane.policy.compiler import (
    PROTOCOLS,
    PodInfo,
    namespace_labels,
    pod_info,
    required_prefixes,
    security_labels,
)
from dataplane.policy.trace import Trace, trace
from flowscope import clusterinfo
from flowscope.apis.objectstore import ObjectStore
from flowscope.connect import cluster_store
from flowscope.errors import FlowscopeError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="NetworkPolicy as the datapath enforces it")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND")
    policy_sub.required = True

    p = policy_sub.add_parser(
        "trace",
        help="would a connection be allowed, and by which rule (exit 0 allowed, 1 denied)",
    )
    p.add_argument("--from", dest="source", required=True, metavar="NS/POD|IP", help="the client")
    p.add_argument("--to", dest="destination", required=True, metavar="NS/POD|IP")
    p.add_argument("--port", type=int, required=True, help="destination port")
    p.add_argument("--protocol", type=str.upper, choices=tuple(PROTOCOLS), default="TCP")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_trace)


def _endpoint(text: str, pods: Mapping[tuple[str, str], PodInfo]) -> PodInfo | IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        pass
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name:
        raise UsageError(f"{text!r} is neither NAMESPACE/POD nor an IPv4 address")
    pod = pods.get((ns, name))
    if pod is None:
        raise UsageError(
            f'pod "{name}" not found in namespace "{ns}"',
            hint=f"`flowscope get pods -n {ns}` lists them",
        )
    return pod


def trace_identities(
    known: Mapping[int, Identity],
    pods: Iterable[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    prefixes: Iterable[IPv4Network],
) -> tuple[dict[Labels, int], dict[IPv4Network, int]]:
    """The identity numbers the agents allocated (`known`, from the cluster's allocator), so
    the trace shows the numbers flows carry. A pod or ipBlock the agents have not numbered yet
    (it is starting, or no agent runs) gets a provisional number above every allocated one; the
    verdict depends only on which pods share an identity, never on the numbers."""
    identities = {i.labels: i.id for i in known.values() if not i.is_reserved and not i.is_cidr}
    cidrs = {cidr_of(i.labels): i.id for i in known.values() if i.is_cidr}
    next_id = max([MIN_CLUSTER_ID - 1, *identities.values()]) + 1
    for labels in sorted({security_labels(p, namespaces) for p in pods}, key=sorted):
        if labels not in identities:
            identities[labels], next_id = next_id, next_id + 1
    next_cidr = max([CIDR_ID_BASE - 1, *cidrs.values()]) + 1
    for prefix in sorted(prefixes, key=lambda n: (n.network_address, n.prefixlen)):
        if prefix not in cidrs:
            cidrs[prefix], next_cidr = next_cidr, next_cidr + 1
    return identities, cidrs  # type: ignore[return-value]


async def trace_in_store(
    store: ObjectStore,
    source: str,
    destination: str,
    port: int,
    protocol: str,
    node_ips: Mapping[IPv4Address, str] | None = None,
) -> Trace:
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is out of range 1-65535")
    pods = [pod_info(p) for p in await store.list("Pod")]
    by_key = {p.key: p for p in pods}
    src, dst = _endpoint(source, by_key), _endpoint(destination, by_key)
    namespaces = namespace_labels(await store.list("Namespace"))
    policies = await store.list("NetworkPolicy")
    known = await IdentityAllocator(store.kv, "policy-trace").all()  # reads only
    identities, cidrs = trace_identities(known, pods, namespaces, required_prefixes(policies))
    return trace(
        policies,
        pods,
        namespaces,
        identities,
        cidrs,
        src,
        dst,
        port,
        PROTOCOLS[protocol],
        node_ips=node_ips,
    )


async def cmd_trace(args: argparse.Namespace) -> int:
    try:
        info = clusterinfo.load(args.cluster)
        node_ips = {node.ip: node.name for node in info.nodes}
        async with cluster_store(info) as store:
            result = await trace_in_store(
                store, args.source, args.destination, args.port, args.protocol, node_ips
            )
    except UsageError:
        raise
    except FlowscopeError as e:  # exit 1 means "denied" here; failures are 2
        raise UsageError(str(e.args[0]), hint=e.hint) from e
    if args.output == "json":
        print(json.dumps(result.to_json()))
    else:
        print(result.render())
    return 0 if result.allowed else 1
