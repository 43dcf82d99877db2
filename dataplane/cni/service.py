"""The agent's side of CNI: what ADD, DEL, CHECK, STATUS and GC do to a node.

ADD: IPAM lease -> veth plumbing -> endpoint registered in the store -> hooks.endpoint_added (the
datapath programs identity and policy there, so connectivity is right the instant ADD returns)
-> the CNI result. A failure at any step undoes the steps before it: no veth, lease or record is
left behind. DEL undoes all of it, each step tolerating its part being gone already, so DEL may be
repeated. Calls for one attachment (containerID, ifname) are serialized; different attachments
run concurrently. GC waits for running ADDs and DELs and holds new ones back while it runs.

Duplicate ADD (same containerID and ifname, no DEL between): error 102, and the existing
endpoint is left untouched. The spec says a plugin MUST error when the interface already exists
in the container, and the reference bridge plugin fails the same way ("already exists").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any, Protocol

from dataplane.cni.protocol import (
    CHECK_FAILED,
    CURRENT_VERSION,
    ENDPOINT_EXISTS,
    INTERNAL,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    POOL_EXHAUSTED,
    UNKNOWN_CONTAINER,
    CNIError,
    Request,
)
from dataplane.endpoint.endpoint import GATEWAY, Endpoint
from dataplane.endpoint.plumbing import EndpointError, Plumber
from dataplane.endpoint.registry import EndpointRegistry
from dataplane.ipam.errors import IPAMExhausted
from flowscope.errors import FlowscopeError
from flowscope.store.kv import KV

log = logging.getLogger(__name__)


class Lease(Protocol):
    owner: str
    ip: IPv4Address


class IPAMLike(Protocol):
    async def allocate(self, owner: str) -> Lease: ...
    async def release(self, owner: str) -> Lease | None: ...
    async def lease(self, owner: str) -> Lease | None: ...
    async def leases(self) -> list[Lease]: ...


class EndpointHooks(Protocol):
    """What the datapath does when an endpoint comes or goes; all run before CNI answers.

    host_link_created runs while the new veth pair is still down and unrouted (attach programs
    there); endpoint_added once the endpoint is plumbed and registered (identity, policy)."""

    async def host_link_created(self, host_ifname: str) -> None: ...
    async def endpoint_added(self, endpoint: Endpoint) -> None: ...
    async def endpoint_removed(self, endpoint: Endpoint) -> None: ...


class NoHooks:
    async def host_link_created(self, host_ifname: str) -> None:
        pass

    async def endpoint_added(self, endpoint: Endpoint) -> None:
        pass

    async def endpoint_removed(self, endpoint: Endpoint) -> None:
        pass


class _Gate:
    """Many ADD/DEL/CHECK at once, or one GC alone (the spec's ordering, enforced here too)."""

    def __init__(self) -> None:
        self._active = 0
        self._gc = False
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._gc)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._gc and self._active == 0)
            self._gc = True
        try:
            yield
        finally:
            async with self._cond:
                self._gc = False
                self._cond.notify_all()


def cni_result(ep: Endpoint) -> dict[str, Any]:
    """The CNI 1.1.0 result of an endpoint (the plugin converts it to the requested version)."""
    return {
        "cniVersion": CURRENT_VERSION,
        "interfaces": [
            {"name": ep.host_ifname, "mac": ep.host_mac, "mtu": ep.mtu},
            {"name": ep.ifname, "mac": ep.pod_mac, "mtu": ep.mtu, "sandbox": ep.netns},
        ],
        "ips": [{"address": f"{ep.ip}/32", "gateway": str(GATEWAY), "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": str(GATEWAY)}],
        "dns": {},
    }


def _mtu(config: dict[str, Any]) -> int:
    mtu = config.get("mtu", 1500)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise CNIError(INVALID_NETWORK_CONFIG, f"mtu: want an integer 68..65535, got {mtu!r}")
    return mtu


def _require(request: Request, *names: str) -> None:
    missing = [n for n in names if not getattr(request, n)]
    if missing:
        env = {"container_id": "CNI_CONTAINERID", "netns": "CNI_NETNS", "ifname": "CNI_IFNAME"}
        raise CNIError(
            INVALID_ENVIRONMENT,
            f"required env variables [{','.join(env[n] for n in missing)}] missing",
        )


class CNIService:
    def __init__(
        self,
        kv: KV,
        node: str,
        node_netns: str,
        ipam: IPAMLike,
        hooks: EndpointHooks | None = None,
    ) -> None:
        self.node = node
        self.ipam = ipam
        self.hooks = hooks or NoHooks()
        self.registry = EndpointRegistry(kv, node)
        self.plumber = Plumber(node_netns)
        self._locks: dict[str, asyncio.Lock] = {}
        self._gate = _Gate()

    async def close(self) -> None:
        await self.plumber.close()

    @contextlib.asynccontextmanager
    async def _attachment(self, owner: str) -> AsyncIterator[None]:
        async with self._gate.shared():
            lock = self._locks.setdefault(owner, asyncio.Lock())
            try:
                async with lock:
                    yield
            finally:
                if not lock.locked() and not getattr(lock, "_waiters", None):
                    self._locks.pop(owner, None)

    async def handle(self, request: Request) -> dict[str, Any]:
        """Run one request; returns the result or raises CNIError (never anything else)."""
        try:
            match request.command:
                case "ADD":
                    return await self.add(request)
                case "DEL":
                    await self.delete(request)
                case "CHECK":
                    await self.check(request)
                case "STATUS":
                    await self.status()
                case "GC":
                    await self.gc(request.config.get("cni.dev/valid-attachments") or [])
                case _:
                    raise CNIError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {request.command}")
            return {}
        except CNIError:
            raise
        except IPAMExhausted as e:
            raise CNIError(
                POOL_EXHAUSTED, f"IP pool exhausted on node {self.node}: {e.args[0]}", e.hint or ""
            ) from None
        except FlowscopeError as e:
            raise CNIError(INTERNAL, e.args[0], e.hint or "") from None
        except Exception as e:
            log.exception("CNI %s %s failed", request.command, request.owner)
            raise CNIError(INTERNAL, f"{request.command} failed: {type(e).__name__}: {e}") from None

    # -- ADD ------------------------------------------------------------------------------------
    async def add(self, request: Request) -> dict[str, Any]:
        _require(request, "container_id", "netns", "ifname")
        mtu = _mtu(request.config)
        async with self._attachment(request.owner):
            existing = await self.registry.get(request.container_id, request.ifname)
            if existing is not None:
                raise CNIError(
                    ENDPOINT_EXISTS,
                    f"endpoint {request.owner} already exists on node {self.node} "
                    f"with IP {existing.ip}",
                    "CNI DEL this container and interface before adding it again",
                )
            lease = await self.ipam.allocate(request.owner)
            undo: list[Any] = [lambda: self.ipam.release(request.owner)]
            try:
                try:
                    plumbed = await self.plumber.plumb(
                        request.container_id,
                        request.ifname,
                        request.netns,
                        lease.ip,
                        mtu,
                        before_up=self.hooks.host_link_created,
                    )
                except EndpointError as e:
                    raise CNIError(INTERNAL, e.args[0], e.hint or "") from None
                undo.append(lambda: self.plumber.unplumb(request.container_id, request.ifname))
                ep = Endpoint(
                    node=self.node,
                    container_id=request.container_id,
                    ifname=request.ifname,
                    netns=request.netns,
                    ip=lease.ip,
                    pod_mac=plumbed.pod_mac,
                    host_ifname=plumbed.host_ifname,
                    host_mac=plumbed.host_mac,
                    host_ifindex=plumbed.host_ifindex,
                    mtu=mtu,
                    pod_namespace=request.args.get("K8S_POD_NAMESPACE", ""),
                    pod_name=request.args.get("K8S_POD_NAME", ""),
                    pod_uid=request.args.get("K8S_POD_UID", ""),
                    created=datetime.now(UTC).isoformat(timespec="milliseconds"),
                )
                await self.registry.put(ep)
                undo.append(lambda: self.registry.delete(ep.container_id, ep.ifname))
                await self.hooks.endpoint_added(ep)
            except BaseException:
                await self._undo(request.owner, undo)
                raise
        log.info("endpoint %s: %s on %s", request.owner, ep.ip, ep.host_ifname)
        return cni_result(ep)

    async def _undo(self, owner: str, steps: list[Any]) -> None:
        for step in reversed(steps):
            try:
                await asyncio.shield(step())
            except Exception:
                log.exception("rolling back ADD %s: a step failed", owner)

    # -- DEL ------------------------------------------------------------------------------------
    async def delete(self, request: Request) -> None:
        """Remove the attachment; everything already gone is fine (the spec's DEL)."""
        _require(request, "container_id", "ifname")
        async with self._attachment(request.owner):
            await self._remove(request.container_id, request.ifname)

    async def _remove(self, container_id: str, ifname: str) -> None:
        owner = f"{container_id}/{ifname}"
        ep = await self.registry.get(container_id, ifname)
        if ep is not None:
            await self.hooks.endpoint_removed(ep)
        try:
            await self.plumber.unplumb(container_id, ifname)
        except EndpointError as e:
            raise CNIError(INTERNAL, e.args[0], e.hint or "") from None
        await self.ipam.release(owner)
        await self.registry.delete(container_id, ifname)
        if ep is not None:
            log.info("endpoint %s: removed (%s)", owner, ep.ip)

    # -- CHECK ----------------------------------------------------------------------------------
    async def check(self, request: Request) -> None:
        _require(request, "container_id", "netns", "ifname")
        async with self._attachment(request.owner):
            ep = await self.registry.get(request.container_id, request.ifname)
            if ep is None:
                raise CNIError(
                    UNKNOWN_CONTAINER,
                    f"no endpoint for container {request.container_id} interface "
                    f"{request.ifname} on node {self.node}",
                    "it was never added, or was deleted",
                )
            problems = self._against_prev_result(ep, request)
            lease = await self.ipam.lease(request.owner)
            if lease is None or lease.ip != ep.ip:
                problems.append(
                    f"IP reservation of {ep.ip} for {request.owner} is "
                    + ("missing" if lease is None else f"for {lease.ip} instead")
                )
            try:
                problems += await self.plumber.check(ep)
            except EndpointError as e:
                problems.append(e.args[0])
        if problems:
            raise CNIError(
                CHECK_FAILED,
                f"endpoint {request.owner} check failed: {problems[0]}",
                "; ".join(problems),
            )

    @staticmethod
    def _against_prev_result(ep: Endpoint, request: Request) -> list[str]:
        prev = request.config.get("prevResult")
        if not isinstance(prev, dict):
            return []  # nothing to compare with; the netlink state is still checked
        problems = []
        if request.netns != ep.netns:
            problems.append(f"CNI_NETNS {request.netns} is not the ADD's {ep.netns}")
        addresses = {str(ip.get("address", "")).split("/")[0] for ip in prev.get("ips", [])}
        if str(ep.ip) not in addresses:
            problems.append(f"prevResult has no IP {ep.ip}")
        ours = {(ep.ifname, ep.pod_mac), (ep.host_ifname, ep.host_mac)}
        listed = {(i.get("name"), i.get("mac")) for i in prev.get("interfaces", [])}
        for name, mac in sorted(ours - listed):
            problems.append(f"prevResult lists no interface {name} with MAC {mac}")
        return problems

    # -- STATUS, GC -----------------------------------------------------------------------------
    async def status(self) -> None:
        """Ready when the agent answers and its node namespace is reachable."""
        try:
            await self.plumber.node()
        except EndpointError as e:
            raise CNIError(50, e.args[0], e.hint or "") from None

    async def gc(self, valid: list[Any]) -> None:
        """Remove endpoints, leases and host veths of attachments not in `valid`."""
        keep = {f"{a.get('containerID')}/{a.get('ifname')}" for a in valid if isinstance(a, dict)}
        errors: list[str] = []
        async with self._gate.exclusive():
            for ep in await self.registry.list():
                if ep.owner not in keep:
                    try:
                        await self._remove(ep.container_id, ep.ifname)
                    except Exception as e:  # go on: remove as much as possible
                        errors.append(f"{ep.owner}: {e}")
            for lease in await self.ipam.leases():
                # Owners of pod leases are "<containerID>/<ifname>"; leave other owners alone.
                if "/" in lease.owner and lease.owner not in keep:
                    try:
                        await self.ipam.release(lease.owner)
                    except Exception as e:
                        errors.append(f"lease {lease.owner}: {e}")
            wanted = {ep.host_ifname for ep in await self.registry.list()}
            for name in await self.plumber.host_ifnames():
                if name not in wanted:
                    try:
                        await self.plumber.delete_host_link(name)
                    except EndpointError as e:
                        errors.append(str(e))
        if errors:
            raise CNIError(INTERNAL, f"GC could not remove {len(errors)} items", "; ".join(errors))
