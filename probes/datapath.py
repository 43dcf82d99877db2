"""Loader for probes/datapath.c: policy, conntrack and flow events on every endpoint's veth.

The node agent's whole use of it:

    dp = Datapath.load(paths.node_bpf_dir(node) / "datapath")   # adopts pinned state
    dp.ipcache.sync(plan)                                        # identities of addresses
    await dp.add_endpoint(node_netns, host_ifname, identity, pod_ip, policy)
        # = policy first, then the endpoint entry, then the tc filters: the pod's first packet
        #   already meets its identity and policy (no default-allow window, no drop window)
    dp.policy.set_policy(endpoint_id, policy)                    # on every policy change
    ring = dp.ring(); ring.drain() -> flowevent.decode(...)      # flow events
    ...every few seconds: dp.ct.gc()
    on shutdown: dp.close()        (programs stay attached, maps stay pinned: still enforcing)
    on endpoint removal: await dp.remove_endpoint(node_netns, host_ifname)
    on node removal: dp.unpin(); dp.close()

The C source is compiled once per process (`compiled()`); each node gets its own maps and program
instances under its own pin directory, and the same two programs serve all of its endpoints (the
endpoint is found by the interface). A restarted agent (even after kill -9) calls the same lines:
`load` adopts the pinned maps (CT, policies, ipcache, endpoints keep their entries; a map whose
size or layout changed is migrated, see bpfloader.Migration), and `attach_endpoint` replaces each
filter atomically (tc `replace`), so the old programs run until the new ones take over, both on
the same maps.

tc priority: the datapath's filters sit at TC_PRIO on both hooks of the host veth. They return
TC_ACT_UNSPEC for what they pass, so a filter of another owner at a higher prio still runs after
them; one that must see packets before policy (service translation) uses a lower prio.
"""

from __future__ import annotations

import ctypes as ct
import enum
import functools
from dataclasses import dataclass, fields
from pathlib import Path

from pyroute2 import AsyncIPRoute

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)
from dataplane.maps import counters, ctmap, endpointmap, ipcache, policymap
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.ctmap import CtEntry, CtKey, KernelCtMap
from dataplane.maps.endpointmap import Endpoint, EndpointInfo, KernelEndpointMap
from dataplane.maps.flowevent import DropReason
from dataplane.maps.ipcache import IPCacheInfo, IPCacheKey, KernelIPCacheMap
from dataplane.maps.policymap import KernelPolicyMap
from dataplane.policy.entry import EndpointPolicy
from flowscope.errors import FlowscopeError, UsageError
from probes import libbpf, tcattach
from probes.bpfloader import CompiledObject, LoadedObject
from probes.ringbuf import RingBuffer

SOURCE = Path(__file__).with_name("datapath.c")
FROM_ENDPOINT = "from_endpoint"  # tc ingress of the host veth: what the pod sends
TO_ENDPOINT = "to_endpoint"  # tc egress of the host veth: what the pod receives
PROGRAMS = (FROM_ENDPOINT, TO_ENDPOINT)

ENDPOINTS_MAP = endpointmap.MAP_NAME
IPCACHE_MAP = ipcache.MAP_NAME
POLICY_MAP = policymap.MAP_NAME
POLICY_INNER = policymap.INNER_TEMPLATE
CT_MAP = ctmap.MAP_NAME
FRAGS_MAP = "frags"
CONFIG_MAP = "dp_config"
DROPS_MAP = "drops"
STATS_MAP = "stats"
LOST_MAP = "lost_events"
EVENTS_MAP = "events"
MAPS = (
    ENDPOINTS_MAP,
    IPCACHE_MAP,
    POLICY_INNER,
    POLICY_MAP,
    CT_MAP,
    FRAGS_MAP,
    CONFIG_MAP,
    DROPS_MAP,
    STATS_MAP,
    LOST_MAP,
    EVENTS_MAP,
)
MIGRATIONS = {
    ENDPOINTS_MAP: endpointmap.MIGRATION,
    IPCACHE_MAP: ipcache.MIGRATION,
    POLICY_MAP: policymap.MIGRATION,
    CT_MAP: ctmap.MIGRATION,
}

TC_PRIO = 30
TC_HANDLE = 1

DEFAULT_EVENTS_BYTES = 4 << 20
DEFAULT_CT_ENTRIES = 262144
DEFAULT_IPCACHE_ENTRIES = 65536
DEFAULT_MAX_ENDPOINTS = 1024
DEFAULT_POLICY_ENTRIES = 65536  # per endpoint; an LPM trie allocates only what it holds
DEFAULT_FRAG_ENTRIES = 8192
_PAGE = 4096


class DatapathStat(enum.IntEnum):
    """Counters in `stats`; the same order as enum dp_stat in datapath.c."""

    FORWARDED = 0
    DROPPED = 1
    CT_NEW = 2
    CT_ESTABLISHED = 3
    CT_REPLY = 4
    CT_RELATED = 5
    AUDITED = 6
    ARP = 7
    FRAGMENTS = 8
    FRAG_TRACK_FAILED = 9
    EVENTS = 10


class DatapathConfigStruct(ct.Structure):
    """struct dp_config: CT lifetimes in seconds (0: the program's built-in default)."""

    _fields_ = (
        ("ct_tcp_s", ct.c_uint32),
        ("ct_tcp_syn_s", ct.c_uint32),
        ("ct_tcp_closing_s", ct.c_uint32),
        ("ct_other_s", ct.c_uint32),
    )


@dataclass(frozen=True)
class CtTimeouts:
    """Connection lifetimes after the last packet, Cilium's defaults."""

    ct_tcp_s: int = 21600  # established (a reply was seen)
    ct_tcp_syn_s: int = 60  # no reply yet
    ct_tcp_closing_s: int = 10  # after FIN or RST
    ct_other_s: int = 60  # UDP, ICMP, SCTP, anything else

    def to_struct(self) -> DatapathConfigStruct:
        for f in fields(self):
            if not 0 < getattr(self, f.name) < 2**32:
                raise UsageError(f"{f.name}: must be a positive number of seconds")
        return DatapathConfigStruct(**{f.name: getattr(self, f.name) for f in fields(self)})


@functools.cache
def compiled() -> CompiledObject:
    """datapath.c compiled with bcc, once per process."""
    return CompiledObject.compile(
        SOURCE, programs=PROGRAMS, maps=MAPS, inner_maps={POLICY_MAP: POLICY_INNER}
    )


def _power_of_two_pages(name: str, value: int) -> None:
    if value < _PAGE or value & (value - 1):
        raise UsageError(
            f"{name}: {value} is not a power of two of at least {_PAGE} bytes",
            hint="e.g. 4194304 (4 MiB)",
        )


class Datapath:
    """One node's datapath: its maps and two programs, pinned under one directory."""

    def __init__(self, obj: LoadedObject, *, policy_entries: int) -> None:
        self._obj = obj
        m = obj.maps
        self.endpoints = KernelEndpointMap(
            BpfMap(m[ENDPOINTS_MAP].fd, ct.c_uint32, EndpointInfo, name=ENDPOINTS_MAP),
            m[ENDPOINTS_MAP].max_entries,
        )
        self.ipcache = KernelIPCacheMap(
            BpfMap(m[IPCACHE_MAP].fd, IPCacheKey, IPCacheInfo, name=IPCACHE_MAP),
            m[IPCACHE_MAP].max_entries,
        )
        self.policy = KernelPolicyMap(
            BpfMap(m[POLICY_MAP].fd, ct.c_uint32, ct.c_uint32, name=POLICY_MAP),
            inner_flags=m[POLICY_INNER].spec.flags,
            inner_entries=policy_entries,
            max_endpoints=m[POLICY_MAP].max_entries,
        )
        self.ct = KernelCtMap(BpfMap(m[CT_MAP].fd, CtKey, CtEntry, name=CT_MAP))
        self._config = BpfMap(m[CONFIG_MAP].fd, ct.c_uint32, DatapathConfigStruct, name=CONFIG_MAP)
        self._stats = BpfMap(m[STATS_MAP].fd, ct.c_uint32, ct.c_uint64, name=STATS_MAP, percpu=True)
        self._drops = BpfMap(m[DROPS_MAP].fd, ct.c_uint32, ct.c_uint64, name=DROPS_MAP, percpu=True)
        self._lost = BpfMap(m[LOST_MAP].fd, ct.c_uint32, ct.c_uint64, name=LOST_MAP, percpu=True)

    @classmethod
    def load(
        cls,
        pin_dir: Path,
        *,
        events_bytes: int = DEFAULT_EVENTS_BYTES,
        ct_entries: int = DEFAULT_CT_ENTRIES,
        ipcache_entries: int = DEFAULT_IPCACHE_ENTRIES,
        max_endpoints: int = DEFAULT_MAX_ENDPOINTS,
        policy_entries: int = DEFAULT_POLICY_ENTRIES,
        frag_entries: int = DEFAULT_FRAG_ENTRIES,
        timeouts: CtTimeouts = CtTimeouts(),
    ) -> Datapath:
        """Load a node's instance, adopting (or migrating) maps already pinned in pin_dir.

        events_bytes: the ring buffer (a power of two of pages; ~64 bytes per event).
        policy_entries: the most entries one endpoint's policy may have."""
        _power_of_two_pages("events_bytes", events_bytes)
        sizes = {
            "ct_entries": ct_entries,
            "ipcache_entries": ipcache_entries,
            "max_endpoints": max_endpoints,
            "policy_entries": policy_entries,
            "frag_entries": frag_entries,
        }
        for name, value in sizes.items():
            if not 0 < value < 2**31:
                raise UsageError(f"{name}: {value} must be a positive number of entries")
        config = timeouts.to_struct()
        obj = compiled().instantiate(
            Path(pin_dir),
            libbpf.BPF_PROG_TYPE_SCHED_CLS,
            max_entries={
                EVENTS_MAP: events_bytes,
                CT_MAP: ct_entries,
                IPCACHE_MAP: ipcache_entries,
                ENDPOINTS_MAP: max_endpoints,
                POLICY_MAP: max_endpoints,
                FRAGS_MAP: frag_entries,
            },
            migrations=MIGRATIONS,
        )
        dp = cls(obj, policy_entries=policy_entries)
        dp._config.update(ct.c_uint32(0), config)
        return dp

    @property
    def pin_dir(self) -> Path:
        return self._obj.pin_dir

    @property
    def adopted(self) -> dict[str, bool]:
        """Per map: whether load() found it pinned and kept its entries as they were."""
        return {name: m.adopted for name, m in self._obj.maps.items()}

    @property
    def migrated(self) -> dict[str, int]:
        """Maps carried over from another shape by migration, with their entry counts."""
        return {n: m.migrated for n, m in self._obj.maps.items() if m.migrated is not None}

    def prog_fd(self, name: str) -> int:
        return self._obj.prog_fd(name)

    def map_fd(self, name: str) -> int:
        return self._obj.map_fd(name)

    @property
    def events_fd(self) -> int:
        return self._obj.map_fd(EVENTS_MAP)

    def ring(self) -> RingBuffer:
        """A reader of the flow event ring buffer (the caller closes it)."""
        return RingBuffer(self.events_fd)

    def timeouts(self) -> CtTimeouts:
        v = self._config.lookup(ct.c_uint32(0))
        return CtTimeouts(**{f.name: getattr(v, f.name) for f in fields(CtTimeouts)})

    # -- counters --

    def lost_events(self) -> int:
        """Events the programs could not put into a full ring buffer, summed over CPUs."""
        return counters.counter(self._lost, 0)

    def drops(self) -> dict[int, int]:
        """Dropped packets by Hubble drop reason number (reasons never seen are left out)."""
        keys, values = self._drops.dump()
        totals = values.sum(axis=1) if len(values) else values
        return {int(k): int(v) for k, v in zip(keys, totals, strict=True) if v}

    def stats(self) -> dict[str, int]:
        """Counters summed over CPUs by lower-case DatapathStat name, `lost_events`, and one
        `drop_<reason>` per drop reason seen (Hubble's name, lower case)."""
        out = counters.counters(self._stats, DatapathStat)
        out["lost_events"] = self.lost_events()
        for reason, count in self.drops().items():
            try:
                name = DropReason(reason).name.lower()
            except ValueError:
                name = str(reason)
            out[f"drop_{name}"] = count
        return out

    # -- endpoints --

    async def attach_endpoint(self, netns: str | None, host_ifname: str) -> None:
        """Attach (or atomically replace) both programs on an endpoint's host-side veth.

        to_endpoint goes first, so a failure half way leaves the pod's ingress enforced rather
        than nothing replaced; nothing is rolled back (removing a filter would open a hook)."""
        for hook, prog in (
            (tcattach.Hook.EGRESS, TO_ENDPOINT),
            (tcattach.Hook.INGRESS, FROM_ENDPOINT),
        ):
            await tcattach.attach(
                netns,
                host_ifname,
                hook,
                self.prog_fd(prog),
                name=prog,
                prio=TC_PRIO,
                handle=TC_HANDLE,
            )

    async def detach_endpoint(self, netns: str | None, host_ifname: str) -> int:
        """Remove both filters; returns how many were there (0 when already gone)."""
        removed = 0
        for hook, prog in (
            (tcattach.Hook.INGRESS, FROM_ENDPOINT),
            (tcattach.Hook.EGRESS, TO_ENDPOINT),
        ):
            att = tcattach.TcAttachment(netns, host_ifname, hook, TC_PRIO, TC_HANDLE, prog)
            removed += await tcattach.detach(att)
        return removed

    async def add_endpoint(
        self,
        netns: str | None,
        host_ifname: str,
        identity: int,
        ipv4,
        policy: EndpointPolicy,
        *,
        audit: bool = False,
    ) -> Endpoint:
        """Make an endpoint known and enforced, in the order that leaves no window: its
        policy, then its endpoint entry, then the programs on its veth."""
        ifindex = await interface_index(netns, host_ifname)
        ep = Endpoint(ifindex=ifindex, identity=identity, ipv4=ipv4, audit=audit)
        self.policy.set_policy(ep.endpoint_id, policy)
        self.endpoints.upsert(ep)
        await self.attach_endpoint(netns, host_ifname)
        return ep

    async def remove_endpoint(self, netns: str | None, host_ifname: str) -> None:
        """Detach, then forget the endpoint and its policy (its veth may already be gone)."""
        ifindex = await interface_index(netns, host_ifname, missing_ok=True)
        await self.detach_endpoint(netns, host_ifname)
        if ifindex is not None:
            self.endpoints.delete(ifindex)
            self.policy.delete(ifindex)

    # -- lifetime --

    def close(self) -> None:
        """Close this process's fds. Pins, attached programs and map entries stay."""
        self._obj.close()

    def unpin(self) -> None:
        """Remove the pins (the kernel frees maps and programs once nothing uses them)."""
        self._obj.unpin()


async def interface_index(
    netns: str | None, ifname: str, *, missing_ok: bool = False
) -> int | None:
    """The ifindex of `ifname` in `netns` (None: this process's namespace)."""
    if netns is not None and not (tcattach.NETNS_DIR / netns).exists():
        if missing_ok:
            return None
        raise FlowscopeError(
            f"network namespace {netns!r} does not exist", hint="is the lab node up?"
        )
    ipr = AsyncIPRoute() if netns is None else AsyncIPRoute(netns=netns, flags=0)
    async with ipr:
        found = await ipr.link_lookup(ifname=ifname)
    if not found:
        if missing_ok:
            return None
        raise FlowscopeError(f"no interface {ifname!r} in network namespace {netns or '(own)'}")
    return found[0]
