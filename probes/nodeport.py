"""Loader for probes/nodeport.c: NodePort load balancing on a node's uplink.

The node agent's whole use of it:

    np = NodePort.load(paths.node_bpf_dir(node) / "nodeport")   # adopts pinned maps
    await np.attach(netns, "eth0", node_ip, native_cidr=pod_cidr or None, node_ips=[...])
    np.maps.sync([...NodePortService...])                         # dataplane/agent/services.py
    ...every few seconds: np.gc()                                  # drops expired connections
    on shutdown: np.close()       (programs stay attached, maps stay pinned)

Filter priority: TC_PRIO 10, before masquerade (20). On egress our reverse NAT must turn a local
backend's reply into node_ip:nodePort before masquerade looks at it (it would otherwise SNAT the
pod address to a NAT port); on ingress we must see node_ip:nodePort before anything else.

SNAT ports (remote backends under externalTrafficPolicy Cluster) come from 20000-29999 by
default: below the NodePort range (30000-32767), the kernel's ephemeral range (32768-60999) and
masquerade's (61000-65535), so none of them can collide.
"""

from __future__ import annotations

import ctypes as ct
import enum
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

from pyroute2 import AsyncIPRoute

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)
from dataplane.maps import counters, maglevmap, nodeportmap, npaffinity, npctmap
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.lbmap import KernelTable
from dataplane.maps.netorder import u32_of
from flowscope.errors import UsageError
from probes import libbpf, tcattach
from probes.bpfloader import CompiledObject, LoadedObject

SOURCE = Path(__file__).with_name("nodeport.c")
INGRESS_PROG = "np_ingress"
EGRESS_PROG = "np_egress"
CONFIG_MAP = "np_config"
NODES_MAP = "np_nodes"
STATS_MAP = "np_stats"
PROGRAMS = (INGRESS_PROG, EGRESS_PROG)
MAPS = (
    nodeportmap.SERVICES_MAP,
    maglevmap.MAGLEV_MAP,
    npctmap.CT_MAP,
    npaffinity.AFFINITY_MAP,
    NODES_MAP,
    CONFIG_MAP,
    STATS_MAP,
)
TC_PRIO = 10  # before masquerade's 20
TC_HANDLE = 1
DEFAULT_SNAT_MIN = 20000
DEFAULT_SNAT_MAX = 29999


class NodePortStat(enum.IntEnum):
    """Counters in np_stats; the same order as enum np_stat in nodeport.c."""

    DNAT_LOCAL = 0
    DNAT_REMOTE = 1
    REVNAT_LOCAL = 2
    REVNAT_REMOTE = 3
    NEW_CONN = 4
    NO_BACKEND = 5
    NO_PORT_FREE = 6
    CT_INSERT_FAILED = 7
    CSUM_FAILED = 8
    AFFINITY_HIT = 9
    MAGLEV = 10
    MASQ_BYPASS = 11
    MALFORMED = 12


class NpConfigStruct(ct.Structure):
    """struct np_config."""

    _fields_ = (
        ("node_ip", ct.c_uint32),
        ("ifindex", ct.c_uint32),
        ("native_net", ct.c_uint32),
        ("native_mask", ct.c_uint32),
        ("snat_min", ct.c_uint16),
        ("snat_max", ct.c_uint16),
        ("timeout_tcp_s", ct.c_uint32),
        ("timeout_tcp_syn_s", ct.c_uint32),
        ("timeout_tcp_closing_s", ct.c_uint32),
        ("timeout_udp_s", ct.c_uint32),
    )


@dataclass(frozen=True)
class NodePortConfig:
    node_ip: ipaddress.IPv4Address
    ifindex: int  # the uplink, where redirected packets leave
    native_cidr: ipaddress.IPv4Network | None = None  # overlay pod CIDR (masquerade bypass)
    snat_min: int = DEFAULT_SNAT_MIN
    snat_max: int = DEFAULT_SNAT_MAX
    timeout_tcp_s: int = 21600
    timeout_tcp_syn_s: int = 60
    timeout_tcp_closing_s: int = 10
    timeout_udp_s: int = 60

    def validate(self) -> None:
        if self.node_ip.is_unspecified:
            raise UsageError("node_ip: 0.0.0.0 is not a node address")
        if self.ifindex <= 0:
            raise UsageError(f"ifindex: {self.ifindex} is not an interface index")
        if not 1 <= self.snat_min <= self.snat_max <= 65535:
            raise UsageError(
                f"snat_min/snat_max: {self.snat_min}-{self.snat_max} is not a port range",
                hint="1 <= snat_min <= snat_max <= 65535, outside 30000-32767 (NodePorts)",
            )
        if self.snat_min <= 32767 and self.snat_max >= 30000:
            raise UsageError(
                f"snat_min/snat_max: {self.snat_min}-{self.snat_max} overlaps the NodePort "
                "range 30000-32767"
            )
        for f in fields(self):
            if f.name.startswith("timeout_") and not 0 < getattr(self, f.name) < 2**32:
                raise UsageError(f"{f.name}: must be a positive number of seconds")

    def to_struct(self) -> NpConfigStruct:
        net = self.native_cidr
        return NpConfigStruct(
            node_ip=u32_of(self.node_ip),
            ifindex=self.ifindex,
            native_net=u32_of(net.network_address) if net else 0,
            native_mask=u32_of(net.netmask) if net else 0,
            snat_min=self.snat_min,
            snat_max=self.snat_max,
            timeout_tcp_s=self.timeout_tcp_s,
            timeout_tcp_syn_s=self.timeout_tcp_syn_s,
            timeout_tcp_closing_s=self.timeout_tcp_closing_s,
            timeout_udp_s=self.timeout_udp_s,
        )


@functools.cache
def compiled() -> CompiledObject:
    """nodeport.c compiled with bcc, once per process."""
    return CompiledObject.compile(SOURCE, programs=PROGRAMS, maps=MAPS)


class NodePort:
    """One node's NodePort programs and maps, pinned under one directory."""

    def __init__(self, obj: LoadedObject) -> None:
        self._obj = obj
        self._attachments: tuple[tcattach.TcAttachment, ...] = ()

        def table(name: str, layout: tuple[type, type]) -> KernelTable:
            bpfmap = BpfMap(obj.map_fd(name), *layout, name=name)
            return KernelTable(bpfmap, libbpf.map_info(obj.map_fd(name)).max_entries)

        self.maps = nodeportmap.NodePortMaps(
            table(nodeportmap.SERVICES_MAP, nodeportmap.LAYOUT),
            table(maglevmap.MAGLEV_MAP, maglevmap.LAYOUT),
        )
        self.ct = npctmap.KernelNpCtMap(
            BpfMap(obj.map_fd(npctmap.CT_MAP), *npctmap.LAYOUT, name=npctmap.CT_MAP)
        )
        self.affinity_table = table(npaffinity.AFFINITY_MAP, npaffinity.LAYOUT)
        self._nodes = BpfMap(obj.map_fd(NODES_MAP), ct.c_uint32, ct.c_uint32, name=NODES_MAP)
        self._config = BpfMap(obj.map_fd(CONFIG_MAP), ct.c_uint32, NpConfigStruct, name=CONFIG_MAP)
        self._stats = BpfMap(
            obj.map_fd(STATS_MAP), ct.c_uint32, ct.c_uint64, name=STATS_MAP, percpu=True
        )

    @classmethod
    def load(cls, pin_dir: Path) -> NodePort:
        """Load a node's instance, adopting maps already pinned in pin_dir (agent restart)."""
        obj = compiled().instantiate(Path(pin_dir), libbpf.BPF_PROG_TYPE_SCHED_CLS)
        return cls(obj)

    @property
    def pin_dir(self) -> Path:
        return self._obj.pin_dir

    @property
    def adopted(self) -> bool:
        return self._obj.maps[nodeportmap.SERVICES_MAP].adopted

    def prog_fd(self, name: str) -> int:
        return self._obj.prog_fd(name)

    def configure(self, config: NodePortConfig, node_ips: Iterable[str] = ()) -> None:
        """Write the configuration and the cluster's node IPs (the overlay masquerade bypass)."""
        config.validate()
        want = {u32_of(ip) for ip in node_ips}
        have = {int(k.value) for k in self._nodes.keys()}  # noqa: SIM118 (a BpfMap)
        for ip in want - have:
            self._nodes.update(ct.c_uint32(ip), ct.c_uint32(1))
        for ip in have - want:
            self._nodes.delete(ct.c_uint32(ip))
        self._config.update(ct.c_uint32(0), config.to_struct())

    async def attach(
        self,
        netns: str | None,
        ifname: str,
        node_ip: str | ipaddress.IPv4Address,
        *,
        native_cidr: str | ipaddress.IPv4Network | None = None,
        node_ips: Iterable[str] = (),
        **options: int,
    ) -> None:
        """Configure, then attach (or atomically replace) both programs on the uplink."""
        try:
            ip = ipaddress.IPv4Address(node_ip)
        except ValueError as e:
            raise UsageError(f"node_ip: {node_ip!r} is not an IPv4 address") from e
        net = ipaddress.IPv4Network(native_cidr) if native_cidr else None
        self.configure(
            NodePortConfig(ip, await _ifindex(netns, ifname), net, **options), node_ips=node_ips
        )
        self._attachments = await tcattach.attach_all(
            netns,
            ifname,
            (
                (tcattach.Hook.INGRESS, self.prog_fd(INGRESS_PROG), INGRESS_PROG),
                (tcattach.Hook.EGRESS, self.prog_fd(EGRESS_PROG), EGRESS_PROG),
            ),
            prio=TC_PRIO,
            handle=TC_HANDLE,
        )

    async def detach(self) -> int:
        removed = await tcattach.detach_all(self._attachments)
        self._attachments = ()
        return removed

    def gc(self, now_ns: int | None = None) -> int:
        return self.ct.gc(now_ns)

    def affinity(self) -> list[npaffinity.NpAffinity]:
        return npaffinity.entries(self.affinity_table)

    def stats(self) -> dict[str, int]:
        return counters.counters(self._stats, NodePortStat)

    def close(self) -> None:
        self._obj.close()

    def unpin(self) -> None:
        self._obj.unpin()


async def _ifindex(netns: str | None, ifname: str) -> int:
    async with AsyncIPRoute(netns=netns, flags=0) if netns else AsyncIPRoute() as ipr:
        found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise UsageError(f"ifname: no interface {ifname!r} in namespace {netns or '(own)'}")
    return found[0]
