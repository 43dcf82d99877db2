"""Kubernetes service scenarios on a real 3-node lab, once per IPAM mode, translated at the socket
(no iptables, no per-packet NAT): endpoints following pods, multiport with named targetPorts
resolved per pod, ports added and removed, source IP preserved, hairpin, services deleted and
recreated, ClientIP affinity (on, toggled, timing out), no endpoints refusing at once,
internalTrafficPolicy Local, a service deleted under an established connection, and 10,000
services in one apply reaching every agent's maps.

One lab per IPAM mode; every scenario has its own namespace (the clients live in `cl`, one per
node). Bulk traffic runs inside a client pod (one `lab exec` for many connections); single checks
use `flowscope lab probe NAME.NS:PORT` as a user would.
"""

from __future__ import annotations

import collections
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dataplane.lab import netns
from dataplane.maps.bpfmap import BpfMap
from dataplane.maps.lbmap import SERVICES_MAP, SvcKey, SvcValue
from flowscope import clusterinfo
from flowscope.paths import ClusterPaths
from tests.conftest import unique
from tests.e2e.lab import FLOWSCOPE, Lab
from tests.e2e.lab import until as lab_until
from tests.e2e.test_lab import rules_in

pytestmark = [pytest.mark.privileged, pytest.mark.lab]

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
T = TypeVar("T")

# Run inside a client pod: N requests to IP:PORT (TCP: HTTP GET PATH, UDP: a PATH datagram,
# CONNECT: a handshake), each on a new socket, `pause` seconds apart; prints
# [{"answer"|"error", "ms"}, ...] as JSON.
ASK = r"""
import json, socket, sys, time
ip, port, proto, path, n, pause = sys.argv[1:7]
port, n, pause = int(port), int(n), float(pause)
out = []
for i in range(n):
    if i and pause:
        time.sleep(pause)
    start = time.monotonic()
    try:
        if proto == "CONNECT":  # a handshake only, for servers that do not speak HTTP
            socket.create_connection((ip, port), timeout=1.0).close()
            answer = "connected"
        elif proto == "TCP":
            with socket.create_connection((ip, port), timeout=1.0) as s:
                s.settimeout(1.0)
                s.sendall(("GET %s HTTP/1.0\r\n\r\n" % path).encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            answer = data.partition(b"\r\n\r\n")[2].decode().strip()
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1.0)
                s.connect((ip, port))
                s.send(path.strip("/").encode())
                answer = s.recv(4096).decode().strip()
        out.append({"answer": answer, "ms": (time.monotonic() - start) * 1000})
    except OSError as e:
        ms = (time.monotonic() - start) * 1000
        out.append({"error": e.strerror or type(e).__name__, "ms": ms})
print(json.dumps(out))
"""

# Rounds of a quick burst then a pause longer than the affinity timeout; prints the bursts.
ROUNDS = r"""
import json, socket, sys, time
ip, port, rounds, burst, pause = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6])
def name():
    with socket.create_connection((ip, port), timeout=1.0) as s:
        s.settimeout(1.0)
        s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode().strip()
out = []
for r in range(int(rounds)):
    if r:
        time.sleep(pause)
    out.append([name() for _ in range(int(burst))])
print(json.dumps(out))
"""


def pod(ns: str, name: str, node: str, labels: dict[str, str], ports: str | None = None) -> str:
    ports = ports or "[{containerPort: 80}, {containerPort: 81, protocol: UDP}]"
    labels = {"pod": name, **labels}
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {json.dumps(labels)}}}
spec:
  nodeName: {node}
  containers:
  - {{name: main, image: agnhost, ports: {ports}}}
"""


def service(ns: str, name: str, selector: dict[str, str], ports: str, extra: str = "") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {json.dumps(selector)}
  ports: {ports}
{extra}"""


def namespace(name: str) -> str:
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"


HTTP = "[{port: 8000, targetPort: 80}]"
UD_SERVICE = service("ud", "web", {"app": "ud"}, HTTP)
MC_SERVICE = service("mc", "echo", {"app": "mc"}, "[{port: 7000, targetPort: 7000}]")
NAMED_PORTS = {  # the same port names on different container ports per pod
    "mp-a": "[{name: http, containerPort: 80}, {name: dns, containerPort: 81, protocol: UDP}]",
    "mp-b": "[{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]",
}

WORKLOAD = "---\n".join(
    [
        *map(namespace, ("cl", "ep", "mp", "pt", "sip", "hp", "ud", "af", "ne", "itp", "mc")),
        *(pod("cl", f"c{i}", f"node-{i}", {}) for i in (1, 2, 3)),
        # basic endpoints
        pod("ep", "ep-a", "node-1", {"app": "ep"}),
        pod("ep", "ep-b", "node-2", {"app": "ep"}),
        service("ep", "web", {"app": "ep"}, HTTP),
        # multiport, named targetPorts
        *(
            pod("mp", n, node, {"app": "mp"}, NAMED_PORTS[n])
            for n, node in (("mp-a", "node-2"), ("mp-b", "node-3"))
        ),
        service(
            "mp",
            "multi",
            {"app": "mp"},
            "[{name: web, port: 9000, targetPort: http},"
            " {name: dns, port: 53, protocol: UDP, targetPort: dns}]",
        ),
        # ports added and removed
        pod("pt", "pt-a", "node-3", {"app": "pt"}),
        service("pt", "web", {"app": "pt"}, "[{name: a, port: 8000, targetPort: 80}]"),
        # source IP: a backend on the client's node and one on another
        pod("sip", "sip-local", "node-1", {}),
        pod("sip", "sip-remote", "node-2", {}),
        service("sip", "local", {"pod": "sip-local"}, HTTP),
        service("sip", "remote", {"pod": "sip-remote"}, HTTP),
        # hairpin
        pod("hp", "self", "node-2", {"app": "hp"}),
        service("hp", "self", {"app": "hp"}, HTTP),
        # up / down / recreated
        pod("ud", "ud-a", "node-3", {"app": "ud"}),
        UD_SERVICE,
        # affinity: on from the start, toggled later, short timeout
        *(pod("af", f"af-{i}", f"node-{i}", {"app": "af"}) for i in (1, 2, 3)),
        service("af", "sticky", {"app": "af"}, HTTP, "  sessionAffinity: ClientIP\n"),
        service("af", "toggle", {"app": "af"}, HTTP),
        service(
            "af",
            "short",
            {"app": "af"},
            HTTP,
            "  sessionAffinity: ClientIP\n"
            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}\n",
        ),
        # no endpoints: a selector matching nothing
        service(
            "ne",
            "nothing",
            {"app": "none"},
            "[{name: http, port: 8000, targetPort: 80},"
            " {name: dns, port: 53, protocol: UDP, targetPort: 81}]",
        ),
        # internalTrafficPolicy Local: backends on node-1 and node-2, none on node-3
        pod("itp", "itp-1", "node-1", {"app": "itp"}),
        pod("itp", "itp-2", "node-2", {"app": "itp"}),
        service("itp", "local", {"app": "itp"}, HTTP, "  internalTrafficPolicy: Local\n"),
        # deleted mid-connection: the echo server is started by the test
        pod("mc", "mc-a", "node-2", {"app": "mc"}),
        MC_SERVICE,
    ]
)
PODS = WORKLOAD.count("kind: Pod\n")


@pytest.fixture(scope="module", params=["overlay", "vnet"])
def lab(request):
    lab = Lab(unique("h5svc"))
    try:
        lab.run("lab", "up", "--nodes", "3", "--ipam", request.param, timeout=180)
        lab.apply(WORKLOAD)
        lab.wait_running(PODS)
        yield lab
    finally:
        lab.run("lab", "down", check=False, timeout=120)


# -- helpers ---------------------------------------------------------------------------------


def until(check: Callable[[], T], what: str, timeout: float = 15) -> T:
    """lab.until at this module's pace: the datapath follows the store within moments."""
    return lab_until(check, what, timeout, interval=0.1)


_CLUSTER_IPS: dict[str, dict[tuple[str, str], str]] = {}


def cluster_ip(lab: Lab, ns: str, name: str, *, fresh: bool = False) -> str:
    """A service's ClusterIP. All of the lab's are read at once and kept (each CLI call costs
    about a second); `fresh` reads this one again, for a service that was recreated."""
    ips = _CLUSTER_IPS.setdefault(lab.name, {})
    if fresh or not ips:
        scope = ["service", name, "-n", ns] if fresh else ["services", "-A"]
        out = json.loads(lab.run("get", *scope, "-o", "json").stdout)
        for s in out.get("items", [out]):
            ips[s["metadata"]["namespace"], s["metadata"]["name"]] = s["spec"]["clusterIP"]
    return ips[ns, name]


def pod_ip(lab: Lab, ns: str, name: str) -> str:
    out = lab.run("get", "pod", name, "-n", ns, "-o", "json").stdout
    return json.loads(out)["status"]["podIP"]


def in_pod_argv(lab: Lab, pod_name: str, *argv: str) -> list[str]:
    """The command line running this Python (argv after the interpreter) inside a pod."""
    return [*FLOWSCOPE, "--cluster", lab.name, "lab", "exec", pod_name, "--", sys.executable, *argv]


def in_pod(lab: Lab, client: str, script: str, *args: object) -> Any:
    out = lab.run("lab", "exec", client, "--", sys.executable, "-c", script, *map(str, args))
    return json.loads(out.stdout)


def ask(
    lab: Lab,
    client: str,
    ip: str,
    port: int,
    n: int,
    *,
    path: str = "/hostname",
    protocol: str = "TCP",
    pause: float = 0.0,
) -> list[dict]:
    return in_pod(lab, client, ASK, ip, port, protocol, path, n, pause)


def names(results: list[dict]) -> collections.Counter:
    return collections.Counter(r.get("answer", f"error: {r.get('error')}") for r in results)


def svc_names(lab: Lab, ns: str, name: str, port: int, n: int, client: str = "cl/c1", **kw):
    return names(ask(lab, client, cluster_ip(lab, ns, name), port, n, **kw))


def slice_endpoints(lab: Lab, ns: str, service_name: str) -> dict[str, dict]:
    """The service's EndpointSlice endpoints by pod name."""
    out = lab.run(
        "get",
        "endpointslices",
        "-n",
        ns,
        "-l",
        f"kubernetes.io/service-name={service_name}",
        "-o",
        "json",
    ).stdout
    got = {}
    for s in json.loads(out)["items"]:
        for ep in s.get("endpoints") or ():
            got[ep["targetRef"]["name"]] = {**ep, "ports": s.get("ports") or []}
    return got


# -- scenarios -------------------------------------------------------------------------------


def test_endpoints_follow_pods_added_and_removed(lab: Lab) -> None:
    """The service reaches exactly the current backends: 30 answers (every backend missing from
    them has odds under 1e-5) from all of them and from nothing else, after each change."""

    def serving() -> set[str]:
        return set(svc_names(lab, "ep", "web", 8000, 30))

    until(lambda: serving() == {"ep-a", "ep-b"}, "the two first pods answer")
    lab.apply(pod("ep", "ep-c", "node-3", {"app": "ep"}))
    until(lambda: serving() == {"ep-a", "ep-b", "ep-c"}, "the added pod answers too")
    eps = slice_endpoints(lab, "ep", "web")
    assert set(eps) == {"ep-a", "ep-b", "ep-c"}
    assert all(e["conditions"]["ready"] for e in eps.values()), eps
    assert eps["ep-c"]["addresses"] == [pod_ip(lab, "ep", "ep-c")]

    lab.run("delete", "pod", "ep-a", "-n", "ep")
    until(lambda: serving() == {"ep-b", "ep-c"}, "only the remaining pods answer")
    assert set(slice_endpoints(lab, "ep", "web")) == {"ep-b", "ep-c"}


def test_multiport_named_target_ports_resolve_per_pod(lab: Lab) -> None:
    eps = until(
        lambda: (
            len(slice_endpoints(lab, "mp", "multi")) == 2 and slice_endpoints(lab, "mp", "multi")
        ),
        "two endpoints",
    )
    resolved = {name: {p["name"]: p["port"] for p in e["ports"]} for name, e in eps.items()}
    assert resolved == {"mp-a": {"web": 80, "dns": 81}, "mp-b": {"web": 8080, "dns": 5353}}
    ip = cluster_ip(lab, "mp", "multi")
    tcp = names(ask(lab, "cl/c1", ip, 9000, 20))
    assert set(tcp) == {"mp-a", "mp-b"}, tcp  # mp-b only listens on 8080: it was resolved
    udp = names(ask(lab, "cl/c1", ip, 53, 20, protocol="UDP"))
    assert set(udp) == {"mp-a", "mp-b"}, udp
    probe = lab.probe("cl/c2", "multi.mp:53", "UDP")  # the reply reads as from the service
    assert probe["connected"] and probe["answer"] in ("mp-a", "mp-b"), probe


def test_ports_added_and_removed_on_a_live_service(lab: Lab) -> None:
    assert lab.probe("cl/c1", "web.pt:8000")["answer"] == "pt-a"
    ip = cluster_ip(lab, "pt", "web")
    two = "[{name: a, port: 8000, targetPort: 80}, {name: b, port: 8001, targetPort: 80}]"
    lab.apply(service("pt", "web", {"app": "pt"}, two))
    until(lambda: lab.probe("cl/c1", "web.pt:8001")["connected"], "the added port answers")
    assert lab.probe("cl/c1", "web.pt:8000")["answer"] == "pt-a"
    lab.apply(service("pt", "web", {"app": "pt"}, "[{name: b, port: 8001, targetPort: 80}]"))
    until(
        lambda: not lab.probe("cl/c1", "web.pt:8000", timeout=0.5)["connected"],
        "the removed port stops answering",
    )
    assert cluster_ip(lab, "pt", "web", fresh=True) == ip  # same service, same address
    assert lab.probe("cl/c1", "web.pt:8001")["answer"] == "pt-a"


def test_source_ip_preserved_pod_to_cluster_ip(lab: Lab) -> None:
    client = pod_ip(lab, "cl", "c1")
    for name in ("local", "remote"):  # a backend on the client's node, one on another node
        got = ask(lab, "cl/c1", cluster_ip(lab, "sip", name), 8000, 3, path="/clientip")
        seen = {r.get("answer", "").rpartition(":")[0] for r in got}
        assert seen == {client}, (name, got)


def test_hairpin_pod_reaches_itself_through_its_service(lab: Lab) -> None:
    result = lab.probe("hp/self", "self.hp:8000")
    assert result["connected"] and result["answer"] == "self", result
    got = ask(lab, "hp/self", cluster_ip(lab, "hp", "self"), 8000, 3, path="/clientip")
    assert {r.get("answer", "").rpartition(":")[0] for r in got} == {pod_ip(lab, "hp", "self")}


def test_service_down_and_recreated(lab: Lab) -> None:
    assert lab.probe("cl/c3", "web.ud:8000")["answer"] == "ud-a"
    old_ip = cluster_ip(lab, "ud", "web")
    lab.run("delete", "service", "web", "-n", "ud")
    # by address: the name is gone with the service
    until(
        lambda: not lab.probe("cl/c3", f"{old_ip}:8000", timeout=0.5)["connected"],
        "the deleted service stops answering",
    )
    lab.apply(UD_SERVICE)
    until(lambda: lab.probe("cl/c3", "web.ud:8000")["connected"], "the recreated one answers")
    assert lab.probe("cl/c1", "web.ud:8000")["answer"] == "ud-a"
    IPv4Address(cluster_ip(lab, "ud", "web", fresh=True))  # an address again (maybe another)


def test_client_ip_affinity_keeps_one_backend(lab: Lab) -> None:
    until(lambda: len(slice_endpoints(lab, "af", "sticky")) == 3, "three endpoints")
    for client in ("cl/c1", "cl/c2", "cl/c3"):
        got = svc_names(lab, "af", "sticky", 8000, 15, client)
        assert len(got) == 1 and next(iter(got)).startswith("af-"), (client, got)


def test_affinity_switched_on_and_off(lab: Lab) -> None:
    def spread() -> collections.Counter:
        return svc_names(lab, "af", "toggle", 8000, 15)

    until(lambda: len(spread()) == 3, "all three backends answer without affinity")
    lab.apply(service("af", "toggle", {"app": "af"}, HTTP, "  sessionAffinity: ClientIP\n"))
    until(lambda: len(spread()) == 1, "affinity takes hold")
    got = spread()
    assert len(got) == 1 and next(iter(got)).startswith("af-"), got
    lab.apply(service("af", "toggle", {"app": "af"}, HTTP))
    until(lambda: len(spread()) > 1, "affinity switched off")
    toggled = lab.run("get", "service", "toggle", "-n", "af", "-o", "json").stdout
    assert json.loads(toggled)["spec"]["sessionAffinity"] == "None"


def test_affinity_times_out(lab: Lab) -> None:
    """timeoutSeconds 2: bursts within it stay on one backend; after a pause of 2.5 s the choice
    is made afresh. Three clients at once, four rounds each: were affinity never to expire, each
    client would see one backend throughout; expiring, all three see one backend only with
    probability (1/3)^9."""
    ip = cluster_ip(lab, "af", "short")
    procs = [
        subprocess.Popen(
            in_pod_argv(lab, f"cl/c{i}", "-c", ROUNDS, ip, "8000", "4", "5", "2.5"),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2, 3)
    ]
    rounds = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    for client in rounds:
        for burst in client:
            assert len(set(burst)) == 1 and burst[0].startswith("af-"), rounds
    assert any(len({burst[0] for burst in client}) > 1 for client in rounds), rounds


def test_no_endpoints_refused_at_once(lab: Lab) -> None:
    """Refused by the connect itself (ECONNREFUSED, in well under the 1 s a timeout would take),
    for TCP and for a connected UDP socket alike."""
    ip = cluster_ip(lab, "ne", "nothing")
    for protocol, port in (("TCP", 8000), ("UDP", 53)):
        got = ask(lab, "cl/c2", ip, port, 3, protocol=protocol)
        for r in got:
            assert r.get("error") == "Connection refused" and r["ms"] < 500, (protocol, got)
    result = lab.probe("cl/c2", "nothing.ne:8000")
    assert not result["connected"] and "refused" in result["error"].lower(), result


def test_internal_traffic_policy_local(lab: Lab) -> None:
    until(lambda: len(slice_endpoints(lab, "itp", "local")) == 2, "two endpoints")
    ip = cluster_ip(lab, "itp", "local")
    for client, only in (("cl/c1", "itp-1"), ("cl/c2", "itp-2")):
        got = names(ask(lab, client, ip, 8000, 12))
        assert set(got) == {only}, (client, got)
    got = ask(lab, "cl/c3", ip, 8000, 3)  # node-3 has no backend of its own
    assert all(r.get("error") == "Connection refused" for r in got), got


def test_service_deleted_mid_connection(lab: Lab) -> None:
    """Chosen behaviour, as Cilium's socket LB (and kube-proxy, whose conntrack entries outlive
    the rules): an established connection was translated once, at connect, and is pod to pod
    from then on, so deleting the service does not break it; new connections fail."""
    backend = pod_ip(lab, "mc", "mc-a")
    server = subprocess.Popen(
        in_pod_argv(lab, "mc/mc-a", TRAFFIC, "echo-server", "7000", "8"),
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        until(
            lambda: not ask(lab, "cl/c1", backend, 7000, 1, protocol="CONNECT")[0].get("error"),
            "echo server up",
            5,
        )
        ip = cluster_ip(lab, "mc", "echo")
        client = subprocess.Popen(
            in_pod_argv(lab, "cl/c1", TRAFFIC, "stream", ip, "7000", "4"),
            stdout=subprocess.PIPE,
            text=True,
        )
        until(lambda: established(lab, "cl/c1", 7000), "the stream is established", 10)
        lab.run("delete", "service", "echo", "-n", "mc")
        until(
            lambda: ask(lab, "cl/c2", ip, 7000, 1, protocol="CONNECT")[0].get("error"),
            "new connections to the deleted service fail",
            5,
        )
        stream = json.loads(client.communicate(timeout=30)[0])
        assert stream["failed"] == 0 and stream["error"] is None and stream["ok"] > 50, stream
        assert not lab.probe("cl/c1", f"{ip}:7000", timeout=0.5)["connected"]
    finally:
        server.kill()
        server.wait()
    lab.apply(MC_SERVICE)


ESTABLISHED = r"""
import sys
port = "%04X" % int(sys.argv[1])
rows = [line.split() for line in open("/proc/net/tcp").readlines()[1:]]
print(sum(1 for r in rows if r[2].endswith(":" + port) and r[3] == "01"))
"""


def established(lab: Lab, pod_name: str, port: int) -> int:
    """How many TCP connections of the pod to a remote `port` are established (its netns's own
    /proc/net/tcp)."""
    return in_pod(lab, pod_name, ESTABLISHED, port)


def node_frontends(cluster: str, node: str) -> set[tuple[str, int]]:
    """The service frontends (address, port) in a node's socket-LB map, read from its pin."""
    pin = ClusterPaths(cluster).node_bpf_dir(node) / "socklb" / SERVICES_MAP
    m = BpfMap.open_pinned(pin, SvcKey, SvcValue)
    try:
        keys, _ = m.dump()
    finally:
        m.close()
    heads = keys[keys["slot"] == 0]
    # vip and dport hold network-order bytes read as native integers: pack them back as bytes
    return {
        (socket.inet_ntoa(struct.pack("=I", int(v))), socket.ntohs(int(p)))
        for v, p in zip(heads["vip"], heads["dport"], strict=True)
    }


def test_selector_matching_nothing_and_no_rules_anywhere(lab: Lab) -> None:
    assert not slice_endpoints(lab, "ne", "nothing")
    assert not lab.probe("cl/c1", "nothing.ne:8000")["connected"]
    for ns in netns.list_with_prefix(ClusterPaths(lab.name).netns_prefix):
        assert rules_in(ns) == ("", ""), ns


def test_ten_thousand_services_in_one_apply_reach_every_agent(lab: Lab) -> None:
    """One apply, no errors, 10,000 distinct ClusterIPs, and every node's socket-LB map holding
    all of them. Ports 1000-5999 (each used twice) belong to these services alone, so the maps'
    frontends on them are exactly these services' (address, port) pairs."""
    ports = [1000 + i % 5000 for i in range(10_000)]
    docs = [namespace("big")] + [
        service("big", f"s{i}", {"app": "none"}, f"[{{port: {p}}}]") for i, p in enumerate(ports)
    ]
    started = time.monotonic()
    applied = lab.run("apply", "-f", "-", input="---\n".join(docs), timeout=300)
    print(f"\n10,000 services applied in {time.monotonic() - started:.1f} s")
    assert applied.stdout.count(" created") == 10_001, applied.stdout[-2000:]
    service_cidr = clusterinfo.load(lab.name).service_cidr

    def big(node: str) -> list[tuple[str, int]]:
        return sorted(fe for fe in node_frontends(lab.name, node) if 1000 <= fe[1] < 6000)

    programmed = {}
    for node in ("node-1", "node-2", "node-3"):
        programmed[node] = until(
            lambda node=node: len(big(node)) == 10_000 and big(node),
            f"all 10,000 in {node}'s maps",
            120,
        )
    print(f"... and in every agent's maps after {time.monotonic() - started:.1f} s")
    assert programmed["node-1"] == programmed["node-2"] == programmed["node-3"]
    vips = {IPv4Address(ip) for ip, _ in programmed["node-1"]}
    assert len(vips) == 10_000 and all(ip in service_cidr for ip in vips)
    assert sorted(p for _, p in programmed["node-1"]) == sorted(ports)
