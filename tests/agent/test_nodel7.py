"""dataplane.agent.nodel7: the redirect set (pure), the rules a request meets, and NodeL7 on real
sockets in a namespace of the test's own (the kernel's part, the redirect and the record of the
original destination, is stood in for by FakeL7Maps.record; tests/probes/test_l7redirect.py
tests it on the kernel)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from types import SimpleNamespace
from typing import Any

import pytest
from pyroute2 import AsyncIPRoute, netns

from dataplane.agent.nodel7 import (
    DENY_ALL,
    VISIBILITY_ANNOTATION,
    NodeL7,
    redirect_set,
    rules_of,
    visibility_ports,
)
from dataplane.l7.httpmessage import RequestHead
from dataplane.maps.l7map import FakeL7Maps, OriginalDst, Redirect
from dataplane.policy.cnp import parse_cnp
from dataplane.policy.compiler import pod_info
from flowscope.flow.model import Flow, Verdict
from flowscope.setns import socket_in_netns
from tests.conftest import free_port, unique


def pod(name: str, ip: str | None, labels: dict[str, str], ns: str = "shop") -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": ns, "labels": labels}}
    if ip:
        obj["status"] = {"podIP": ip}
    return obj


def cnp(selector: dict[str, str], http: list | None, port: str = "80", ns: str = "shop") -> dict:
    port_rule: dict[str, Any] = {"ports": [{"port": port, "protocol": "TCP"}]}
    if http is not None:
        port_rule["rules"] = {"http": http}
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": unique("p"), "namespace": ns},
        "spec": {
            "endpointSelector": {"matchLabels": selector},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"app": "client"}}], "toPorts": [port_rule]}
            ],
        },
    }


GET_PUBLIC = [{"method": "GET", "path": "/public.*"}]


def head(method: str, path: str) -> RequestHead:
    return RequestHead(method=method, target=path)


def test_the_set_is_every_pod_port_with_http_rules() -> None:
    pods = [
        pod_info(pod("web", "10.244.1.5", {"app": "web"})),
        pod_info(pod("web2", "10.244.2.6", {"app": "web"})),
        pod_info(pod("db", "10.244.1.7", {"app": "db"})),
        pod_info(pod("pending", None, {"app": "web"})),  # no address yet: nothing to redirect
        pod_info(pod("elsewhere", "10.244.2.8", {"app": "web"}, ns="other")),
    ]
    cnps = [
        parse_cnp(cnp({"app": "web"}, GET_PUBLIC)),
        parse_cnp(cnp({"app": "web"}, [{"path": "/x"}], port="8080")),
        parse_cnp(cnp({"app": "db"}, None, port="5432")),  # L4 only: no proxy
    ]
    got = redirect_set(cnps, pods, proxy_port=15080)
    assert got == {
        Redirect(IPv4Address("10.244.1.5"), 80): 15080,
        Redirect(IPv4Address("10.244.1.5"), 8080): 15080,
        Redirect(IPv4Address("10.244.2.6"), 80): 15080,
        Redirect(IPv4Address("10.244.2.6"), 8080): 15080,
    }
    assert redirect_set([], pods) == {}


def test_the_visibility_annotation_proxies_a_port_without_rules() -> None:
    obj = pod("web", "10.244.1.5", {"app": "web"})
    obj["metadata"]["annotations"] = {
        VISIBILITY_ANNOTATION: "<Ingress/80/TCP/HTTP>, <Egress/53/UDP/DNS>,<ingress/8080/tcp/http>"
    }
    assert visibility_ports(obj) == {80, 8080}  # DNS is always visible; egress not ours
    assert visibility_ports(pod("db", "10.244.1.7", {})) == frozenset()
    info = pod_info(obj)
    got = redirect_set([], [info], 15080, lambda p: visibility_ports(obj))
    assert set(got) == {
        Redirect(IPv4Address("10.244.1.5"), 80),
        Redirect(IPv4Address("10.244.1.5"), 8080),
    }
    assert rules_of([], info, 80) is None  # no rules: every request allowed, and seen


def test_rules_of_a_pod_port_union_and_bad_rules_refuse_all() -> None:
    web = pod_info(pod("web", "10.244.1.5", {"app": "web"}))
    cnps = [
        parse_cnp(cnp({"app": "web"}, GET_PUBLIC)),
        parse_cnp(cnp({"app": "web"}, [{"method": "POST", "path": "/submit"}])),
    ]
    rules = rules_of(cnps, web, 80)
    assert rules is not None
    assert rules.allows(head("GET", "/public/a")) and rules.allows(head("POST", "/submit"))
    assert not rules.allows(head("GET", "/private"))
    assert rules_of(cnps, web, 8080) is None  # no rules there: not proxied, all allowed
    bad = [parse_cnp(cnp({"app": "web"}, [{"path": "(unclosed"}]))]
    assert rules_of(bad, web, 80) is DENY_ALL
    assert not DENY_ALL.allows(head("GET", "/"))


class FakeEnforcement:
    def __init__(self, pods: list[dict], cnps: list[dict]) -> None:
        self.pods = SimpleNamespace(
            items={f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pods}
        )
        self.cnp_list = [parse_cnp(c) for c in cnps]
        self.local: dict[str, Any] = {}
        self.version = (0,)

    def cnps(self) -> list:
        return self.cnp_list

    def bump(self) -> None:
        self.version = (self.version[0] + 1,)


async def test_reconcile_keeps_the_map_equal_to_the_set_and_follows_changes() -> None:
    enf = FakeEnforcement(
        [pod("web", "10.244.1.5", {"app": "web"})], [cnp({"app": "web"}, GET_PUBLIC)]
    )
    maps = FakeL7Maps()
    l7 = NodeL7("node-1", enf, maps, lambda flows: None, None, proxy_port=15999)
    await l7.start()
    assert maps.redirects() == {Redirect(IPv4Address("10.244.1.5"), 80): 15999}
    enf.cnp_list = []
    await l7.reconcile()  # the store's version did not move: nothing read
    assert maps.redirects() != {}
    enf.bump()
    await l7.reconcile()
    assert maps.redirects() == {}
    await l7.close()


# -- on real sockets, in a namespace of the test's own ------------------------------------------


async def _serve_backend(ns_path: str, port: int) -> asyncio.Server:
    sock = socket_in_netns(ns_path, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    sock.setblocking(False)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            while True:  # kept alive: requests until the client closes
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    pass
                if not line:
                    break
        writer.close()

    return await asyncio.start_server(answer, sock=sock)


@pytest.fixture
async def pod_ns() -> AsyncIterator[str]:
    name = unique("fsl7a")
    netns.create(name)
    try:
        async with AsyncIPRoute(netns=name, flags=0) as ipr:
            lo = (await ipr.link_lookup(ifname="lo"))[0]
            await ipr.link("set", index=lo, state="up")
        yield f"/run/netns/{name}"
    finally:
        netns.remove(name)


async def _get(ns_path: str, proxy_port: int, maps: FakeL7Maps, cookie: int, orig, path: str):
    """A redirected connection as the kernel hands it over: the record under the client's port,
    then the connect to the proxy; one request, the status line and the body back."""
    sock = socket_in_netns(ns_path, socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    maps.record(cookie, sock.getsockname()[1], orig)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status, _, body = data.partition(b"\r\n\r\n")
    return status.split(b"\r\n")[0].decode(), body


async def _open(ns_path: str, proxy_port: int, maps: FakeL7Maps, cookie: int, orig):
    sock = socket_in_netns(ns_path, socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    maps.record(cookie, sock.getsockname()[1], orig)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy_port))
    return await asyncio.open_connection(sock=sock)


async def _ask(conn, path: str) -> str:
    """One keep-alive request; its status line (the body read by its length)."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head.split(b"\r\n")[0].decode()


@pytest.mark.privileged
async def test_a_pods_listener_forwards_allowed_requests_and_denies_others(pod_ns: str) -> None:
    backend_port, proxy_port = free_port(), free_port()
    enf = FakeEnforcement(
        [pod("web", "127.0.0.1", {"app": "web"})],
        [cnp({"app": "web"}, GET_PUBLIC, port=str(backend_port))],
    )
    enf.local["client"] = SimpleNamespace(
        endpoint=SimpleNamespace(key="client", ip=IPv4Address("10.244.2.9"), netns=pod_ns)
    )
    flows: list[Flow] = []
    maps = FakeL7Maps()
    l7 = NodeL7("node-1", enf, maps, flows.extend, None, proxy_port=proxy_port)
    backend = await _serve_backend(pod_ns, backend_port)
    try:
        await l7.start()
        listener = l7.listeners["client"]
        orig = OriginalDst(IPv4Address("10.96.0.20"), 8080, IPv4Address("127.0.0.1"), backend_port)
        ok = await _get(pod_ns, proxy_port, maps, listener.cookie, orig, "/public/a")
        assert ok == ("HTTP/1.1 200 OK", b"ok")
        denied = await _get(pod_ns, proxy_port, maps, listener.cookie, orig, "/private")
        assert denied[0] == "HTTP/1.1 403 Forbidden" and denied[1].strip() == b"Access denied"
        # flows: the client is the pod (not 127.0.0.1), the destination the backend
        requests = [f for f in flows if f.is_reply is False]
        assert [f.verdict for f in requests] == [Verdict.FORWARDED, Verdict.DROPPED]
        # the denied request carries the 403 it got (observe --http-status finds it)
        assert [f.l7.http.code for f in requests] == [0, 403]
        assert {f.ip.source for f in requests} == {"10.244.2.9"}
        assert {f.ip.destination for f in requests} == {"127.0.0.1"}
        assert maps.orig_port == {}  # each record read once
        # a connection nobody recorded is closed, not forwarded anywhere
        stray = socket_in_netns(pod_ns, socket.AF_INET, socket.SOCK_STREAM)
        stray.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stray, ("127.0.0.1", proxy_port))
        r, w = await asyncio.open_connection(sock=stray)
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        # a policy change reaches a connection already open: its next request meets new rules
        kept = await _open(pod_ns, proxy_port, maps, listener.cookie, orig)
        assert await _ask(kept, "/public/k") == "HTTP/1.1 200 OK"
        enf.cnp_list = [parse_cnp(cnp({"app": "web"}, [{"path": "/other"}], str(backend_port)))]
        enf.bump()
        await l7.reconcile()
        assert await _ask(kept, "/public/k") == "HTTP/1.1 403 Forbidden"
        kept[1].close()
        # the CNI's hooks: the pod goes, its listener with it; it comes, one at once
        endpoint = enf.local["client"].endpoint
        l7.endpoint_removed(endpoint)
        assert l7.listeners == {}
        await l7.endpoint_added(endpoint)
        again = await _get(pod_ns, proxy_port, maps, l7.listeners["client"].cookie, orig, "/other")
        assert again[0] == "HTTP/1.1 200 OK"
        # gone from the store: the reconcile closes it too
        enf.local.clear()
        enf.bump()
        await l7.reconcile()
        assert l7.listeners == {}
    finally:
        await l7.close()
        backend.close()
        await backend.wait_closed()
