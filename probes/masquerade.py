"""Loader for probes/masquerade.c: overlay-mode masquerading on a node's uplink.

The node agent's whole use of it:

    masq = Masquerade.load(paths.node_bpf_dir(node) / "masq")     # adopts pinned NAT state
    await masq.attach(paths.node_netns(node), "eth0", node_ip, pod_cidr)
    ...every few seconds: masq.gc()                                  # drops expired mappings
    masq.entries(), masq.stats()                                     # for status / debugging
    on shutdown: masq.close()            (programs stay attached, NAT entries stay pinned)
    on node removal: await masq.detach(); masq.unpin(); masq.close()

The C source is compiled once per process (`compiled()`), however many nodes load it; each node
gets its own maps and program instances pinned under its own directory. An agent restart calls
the same two lines: `load` adopts the pinned maps, `attach` atomically replaces the filters with
the new programs, and established flows keep their NAT ports.

Port range: NAT ports come from 61000-65535 by default, just above the kernel's default ephemeral
range (net.ipv4.ip_local_port_range 32768-60999), so the node's own outgoing connections never
pick a port the NAT hands out. A node socket bound explicitly into the range could still collide
with a mapping to the same remote address and port; the NAT range is configurable.
"""

from __future__ import annotations

import ctypes as ct
import enum
import functools
import ipaddress
from dataclasses import dataclass, fields
from pathlib import Path

from dataplane.maps import counters
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.natmap import KernelNatMap, NatEntry, NatKey, NatMapping
from dataplane.maps.netorder import u32_of
from flowscope.errors import UsageError
from probes import libbpf, tcattach
from probes.bpfloader import CompiledObject, LoadedObject

SOURCE = Path(__file__).with_name("masquerade.c")
EGRESS_PROG = "masq_egress"
INGRESS_PROG = "masq_ingress"
NAT_MAP = "nat_v4"
CONFIG_MAP = "masq_config"
STATS_MAP = "masq_stats"
PROGRAMS = (EGRESS_PROG, INGRESS_PROG)
MAPS = (NAT_MAP, CONFIG_MAP, STATS_MAP)

# tc filter priority on the uplink. Masquerade returns TC_ACT_UNSPEC for everything it passes,
# so filters after it still run: on egress a lower prio sees pod addresses, a higher one node
# addresses; on ingress the opposite.
TC_PRIO = 20
TC_HANDLE = 1

DEFAULT_PORT_MIN = 61000
DEFAULT_PORT_MAX = 65535


class MasqStat(enum.IntEnum):
    """Counters in masq_stats; the same order as enum masq_stat in masquerade.c."""

    SNAT_PACKETS = 0
    RNAT_PACKETS = 1
    NEW_MAPPINGS = 2
    NO_PORT_FREE = 3
    MAP_INSERT_FAILED = 4
    DROP_FRAGMENT = 5
    DROP_MALFORMED = 6
    DROP_UNSUPPORTED = 7
    INGRESS_FRAGMENT = 8
    INGRESS_MALFORMED = 9
    RNAT_MISS = 10
    RNAT_EXPIRED = 11
    REPAIRED = 12
    PORT_COLLISION = 13
    CSUM_FAILED = 14


class MasqConfigStruct(ct.Structure):
    """struct masq_config; addresses in network byte order, ports host order."""

    _fields_ = (
        ("node_ip", ct.c_uint32),
        ("native_net", ct.c_uint32),
        ("native_mask", ct.c_uint32),
        ("port_min", ct.c_uint16),
        ("port_max", ct.c_uint16),
        ("timeout_tcp_s", ct.c_uint32),
        ("timeout_tcp_syn_s", ct.c_uint32),
        ("timeout_tcp_closing_s", ct.c_uint32),
        ("timeout_udp_s", ct.c_uint32),
        ("timeout_icmp_s", ct.c_uint32),
        ("pad", ct.c_uint32),
    )


@dataclass(frozen=True)
class MasqueradeConfig:
    """What one node's masquerade needs. Timeouts follow Cilium's conntrack defaults."""

    node_ip: ipaddress.IPv4Address
    native_cidr: ipaddress.IPv4Network  # traffic to it is not masqueraded (the pod CIDR)
    port_min: int = DEFAULT_PORT_MIN
    port_max: int = DEFAULT_PORT_MAX
    timeout_tcp_s: int = 21600
    timeout_tcp_syn_s: int = 60
    timeout_tcp_closing_s: int = 10
    timeout_udp_s: int = 60
    timeout_icmp_s: int = 30

    @classmethod
    def build(
        cls,
        node_ip: str | ipaddress.IPv4Address,
        native_cidr: str | ipaddress.IPv4Network,
        **options: int,
    ) -> MasqueradeConfig:
        """Validate and build; a bad value raises UsageError naming the field."""
        try:
            ip = ipaddress.IPv4Address(node_ip)
        except ValueError as e:
            raise UsageError(f"node_ip: {node_ip!r} is not an IPv4 address") from e
        try:
            net = ipaddress.IPv4Network(native_cidr)
        except ValueError as e:
            raise UsageError(f"native_cidr: {native_cidr!r} is not an IPv4 CIDR ({e})") from e
        known = {f.name for f in fields(cls)} - {"node_ip", "native_cidr"}
        for name in options:
            if name not in known:
                raise UsageError(
                    f"{name}: unknown masquerade option", hint=f"one of {sorted(known)}"
                )
        cfg = cls(ip, net, **options)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.node_ip in self.native_cidr:
            raise UsageError(
                f"node_ip: {self.node_ip} lies inside native_cidr {self.native_cidr}",
                hint="the native CIDR is the pod CIDR; the node IP is on the VNET",
            )
        if self.node_ip.is_unspecified:
            raise UsageError("node_ip: 0.0.0.0 is not a node address")
        if not 1 <= self.port_min <= self.port_max <= 65535:
            raise UsageError(
                f"port_min/port_max: {self.port_min}-{self.port_max} is not a port range",
                hint="1 <= port_min <= port_max <= 65535",
            )
        for f in fields(self):
            if f.name.startswith("timeout_") and not 0 < getattr(self, f.name) < 2**32:
                raise UsageError(f"{f.name}: must be a positive number of seconds")

    def to_struct(self) -> MasqConfigStruct:
        return MasqConfigStruct(
            node_ip=u32_of(self.node_ip),
            native_net=u32_of(self.native_cidr.network_address),
            native_mask=u32_of(self.native_cidr.netmask),
            port_min=self.port_min,
            port_max=self.port_max,
            timeout_tcp_s=self.timeout_tcp_s,
            timeout_tcp_syn_s=self.timeout_tcp_syn_s,
            timeout_tcp_closing_s=self.timeout_tcp_closing_s,
            timeout_udp_s=self.timeout_udp_s,
            timeout_icmp_s=self.timeout_icmp_s,
        )

    @classmethod
    def from_struct(cls, s: MasqConfigStruct) -> MasqueradeConfig | None:
        if not s.node_ip:
            return None
        net = ipaddress.IPv4Address(s.native_net.to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(s.native_mask.to_bytes(4, "little"))
        return cls(
            node_ip=ipaddress.IPv4Address(s.node_ip.to_bytes(4, "little")),
            native_cidr=ipaddress.IPv4Network(f"{net}/{mask}"),
            **{
                f.name: getattr(s, f.name)
                for f in fields(cls)
                if f.name.startswith(("port_", "timeout_"))
            },
        )


@functools.cache
def compiled() -> CompiledObject:
    """masquerade.c compiled with bcc, once per process."""
    return CompiledObject.compile(SOURCE, programs=PROGRAMS, maps=MAPS)


class Masquerade:
    """One node's masquerade: its maps and programs, pinned under one directory."""

    def __init__(
        self, obj: LoadedObject, attachments: tuple[tcattach.TcAttachment, ...] = ()
    ) -> None:
        self._obj = obj
        self._attachments = attachments
        self.nat = KernelNatMap(BpfMap(obj.map_fd(NAT_MAP), NatKey, NatEntry, name=NAT_MAP))
        self._config = BpfMap(
            obj.map_fd(CONFIG_MAP), ct.c_uint32, MasqConfigStruct, name=CONFIG_MAP
        )
        self._stats = BpfMap(
            obj.map_fd(STATS_MAP), ct.c_uint32, ct.c_uint64, name=STATS_MAP, percpu=True
        )

    @classmethod
    def load(cls, pin_dir: Path, *, nat_entries: int | None = None) -> Masquerade:
        """Load a node's instance, adopting maps already pinned in pin_dir (agent restart).

        nat_entries sizes the NAT table (default 65536 entries, i.e. 32768 flows: each flow
        holds an OUT and an IN entry)."""
        sizes = {NAT_MAP: nat_entries} if nat_entries else None
        obj = compiled().instantiate(
            Path(pin_dir), libbpf.BPF_PROG_TYPE_SCHED_CLS, max_entries=sizes
        )
        return cls(obj)

    @property
    def pin_dir(self) -> Path:
        return self._obj.pin_dir

    @property
    def adopted(self) -> bool:
        """Whether load() found this node's NAT table pinned and kept its entries."""
        return self._obj.maps[NAT_MAP].adopted

    def prog_fd(self, name: str) -> int:
        return self._obj.prog_fd(name)

    def configure(self, config: MasqueradeConfig) -> None:
        config.validate()
        self._config.update(ct.c_uint32(0), config.to_struct())

    def config(self) -> MasqueradeConfig | None:
        """The configuration the programs currently read (None: not configured)."""
        value = self._config.lookup(ct.c_uint32(0))
        return MasqueradeConfig.from_struct(value) if value is not None else None

    async def attach(
        self,
        netns: str | None,
        ifname: str,
        node_ip: str | ipaddress.IPv4Address,
        native_cidr: str | ipaddress.IPv4Network,
        **options: int,
    ) -> None:
        """Configure, then attach (or atomically replace) both programs on the uplink.

        options: port_min, port_max, timeout_* (see MasqueradeConfig)."""
        self.configure(MasqueradeConfig.build(node_ip, native_cidr, **options))
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

    async def detach(self, netns: str | None = None, ifname: str | None = None) -> int:
        """Remove both filters (from where attach() put them, or from netns/ifname after a
        restart). NAT entries stay in the pinned map. Returns how many filters were removed."""
        if ifname is not None:
            targets = [
                tcattach.TcAttachment(netns, ifname, hook, TC_PRIO, TC_HANDLE, prog)
                for hook, prog in (
                    (tcattach.Hook.EGRESS, EGRESS_PROG),
                    (tcattach.Hook.INGRESS, INGRESS_PROG),
                )
            ]
        else:
            targets = list(self._attachments)
        removed = await tcattach.detach_all(targets)
        self._attachments = ()
        return removed

    def entries(self) -> list[NatMapping]:
        return self.nat.entries()

    def gc(self, now_ns: int | None = None) -> int:
        """Delete expired NAT entries; returns how many. Cheap: call it every few seconds."""
        return self.nat.gc(now_ns)

    def stats(self) -> dict[str, int]:
        """Counters summed over CPUs, by lower-case MasqStat name."""
        return counters.counters(self._stats, MasqStat)

    def close(self) -> None:
        """Close this process's fds. Pins, attached programs and NAT entries stay."""
        self._obj.close()

    def unpin(self) -> None:
        """Remove the pins (the kernel frees maps and programs once nothing uses them)."""
        self._obj.unpin()
