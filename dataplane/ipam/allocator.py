"""The IPAM of one node: claims its node CIDR or blocks and leases pod addresses, all in the store.

Every claim is one store transaction guarded by Compare; a lost race is retried (bounded) from a
fresh read, and running out of addresses raises IPAMExhausted at once.
"""

from __future__ import annotations

import asyncio
import random
from ipaddress import IPv4Address, IPv4Network

from dataplane.ipam.config import IPAMConfig, check_node, validate_config
from dataplane.ipam.errors import IPAMConfigError, IPAMConflict, IPAMExhausted
from dataplane.ipam.layout import (
    BLOCK_CURSOR_KEY,
    CONFIG_KEY,
    PREFIXES_KEY_PREFIX,
    Lease,
    NodeRecord,
    PrefixOwner,
    ip_key,
    lease_key,
    leases_prefix,
    node_key,
    prefix_from_key,
    prefix_key,
)
from dataplane.ipam.pools import (
    block_capacity,
    next_address,
    next_block,
    next_node_cidr,
    node_cidr_capacity,
    overlay_capacity,
    overlay_reserved,
)
from flowscope.store.kv import KV, Compare, Delete, Put

# Conflicts only come from other agents claiming at the same moment (one agent serialises its own
# calls), so a handful of retries is plenty; more means something is wrong and we say so.
MAX_ATTEMPTS = 20


class IPAM:
    """Pod addresses for node `node` (VNET address `node_ip`), persistent in `kv`.

    Calls on one object are serialised by an asyncio lock; objects in other processes (or for
    other nodes) are kept apart by the store's compare-and-swap transactions.
    """

    def __init__(self, kv: KV, config: IPAMConfig, node: str, node_ip: IPv4Address) -> None:
        validate_config(config)
        check_node(config, node, node_ip)
        self._kv = kv
        self.config = config
        self.node = node
        self.node_ip = node_ip
        self._lock = asyncio.Lock()
        self._config_checked = False  # a cache of a fact that never changes once true

    # --- public API -----------------------------------------------------------------------------

    async def ensure_node(self) -> None:
        """Overlay: claim (or find) this node's CIDR. Vnet: record the node; blocks come later."""
        async with self._lock:
            await self._ensure_node()

    async def allocate(self, owner: str) -> Lease:
        """A lease for `owner` ("<containerID>/<ifname>"); the same lease again if it has one."""
        _check_owner(owner)
        async with self._lock:
            return await self._allocate(owner)

    async def release(self, owner: str) -> Lease | None:
        """Free `owner`'s address (vnet: and its block once empty); None when it had none."""
        _check_owner(owner)
        async with self._lock:
            return await self._release(owner)

    async def lease(self, owner: str) -> Lease | None:
        got = await self._kv.get(lease_key(self.node, owner))
        return Lease.decode(got.value) if got else None

    async def leases(self) -> list[Lease]:
        """This node's leases, by address."""
        return sorted(await self._read_leases(), key=lambda lease: lease.ip)

    async def node_prefixes(self) -> list[IPv4Network]:
        """What this node owns: its node CIDR (overlay) or its blocks (vnet)."""
        got = await self._kv.get(node_key(self.node))
        return sorted(NodeRecord.decode(got.value).prefixes) if got else []

    # --- internals ------------------------------------------------------------------------------

    async def _read_leases(self) -> list[Lease]:
        kvs, _ = await self._kv.range(leases_prefix(self.node))
        return [Lease.decode(kv.value) for kv in kvs]

    async def _check_config(self) -> None:
        """The first agent records the config; any other agent with a different one is refused,
        since two layouts over one store could hand out the same address twice."""
        if self._config_checked:
            return
        mine = self.config.layout_json()
        got = await self._kv.get(CONFIG_KEY)
        if got is None and await self._kv.txn([Compare(CONFIG_KEY, 0)], [Put(CONFIG_KEY, mine)]):
            self._config_checked = True
            return
        got = got or await self._kv.get(CONFIG_KEY)
        if got is not None and got.value != mine:
            raise IPAMConfigError(
                f"node {self.node}: IPAM config {mine.decode()} differs from the cluster's "
                f"{got.value.decode()}",
                hint="every agent of a cluster must use the same IPAM mode and CIDRs; to change "
                "them, take the lab down and bring it up again",
            )
        self._config_checked = True

    async def _ensure_node(self) -> tuple[NodeRecord, int]:
        """The node's record and its mod_revision, creating the record (and, overlay, claiming
        the node CIDR) or updating a changed node IP first."""
        await self._check_config()
        nkey = node_key(self.node)
        failures = 0
        while failures < MAX_ATTEMPTS:
            got = await self._kv.get(nkey)
            rec = NodeRecord.decode(got.value) if got else None
            rev = got.mod_revision if got else 0
            if rec is not None and rec.node_ip != self.node_ip:
                # the node came back with a new address: move its routes (prefix owners) with it
                new = NodeRecord(self.node_ip, rec.prefixes, rec.last)
                owner = PrefixOwner(self.node, self.node_ip).encode()
                compares = [Compare(nkey, rev)]
                ops = [Put(nkey, new.encode()), *(Put(prefix_key(p), owner) for p in rec.prefixes)]
            elif rec is not None and (self.config.mode == "vnet" or rec.prefixes):
                return rec, rev
            elif self.config.mode == "vnet":
                compares = [Compare(nkey, 0)]
                ops = [Put(nkey, NodeRecord(self.node_ip).encode())]
            else:
                cidr = await self._choose_node_cidr()
                new = NodeRecord(self.node_ip, (cidr,), rec.last if rec else {})
                compares = [Compare(nkey, rev), Compare(prefix_key(cidr), 0)]
                ops = [
                    Put(nkey, new.encode()),
                    Put(prefix_key(cidr), PrefixOwner(self.node, self.node_ip).encode()),
                ]
            if not await self._kv.txn(compares, ops):
                failures += 1
                await _backoff(failures)
        raise self._conflict("claim its node CIDR" if self.config.mode == "overlay" else "register")

    async def _choose_node_cidr(self) -> IPv4Network:
        pod, mask = self.config.pod_cidr, self.config.node_mask
        assert pod is not None
        kvs, _ = await self._kv.range(PREFIXES_KEY_PREFIX)
        cidr = next_node_cidr(pod, mask, [prefix_from_key(kv.key) for kv in kvs])
        if cidr is None:
            raise IPAMExhausted(
                f"pod CIDR {pod} has no free /{mask} for node {self.node}: all "
                f"{node_cidr_capacity(pod, mask)} node CIDRs are claimed by other nodes",
                pool=str(pod),
                hint="remove nodes you no longer need, or use a larger pod_cidr or a longer "
                "node_mask",
            )
        return cidr

    async def _allocate(self, owner: str) -> Lease:
        await self._check_config()
        lkey, nkey = lease_key(self.node, owner), node_key(self.node)
        foreign: set[IPv4Address] = set()  # addresses the store says someone else holds
        failures = 0
        while failures < MAX_ATTEMPTS:
            rec, rev = await self._ensure_node()
            leases = await self._read_leases()
            mine = next((x for x in leases if x.owner == owner), None)
            if mine is not None:
                return mine
            used = {lease.ip for lease in leases} | foreign
            pool, ip, claim = await self._choose_address(rec, used, len(leases))
            lease = Lease(owner, ip, pool, self.node)
            prefixes = (*rec.prefixes, pool) if claim else rec.prefixes
            new = NodeRecord(rec.node_ip, prefixes, {**rec.last, pool: ip})
            value = lease.encode()
            compares = [Compare(nkey, rev), Compare(lkey, 0), Compare(ip_key(ip), 0)]
            ops = [Put(nkey, new.encode()), Put(lkey, value), Put(ip_key(ip), value)]
            if claim:
                compares.append(Compare(prefix_key(pool), 0))
                ops.append(Put(prefix_key(pool), PrefixOwner(self.node, self.node_ip).encode()))
                # a hint only (no Compare): where the next block search starts, see pools.py
                ops.append(Put(BLOCK_CURSOR_KEY, str(pool).encode()))
            if await self._kv.txn(compares, ops):
                return lease
            if await self._kv.get(ip_key(ip)) is not None:
                foreign.add(ip)
            failures += 1
            await _backoff(failures)
        raise self._conflict(f"allocate an address for {owner}")

    async def _choose_address(
        self, rec: NodeRecord, used: set[IPv4Address], count: int
    ) -> tuple[IPv4Network, IPv4Address, bool]:
        """(pool, address, whether the pool is a block to claim in the same transaction)."""
        cfg, node = self.config, self.node
        if cfg.mode == "overlay":
            pool = rec.prefixes[0]
            ip = None
            if count < cfg.max_pods:
                excluded = overlay_reserved(pool)
                ip = next_address(pool, used, after=rec.last.get(pool), excluded=excluded)
            if ip is None:
                cap = overlay_capacity(pool)
                why = (
                    f"{cfg.max_pods} pods max"
                    if count >= cfg.max_pods
                    else f"all {cap} usable addresses are in use"
                )
                raise IPAMExhausted(
                    f"node {node}'s pod CIDR {pool} has no free address ({why})",
                    pool=str(pool),
                    hint=f"delete pods on node {node} or raise max_pods"
                    if count >= cfg.max_pods
                    else f"delete pods on node {node} or use a shorter node_mask",
                )
            return pool, ip, False
        if count >= cfg.max_pods:
            raise IPAMExhausted(
                f"node {node} has no free pod address ({cfg.max_pods} pods max)",
                pool=f"node {node}",
                hint=f"delete pods on node {node} or raise max_pods",
            )
        for block in sorted(rec.prefixes):
            ip = next_address(block, used, after=rec.last.get(block))
            if ip is not None:
                return block, ip, False
        block = await self._choose_block()
        return block, block.network_address, True

    async def _choose_block(self) -> IPv4Network:
        cfg = self.config
        kvs, _ = await self._kv.range(PREFIXES_KEY_PREFIX)
        cursor = await self._kv.get(BLOCK_CURSOR_KEY)
        after = None
        if cursor is not None:
            try:
                after = IPv4Network(cursor.value.decode())
            except ValueError:
                after = None  # a damaged hint only costs rotation
        subnet = cfg.pod_subnet
        claimed = [prefix_from_key(kv.key) for kv in kvs]
        block = next_block(subnet, cfg.block_size, cfg.block_reserved, claimed, after)
        if block is None:
            what = f"pod subnet {subnet}" if cfg.pod_cidr is not None else f"VNET {subnet}"
            cap = block_capacity(subnet, cfg.block_size, cfg.block_reserved)
            raise IPAMExhausted(
                f"{what} has no free block of {cfg.block_size} addresses for node {self.node} "
                f"(all {cap} blocks are held by nodes)",
                pool=str(subnet),
                hint="delete pods (a node gives a block back when its last pod is gone), or use "
                "a larger subnet or a smaller block_size",
            )
        return block

    async def _release(self, owner: str) -> Lease | None:
        await self._check_config()
        lkey, nkey = lease_key(self.node, owner), node_key(self.node)
        failures = 0
        while failures < MAX_ATTEMPTS:
            got = await self._kv.get(lkey)
            if got is None:
                return None
            lease = Lease.decode(got.value)
            compares = [Compare(lkey, got.mod_revision)]
            ops: list[Put | Delete] = [Delete(lkey), Delete(ip_key(lease.ip))]
            if self.config.mode == "vnet":
                # The node record serialises this with allocations into the same block, so a
                # block is given back only when it is empty at the moment of the transaction.
                node_got = await self._kv.get(nkey)
                if node_got is not None:
                    rec = NodeRecord.decode(node_got.value)
                    compares.append(Compare(nkey, node_got.mod_revision))
                    rest = [x for x in await self._read_leases() if x.pool == lease.pool]
                    if all(x.owner == owner for x in rest) and lease.pool in rec.prefixes:
                        rec = NodeRecord(
                            rec.node_ip,
                            tuple(p for p in rec.prefixes if p != lease.pool),
                            {p: a for p, a in rec.last.items() if p != lease.pool},
                        )
                        ops.append(Delete(prefix_key(lease.pool)))
                    ops.append(Put(nkey, rec.encode()))
            if await self._kv.txn(compares, ops):
                return lease
            failures += 1
            await _backoff(failures)
        raise self._conflict(f"release {owner}")

    def _conflict(self, what: str) -> IPAMConflict:
        return IPAMConflict(
            f"node {self.node}: could not {what}: the store changed under every one of "
            f"{MAX_ATTEMPTS} attempts",
            hint="is a second agent running for this node? check `flowscope lab status`",
        )


async def all_node_prefixes(kv: KV) -> dict[str, tuple[IPv4Address, list[IPv4Network]]]:
    """node -> (node IP, the prefixes it owns), for routing; watch PREFIXES_KEY_PREFIX for changes
    (a delete event's key still names the prefix: prefix_from_key)."""
    kvs, _ = await kv.range(PREFIXES_KEY_PREFIX)
    out: dict[str, tuple[IPv4Address, list[IPv4Network]]] = {}
    for item in kvs:
        owner = PrefixOwner.decode(item.value)
        _, prefixes = out.setdefault(owner.node, (owner.node_ip, []))
        prefixes.append(prefix_from_key(item.key))
    return {node: (ip, sorted(prefixes)) for node, (ip, prefixes) in sorted(out.items())}


def _check_owner(owner: str) -> None:
    if not isinstance(owner, str) or not owner or not owner.isprintable() or " " in owner:
        raise IPAMConfigError(
            f"lease owner {owner!r} is not valid",
            hint='use "<containerID>/<ifname>", printable and without spaces',
        )


async def _backoff(failures: int) -> None:
    # random, growing pause so that agents that collided do not collide again in lockstep
    await asyncio.sleep(random.uniform(0, 0.001 * min(2**failures, 64)))
