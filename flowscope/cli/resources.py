"""`flowscope apply | delete | get`: cluster objects the kubectl way, against the lab's etcd."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import yaml

from flowscope import clusterinfo
from flowscope.apis import documents, kinds, labels
from flowscope.apis.conditions import condition_status
from flowscope.apis.kinds import Kind
from flowscope.apis.labels import SelectorSyntaxError
from flowscope.apis.objectstore import not_found, qualified
from flowscope.apis.refs import ObjectRef
from flowscope.connect import cluster_store
from flowscope.errors import FlowscopeError, NotFound, UsageError


class _Intermixed(argparse.ArgumentParser):
    """Options anywhere between the names, as kubectl takes them: `get po -n ns web-1 -o yaml`.

    (Plain argparse stops taking positionals after the first option.)
    """

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply", help="create or update objects from YAML/JSON manifests (all or nothing)"
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="manifest file, directory of *.yaml/*.yml/*.json, or - for stdin (repeatable)",
    )
    p.add_argument("-n", "--namespace", help="namespace of objects that name none")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("delete", help="delete objects by manifest or by kind and name")
    p.add_argument(
        "resource", nargs="?", metavar="KIND", help="pods, deploy, rs, svc, ns, netpol, ..."
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.add_argument(
        "--ignore-not-found", action="store_true", help="treat absent objects as deleted"
    )
    p.set_defaults(func=cmd_delete)
    p.__class__ = _Intermixed

    p = sub.add_parser("get", help="show objects as tables, YAML, JSON or names")
    p.add_argument(
        "resource", metavar="KIND[,KIND...]", help="pods, deploy, rs, svc, ns, netpol, no, ..."
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=("wide", "yaml", "json", "name"))
    p.add_argument("-l", "--selector", help="label selector, e.g. app=web,tier!=db")
    p.set_defaults(func=cmd_get)
    p.__class__ = _Intermixed


def _connect(args: argparse.Namespace):
    return cluster_store(clusterinfo.load(args.cluster))


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- apply / delete ---


async def cmd_apply(args: argparse.Namespace) -> int:
    docs = documents.load(args.filename)
    async with _connect(args) as store:
        results = await store.apply(
            docs,
            namespace=args.namespace or "default",
            enforce_namespace=args.namespace is not None,
        )
    for r in results:
        print(r)
    return 0


def _refs_from_manifests(paths: list[str], namespace: str) -> list[ObjectRef]:
    refs, problems = [], []
    for doc in documents.load(paths):
        obj = doc.obj if isinstance(doc.obj, dict) else {}
        try:
            kind = kinds.for_object(obj.get("apiVersion"), obj.get("kind"))
            name = (obj.get("metadata") or {})["name"]
        except (FlowscopeError, KeyError, TypeError) as e:
            problems.append(documents.Problem(doc.describe(namespace), str(e) or "no name"))
            continue
        ns = (obj.get("metadata") or {}).get("namespace") or namespace
        refs.append(ObjectRef(kind.kind, ns if kind.namespaced else None, name))
    if problems:
        raise documents.InvalidManifest(problems, hint="nothing was deleted")
    return refs


async def cmd_delete(args: argparse.Namespace) -> int:
    namespace = args.namespace or "default"
    if args.filename:
        if args.resource:
            raise UsageError("give either -f FILE or KIND NAME..., not both")
        refs = _refs_from_manifests(args.filename, namespace)
    else:
        if not args.resource or not args.names:
            raise UsageError(
                "nothing to delete", hint="flowscope delete -f FILE, or flowscope delete KIND NAME"
            )
        kind = kinds.lookup(args.resource)
        refs = [ObjectRef(kind.kind, namespace if kind.namespaced else None, n) for n in args.names]
    try:
        async with _connect(args) as store:
            results = await store.delete(refs, ignore_not_found=args.ignore_not_found)
    except NotFound as e:
        for line in str(e).split("\nerror: "):
            _err(f"Error from server (NotFound): {line}")
        return 1
    for r in results:
        print(r)
    return 0


# --- get ---


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's short human durations: 45s, 3m20s, 25m, 5h10m, 20h, 3d4h, 40d, 2y."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    s = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if d < 2:
        return f"{h}h"
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y"


def _pod_row(p: dict, wide: bool) -> list[str]:
    spec, status = p.get("spec") or {}, p.get("status") or {}
    containers = spec.get("containers") or ()
    statuses = status.get("containerStatuses") or ()
    if statuses:
        ready = sum(1 for c in statuses if c.get("ready"))
        restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    else:
        ready = len(containers) if condition_status(p, "Ready") == "True" else 0
        restarts = 0
    phase = status.get("phase") or "Pending"
    reason = status.get("reason")
    for c in statuses:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
    row = [f"{ready}/{len(containers)}", reason or phase, str(restarts)]
    row.append(age(p["metadata"].get("creationTimestamp")))
    if wide:
        row += [status.get("podIP") or "<none>", spec.get("nodeName") or "<none>"]
    return row


def _ports(svc: dict) -> str:
    """kubectl's PORT(S): 80/TCP, or 80:30080/TCP with a nodePort."""
    out = []
    for port in (svc.get("spec") or {}).get("ports") or ():
        node = f":{port['nodePort']}" if port.get("nodePort") else ""
        out.append(f"{port.get('port')}{node}/{port.get('protocol') or 'TCP'}")
    return ",".join(out) or "<none>"


def _external_ips(svc: dict, wide: bool) -> str:
    """kubectl's EXTERNAL-IP: spec.externalIPs, plus a LoadBalancer's ingress (<pending> until
    it has one; cut to 16 characters unless -o wide)."""
    spec = svc.get("spec") or {}
    given = list(spec.get("externalIPs") or ())
    if (spec.get("type") or "ClusterIP") != "LoadBalancer":
        return ",".join(given) or "<none>"
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    lb = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress)
    if lb and not wide and len(lb) > 16:
        lb = lb[:13] + "..."
    return ",".join([*([lb] if lb else []), *given]) or "<pending>"


def _service_row(s: dict, wide: bool) -> list[str]:
    spec = s.get("spec") or {}
    stype = spec.get("type") or "ClusterIP"
    row = [stype, spec.get("clusterIP") or "<none>", _external_ips(s, wide), _ports(s)]
    row.append(age(s["metadata"].get("creationTimestamp")))
    if wide:
        row.append(
            str(labels.from_match_labels(spec.get("selector")))
            if spec.get("selector")
            else "<none>"
        )
    return row


def _node_row(n: dict, wide: bool) -> list[str]:
    ready = condition_status(n, "Ready")
    status = "Ready" if ready == "True" else ("NotReady" if ready == "False" else "Unknown")
    roles = sorted(
        k.rpartition("/")[2]
        for k in (n["metadata"].get("labels") or {})
        if k.startswith("node-role.kubernetes.io/")
    )
    info = (n.get("status") or {}).get("nodeInfo") or {}
    row = [status, ",".join(roles) or "<none>", age(n["metadata"].get("creationTimestamp"))]
    row.append(info.get("kubeletVersion") or "<none>")
    if wide:
        addrs = (n.get("status") or {}).get("addresses") or ()
        by_type = {a.get("type"): a.get("address") for a in addrs}
        row += [
            by_type.get("InternalIP") or "<none>",
            by_type.get("ExternalIP") or "<none>",
            info.get("kernelVersion") or "<unknown>",
        ]
    return row


def _namespace_row(ns: dict, wide: bool) -> list[str]:
    phase = (ns.get("status") or {}).get("phase") or "Active"
    return [phase, age(ns["metadata"].get("creationTimestamp"))]


def _netpol_row(np: dict, wide: bool) -> list[str]:
    sel = labels.from_label_selector((np.get("spec") or {}).get("podSelector") or {})
    return [str(sel), age(np["metadata"].get("creationTimestamp"))]


def _at_most_three(items: list[str]) -> str:
    """kubectl's listWithMoreString: the first three, then " + N more..."; "<unset>" if none."""
    shown = ",".join(items[:3])
    if len(items) > 3:
        shown += f" + {len(items) - 3} more..."
    return shown or "<unset>"


def _slice_row(s: dict, wide: bool) -> list[str]:
    ports = [
        str(p["port"]) if p.get("port") is not None else (p.get("name") or "*")
        for p in s.get("ports") or ()
    ]
    addrs = [a for e in s.get("endpoints") or () for a in e.get("addresses") or ()]
    row = [s.get("addressType") or "", _at_most_three(ports), _at_most_three(addrs)]
    return [*row, age(s["metadata"].get("creationTimestamp"))]


def _template_columns(obj: dict) -> list[str]:
    """-o wide's CONTAINERS, IMAGES and SELECTOR of a Deployment or ReplicaSet."""
    spec = obj.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or ()
    selector = labels.from_label_selector(spec.get("selector") or {})
    return [
        ",".join(c.get("name", "") for c in containers) or "<none>",
        ",".join(c.get("image", "") for c in containers) or "<none>",
        str(selector) or "<none>",
    ]


def _count(obj: dict, key: str) -> int:
    return int((obj.get("status") or {}).get(key) or 0)


def _desired(obj: dict) -> int:
    replicas = (obj.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


def _deployment_row(d: dict, wide: bool) -> list[str]:
    row = [
        f"{_count(d, 'readyReplicas')}/{_desired(d)}",
        str(_count(d, "updatedReplicas")),
        str(_count(d, "availableReplicas")),
        age(d["metadata"].get("creationTimestamp")),
    ]
    return row + (_template_columns(d) if wide else [])


def _replicaset_row(rs: dict, wide: bool) -> list[str]:
    row = [
        str(_desired(rs)),
        str(_count(rs, "replicas")),
        str(_count(rs, "readyReplicas")),
        age(rs["metadata"].get("creationTimestamp")),
    ]
    return row + (_template_columns(rs) if wide else [])


Row = Callable[[dict, bool], list[str]]
_TABLES: dict[str, tuple[list[str], list[str], Row]] = {
    # kind: (columns after NAME, extra wide columns, row function)
    "Pod": (["READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE"], _pod_row),
    "Service": (
        ["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        ["SELECTOR"],
        _service_row,
    ),
    "Node": (
        ["STATUS", "ROLES", "AGE", "VERSION"],
        ["INTERNAL-IP", "EXTERNAL-IP", "KERNEL-VERSION"],
        _node_row,
    ),
    "Namespace": (["STATUS", "AGE"], [], _namespace_row),
    "NetworkPolicy": (["POD-SELECTOR", "AGE"], [], _netpol_row),
    "EndpointSlice": (["ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], [], _slice_row),
    "Deployment": (
        ["READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        ["CONTAINERS", "IMAGES", "SELECTOR"],
        _deployment_row,
    ),
    "ReplicaSet": (
        ["DESIRED", "CURRENT", "READY", "AGE"],
        ["CONTAINERS", "IMAGES", "SELECTOR"],
        _replicaset_row,
    ),
}


def _default_row(obj: dict, wide: bool) -> list[str]:
    return [age(obj["metadata"].get("creationTimestamp"))]


def table(kind: Kind, objs: list[dict], *, wide: bool, all_ns: bool, prefix: bool) -> str:
    """kubectl's plain table: columns padded with 3 spaces, no trailing blanks."""
    cols, wide_cols, row_fn = _TABLES.get(kind.kind, (["AGE"], [], _default_row))
    header = ["NAMESPACE"] if all_ns and kind.namespaced else []
    header += ["NAME", *cols, *(wide_cols if wide else [])]
    rows = [header]
    for o in objs:
        meta = o["metadata"]
        # several kinds at once: kubectl's qualified names (pod/web, deployment.apps/web)
        name = qualified(ObjectRef(kind.kind, None, meta["name"])) if prefix else meta["name"]
        ns = [meta.get("namespace", "")] if all_ns and kind.namespaced else []
        rows.append([*ns, name, *row_fn(o, wide)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


async def cmd_get(args: argparse.Namespace) -> int:
    wanted = [kinds.lookup(r) for r in args.resource.split(",") if r]
    if not wanted:
        raise UsageError("name a kind: pods, services, namespaces, networkpolicies, nodes, ...")
    if args.names and len(wanted) > 1:
        raise UsageError("a NAME may be given with one kind only")
    if args.all_namespaces and args.namespace:
        raise UsageError("give -n NAMESPACE or -A, not both")
    try:
        selector = labels.parse(args.selector) if args.selector else None
    except SelectorSyntaxError as e:
        raise UsageError(f"unable to parse requirement: {e}") from None
    namespace = None if args.all_namespaces else (args.namespace or "default")

    failed = False
    found: list[tuple[Kind, list[dict]]] = []
    async with _connect(args) as store:
        for kind in wanted:
            ns = namespace if kind.namespaced else None
            if args.names:
                objs = []
                for name in args.names:
                    obj = await store.get(kind, ns or "default", name)
                    if obj is None:
                        _err(f"Error from server (NotFound): {not_found(kind, name)}")
                        failed = True
                    else:
                        objs.append(obj)
            else:
                objs = await store.list(kind, ns, selector)
            found.append((kind, objs))

    everything = [o for _, objs in found for o in objs]
    if args.output in ("yaml", "json"):
        if args.names and len(everything) == 1 and len(args.names) == 1:
            doc: Any = everything[0]
        elif not everything and args.names:
            return 1
        else:
            doc = {"apiVersion": "v1", "kind": "List", "items": everything, "metadata": {}}
        if args.output == "json":
            print(json.dumps(doc, indent=4))
        else:
            print(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), end="")
        return 1 if failed else 0
    if args.output == "name":
        for o in everything:
            print(qualified(ObjectRef.of(o)))
        return 1 if failed else 0

    if not everything:
        if not failed:
            where = (
                f" in {namespace} namespace"
                if namespace and any(k.namespaced for k in wanted)
                else ""
            )
            _err(f"No resources found{where}.")
        return 1 if failed else 0
    blocks = [
        table(
            kind,
            objs,
            wide=args.output == "wide",
            all_ns=args.all_namespaces,
            prefix=len(wanted) > 1,
        )
        for kind, objs in found
        if objs
    ]
    print("\n\n".join(blocks))
    return 1 if failed else 0
