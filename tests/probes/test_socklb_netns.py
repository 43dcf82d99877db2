"""Socket LB on real sockets: the programs attached to a cgroup of the test's own, a "pod" process
in that cgroup and in a network namespace of the test's own, servers on three backend addresses
in the same namespace (outside the cgroup), and a ClusterIP nobody owns.

    netns fslb…: lo with 10.244.0.11, .12, .13 (the backends: TCP 8080 and UDP 5353 on each)
    cgroup /sys/fs/cgroup/unified/fslb…: the pod process (commands over a pipe, JSON lines)
    service 10.96.0.10:80/TCP and :53/UDP -> backends
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import numpy as np
import pytest
from pyroute2 import AsyncIPRoute, netns

from dataplane.lab.sandbox import remove_cgroup_tree
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.lbmap import AFFINITY_MAP, AffinityKey, AffinityValue, Backend, Service
from dataplane.maps.netorder import ip_of
from flowscope.setns import enter_netns
from probes.socklb import (
    EVENT_DTYPE,
    HOOK_CONNECT,
    HOOK_SENDMSG,
    SocketLB,
    decode_events,
    read_events,
)
from tests.conftest import unique

pytestmark = pytest.mark.privileged

CGROUP2 = Path("/sys/fs/cgroup/unified")
BPFFS = Path("/sys/fs/bpf")
REPO = Path(__file__).resolve().parents[2]
VIP = "10.96.0.10"
BACKEND_IPS = ("10.244.0.11", "10.244.0.12", "10.244.0.13")
TCP_PORT, UDP_PORT = 8080, 5353

# The pod: joins the cgroup and the namespace, then runs one socket operation per command line.
POD = r"""
import json, os, socket, sys, time
from flowscope.setns import enter_netns
cgroup, ns = sys.argv[1], sys.argv[2]
with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
enter_netns(ns)
held = {}

def tcp(c):
    s = socket.socket()
    s.settimeout(3)
    t0 = time.monotonic()
    try:
        s.connect((c["ip"], c["port"]))
    except OSError as e:
        s.close()
        return {"errno": e.errno, "elapsed": time.monotonic() - t0}
    out = {"peer": list(s.getpeername()), "reply": s.recv(100).decode().strip()}
    if c.get("hold"):
        held[c["hold"]] = s
    else:
        s.close()
    return out

def again(c):
    s = held[c["hold"]]
    s.sendall(b"again\n")
    return {"reply": s.recv(100).decode().strip(), "peer": list(s.getpeername())}

def udp(c):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        if c.get("connected"):
            s.connect((c["ip"], c["port"]))
            s.send(b"hi")
            out = {"peer": list(s.getpeername())}
        else:
            s.sendto(b"hi", (c["ip"], c["port"]))
            out = {}
        data, src = s.recvfrom(100)
        out.update(reply=data.decode(), src=list(src))
        return out
    except OSError as e:
        return {"errno": e.errno}
    finally:
        s.close()

ops = {"tcp": tcp, "again": again, "udp": udp}
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    c = json.loads(line)
    print(json.dumps(ops[c["op"]](c)), flush=True)
"""


class Pod:
    def __init__(self, cgroup: Path, ns: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", POD, str(cgroup), f"/run/netns/{ns}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        ready = json.loads(self.proc.stdout.readline())
        assert ready["ready"] == self.proc.pid

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def tcp(self, ip: str = VIP, port: int = 80, hold: str | None = None) -> dict:
        return self.ask(op="tcp", ip=ip, port=port, hold=hold)

    def udp(self, ip: str = VIP, port: int = 53, connected: bool = False) -> dict:
        return self.ask(op="udp", ip=ip, port=port, connected=connected)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Servers(threading.Thread):
    """TCP and UDP servers on every backend address, inside the namespace, answering with the
    backend's own ip:port (TCP: on accept and to each line)."""

    def __init__(self, ns: str) -> None:
        super().__init__(daemon=True)
        self.ns = ns
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            enter_netns(f"/run/netns/{self.ns}")
            self._serve()
        except BaseException as e:  # surfaced by the fixture
            self.error = e
            self.ready.set()

    def _serve(self) -> None:
        socks: dict[socket.socket, str] = {}
        for ip in BACKEND_IPS:
            t = socket.socket()
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((ip, TCP_PORT))
            t.listen(128)
            socks[t] = "listen"
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((ip, UDP_PORT))
            socks[u] = "udp"
        self.ready.set()
        try:
            while not self.stop.is_set():
                readable, _, _ = select.select(list(socks), [], [], 0.05)
                for s in readable:
                    kind = socks[s]
                    name = "{}:{}".format(*s.getsockname()).encode()
                    if kind == "listen":
                        conn, _ = s.accept()
                        conn.sendall(name + b"\n")
                        socks[conn] = "conn"
                    elif kind == "udp":
                        _, peer = s.recvfrom(100)
                        s.sendto(name, peer)
                    elif not s.recv(100):
                        del socks[s]
                        s.close()
                    else:
                        s.sendall(name + b"\n")
        finally:
            for s in socks:
                s.close()


@dataclass
class World:
    lb: SocketLB
    pod: Pod
    pin_dir: Path
    cgroup: Path
    ns: str
    extra_pods: list[Pod] = field(default_factory=list)

    def backends(self, n: int = 2, port: int = TCP_PORT) -> list[Backend]:
        return [Backend(ip, port) for ip in BACKEND_IPS[:n]]


async def _plumb(ns: str) -> None:
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        lo = (await ipr.link_lookup(ifname="lo"))[0]
        await ipr.link("set", index=lo, state="up")
        for ip in BACKEND_IPS:
            await ipr.addr("add", index=lo, address=ip, prefixlen=32)


@pytest.fixture
def world() -> Iterator[World]:
    name = unique("fslb")
    ns, cgroup, pin_dir = name, CGROUP2 / name, BPFFS / name
    servers = Servers(ns)
    lb = pod = None
    netns.create(ns)
    try:
        asyncio.run(_plumb(ns))
        cgroup.mkdir()
        lb = SocketLB.load(pin_dir)
        lb.attach(cgroup)
        servers.start()
        servers.ready.wait(5)
        if servers.error:
            raise servers.error
        pod = Pod(cgroup, ns)
        yield World(lb, pod, pin_dir, cgroup, ns)
    finally:
        if pod is not None:
            pod.close()
        servers.stop.set()
        if servers.is_alive():
            servers.join(5)
        if lb is not None:
            lb.detach()
            lb.unpin()
            lb.close()
        remove_cgroup_tree(cgroup)
        shutil.rmtree(pin_dir, ignore_errors=True)
        netns.remove(ns)
    assert not cgroup.exists() and not pin_dir.exists()


def test_tcp_connect_reaches_a_backend_and_the_peer_reads_as_the_service(world: World) -> None:
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(2)))
    out = world.pod.tcp()
    assert out["reply"] in {f"{ip}:{TCP_PORT}" for ip in BACKEND_IPS[:2]}, out
    assert out["peer"] == [VIP, 80]  # getpeername: the service, not the backend
    stats = world.lb.stats()
    assert stats["translated_connect"] == 1 and stats["reversed_peername"] >= 1
    # a backend's own address is not a service: connected as it is, nothing translated
    direct = world.pod.tcp(BACKEND_IPS[2], TCP_PORT)
    assert direct == {"peer": [BACKEND_IPS[2], TCP_PORT], "reply": f"{BACKEND_IPS[2]}:{TCP_PORT}"}
    assert world.lb.stats()["translated_connect"] == 1


def test_sockets_outside_the_cgroup_are_not_translated(world: World) -> None:
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(2)))
    result: dict = {}

    def outside() -> None:
        enter_netns(f"/run/netns/{world.ns}")
        with socket.socket() as s:
            s.settimeout(2)
            try:
                s.connect((VIP, 80))
            except OSError as e:
                result["errno"] = e.errno

    t = threading.Thread(target=outside)  # the test's own thread stays where it is
    t.start()
    t.join(5)
    assert result == {"errno": errno.ENETUNREACH}  # no route to a ClusterIP: untranslated
    assert world.lb.stats()["translated_connect"] == 0


def test_udp_replies_come_from_the_service(world: World) -> None:
    world.lb.maps.upsert_service(Service(VIP, 53, "UDP", world.backends(2, UDP_PORT)))
    names = {f"{ip}:{UDP_PORT}" for ip in BACKEND_IPS[:2]}
    out = world.pod.udp()
    assert out["reply"] in names and out["src"] == [VIP, 53], out
    conn = world.pod.udp(connected=True)
    assert conn["reply"] in names and conn["src"] == [VIP, 53] and conn["peer"] == [VIP, 53]
    stats = world.lb.stats()
    assert stats["translated_sendmsg"] == 1 and stats["translated_connect"] == 1
    assert stats["reversed_recvmsg"] == 2


def test_new_connections_spread_over_the_backends(world: World) -> None:
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(3)))
    seen = Counter(world.pod.tcp()["reply"] for _ in range(60))
    assert set(seen) == {f"{ip}:{TCP_PORT}" for ip in BACKEND_IPS}, seen
    assert min(seen.values()) >= 5, seen  # random: each third gets 20 +- 11 (3 sigma)


def test_a_removed_backend_gets_no_new_connections_and_established_ones_stay(
    world: World,
) -> None:
    a, b = world.backends(2)
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", (a, b)))
    held = None
    for i in range(40):  # hold a connection to b
        out = world.pod.tcp(hold=f"c{i}")
        if out["reply"] == str(b):
            held = f"c{i}"
            break
    assert held is not None
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", (a,)))
    assert world.lb.maps.backend_id(b, "TCP") is None  # nothing references it: gone
    assert {world.pod.tcp()["reply"] for _ in range(20)} == {str(a)}
    # the established connection to b still works and still reads as the service
    assert world.pod.ask(op="again", hold=held) == {"reply": str(b), "peer": [VIP, 80]}


def test_a_service_without_backends_refuses_at_once(world: World) -> None:
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", ()))
    world.lb.maps.upsert_service(Service(VIP, 53, "UDP", ()))
    out = world.pod.tcp()
    assert out["errno"] == errno.ECONNREFUSED and out["elapsed"] < 0.5, out
    assert world.pod.udp()["errno"] == errno.ECONNREFUSED
    assert world.lb.stats()["no_backend"] == 2
    # backends arrive: the same address now connects
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(1)))
    assert world.pod.tcp()["reply"] == f"{BACKEND_IPS[0]}:{TCP_PORT}"


def _affinity_map(world: World) -> BpfMap:
    return BpfMap.open_pinned(world.pin_dir / AFFINITY_MAP, AffinityKey, AffinityValue)


def test_client_ip_affinity_sticks_within_the_timeout_and_expires(world: World) -> None:
    maps = world.lb.maps
    backends = world.backends(3)
    svc = maps.upsert_service(Service(VIP, 80, "TCP", backends, affinity_timeout=1))
    answers = [world.pod.tcp()["reply"] for _ in range(15)]
    assert len(set(answers)) == 1, answers
    assert world.lb.stats()["affinity_hit"] == 14
    [entry] = maps.affinity()
    chosen = next(b for b in backends if str(b) == answers[0])
    assert (entry.backend_id, entry.revnat_id) == (maps.backend_id(chosen, "TCP"), svc.revnat_id)
    aff = _affinity_map(world)
    try:
        (key,) = list(aff.keys())
        other = next(b for b in backends if b != chosen)
        other_id = maps.backend_id(other, "TCP")
        # a fresh entry naming another backend is obeyed
        aff.update(key, AffinityValue(last_used_ns=time.monotonic_ns(), backend_id=other_id))
        assert world.pod.tcp()["reply"] == str(other)
        # an expired one is not: the backend is chosen again, and remembered afresh
        seen = set()
        for _ in range(20):
            stale = time.monotonic_ns() - 2 * 10**9
            aff.update(key, AffinityValue(last_used_ns=stale, backend_id=other_id))
            seen.add(world.pod.tcp()["reply"])
            assert aff.lookup(key).last_used_ns > stale
        assert len(seen) >= 2, seen
    finally:
        aff.close()
    # removing the remembered backend forgets the entries that name it
    [entry] = maps.affinity()
    remembered = next(b for b in backends if maps.backend_id(b, "TCP") == entry.backend_id)
    left = [b for b in backends if b != remembered]
    maps.upsert_service(Service(VIP, 80, "TCP", left, affinity_timeout=1))
    assert maps.affinity() == []
    # real time: within the timeout the same backend, after it a fresh choice
    first = world.pod.tcp()["reply"]
    assert first in {str(b) for b in left}
    before = maps.affinity()[0].last_used_ns
    time.sleep(1.1)
    assert world.pod.tcp()["reply"] in {str(b) for b in left}
    assert maps.affinity()[0].last_used_ns - before > 10**9


def test_affinity_switched_off_forgets_clients(world: World) -> None:
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(2), affinity_timeout=60))
    world.pod.tcp()
    assert len(world.lb.maps.affinity()) == 1
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(2)))
    assert world.lb.maps.affinity() == []
    assert {world.pod.tcp()["reply"] for _ in range(30)} == {
        f"{ip}:{TCP_PORT}" for ip in BACKEND_IPS[:2]
    }
    assert world.lb.maps.affinity() == []


def test_translated_events_name_service_and_backend(world: World) -> None:
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(1)))
    entry = world.lb.maps.upsert_service(Service(VIP, 53, "UDP", world.backends(1, UDP_PORT)))
    ring = world.lb.ring()
    try:
        world.pod.tcp()
        world.pod.udp()
        events = decode_events(ring.drain())
    finally:
        ring.close()
    assert [(e.hook, str(e.vip), e.vport, str(e.backend_ip), e.backend_port) for e in events] == [
        (HOOK_CONNECT, VIP, 80, BACKEND_IPS[0], TCP_PORT),
        (HOOK_SENDMSG, VIP, 53, BACKEND_IPS[0], UDP_PORT),
    ]
    udp = events[1]
    assert udp.revnat_id == entry.revnat_id and udp.backend_id == entry.backend_ids[0]
    assert udp.sock_cookie != events[0].sock_cookie and udp.netns_cookie == events[0].netns_cookie
    # the pod's cgroup names the client: its id is the cgroup directory's inode
    assert {e.cgroup_id for e in events} == {os.stat(world.cgroup).st_ino}
    assert world.lb.stats()["events"] == 2 and world.lb.lost_events() == 0


def test_translated_events_drain_as_one_array(world: World) -> None:
    """The collector's read (read_events: drain_array with the EVENT_DTYPE mirror) gives the
    records the per-record decode gives, in order."""
    world.lb.maps.upsert_service(Service(VIP, 80, "TCP", world.backends(1)))
    world.lb.maps.upsert_service(Service(VIP, 53, "UDP", world.backends(1, UDP_PORT)))
    ring = world.lb.ring()
    try:
        ring.drain()  # what earlier tests left
        for _ in range(3):
            world.pod.tcp()
            world.pod.udp()
        events = read_events(ring)
        assert len(read_events(ring)) == 0  # taken
    finally:
        ring.close()
    assert events.dtype == EVENT_DTYPE and len(events) == 6
    assert events["vport"].tolist() == [80, 53] * 3
    assert [str(ip_of(v)) for v in events["backend_ip"].tolist()] == [BACKEND_IPS[0]] * 6
    assert set(events["cgroup_id"].tolist()) == {os.stat(world.cgroup).st_ino}
    assert events["hook"].tolist() == [HOOK_CONNECT, HOOK_SENDMSG] * 3
    assert len(set(events["sock_cookie"].tolist())) == 6
    assert (np.diff(events["ktime_ns"].astype(np.int64)) > 0).all()


def test_ten_thousand_services_still_translate(world: World) -> None:
    backends = world.backends(2)
    services = [
        Service(IPv4Address("10.96.0.0") + 1 + i, 80, "TCP", backends) for i in range(10_000)
    ]
    t0 = time.monotonic()
    for s in services:
        world.lb.maps.upsert_service(s)
    elapsed = time.monotonic() - t0
    print(f"\nprogrammed 10,000 services (2 backends each) in {elapsed:.2f} s")
    assert len(world.lb.maps.services()) == 10_000
    for s in (services[0], services[4999], services[-1]):
        out = world.pod.tcp(str(s.vip), 80)
        assert out["peer"] == [str(s.vip), 80] and out["reply"] in {str(b) for b in backends}
    assert world.lb.maps.usage()["lb_services"][0] == 30_000
