"""IPAM: pod addresses for every node, in the two modes of Azure CNI, kept in the cluster store.

Modes
- overlay: each node claims one /node_mask (default /24) of a private pod CIDR (default
  10.244.0.0/16) on first use; pods get addresses from it, at most max_pods (250) a node. The
  network address, the first address (kept for a node gateway) and the broadcast address are never
  handed out. Node CIDRs are kept for the node's lifetime.
- vnet: pod addresses come from the VNET itself (minus `reserved`, by default its first /24 for
  nodes, gateway and outside hosts) or from a separate pod subnet, handed to nodes in blocks of
  block_size (default 16) addresses on demand; a node gives a block back with its last pod. Every
  address of a block is usable (pods are /32s); no block contains a reserved address (the
  subnet's network and broadcast address, the reserved ranges).

Guarantees
- Persistent: everything lives in the store; a new IPAM object (an agent restart) sees it all.
- Never one address twice: each claim (node CIDR, block, address) is a transaction whose Compare
  requires the claimed key to be absent, so of two agents racing for it exactly one wins; the
  loser re-reads and chooses again, at most MAX_ATTEMPTS times (then IPAMConflict). Within one
  agent an asyncio lock serialises calls.
- Exhaustion raises IPAMExhausted at once, naming the full pool and what to do.
- Addresses and blocks are handed out in rotation (see pools.py for why).

Store layout (JSON values; under EtcdKV's cluster prefix, if any)
    /flowscope/ipam/config                 the layout every agent must agree on (first one writes)
    /flowscope/ipam/nodes/<node>           {"node_ip", "prefixes": [...], "last": {pool: ip}};
                                           rewritten by every change of the node's leases or
                                           prefixes: its mod_revision is the node's CAS point
    /flowscope/ipam/prefixes/<a.b.c.d>_<len>   {"node", "node_ip"}: who owns a node CIDR or block
                                           (PREFIXES_KEY_PREFIX: routing watches this)
    /flowscope/ipam/ips/<a.b.c.d>          the lease holding the address (global uniqueness)
    /flowscope/ipam/leases/<node>/<owner>  {"owner", "ip", "pool", "node"}: lookup by owner
    /flowscope/ipam/block-cursor           "a.b.c.d/len": the block claimed last (vnet rotation)
A lease is written (lease key, ip key, node record; plus prefix key and cursor when it claims a
block) and removed (plus, vnet, the prefix key of a block left empty) in one transaction each.

Use (node agent)
    ipam = IPAM(kv, IPAMConfig.from_cluster_info(info), node, node_ip)
    await ipam.ensure_node()                       # at start: overlay claims the node CIDR
    lease = await ipam.allocate(f"{container_id}/{ifname}")     # CNI ADD (idempotent)
    await ipam.release(f"{container_id}/{ifname}")              # CNI DEL (idempotent)
    routes = await all_node_prefixes(kv)           # node -> (node_ip, prefixes)
"""

from dataplane.ipam.allocator import IPAM, MAX_ATTEMPTS, all_node_prefixes
from dataplane.ipam.config import IPAMConfig, validate_config
from dataplane.ipam.errors import IPAMConfigError, IPAMConflict, IPAMExhausted
from dataplane.ipam.layout import PREFIXES_KEY_PREFIX, Lease, PrefixOwner, prefix_from_key

__all__ = [
    "IPAM",
    "MAX_ATTEMPTS",
    "PREFIXES_KEY_PREFIX",
    "IPAMConfig",
    "IPAMConfigError",
    "IPAMConflict",
    "IPAMExhausted",
    "Lease",
    "PrefixOwner",
    "all_node_prefixes",
    "prefix_from_key",
    "validate_config",
]
