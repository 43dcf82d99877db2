"""The node's HTTP L7 proxy, wired in: which connections go to it, where it listens, whose rules
it applies and where it forwards.

Which: TCP connections from pods to a (pod address, port) that a CiliumNetworkPolicy guards with
`toPorts[].rules.http`, or that the pod's proxy-visibility annotation asks to see. Every agent
computes that set for the whole cluster from the store (`redirect_set`, a pure function of the
CNPs and the pods) and keeps the socket LB's `l7_redirect` map equal to it; the socket LB's
connect hook then sends such connections, after the service translation, to
127.0.0.1:PROXY_PORT in the client's own namespace (probes/socklb.c).

Where: one listening socket on 127.0.0.1:PROXY_PORT inside each local pod's namespace, opened
when the endpoint appears and closed when it goes. On accept, the original destination is read
(and removed) from `l7_orig_port` by {the listener's netns cookie, the client's port}.

Whose rules: the destination pod's HTTP rules for that port, looked up for each request, so a
policy change reaches connections already open. What is forwarded leaves from the client pod's
namespace (dataplane.l7.upstream.netns_upstream), so the datapath still enforces L3/L4 policy
on it with the client's identity at both ends: L7 rules never widen L3/L4.

Limit: only connections made by pods (sockets in the node's cgroup) are redirected. Traffic
that enters the cluster from outside (NodePort, the fabric) reaches the pod unproxied, so HTTP
rules do not apply to it (its L3/L4 policy still does).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dataplane.l7.httpproxy import HTTPProxy, ProxyConfig, ProxyListener, serve
from dataplane.l7.httprules import HTTPRule, HTTPRuleError, HTTPRules, parse_http_rules
from dataplane.l7.upstream import netns_upstream
from dataplane.maps.l7map import L7MapFull, L7Maps, Redirect
from dataplane.policy.cnp import CNP, http_rules
from dataplane.policy.compiler import PodInfo, pod_info
from flowscope.flow.model import Endpoint, Flow
from flowscope.setns import socket_in_netns

log = logging.getLogger(__name__)

PROXY_PORT = 15080  # the listener in every pod's namespace, on 127.0.0.1 (a lab constant)
SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h
TCP = 6
DENIED_CODE = 403  # what the proxy answers a request its rules refuse
RECONCILE_INTERVAL = 0.25  # seconds between checks of the store's version
# rules that could not be parsed refuse every request rather than allow them all
DENY_ALL = HTTPRules((HTTPRule(method=re.compile(r"(?!)")),))

Address = tuple[str, int]


def netns_cookie(sock: socket.socket) -> int:
    """The cookie of the network namespace a socket lives in (what bpf_get_netns_cookie gives
    the kernel's programs for sockets there)."""
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


# Cilium's annotation for L7 visibility without rules: "<Ingress/80/TCP/HTTP>[,<...>]"
VISIBILITY_ANNOTATION = "policy.cilium.io/proxy-visibility"
_VISIBLE = re.compile(r"<\s*(\w+)\s*/\s*(\d+)\s*/\s*(\w+)\s*/\s*(\w+)\s*>")


def visibility_ports(pod: Mapping[str, Any]) -> frozenset[int]:
    """The ports a pod's proxy-visibility annotation asks HTTP visibility for (ingress, TCP):
    their connections are proxied with no rules, every request allowed and seen as flows. Other
    entries (egress, DNS: DNS is always visible here) are skipped."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(VISIBILITY_ANNOTATION, "")
    return frozenset(
        int(port)
        for direction, port, l4, l7 in _VISIBLE.findall(str(text))
        if (direction.lower(), l4.upper(), l7.upper()) == ("ingress", "TCP", "HTTP")
        and 0 < int(port) < 65536
    )


def redirect_set(
    cnps: Iterable[CNP],
    pods: Iterable[PodInfo],
    proxy_port: int = PROXY_PORT,
    visible: Callable[[PodInfo], Iterable[int]] = lambda _pod: (),
) -> dict[Redirect, int]:
    """The destinations whose TCP connections go through the proxy, for the whole cluster:
    every (pod address, port) with HTTP rules or HTTP visibility, -> the proxy port."""
    cnps = list(cnps)
    out: dict[Redirect, int] = {}
    for pod in pods:
        if pod.ip is None:
            continue
        for proto, port in http_rules(cnps, pod.namespace, pod.label_map()):
            if proto == TCP:
                out[Redirect(pod.ip, port)] = proxy_port
        for port in visible(pod):
            out[Redirect(pod.ip, port)] = proxy_port
    return out


def rules_of(cnps: Iterable[CNP], pod: PodInfo, port: int) -> HTTPRules | None:
    """The HTTP rules guarding `port` of `pod` (None: no rules, every request allowed)."""
    raw = http_rules(cnps, pod.namespace, pod.label_map()).get((TCP, port))
    if raw is None:
        return None
    try:
        return parse_http_rules(list(raw), f"http rules of {pod}:{port}")
    except HTTPRuleError as e:
        log.warning("%s: refusing every request", e)
        return DENY_ALL


@dataclass
class _Listener:
    sock: socket.socket
    cookie: int
    server: ProxyListener
    client_ip: str
    netns: str


class NodeL7:
    """The redirect map kept in sync, a proxy listener per local pod, their connections served
    by one HTTPProxy whose flows go to the node's stream."""

    def __init__(
        self,
        node: str,
        enforcement,
        maps: L7Maps,
        publish: Callable[[list[Flow]], Any],
        enricher,
        *,
        proxy_port: int = PROXY_PORT,
        config: ProxyConfig | None = None,
    ) -> None:
        self.node = node
        self.enforcement = enforcement
        self.maps = maps
        self.proxy_port = proxy_port
        self.enricher = enricher
        self.proxy = HTTPProxy(
            config or ProxyConfig(node_name=node),
            emit=lambda flow: publish([flow]),
            describe=self.describe,
        )
        self.listeners: dict[str, _Listener] = {}  # Endpoint.key -> its pod's listener
        self.problem: str | None = None
        self._version: tuple | None = None
        self._rules_cache: dict[Address, HTTPRules | None] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.reconcile()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            await self.reconcile()

    async def close(self) -> None:
        for key in list(self.listeners):
            await self.listeners.pop(key).server.close()  # and the connections it serves

    # -- reconciling ----------------------------------------------------------------------------
    def _pods(self) -> list[PodInfo]:
        out = []
        for obj in self.enforcement.pods.items.values():
            try:
                out.append(pod_info(obj))
            except (KeyError, TypeError, ValueError):
                continue  # a pod object without a name: nothing to redirect to
        return out

    async def reconcile(self) -> None:
        """Bring the redirect map and the listeners in line with the store and the local pods
        (only when something changed)."""
        version = (*self.enforcement.version, len(self.enforcement.local))
        if version == self._version:
            return
        self._rules_cache.clear()
        objects = self.enforcement.pods.items
        wanted = redirect_set(
            self.enforcement.cnps(),
            self._pods(),
            self.proxy_port,
            lambda pod: visibility_ports(objects.get(f"{pod.namespace}/{pod.name}") or {}),
        )
        try:
            written, removed = await asyncio.to_thread(self.maps.sync, wanted)
            self.problem = None
            if written or removed:
                log.info("l7 redirect: %d written, %d removed", written, removed)
        except L7MapFull as e:
            self.problem = str(e)
            log.warning("l7 redirect: %s", e)
        await self._sync_listeners()
        if self.problem is None:
            self._version = version

    async def _sync_listeners(self) -> None:
        local = {key: x.endpoint for key, x in self.enforcement.local.items()}
        for key in set(self.listeners) - set(local):
            self._close_listener(key)
        for ep in local.values():
            await self.endpoint_added(ep)

    async def _open_listener(self, client_ip: str, netns: str) -> _Listener:
        sock = await asyncio.to_thread(
            socket_in_netns, netns, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.proxy_port))
            sock.listen(256)
            sock.setblocking(False)
            cookie = netns_cookie(sock)

            def original_dst(accepted: socket.socket) -> Address:
                # by {this namespace, the client's port}: what the sock_ops program recorded
                port = accepted.getpeername()[1]
                orig = self.maps.take_original(cookie, port)
                if orig is None:
                    raise LookupError(f"none recorded for {client_ip} port {port}")
                return orig.backend

            server = await serve(
                sock,
                original_dst,
                self.proxy,
                # the destination pod's rules, looked up for each request
                rules_for=lambda _client, dst: lambda: self.rules_for(dst),
                # the upstream leaves from the client pod's namespace, under its policy
                upstream_for=lambda _client, dst: netns_upstream(netns, dst),
                # the client is the pod (its address, the port it connected from); on loopback
                # the kernel shows 127.0.0.1
                client_of=lambda peer: (client_ip, peer[1]),
            )
        except BaseException:
            sock.close()
            raise
        return _Listener(sock, cookie, server, client_ip, netns)

    async def endpoint_added(self, endpoint) -> None:
        """A new local pod (the CNI ADD, before the pod runs): its listener at once, so that
        its first connection to a guarded port finds the proxy (the periodic reconcile would
        open it a little later)."""
        if endpoint.key in self.listeners:
            return
        try:
            self.listeners[endpoint.key] = await self._open_listener(
                str(endpoint.ip), endpoint.netns
            )
        except OSError as e:
            log.warning("l7 proxy: no listener in %s (%s): %s", endpoint.key, endpoint.netns, e)

    def endpoint_removed(self, endpoint) -> None:
        """The pod is going: its listener closes (it holds the pod's namespace open)."""
        self._close_listener(endpoint.key)

    def _close_listener(self, key: str) -> None:
        listener = self.listeners.pop(key, None)
        if listener is not None:
            # the pod is gone: its connections went with its namespace
            listener.server.server.close()

    def rules_for(self, dst: Address) -> HTTPRules | None:
        """The destination pod's HTTP rules for the port (cached until the store changes)."""
        if dst in self._rules_cache:
            return self._rules_cache[dst]
        pod = self._pod_at(dst[0])
        rules = None if pod is None else rules_of(self.enforcement.cnps(), pod, dst[1])
        self._rules_cache[dst] = rules
        return rules

    def _pod_at(self, ip: str) -> PodInfo | None:
        for pod in self._pods():
            if pod.ip is not None and str(pod.ip) == ip:
                return pod
        return None

    def describe(self, ip: str) -> Endpoint | None:
        return self.enricher.known_endpoint(ip) if self.enricher is not None else None
