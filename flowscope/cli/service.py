"""`flowscope service list`: the load balancer as the datapath holds it, like `cilium service list`.

What the maps hold, read from each node's pinned maps (read only: nothing here writes, so it is
safe while the agent runs), not what the store asks for: `flowscope get services` shows that.
Each frontend is one row: its ID (the reverse-NAT id, which the datapath uses to name the
service), address:port/protocol, type, backends with their slot index and state, and the Service
that owns the frontend when the store knows it.

Rows come from sources, one function per kind of map set (`ROW_SOURCES`): the socket LB's maps
(ClusterIP and LoadBalancer frontends, translated at the socket) and the NodePort maps on the
uplink (probes/nodeport.c). A source is `name -> function(paths, node) -> list[FrontendRow]`;
it raises MapsMissing when that node has no such maps. Owner names are filled in afterwards for
every source's rows alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from flowscope import clusterinfo
from flowscope.cli.nodes import selected_nodes
from flowscope.errors import FlowscopeError
from flowscope.paths import ClusterPaths

SOCKET_LB_DIR = "socklb"  # under ClusterPaths.node_bpf_dir(node): where the agent pins them


class MapsMissing(FlowscopeError):
    """A node has none of a source's maps pinned (its agent never ran, or the lab is down)."""


@dataclass(frozen=True)
class BackendRow:
    index: int  # slot in the service (1..n), as the datapath picks among them
    id: int  # backend id in the maps
    ip: str
    port: int
    protocol: str
    state: str  # active; missing: the slot names a backend id the maps do not hold

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class FrontendRow:
    node: str
    source: str  # which maps: "socket-lb", ...
    id: int
    ip: str
    port: int
    protocol: str
    type: str  # ClusterIP, LoadBalancer, NodePort (as the store's Service says; else the source's)
    backends: tuple[BackendRow, ...] = ()
    service: str = ""  # "namespace/name" of the owning Service, when the store knows it
    flags: tuple[str, ...] = field(default=())  # e.g. "affinity=10800s"

    @property
    def frontend(self) -> str:
        return f"{self.ip}:{self.port}/{self.protocol}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backends"] = [asdict(b) for b in self.backends]
        d["flags"] = list(self.flags)
        return d


RowSource = Callable[[ClusterPaths, str], list[FrontendRow]]


# -- the socket LB's maps --


def socket_lb_rows_from(
    node: str, services: Iterable[tuple], backends: Iterable[tuple]
) -> list[FrontendRow]:
    """Rows from the socket LB's lb_services and lb_backends entries ((key, value) ctypes pairs,
    as lbmap's tables yield them). Pure: what a reader sees while the agent writes is shown as
    it is (a slot beyond the count is left out; a slot naming an absent backend is 'missing')."""
    from dataplane.maps.lbmap import SVC_F_AFFINITY, frontend_of
    from dataplane.maps.netorder import ip_of

    heads: dict = {}
    slots: dict = {}
    for k, v in services:
        fe = frontend_of(k)
        if k.slot == 0:
            heads[fe] = v
        else:
            slots.setdefault(fe, {})[int(k.slot)] = int(v.backend_id)
    table = {int(k.value): v for k, v in backends}
    rows = []
    for fe in sorted(heads):
        head = heads[fe]
        proto = fe.proto.name
        got = slots.get(fe, {})
        backend_rows = []
        for index in range(1, int(head.count) + 1):
            bid = got.get(index, 0)
            be = table.get(bid)
            if be is None:
                backend_rows.append(BackendRow(index, bid, "", 0, proto, "missing"))
            else:
                ip, port = str(ip_of(be.ip)), socket.ntohs(be.port)
                backend_rows.append(BackendRow(index, bid, ip, port, proto, "active"))
        flags = (f"affinity={head.affinity_timeout}s",) if head.flags & SVC_F_AFFINITY else ()
        rows.append(
            FrontendRow(
                node,
                "socket-lb",
                int(head.revnat_id),
                str(fe.vip),
                fe.port,
                proto,
                "ClusterIP",
                tuple(backend_rows),
                flags=flags,
            )
        )
    return rows


def socket_lb_rows(paths: ClusterPaths, node: str) -> list[FrontendRow]:
    """The socket LB maps pinned for `node`, read only."""
    from dataplane.maps.bpfmap import BpfMap
    from dataplane.maps.lbmap import BACKENDS_MAP, LAYOUTS, SERVICES_MAP, KernelTable
    from probes import libbpf

    pin_dir = paths.node_bpf_dir(node) / SOCKET_LB_DIR
    opened: dict[str, KernelTable] = {}
    try:
        for name in (SERVICES_MAP, BACKENDS_MAP):
            path = pin_dir / name
            if not path.exists():
                raise MapsMissing(
                    f"node {node}: no socket-LB maps at {pin_dir}",
                    hint="the node's agent pins them when it starts: is it running "
                    "(`flowscope lab status`)?",
                )
            bpfmap = BpfMap.open_pinned(path, *LAYOUTS[name])
            opened[name] = KernelTable(bpfmap, libbpf.map_info(bpfmap.fd).max_entries)
        return socket_lb_rows_from(node, opened[SERVICES_MAP].items(), opened[BACKENDS_MAP].items())
    finally:
        for t in opened.values():
            t.map.close()


# -- the NodePort maps on the uplink (probes/nodeport.c) --

NODEPORT_DIR = "nodeport"


def nodeport_rows_from(node: str, services: Iterable[tuple]) -> list[FrontendRow]:
    """Rows from np_services entries ((key, value) ctypes pairs). Backends sit in the slots
    themselves (no backend ids: the id column is the slot's); a remote backend is reached with
    SNAT to the node's IP; a NodePort's frontend is every address of the node (0.0.0.0, as
    Cilium), a LoadBalancer's is its address."""
    from dataplane.maps.netorder import ip_of
    from dataplane.maps.nodeportmap import (
        BE_F_REMOTE,
        SVC_F_AFFINITY,
        SVC_F_LOCAL,
        SVC_F_MAGLEV,
    )
    from dataplane.services.plan import NODE_ANY

    heads: dict = {}
    slots: dict = {}
    for k, v in services:
        fe = (int(k.addr), socket.ntohs(k.port), int(k.proto))
        if k.slot == 0:
            heads[fe] = v
        else:
            slots.setdefault(fe, {})[int(k.slot)] = v
    rows = []
    for (addr, port, proto_number), head in sorted(heads.items()):
        proto = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP"}.get(
            proto_number, str(proto_number)
        )
        got = slots.get((addr, port, proto_number), {})
        backend_rows = []
        for index in range(1, int(head.count) + 1):
            be = got.get(index)
            if be is None:
                backend_rows.append(BackendRow(index, index, "", 0, proto, "missing"))
                continue
            state = "active, remote (SNAT)" if be.flags & BE_F_REMOTE else "active"
            ip, be_port = str(ip_of(be.ip)), socket.ntohs(be.port)
            backend_rows.append(BackendRow(index, index, ip, be_port, proto, state))
        flags = tuple(
            text
            for bit, text in (
                (SVC_F_LOCAL, "eTP=Local"),
                (SVC_F_MAGLEV, "maglev"),
                (SVC_F_AFFINITY, f"affinity={head.affinity_timeout}s"),
            )
            if head.flags & bit
        )
        rows.append(
            FrontendRow(
                node,
                "nodeport",
                int(head.id),
                str(ip_of(addr)) if addr else NODE_ANY,
                port,
                proto,
                "LoadBalancer" if addr else "NodePort",
                tuple(backend_rows),
                flags=flags,
            )
        )
    return rows


def nodeport_rows(paths: ClusterPaths, node: str) -> list[FrontendRow]:
    """The NodePort maps pinned for `node`, read only."""
    from dataplane.maps.bpfmap import BpfMap
    from dataplane.maps.nodeportmap import LAYOUT, SERVICES_MAP

    path = paths.node_bpf_dir(node) / NODEPORT_DIR / SERVICES_MAP
    if not path.exists():
        raise MapsMissing(
            f"node {node}: no NodePort maps at {path.parent}",
            hint="the node's agent pins them when it starts: is it running "
            "(`flowscope lab status`)?",
        )
    bpfmap = BpfMap.open_pinned(path, *LAYOUT)
    try:
        keys, values = bpfmap.dump()
        pairs = [
            (LAYOUT[0].from_buffer_copy(k.tobytes()), LAYOUT[1].from_buffer_copy(v.tobytes()))
            for k, v in zip(keys, values, strict=True)
        ]
    finally:
        bpfmap.close()
    return nodeport_rows_from(node, pairs)


ROW_SOURCES: dict[str, RowSource] = {"socket-lb": socket_lb_rows, "nodeport": nodeport_rows}


# -- owners --


def with_owners(
    rows: list[FrontendRow], services: Iterable[Mapping[str, Any]]
) -> list[FrontendRow]:
    """Rows named after the Service whose frontend they are, with its frontend's kind (a NodePort
    row is found by port when its address is a node's own)."""
    from collector.services import frontend_owners
    from dataplane.services.plan import NODE_ANY

    owners = frontend_owners(services)
    out = []
    for row in rows:
        owner = owners.get((row.ip, row.port, row.protocol))
        if owner is None and row.ip == NODE_ANY:
            owner = owners.get((NODE_ANY, row.port, row.protocol))
        if owner is None:
            out.append(row)
        else:
            svc, kind = owner
            out.append(replace(row, service=f"{svc.namespace}/{svc.name}", type=kind))
    return out


# -- output --


def format_table(rows: list[FrontendRow], *, node_column: bool) -> str:
    """Cilium's layout: one line per backend, the frontend's columns on its first line only."""
    head = ["ID", "Frontend", "Service Type", "Backend", "Service"]
    if node_column:
        head.insert(0, "Node")
    lines = [head]
    for row in rows:
        backends = [f"{b.index} => {b.address} ({b.state})" for b in row.backends] or [""]
        service = row.service or "-"
        if row.flags:
            service += f" [{', '.join(row.flags)}]"
        for i, backend in enumerate(backends):
            first = i == 0
            cells = [
                str(row.id) if first else "",
                row.frontend if first else "",
                row.type if first else "",
                backend,
                service if first else "",
            ]
            if node_column:
                cells.insert(0, row.node if first else "")
            lines.append(cells)
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# -- the command --


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("service", help="the datapath's load balancer (like `cilium service`)")
    ssub = p.add_subparsers(dest="service_command", required=True, metavar="COMMAND")
    lst = ssub.add_parser("list", help="frontends and backends as each node's maps hold them")
    lst.add_argument("--node", help="only this node (default: every node)")
    lst.add_argument("-o", "--output", choices=("table", "json"), default="table")
    lst.set_defaults(func=cmd_list)


async def _services(info) -> list[dict] | None:
    """The store's Services, or None (with a warning) when the store cannot be read."""
    from flowscope.connect import cluster_store

    try:
        async with cluster_store(info) as store:
            return await store.list("Service")
    except Exception as exc:  # the maps are still worth showing without names
        print(f"warning: cannot read Services from the store: {exc}", file=sys.stderr)
        return None


async def cmd_list(args: argparse.Namespace) -> int:
    info = clusterinfo.load(args.cluster)
    nodes = selected_nodes(info, args.node)
    rows: list[FrontendRow] = []
    missing: list[MapsMissing] = []
    for node in nodes:
        for read in ROW_SOURCES.values():
            try:
                rows.extend(read(info.paths, node))
            except MapsMissing as exc:
                missing.append(exc)
    if missing and len(missing) == len(nodes) * len(ROW_SOURCES):
        raise FlowscopeError(
            "; ".join(str(m) for m in missing), hint=missing[0].hint
        )  # nothing to show at all
    for exc in missing:
        print(f"warning: {exc}", file=sys.stderr)
    services = await _services(info)
    if services is not None:
        rows = with_owners(rows, services)
    if args.output == "json":
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(format_table(rows, node_column=len(nodes) > 1))
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return 0
