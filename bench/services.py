"""New-connection rate from a pod to a ClusterIP with 10, 1,000 and 10,000 services installed:
flowscope's socket LB against kube-proxy's iptables mode on the same lab. Targets (issue 5):
flowscope(10k) >= 0.95 x flowscope(10); flowscope(10k) >= 5 x iptables(10k). Also: the time to
program 10,000 services (apply -> in the kernel maps) and the socket-LB map memory.

One 2-node overlay lab: a client pod on node-1, two backend pods on node-2 (the connections
cross nodes). Every service selects both backends (port 80 -> targetPort 8080, a bare accept
loop with a deep backlog); the client connects to the first service's ClusterIP. A connection
is connect() (the handshake completes) + close with RST (SO_LINGER 0, so the client never
runs out of ports in TIME_WAIT), back to back for a few seconds, from a driver running inside
the client pod (bench.datapath's).

- flowscope: all services applied through the store in one apply (ClusterIPs allocated, the
  EndpointSlice controller writes 10,000 slices, the agents program their socket-LB maps); the
  clock stops when node-1's lb_services map holds every frontend with both backends. Then
  services are deleted down to 1,000 and 10, the maps followed the same way.
- iptables: the same lab with the socket-LB programs detached from both nodes' cgroups (the
  pinned programs, re-attached afterwards: the agents keep running and keep the maps), and the
  ruleset kube-proxy's iptables mode would write for the same Services and EndpointSlices
  (bench.kubeproxy) loaded with one iptables-restore into node-1's network namespace, where the
  client pod's packets enter the node. The measured service sits in the middle of KUBE-SERVICES
  (kube-proxy writes services in Go map order, i.e. anywhere: the middle is the average case).
  Backend: iptables-legacy. Both backends work on this kernel (x_tables and nf_tables with xt
  compat are built in), but iptables-nft-restore took 96 s to load the 10,000-service ruleset
  (80,000 rules, 30,000 chains) where iptables-legacy-restore takes ~1.3 s; the ruleset is
  loaded and removed every round, and both backends evaluate a chain rule by rule anyway. The
  ruleset is removed after each round (nat and filter flushed, their chains deleted; they were
  empty before, which is checked) and the lab's teardown removes the namespace.

A third mode, direct, connects to a backend's pod IP (no service address, nothing to translate)
in the same rounds: the machine's own rate at that moment. This machine is shared, and counts
are measured minutes apart, so flowscope's flatness is also printed against it.

Each mode's work is checked, not assumed: in flowscope runs the socket LB's translated-connect
counter grows by at least the connections made; in iptables runs it does not grow, and the
packet counter of the measured service's KUBE-SERVICES rule grows by at least the connections;
in direct runs neither grows. The modes rotate within a count (each round starts with the next
one); rates are medians of the rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes as ct
import datetime
import os
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import kubeproxy
from bench.datapath import FLOWSCOPE, BenchLab, Driver, pod, start_acceptor
from dataplane.maps import lbmap
from dataplane.maps.bpfmap import BpfMap
from flowscope import clusterinfo
from flowscope.apis.objectstore import ObjectStore
from flowscope.apis.refs import ObjectRef
from flowscope.paths import ClusterPaths
from flowscope.store.etcd import EtcdKV
from probes import libbpf, socklb

COUNTS = (10, 1000, 10_000)
ROUNDS = 5
SECONDS = 2.5  # per measurement
NAMESPACE = "back"
SERVICE_PORT = 80
TARGET_PORT = 8080
BACKENDS = ("server-1", "server-2")
CLIENT = "front/client"
CLIENT_NODE, SERVER_NODE = "node-1", "node-2"
NODES = (CLIENT_NODE, SERVER_NODE)
MODES = ("flowscope", "iptables", "direct")
IPTABLES = "iptables-legacy"
PROGRAM_TIMEOUT = 300.0
PER_SERVICE_MAPS = (lbmap.SERVICES_MAP, lbmap.REVNAT_MAP, lbmap.BACKENDS_MAP)


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


MEASURED = service_name(0)


def service(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(i), "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": "server"},
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}
            ],
        },
    }


def workload() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "front"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        pod("front", "client", {"app": "client"}, CLIENT_NODE),
        *(pod(NAMESPACE, b, {"app": "server"}, SERVER_NODE) for b in BACKENDS),
    ]


def middle_order(
    ports: Sequence[kubeproxy.ServicePort], measured: str
) -> list[kubeproxy.ServicePort]:
    """The service ports with the measured one moved to the middle."""
    others = [p for p in ports if p.name != measured]
    mine = [p for p in ports if p.name == measured]
    half = len(others) // 2
    return [*others[:half], *mine, *others[half:]]


# --- the kernel side ----------------------------------------------------------------------------


class NodeMaps:
    """Read-only views of one node's pinned socket-LB maps (the agent owns and writes them)."""

    def __init__(self, paths: ClusterPaths, node: str) -> None:
        self.dir = paths.node_bpf_dir(node) / "socklb"

    def frontends(self, port: int, backends: int) -> int:
        """Service addresses at `port` whose entry holds exactly `backends` backends."""
        m = BpfMap.open_pinned(self.dir / lbmap.SERVICES_MAP, lbmap.SvcKey, lbmap.SvcValue)
        try:
            keys, values = m.dump()
        finally:
            m.close()
        if not len(keys):
            return 0
        hit = (
            (keys["slot"] == 0)
            & (keys["dport"] == int.from_bytes(port.to_bytes(2, "big"), "little"))
            & (values["count"] == backends)
        )
        return len(np.unique(keys["vip"][hit]))  # one per address, whatever the key's scope

    def translated(self) -> int:
        """The programs' translated-connect counter, summed over CPUs."""
        m = BpfMap.open_pinned(self.dir / socklb.STATS_MAP, ct.c_uint32, ct.c_uint64)
        try:
            per_cpu = m.lookup(ct.c_uint32(socklb.SockLBStat.TRANSLATED_CONNECT))
        finally:
            m.close()
        return sum(per_cpu) if per_cpu is not None else 0

    def memory(self) -> list[MapMemory]:
        """Per LB map: the kernel's memlock for it (fdinfo), capacity and entries held."""
        out = []
        for name in socklb.LB_MAPS:
            fd = libbpf.obj_get(self.dir / name)
            try:
                info = libbpf.map_info(fd)
                key, value = lbmap.LAYOUTS[name]
                entries = len(BpfMap(fd, key, value, name=name).dump()[0])
                out.append(MapMemory(name, memlock(fd), info.max_entries, entries))
            finally:
                os.close(fd)
        return out


@dataclass(frozen=True)
class MapMemory:
    name: str
    memlock: int  # bytes the kernel charges for the map (preallocated: fixed by capacity)
    max_entries: int
    entries: int

    @property
    def used(self) -> float:
        """The share of memlock the entries occupy."""
        return self.memlock * self.entries / self.max_entries


def memlock(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def set_socket_lb(paths: ClusterPaths, nodes: Sequence[str], on: bool) -> None:
    """Attach (on) or detach each node's pinned socket-LB programs on its cgroup, by the pinned
    programs themselves (what the agent attached), then check the cgroup holds exactly that."""
    for node in nodes:
        cgroup = os.open(paths.node_cgroup(node), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, attach_type in socklb.ATTACH_TYPES.items():
                prog = libbpf.obj_get(paths.node_bpf_dir(node) / "socklb" / name)
                try:
                    prog_id = libbpf.prog_info(prog).id
                    attached = prog_id in libbpf.prog_query(cgroup, attach_type)
                    if on and not attached:
                        libbpf.prog_attach(prog, cgroup, attach_type, libbpf.BPF_F_ALLOW_MULTI)
                    elif attached and not on:
                        libbpf.prog_detach(prog, cgroup, attach_type)
                    if (prog_id in libbpf.prog_query(cgroup, attach_type)) != on:
                        raise RuntimeError(f"{node} {name}: still {'de' if on else ''}tached")
                finally:
                    os.close(prog)
        finally:
            os.close(cgroup)


def in_netns(netns: str, *argv: str, input: str | None = None) -> str:
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", *argv],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {netns}: {proc.stderr.strip()[-1000:]}")
    return proc.stdout


def ruleset_lines(netns: str) -> list[str]:
    """The rules of the namespace's nat and filter tables (iptables-save -c)."""
    out = in_netns(netns, f"{IPTABLES}-save", "-c")
    return [line for line in out.splitlines() if "-A " in line]


def load_ruleset(netns: str, text: str) -> float:
    """Load with one iptables-restore, as kube-proxy does; refuses a namespace that has rules."""
    if existing := ruleset_lines(netns):
        raise RuntimeError(f"{netns} already has iptables rules ({existing[0]}...): not ours")
    started = time.perf_counter()
    in_netns(netns, f"{IPTABLES}-restore", "--noflush", input=text)
    return time.perf_counter() - started


def remove_ruleset(netns: str) -> None:
    in_netns(netns, f"{IPTABLES}-restore", input=kubeproxy.empty_tables())
    if left := ruleset_lines(netns):
        raise RuntimeError(f"{netns}: rules left after removal: {left[:3]}")


def rule_packets(netns: str, chain: str) -> int:
    """Packets counted by KUBE-SERVICES' jump to `chain`."""
    for line in ruleset_lines(netns):
        if "-A KUBE-SERVICES " in line and line.endswith(f"-j {chain}"):
            m = re.match(r"\[(\d+):\d+\]", line)
            return int(m.group(1)) if m else 0
    raise RuntimeError(f"no KUBE-SERVICES rule jumps to {chain}")


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Results:
    counts: tuple[int, ...]
    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    # per mode: (connections, CPU seconds the node agents used meanwhile)
    agents_cpu: dict[str, tuple[int, float]] = field(default_factory=dict)
    program_s: float = 0.0  # apply of max(counts) services -> all in node-1's maps
    apply_s: float = 0.0  # of which the store's apply call
    slices_s: float = 0.0  # apply start -> the last EndpointSlice written (1 s resolution)
    shrink_s: dict[int, float] = field(default_factory=dict)  # delete down to count -> maps
    iptables_rules: dict[int, int] = field(default_factory=dict)
    iptables_load_s: dict[int, list[float]] = field(default_factory=dict)
    memory: list[MapMemory] = field(default_factory=list)

    def rate(self, mode: str, count: int) -> float:
        return statistics.median(self.rates[(mode, count)])

    def added_us(self, mode: str, count: int) -> float:
        """Microseconds a connection takes longer than a direct one (median rates)."""
        return 1e6 / self.rate(mode, count) - 1e6 / self.rate("direct", count)

    def relative(self, mode: str, count: int) -> float:
        """The median over rounds of mode / direct, each pair measured seconds apart."""
        pairs = zip(self.rates[(mode, count)], self.rates[("direct", count)], strict=True)
        return statistics.median(m / d for m, d in pairs)


async def _apply_services(info: clusterinfo.ClusterInfo, count: int) -> float:
    kv = EtcdKV(info.etcd_url)
    try:
        started = time.perf_counter()
        # as `flowscope apply` does: ClusterIPs come from the cluster's service CIDR
        await ObjectStore(kv, service_cidr=info.service_cidr).apply(
            [service(i) for i in range(count)]
        )
        return time.perf_counter() - started
    finally:
        await kv.close()


async def _delete_services(info: clusterinfo.ClusterInfo, first: int, end: int) -> None:
    kv = EtcdKV(info.etcd_url)
    try:
        refs = [ObjectRef("Service", NAMESPACE, service_name(i)) for i in range(first, end)]
        await ObjectStore(kv, service_cidr=info.service_cidr).delete(refs)
    finally:
        await kv.close()


async def _last_slice_written(url: str) -> datetime.datetime:
    """The newest creationTimestamp of the EndpointSlices (the store writes whole seconds)."""
    kv = EtcdKV(url)
    try:
        slices = await ObjectStore(kv).list("EndpointSlice", NAMESPACE)
    finally:
        await kv.close()
    stamps = [s["metadata"]["creationTimestamp"] for s in slices]
    return datetime.datetime.fromisoformat(max(stamps).replace("Z", "+00:00"))


async def _service_ports(url: str) -> list[kubeproxy.ServicePort]:
    kv = EtcdKV(url)
    try:
        store = ObjectStore(kv)
        services = await store.list("Service", NAMESPACE)
        slices = await store.list("EndpointSlice", NAMESPACE)
    finally:
        await kv.close()
    return kubeproxy.service_ports(services, slices)


def check_mode(mode: str, connections: int, translated: int, dnat: int) -> None:
    """That the mode's translator, and only it, handled the connections: the socket LB's
    translated-connect counter, the iptables packet counter of the measured service's rule."""
    expected = {
        "flowscope": translated >= connections and dnat == 0,
        "iptables": translated == 0 and dnat >= connections,
        "direct": translated == 0 and dnat == 0,
    }[mode]
    if not expected:
        raise RuntimeError(
            f"{mode} run of {connections} connections: the socket LB translated {translated}, "
            f"iptables DNATed {dnat}"
        )


def wait_programmed(maps: NodeMaps, count: int, timeout: float = PROGRAM_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (held := maps.frontends(SERVICE_PORT, len(BACKENDS))) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the socket-LB maps hold {held} of {count} services")
        time.sleep(0.05)


def run(
    name: str,
    counts: Sequence[int] = COUNTS,
    seconds: float = SECONDS,
    rounds: int = ROUNDS,
    log: Callable[[str], None] = print,
) -> Results:
    """Bring a 2-node overlay lab up, measure(), bring it down (also on failure)."""
    try:
        BenchLab(name).run("lab", "up", "--nodes", "2", "--ipam", "overlay")
        return measure(name, counts, seconds, rounds, log)
    finally:
        subprocess.run(
            [*FLOWSCOPE, "--cluster", name, "lab", "down"], capture_output=True, timeout=180
        )


def measure(
    name: str,
    counts: Sequence[int] = COUNTS,
    seconds: float = SECONDS,
    rounds: int = ROUNDS,
    log: Callable[[str], None] = print,
) -> Results:
    """The measurements on lab `name` (up, 2 nodes); leaves it as found (its pods and services
    stay), with the socket LB attached and no iptables rules, also on failure."""
    counts = tuple(sorted(set(counts), reverse=True))
    results = Results(counts)
    lab = BenchLab(name)
    paths = ClusterPaths(name)
    node_netns = paths.node_netns(CLIENT_NODE)
    socket_lb_off = False
    try:
        info = clusterinfo.load(name)
        lab.run("apply", "-f", "-", input=yaml.safe_dump_all(workload()))
        lab.wait_running(1 + len(BACKENDS))
        for backend in BACKENDS:
            start_acceptor(lab, f"{NAMESPACE}/{backend}", TARGET_PORT)
        driver = Driver(lab, CLIENT)
        maps = NodeMaps(paths, CLIENT_NODE)

        top = counts[0]
        wall = datetime.datetime.now(datetime.UTC)
        results.apply_s = asyncio.run(_apply_services(info, top))
        started = time.perf_counter() - results.apply_s
        wait_programmed(maps, top)
        results.program_s = time.perf_counter() - started
        last_slice = asyncio.run(_last_slice_written(info.etcd_url))
        results.slices_s = (last_slice - wall.replace(microsecond=0)).total_seconds()
        log(
            f"{top} services applied in {results.apply_s:.1f} s, all in node-1's socket-LB maps "
            f"{results.program_s:.1f} s after the apply started"
        )
        results.memory = maps.memory()

        current = top
        for count in counts:
            if count < current:
                t0 = time.perf_counter()
                asyncio.run(_delete_services(info, count, current))
                wait_programmed(maps, count)
                results.shrink_s[count] = time.perf_counter() - t0
                current = count
            ports = middle_order(asyncio.run(_service_ports(info.etcd_url)), MEASURED)
            (measured,) = [p for p in ports if p.name == MEASURED]
            if len(ports) != count or len(measured.endpoints) != len(BACKENDS):
                raise RuntimeError(f"store: {len(ports)} service ports, measured {measured}")
            text = kubeproxy.ruleset(ports, info.pod_cidr or info.vnet_cidr)
            results.iptables_rules[count] = kubeproxy.rule_count(text)
            vip = str(measured.cluster_ip)
            targets = {
                "flowscope": (vip, SERVICE_PORT),
                "iptables": (vip, SERVICE_PORT),
                "direct": (str(measured.endpoints[0].ip), TARGET_PORT),
            }
            chain = kubeproxy.service_chain(measured)
            for rnd in range(rounds):
                for mode in MODES[rnd % len(MODES) :] + MODES[: rnd % len(MODES)]:
                    if mode == "iptables":
                        load_s = load_ruleset(node_netns, text)
                        results.iptables_load_s.setdefault(count, []).append(load_s)
                        set_socket_lb(paths, NODES, on=False)
                        socket_lb_off = True
                    try:
                        ip, port = targets[mode]
                        if not driver.connects(ip, port):
                            raise RuntimeError(f"{mode}: {ip}:{port} does not connect")
                        lab.settle()
                        translated, cpu = maps.translated(), lab.agents_cpu()
                        dnat = rule_packets(node_netns, chain) if mode == "iptables" else 0
                        result = driver.connect(ip, port, seconds)
                        ok, failed = int(result["ok"]), int(result["failed"])
                        cpu = lab.agents_cpu() - cpu
                        translated = maps.translated() - translated
                        if mode == "iptables":
                            dnat = rule_packets(node_netns, chain) - dnat
                        check_mode(mode, ok, translated, dnat)
                    finally:
                        if mode == "iptables":
                            set_socket_lb(paths, NODES, on=True)
                            socket_lb_off = False
                            remove_ruleset(node_netns)
                    rate = ok / result["seconds"]
                    results.rates.setdefault((mode, count), []).append(rate)
                    results.failed[mode] = results.failed.get(mode, 0) + failed
                    n, c = results.agents_cpu.get(mode, (0, 0.0))
                    results.agents_cpu[mode] = (n + ok, c + cpu)
                    log(
                        f"  {count:6} services, round {rnd + 1}, {mode:9}: {rate:7.0f} conn/s"
                        + (f" ({failed} failed)" if failed else "")
                    )
        return results
    finally:
        if socket_lb_off:
            with contextlib.suppress(Exception):
                set_socket_lb(paths, NODES, on=True)
        with contextlib.suppress(Exception):
            remove_ruleset(node_netns)
        lab.stop_background()


def report(r: Results, seconds: float, rounds: int) -> list[str]:
    lo, hi = min(r.counts), max(r.counts)
    out = [
        "new connections/s from a pod on node-1 to a ClusterIP (2 backends on node-2; "
        f"connect + RST close, {seconds:g} s per run, median of {rounds} rounds, the three modes "
        "rotating; direct = to a backend's pod IP, no service, the machine-load reference):"
    ]
    for count in sorted(r.counts):
        fs, ipt, direct = (r.rate(m, count) for m in MODES)
        out.append(
            f"  {count:6} services: flowscope {fs:6.0f}, iptables {ipt:6.0f}, direct {direct:6.0f}"
            f" | flowscope/iptables {fs / ipt:.2f} | ruleset {r.iptables_rules[count]} rules, "
            f"loaded in {statistics.median(r.iptables_load_s[count]):.2f} s"
        )
    fs_lo, fs_hi = r.rate("flowscope", lo), r.rate("flowscope", hi)
    out.append(
        f"flowscope({hi})/flowscope({lo}) = {fs_hi / fs_lo:.2f} (target >= 0.95); against the "
        f"direct runs of the same rounds: {r.relative('flowscope', hi):.2f} vs "
        f"{r.relative('flowscope', lo):.2f}, ratio "
        f"{r.relative('flowscope', hi) / r.relative('flowscope', lo):.2f}"
    )
    out.append(
        f"flowscope({hi})/iptables({hi}) = {fs_hi / r.rate('iptables', hi):.2f} (target >= 5); "
        f"iptables({hi})/iptables({lo}) = {r.rate('iptables', hi) / r.rate('iptables', lo):.2f}"
    )
    # the rate is bounded by everything a connection costs on this machine (client and
    # acceptors in Python, both kernels' stacks, the agents' flow events), the same in all modes;
    # the difference of the per-connection times is what the translator itself adds
    out.append(
        "time a translator adds per new connection (1/rate - 1/direct rate, medians): "
        + ", ".join(
            f"{c} services: flowscope {r.added_us('flowscope', c):.0f} us, "
            f"iptables {r.added_us('iptables', c):.0f} us"
            for c in sorted(r.counts)
        )
    )
    out.append(
        "node agents' CPU per connection (flow events of the connection, plus the socket LB's "
        "TRANSLATED event where it translates): "
        + ", ".join(f"{m} {c / n * 1e6:.0f} us" for m, (n, c) in r.agents_cpu.items() if n)
    )
    out.append(
        "failed connects (1 s timeout): " + ", ".join(f"{m} {r.failed.get(m, 0)}" for m in MODES)
    )
    out.append(
        f"time to program {hi} services: {r.program_s:.1f} s from apply to node-1's maps "
        f"(the store's apply call: {r.apply_s:.1f} s; the EndpointSlice controller's slices all "
        f"written by +{r.slices_s:.0f} s; then the agent's mirror, plan and map writes)"
        + "".join(f"; deleting down to {c}: {s:.1f} s" for c, s in sorted(r.shrink_s.items()))
    )
    reserved = sum(m.memlock for m in r.memory)
    # entries per service: lb_services (one per frontend + one per backend slot), lb_revnat (one
    # per frontend), lb_backends (shared: one per backend address); the two LRU maps grow with
    # clients and sockets, not with services
    per_service = sum(m.used for m in r.memory if m.name in PER_SERVICE_MAPS)
    out.append(
        f"socket-LB map memory on node-1 with {hi} services (kernel memlock from fdinfo, the five"
        f" LB maps): {reserved / 2**20:.1f} MiB reserved (preallocated hash maps: the same at any"
        f" count); the entries the services hold ({', '.join(PER_SERVICE_MAPS)}) take "
        f"{per_service / 2**20:.2f} MiB of it, {per_service / hi * 10_000 / 2**20:.2f} MiB per 10k"
        " services (memlock / capacity x entries held):"
    )
    for m in r.memory:
        out.append(
            f"  {m.name:15} {m.entries:6} of {m.max_entries:6} entries, "
            f"memlock {m.memlock / 2**20:6.2f} MiB, held {m.used / 2**20:5.2f} MiB"
        )
    return out


def main() -> None:
    started = time.monotonic()
    name = f"bsv{uuid.uuid4().hex[:6]}"
    try:
        results = run(name)
        for line in report(results, SECONDS, ROUNDS):
            print(line)
    finally:
        print(f"(whole run {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
