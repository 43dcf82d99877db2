"""CNI ADD latency and time to first packet: flowscope-cni vs Debian bridge+host-local.

100 pods over 2 node namespaces of our own, each ADD run as the lab's runtime runs it (nsenter
into the node namespace, exec the plugin found on CNI_PATH, config on stdin). After each ADD
returns, a TCP connect from inside the new pod to a listener in its node measures the time to
the first successful packet exchange. Printed, never asserted. Target: flowscope p99 <= 50 ms.

flowscope's agent side runs in this process with MemoryKV (the store's latency is IPAM's
benchmark, bench/ipam_allocate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from dataplane.cni.conf import write_conflist
from dataplane.cni.runtime import invoke_plugin
from dataplane.cni.server import serve_cni
from dataplane.cni.service import CNIService
from dataplane.endpoint.netns import run_in_netns
from dataplane.ipam import IPAM, IPAMConfig
from flowscope.store.memory import MemoryKV

PODS = 100
NODES = 2
PORT = 7471
VENV_BIN = str(Path(sys.executable).parent)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def listen_in(netns: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", PORT))
        s.listen(256)
        s.setblocking(False)
        return s

    return run_in_netns(f"/run/netns/{netns}", make)


def first_packet(pod: str, target: str, deadline: float = 3.0) -> float | None:
    """Seconds until a TCP connect from inside `pod` to target:PORT succeeds (None: never)."""
    started = time.perf_counter()
    while time.perf_counter() - started < deadline:
        s = run_in_netns(pod, socket.socket)  # the socket stays in the pod's namespace
        s.settimeout(1.0)
        try:
            s.connect((target, PORT))
            return time.perf_counter() - started
        except OSError:
            time.sleep(0.001)
        finally:
            s.close()
    return None


async def drain(listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.close()


async def run_plugin(
    name: str, nodes: list[str], conflists: list, cni_path: list[str], targets: list[str], tag: str
) -> tuple[list[float], list[float], int]:
    adds: list[float] = []
    packets: list[float] = []
    failures = 0
    for i in range(PODS):
        n = i % NODES
        pod = f"{nodes[n]}.{tag}{i}"
        sh("ip", "netns", "add", pod)
        started = time.perf_counter()
        await invoke_plugin(
            "ADD",
            conflists[n],
            container_id=f"{tag}{i}",
            netns_path=f"/run/netns/{pod}",
            ifname="eth0",
            cni_args={"K8S_POD_NAMESPACE": "bench", "K8S_POD_NAME": f"p{i}"},
            cni_path=cni_path,
            run_in_netns=nodes[n],
        )
        adds.append(time.perf_counter() - started)
        t = await asyncio.to_thread(first_packet, f"/run/netns/{pod}", targets[n])
        if t is None:
            failures += 1
        else:
            packets.append(t)
    print(f"  {name}: {PODS} ADDs done", flush=True)
    return adds, packets, failures


async def bench() -> None:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # let the plugin keep its bytecode, as prod
    base = f"fs.cb{os.getpid() % 100000}"
    nodes = [f"{base}.n{i}" for i in range(NODES)]
    tmp = tempfile.mkdtemp(prefix="fscnib")
    servers, services, listeners, tasks = [], [], [], []
    try:
        for i, node in enumerate(nodes):
            sh("ip", "netns", "add", node)
            sh("ip", "-n", node, "link", "set", "lo", "up")
            sh("ip", "-n", node, "addr", "add", f"10.251.0.{i + 1}/32", "dev", "lo")
            sh("nsenter", f"--net=/run/netns/{node}", "sysctl", "-qw", "net.ipv4.ip_forward=1")
            listener = listen_in(node)
            listeners.append(listener)
            tasks.append(asyncio.create_task(drain(listener)))
        ours = []
        kv = MemoryKV()
        cfg = IPAMConfig("overlay", IPv4Network("10.251.0.0/24"), pod_cidr="10.251.64.0/18")
        for i, node in enumerate(nodes):
            ipam = IPAM(kv, cfg, f"n{i}", IPv4Address(f"10.251.0.{i + 1}"))
            await ipam.ensure_node()
            service = CNIService(kv, f"n{i}", node, ipam)
            services.append(service)
            sock = f"{tmp}/n{i}.sock"
            servers.append(await serve_cni(service, sock))
            ours.append(write_conflist(Path(tmp, f"n{i}"), "bench", f"n{i}", sock))
        refs = [
            {
                "cniVersion": "1.0.0",
                "name": "refnet",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "fsbenchbr0",
                        "isGateway": True,
                        "ipam": {
                            "type": "host-local",
                            "subnet": f"10.251.{200 + i}.0/24",
                            "dataDir": f"{tmp}/hl{i}",
                        },
                    }
                ],
            }
            for i in range(NODES)
        ]
        # warm both paths once (page cache, bytecode), not counted
        await run_plugin_warm(nodes, ours, refs)
        fs = await run_plugin(
            "flowscope", nodes, ours, [VENV_BIN], [f"10.251.0.{i + 1}" for i in range(NODES)], "f"
        )
        ref = await run_plugin(
            "bridge+host-local",
            nodes,
            refs,
            ["/usr/lib/cni"],
            [f"10.251.{200 + i}.1" for i in range(NODES)],
            "r",
        )
        report(fs, ref)
    finally:
        for t in tasks:
            t.cancel()
        for s in listeners:
            s.close()
        for server in servers:
            server.close()
        for service in services:
            await service.close()
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.strip() else ""
            if name.startswith(base + "."):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


async def run_plugin_warm(nodes: list[str], ours: list, refs: list) -> None:
    for conf, path, tag in ((ours[0], [VENV_BIN], "wf"), (refs[0], ["/usr/lib/cni"], "wr")):
        pod = f"{nodes[0]}.{tag}"
        sh("ip", "netns", "add", pod)
        await invoke_plugin(
            "ADD",
            conf,
            container_id=tag,
            netns_path=f"/run/netns/{pod}",
            ifname="eth0",
            cni_path=path,
            run_in_netns=nodes[0],
        )
        await invoke_plugin(
            "DEL",
            conf,
            container_id=tag,
            netns_path=f"/run/netns/{pod}",
            ifname="eth0",
            cni_path=path,
            run_in_netns=nodes[0],
        )
        sh("ip", "netns", "del", pod)


def report(fs: tuple, ref: tuple) -> None:
    def row(name: str, data: tuple) -> tuple[float, float]:
        adds, packets, failures = data
        p50, p99 = percentile(adds, 50) * 1e3, percentile(adds, 99) * 1e3
        pk50 = statistics.median(packets) * 1e3 if packets else float("nan")
        pkmax = max(packets) * 1e3 if packets else float("nan")
        print(
            f"  {name:18} ADD p50 {p50:6.1f} ms  p99 {p99:6.1f} ms   first packet after ADD: "
            f"median {pk50:5.2f} ms, max {pkmax:6.2f} ms, never: {failures}/{len(adds)}"
        )
        return p50, p99

    print(
        f"CNI ADD, {PODS} pods over {NODES} node namespaces (runtime: nsenter + exec, as the lab)"
    )
    f50, f99 = row("flowscope-cni", fs)
    r50, r99 = row("bridge+host-local", ref)
    print(f"  ratio flowscope/reference: p50 {f50 / r50:.2f}x, p99 {f99 / r99:.2f}x")
    print(f"  target p99 <= 50 ms: {'met' if f99 <= 50 else 'NOT met'} ({f99:.1f} ms)")


def main() -> None:
    if os.geteuid() != 0:
        print("cni_add: needs root (network namespaces)")
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(bench())


if __name__ == "__main__":
    main()
