"""IPAM allocate/release latency on a real etcd (the IPAM share of a CNI ADD/DEL), per mode:
250 pods on one node one after the other, then 3 nodes x 100 pods at once (CAS races), and the
pure choosers alone. Printed, never asserted."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
import uuid
from ipaddress import IPv4Address, IPv4Network

from dataplane.ipam import IPAM, IPAMConfig
from dataplane.ipam.pools import next_address, next_block, overlay_reserved, subnet_reserved
from flowscope.store.etcd import EtcdKV
from flowscope.store.etcd_server import etcd_command, wait_healthy

CONFIGS = {
    "overlay": IPAMConfig("overlay", IPv4Network("10.224.0.0/16")),
    "vnet": IPAMConfig("vnet", IPv4Network("10.224.0.0/16")),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1000


async def _timed(coro) -> float:
    start = time.perf_counter()
    await coro
    return time.perf_counter() - start


async def one_node(url: str, mode: str) -> None:
    kv = EtcdKV(url, prefix=f"/bench/{uuid.uuid4().hex[:8]}")
    try:
        node = IPAM(kv, CONFIGS[mode], "node-1", IPv4Address("10.224.0.11"))
        await node.ensure_node()
        adds = [await _timed(node.allocate(f"c{i}/eth0")) for i in range(250)]
        dels = [await _timed(node.release(f"c{i}/eth0")) for i in range(250)]
        print(
            f"{mode:8} 1 node, 250 pods sequential: allocate p50 {_pct(adds, 0.5):.2f} ms "
            f"p99 {_pct(adds, 0.99):.2f} ms; release p50 {_pct(dels, 0.5):.2f} ms "
            f"p99 {_pct(dels, 0.99):.2f} ms"
        )
    finally:
        await kv.close()


async def racing_nodes(url: str, mode: str) -> None:
    prefix = f"/bench/{uuid.uuid4().hex[:8]}"
    kvs = [EtcdKV(url, prefix=prefix) for _ in range(3)]
    try:
        nodes = [
            IPAM(kv, CONFIGS[mode], f"node-{i}", IPv4Address(f"10.224.0.{11 + i}"))
            for i, kv in enumerate(kvs)
        ]
        start = time.perf_counter()
        times = await asyncio.gather(
            *(_timed(n.allocate(f"c{i}/eth0")) for n in nodes for i in range(100))
        )
        wall = time.perf_counter() - start
        print(
            f"{mode:8} 3 nodes x 100 pods at once: {300 / wall:.0f} allocations/s, "
            f"each p50 {_pct(list(times), 0.5):.1f} ms p99 {_pct(list(times), 0.99):.1f} ms "
            "(queued behind its agent's lock)"
        )
    finally:
        for kv in kvs:
            await kv.close()


def choosers() -> None:
    pool = IPv4Network("10.244.0.0/24")
    used = [IPv4Address(int(pool.network_address) + i) for i in range(2, 250)]
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        next_address(pool, used, after=used[-1], excluded=overlay_reserved(pool))
    per_addr = (time.perf_counter() - start) / n * 1e6
    vnet = IPv4Network("10.224.0.0/16")
    reserved = subnet_reserved(vnet, [IPv4Network("10.224.0.0/24")])
    blocks = list(vnet.subnets(new_prefix=28))[16:4000]
    start = time.perf_counter()
    for _ in range(20):
        next_block(vnet, 16, reserved, blocks, after=blocks[-1])
    per_block = (time.perf_counter() - start) / 20 * 1e3
    print(
        f"pure: next_address in a /24 with 248 used: {per_addr:.0f} us; "
        f"next_block in a /16 with 3984 blocks used: {per_block:.2f} ms"
    )


async def run() -> None:
    with tempfile.TemporaryDirectory(prefix="fs-bench-etcd-") as data:
        client, peer = _port(), _port()
        url = f"http://127.0.0.1:{client}"
        proc = subprocess.Popen(
            etcd_command("bench", data, client, peer),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_healthy(url, timeout=15)
            for mode in CONFIGS:
                await one_node(url, mode)
            for mode in CONFIGS:
                await racing_nodes(url, mode)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    choosers()
    asyncio.run(run())


if __name__ == "__main__":
    main()
