"""The netlink work for one endpoint: a veth pair between the node and the pod namespace.

Pod side (CNI_NETNS): `ifname` with IP/32, lo up, a link-scope route to GATEWAY and the default
route via it, and a PERMANENT neighbour GATEWAY -> host veth MAC. Host side (node namespace):
`lxc<hash>` up, forwarding on, rp_filter off, a route to IP/32 via it and a PERMANENT neighbour
IP -> pod MAC. Both MACs are chosen here, so neither side ever ARPs and the first packet after ADD
goes through. IPv6 address generation is off on both ends (no link-local address, no DAD, no
router solicitations in the flow records).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

import flowscope.netns_sockets  # noqa: F401  (pyroute2 netns sockets without fork)
from dataplane.endpoint.endpoint import GATEWAY, HOST_IFNAME_PREFIX, Endpoint, host_ifname
from dataplane.endpoint.netns import netns_path, open_rtnl, write_sysctls
from flowscope.errors import FlowscopeError

_HOST_IFNAME = re.compile(rf"^{HOST_IFNAME_PREFIX}[0-9a-f]{{11}}$")
_ADDR_GEN_NONE = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}
_NUD_PERMANENT = 0x80
_RT_SCOPE_LINK = 253
ACTIVATION_TIMEOUT = 2.0  # seconds for the kernel to activate a new veth's queues
_LOOPBACK_INDEX = 1  # lo is the first device of every network namespace


class EndpointError(FlowscopeError):
    """Plumbing an endpoint failed; the message names the interface and the namespace."""


class InterfaceExists(EndpointError):
    """The pod namespace already has an interface of the requested name (the spec says: error)."""


def random_mac() -> str:
    """A random unicast, locally administered MAC."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True)
class Plumbed:
    host_ifname: str
    host_mac: str
    host_ifindex: int
    pod_mac: str


async def _first(result) -> dict | None:
    # pyroute2 answers "get" with a list and "dump" with an async iterator
    if isinstance(result, list | tuple):
        return result[0] if result else None
    async for msg in result:
        return msg
    return None


async def _index(ipr: AsyncIPRoute, name: str) -> int | None:
    """The ifindex of `name`, or None: one RTM_GETLINK (link_lookup dumps every link)."""
    try:
        link = await _first(await ipr.link("get", ifname=name))
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return link["index"] if link else None


class Plumber:
    """Plumbs endpoints into one node namespace; holds that namespace's netlink socket open."""

    def __init__(self, node_netns: str) -> None:
        self.node_netns = netns_path(node_netns)
        self._node: AsyncIPRoute | None = None
        self._opening = asyncio.Lock()

    async def node(self) -> AsyncIPRoute:
        async with self._opening:
            if self._node is None:
                try:
                    self._node = await open_rtnl(self.node_netns)
                except FileNotFoundError:
                    raise EndpointError(
                        f"node network namespace {self.node_netns} does not exist",
                        hint="is the lab up? (flowscope lab status)",
                    ) from None
            return self._node

    async def close(self) -> None:
        if self._node is not None:
            self._node.close()
            self._node = None

    # -- add ------------------------------------------------------------------------------------
    async def plumb(
        self,
        container_id: str,
        ifname: str,
        pod_netns: str,
        ip: IPv4Address,
        mtu: int,
        *,
        before_up: Callable[[str], Awaitable[None]] | None = None,
    ) -> Plumbed:
        """Create and configure the veth pair; on failure nothing of it is left behind.

        `before_up(host_ifname)` runs once the pair exists and before either end is up or
        routed: the datapath attaches its programs there, so no packet ever crosses the
        endpoint unfiltered."""
        node = await self.node()
        host = host_ifname(container_id, ifname)
        host_mac, pod_mac = random_mac(), random_mac()
        try:
            pod = await open_rtnl(pod_netns)
        except FileNotFoundError:
            raise EndpointError(f"pod network namespace {pod_netns} does not exist") from None
        try:
            await self._create_veth(node, pod, host, host_mac, pod_netns, ifname, pod_mac, mtu)
            try:
                if before_up is not None:
                    await before_up(host)
                # Pod side first, while the host side is still down: neither end has carrier
                # yet, so turning IPv6 address generation off always precedes any link-local
                # address. One message less for each side than "set mode; set up".
                sysctls = asyncio.create_task(
                    asyncio.to_thread(
                        write_sysctls,
                        self.node_netns,
                        {
                            f"net/ipv4/conf/{host}/forwarding": "1",
                            f"net/ipv4/conf/{host}/rp_filter": "0",
                        },
                    )
                )
                try:
                    await self._plumb_pod(pod, ifname, ip, host_mac)
                finally:
                    await sysctls
                index = await self._plumb_host(node, host, ip, pod_mac)
                await self._wait_active(node, host, pod, ifname)
            except BaseException:
                await self._delete_link(node, host)  # takes the peer, routes, neighbours along
                raise
        finally:
            pod.close()
        return Plumbed(host, host_mac, index, pod_mac)

    async def _create_veth(
        self,
        node: AsyncIPRoute,
        pod: AsyncIPRoute,
        host: str,
        host_mac: str,
        pod_netns: str,
        ifname: str,
        pod_mac: str,
        mtu: int,
    ) -> None:
        for attempt in (1, 2):
            fd = os.open(pod_netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                await node.link(
                    "add",
                    ifname=host,
                    kind="veth",
                    address=host_mac,
                    mtu=mtu,
                    peer={"ifname": ifname, "address": pod_mac, "mtu": mtu, "net_ns_fd": fd},
                )
                return
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise EndpointError(
                        f"creating veth {host} <-> {pod_netns}:{ifname} failed: {e}"
                    ) from None
            finally:
                os.close(fd)
            if await _index(pod, ifname) is not None:
                raise InterfaceExists(
                    f"interface {ifname} already exists in {pod_netns}",
                    hint="the runtime must DEL this attachment before adding it again",
                )
            # A host veth of this name without a registered endpoint is the remnant of an ADD
            # that died midway (agent killed): it is ours, and in the way.
            if attempt == 1:
                await self._delete_link(node, host)
        raise EndpointError(f"creating veth {host}: the name stays taken in {self.node_netns}")

    async def _wait_active(
        self, node: AsyncIPRoute, host: str, pod: AsyncIPRoute, ifname: str
    ) -> None:
        """Wait until both ends have their qdisc: the kernel attaches it asynchronously (link
        watch) after carrier comes on, and until then a device drops everything it sends, so a
        pod's first packet right after ADD would be lost (seen as a 1 s TCP SYN retransmit)."""
        deadline = asyncio.get_running_loop().time() + ACTIVATION_TIMEOUT
        for ipr, name in ((node, host), (pod, ifname)):
            while True:
                link = await _first(await ipr.link("get", ifname=name))
                if link is not None and link.get("qdisc") not in (None, "noop"):
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise EndpointError(
                        f"interface {name} did not come up within "
                        f"{ACTIVATION_TIMEOUT:g}s (qdisc still noop)"
                    )
                await asyncio.sleep(0.0005)

    async def _plumb_host(self, node: AsyncIPRoute, host: str, ip: IPv4Address, pod_mac: str):
        try:
            index = await _index(node, host)
            if index is None:
                raise EndpointError(f"host interface {host} vanished while being configured")
            await node.link("set", index=index, af_spec=_ADDR_GEN_NONE, state="up")
            await node.route("add", dst=f"{ip}/32", oif=index, scope=_RT_SCOPE_LINK, proto="static")
            await node.neigh(
                "add", dst=str(ip), lladdr=pod_mac, ifindex=index, state=_NUD_PERMANENT
            )
        except NetlinkError as e:
            raise EndpointError(f"configuring host interface {host} failed: {e}") from None
        return index

    async def _plumb_pod(self, pod: AsyncIPRoute, ifname: str, ip: IPv4Address, host_mac: str):
        try:
            index = await _index(pod, ifname)
            if index is None:
                raise EndpointError(f"pod interface {ifname} vanished while being configured")
            await pod.link("set", index=index, af_spec=_ADDR_GEN_NONE, state="up")
            await pod.addr("add", index=index, address=str(ip), prefixlen=32)
            await pod.link("set", index=_LOOPBACK_INDEX, state="up")
            await pod.route(
                "add", dst=f"{GATEWAY}/32", oif=index, scope=_RT_SCOPE_LINK, proto="static"
            )
            await pod.route("add", dst="0.0.0.0/0", gateway=str(GATEWAY), oif=index)
            await pod.neigh(
                "add", dst=str(GATEWAY), lladdr=host_mac, ifindex=index, state=_NUD_PERMANENT
            )
        except NetlinkError as e:
            raise EndpointError(f"configuring pod interface {ifname} failed: {e}") from None

    # -- delete ---------------------------------------------------------------------------------
    async def unplumb(self, container_id: str, ifname: str) -> bool:
        """Delete the endpoint's veth pair (both ends go together); True if it was there."""
        return await self._delete_link(await self.node(), host_ifname(container_id, ifname))

    async def delete_host_link(self, name: str) -> bool:
        """Delete a host veth by name (GC of remnants); True if it was there."""
        return await self._delete_link(await self.node(), name)

    async def _delete_link(self, node: AsyncIPRoute, name: str) -> bool:
        try:
            index = await _index(node, name)
            if index is None:
                return False
            await node.link("del", index=index)
            return True
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return False  # a concurrent DEL won
            raise EndpointError(f"deleting interface {name} failed: {e}") from None

    async def host_ifnames(self) -> list[str]:
        """Names of every host veth in the node namespace that looks like one of ours."""
        node = await self.node()
        names = []
        async for link in await node.link("dump"):
            name = link.get("ifname")
            if name and _HOST_IFNAME.match(name):
                names.append(name)
        return names

    # -- check ----------------------------------------------------------------------------------
    async def check(self, ep: Endpoint) -> list[str]:
        """What of `ep`'s plumbing is missing or wrong, each as a short phrase; [] when all is."""
        problems: list[str] = []
        node = await self.node()
        found = await node.link_lookup(ifname=ep.host_ifname)
        if not found:
            return [f"host interface {ep.host_ifname} is missing from {self.node_netns}"]
        link = await _first(await node.link("get", index=found[0]))
        if link is None or link.get("address") != ep.host_mac:
            problems.append(
                f"host interface {ep.host_ifname} has MAC "
                f"{link and link.get('address')}, want {ep.host_mac}"
            )
        if link is not None and link.get("state") != "up":
            problems.append(f"host interface {ep.host_ifname} is down")
        routes = [r async for r in await node.route("dump", dst=f"{ep.ip}/32", oif=found[0])]
        if not any(r.get("dst") == str(ep.ip) and r["dst_len"] == 32 for r in routes):
            problems.append(f"host route {ep.ip}/32 dev {ep.host_ifname} is missing")
        try:
            pod = await open_rtnl(ep.netns)
        except FileNotFoundError:
            return [*problems, f"pod network namespace {ep.netns} does not exist"]
        try:
            problems += await self._check_pod(pod, ep)
        finally:
            pod.close()
        return problems

    async def _check_pod(self, pod: AsyncIPRoute, ep: Endpoint) -> list[str]:
        where = f"{ep.netns}:{ep.ifname}"
        found = await pod.link_lookup(ifname=ep.ifname)
        if not found:
            return [f"pod interface {where} is missing"]
        index = found[0]
        problems: list[str] = []
        link = await _first(await pod.link("get", index=index))
        if link is None or link.get("address") != ep.pod_mac:
            problems.append(
                f"pod interface {where} has MAC {link and link.get('address')}, want {ep.pod_mac}"
            )
        if link is not None and link.get("state") != "up":
            problems.append(f"pod interface {where} is down")
        addrs = [a async for a in await pod.addr("dump", index=index)]
        if not any(a.get("address") == str(ep.ip) and a["prefixlen"] == 32 for a in addrs):
            problems.append(f"address {ep.ip}/32 is missing on pod interface {where}")
        routes = [r async for r in await pod.route("dump", oif=index)]
        if not any(r["dst_len"] == 0 and r.get("gateway") == str(GATEWAY) for r in routes):
            problems.append(f"default route via {GATEWAY} is missing in {ep.netns}")
        neighbours = [n async for n in await pod.neigh("dump", ifindex=index)]
        if not any(
            n.get("dst") == str(GATEWAY) and n.get("lladdr") == ep.host_mac for n in neighbours
        ):
            problems.append(f"neighbour {GATEWAY} -> {ep.host_mac} is missing in {ep.netns}")
        return problems
