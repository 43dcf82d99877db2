// SPDX-License-Identifier: GPL-2.0
/*
 * NodePort load balancing on a node's uplink (the VNET interface), for traffic that does not come
 * from a pod socket (pod sockets are translated by probes/socklb.c). In the manner of Cilium's
 * bpf_host nodeport code: no iptables, no nftables, no conntrack module.
 *
 *   np_ingress (tc clsact ingress on the uplink, before masquerade):
 *     client -> node_ip:nodePort   a NodePort frontend (np_services {0, nodePort, proto}), or
 *     client -> lb_ip:port         a LoadBalancer one (np_services {lb_ip, port, proto}), picks a
 *                                  backend (random, Maglev table, or the client's affinity),
 *                                  records the connection in np_ct and DNATs:
 *       local backend:  dst -> backend; the client's source address is kept; the stack forwards
 *                       it to the pod's veth like any routed packet.
 *       remote backend: (externalTrafficPolicy Cluster only) dst -> backend AND src -> node_ip:
 *                       snat_port, so the reply comes back through this node. Such a packet has
 *                       a local source address, which the stack would drop as a martian if we
 *                       let it continue up, so it is sent straight back out of the uplink with
 *                       bpf_redirect_neigh (route + neighbour lookup by the kernel, as Cilium's
 *                       fib_redirect does) without ever entering the stack.
 *     backend -> node_ip:snat_port the reply of a remote-backend connection: src -> the
 *                                  frontend (node or LoadBalancer address and port), dst ->
 *                                  client, and out again by bpf_redirect_neigh.
 *   np_egress (tc clsact egress on the uplink, before masquerade):
 *     local backend -> client      the reply of a local-backend connection: src -> the
 *                                  frontend. Masquerade (later filter) then sees a source that is
 *                                  no pod's and leaves it alone.
 *     local pod -> other node's snat port   (overlay mode) a pod's reply to a remote node's
 *                                  NodePort SNAT: returned TC_ACT_OK, which ends the filter chain
 *                                  so masquerade does not rewrite it (the other node's np_ct
 *                                  expects the pod address; it routes pod CIDRs without NAT).
 *
 * Maps:
 *   np_services {addr, port, proto, slot} -> slot 0: count, flags (local/maglev/affinity), service
 *                 id, affinity timeout; slot i in 1..count: backend i {ip, port, remote flag}
 *   np_maglev   service id -> u16 slot[MAGLEV_M] (backend slot per Maglev table entry)
 *   np_ct       LRU {saddr, daddr, sport, dport, proto, dir} -> translation; dir FWD: the client's
 *                 tuple as it arrives -> backend (+ SNAT port); dir REPLY: the reply's tuple as it
 *                 arrives -> the client and the frontend (node or LoadBalancer address, which
 *                 the reply leaves from). Each packet refreshes both halves.
 *   np_affinity LRU {client ip, service id} -> {last used, backend slot, ip, port}
 *   np_nodes    cluster node IPs (the overlay bypass above)
 *   np_config   node IP, uplink ifindex, SNAT port range, native CIDR, timeouts
 *
 * externalTrafficPolicy Local is decided by the control plane: such a frontend holds only this
 * node's backends, so the client's source is always kept, and with none the packet is dropped.
 *
 * Verdicts: TC_ACT_UNSPEC for every packet we pass (later filters run), TC_ACT_REDIRECT after a
 * redirect, TC_ACT_SHOT for a NodePort packet with no backend or that cannot be translated.
 * Malformed input (short headers, bad IHL/tot_len, fragments, other protocols) is passed untouched:
 * nothing here matches it, and the node's own stack owns what is addressed to it.
 * Loops are bounded by constants; slot and table indices are range-checked before use.
 * Not handled: ICMP errors about a translated connection (e.g. fragmentation needed) are not
 * reverse-translated, and IPv6.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

#include "nat_rewrite.h"

#ifndef MAGLEV_M
#define MAGLEV_M 16381
#endif
#ifndef NP_CT_SIZE
#define NP_CT_SIZE 65536
#endif
#define NP_PORT_ATTEMPTS 32

#define NP_DIR_FWD 0
#define NP_DIR_REPLY 1

#define NP_SVC_F_LOCAL 0x1
#define NP_SVC_F_MAGLEV 0x2
#define NP_SVC_F_AFFINITY 0x4
#define NP_BE_F_REMOTE 0x1

#define NP_CT_F_SNAT 0x1    /* remote backend: the reply arrives at ingress, is redirected */
#define NP_CT_F_CLOSING 0x2 /* FIN or RST seen */

#define NP_NSEC 1000000000ULL

struct np_svc_key {
	__be32 addr; /* 0: this node's IP (a NodePort); else a LoadBalancer address */
	__be16 port; /* the nodePort, or the LoadBalancer port */
	__u8 proto;
	__u8 pad;
	__u16 slot; /* 0: the service; 1..count: its backends */
	__u16 pad2;
};

struct np_svc_value {
	__be32 ip;   /* backend slots */
	__be16 port; /* backend slots */
	__u16 count; /* slot 0 */
	__u32 id;    /* slot 0: service id (Maglev table, affinity) */
	__u32 affinity_timeout; /* slot 0: seconds */
	__u8 flags;  /* slot 0: NP_SVC_F_*; backend slots: NP_BE_F_* */
	__u8 pad[3];
};

struct np_maglev_table {
	__u16 slot[MAGLEV_M];
};

struct np_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
};

struct np_ct_entry {
	__be32 to_addr;  /* FWD: backend;       REPLY: client (new destination) */
	__be32 nat_addr; /* FWD: SNAT source (0: none); REPLY: node IP (new source) */
	__be16 to_port;
	__be16 nat_port; /* FWD: SNAT port;     REPLY: nodePort */
	__u8 flags;
	__u8 pad[3];
	__u32 svc_id;
	__u64 created_ns;
	__u64 expires_ns;
};

struct np_affinity_key {
	__be32 client;
	__u32 svc_id;
};

struct np_affinity_value {
	__u64 last_used_ns;
	__be32 ip;
	__be16 port;
	__u16 slot;
};

struct np_config {
	__be32 node_ip; /* 0: not configured, every packet passes */
	__u32 ifindex;  /* the uplink: where redirected packets leave */
	__be32 native_net; /* overlay pod CIDR (0/0 mask: no masquerade bypass) */
	__be32 native_mask;
	__u16 snat_min; /* host order, inclusive */
	__u16 snat_max;
	__u32 timeout_tcp_s;
	__u32 timeout_tcp_syn_s;
	__u32 timeout_tcp_closing_s;
	__u32 timeout_udp_s;
};

/* Counters; keep in sync with probes/nodeport.py NodePortStat. */
enum np_stat {
	NP_STAT_DNAT_LOCAL = 0,
	NP_STAT_DNAT_REMOTE,
	NP_STAT_REVNAT_LOCAL,
	NP_STAT_REVNAT_REMOTE,
	NP_STAT_NEW_CONN,
	NP_STAT_NO_BACKEND,
	NP_STAT_NO_PORT_FREE,
	NP_STAT_CT_INSERT_FAILED,
	NP_STAT_CSUM_FAILED,
	NP_STAT_AFFINITY_HIT,
	NP_STAT_MAGLEV,
	NP_STAT_MASQ_BYPASS,
	NP_STAT_MALFORMED,
	NP_STAT_MAX,
};

BPF_HASH(np_services, struct np_svc_key, struct np_svc_value, 65536);
BPF_F_TABLE("hash", __u32, struct np_maglev_table, np_maglev, 1024, BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", struct np_ct_key, struct np_ct_entry, np_ct, NP_CT_SIZE);
BPF_TABLE("lru_hash", struct np_affinity_key, struct np_affinity_value, np_affinity, 65536);
BPF_HASH(np_nodes, __be32, __u32, 1024);
BPF_ARRAY(np_config, struct np_config, 1);
BPF_PERCPU_ARRAY(np_stats, u64, NP_STAT_MAX);

/* bcc 0.26 declares bpf_redirect_neigh with the pre-5.11 signature; the kernel's takes four. */
static long (*np_redirect_neigh)(__u32 ifindex, void *params, int plen,
				 __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 malformed;
	__u32 l4_off;
	__u32 csum_off;
};

static __always_inline void stat_inc(__u32 idx)
{
	u64 *v = np_stats.lookup(&idx);
	if (v)
		*v += 1;
}

/* 1: a TCP or UDP packet whose tuple is in *p; 0: anything else (passed untouched). */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return 0;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return 0;
	__u32 ihl = ip.ihl * 4;
	__u32 tot_len = bpf_ntohs(ip.tot_len);
	if (tot_len == 0 && skb->gso_size)
		tot_len = skb->len - ETH_HLEN;
	if (ip.version != 4 || ihl < sizeof(struct iphdr) || tot_len < ihl ||
	    ETH_HLEN + tot_len > skb->len || (bpf_ntohs(ip.frag_off) & IP_FRAG_MASK)) {
		p->malformed = 1;
		return 0;
	}
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->l4_off = ETH_HLEN + ihl;
	if (ip.protocol == IPPROTO_TCP) {
		struct tcphdr th;
		if (tot_len < ihl + sizeof(th) ||
		    bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0) {
			p->malformed = 1;
			return 0;
		}
		p->sport = th.source;
		p->dport = th.dest;
		p->tcp_flags = ((__u8 *)&th)[13];
		p->csum_off = p->l4_off + offsetof(struct tcphdr, check);
	} else {
		struct udphdr uh;
		if (tot_len < ihl + sizeof(uh) ||
		    bpf_skb_load_bytes(skb, p->l4_off, &uh, sizeof(uh)) < 0) {
			p->malformed = 1;
			return 0;
		}
		p->sport = uh.source;
		p->dport = uh.dest;
		p->csum_off = p->l4_off + offsetof(struct udphdr, check);
	}
	return 1;
}

static __always_inline void refresh(struct np_ct_entry *e, const struct np_config *cfg,
				    const struct pkt *p, __u64 now)
{
	__u32 s;
	__u8 flags = e->flags;

	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			flags |= NP_CT_F_CLOSING;
		if (flags & NP_CT_F_CLOSING)
			s = cfg->timeout_tcp_closing_s;
		else if (p->tcp_flags & TCP_FLAG_ACK)
			s = cfg->timeout_tcp_s;
		else
			s = cfg->timeout_tcp_syn_s;
	} else {
		s = cfg->timeout_udp_s;
	}
	e->flags = flags;
	e->expires_ns = now + (__u64)s * NP_NSEC;
}

/* Replace an address and a port at the given offsets, fixing the checksums (nat_rewrite.h). */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 addr_off,
				   __be32 old_addr, __be32 new_addr, __u32 port_off,
				   __be16 old_port, __be16 new_port)
{
	return nat_rewrite(skb, p->proto, p->csum_off, addr_off, old_addr, new_addr, port_off,
			   old_port, new_port);
}

/* src and dst both rewritten (TCP and UDP ports sit at the same offsets). */
static __always_inline int rewrite_both(struct __sk_buff *skb, const struct pkt *p, __be32 saddr,
					__be16 sport, __be32 daddr, __be16 dport)
{
	if (rewrite(skb, p, IP_SADDR_OFF, p->saddr, saddr, p->l4_off, p->sport, sport) < 0)
		return -1;
	return rewrite(skb, p, IP_DADDR_OFF, p->daddr, daddr, p->l4_off + 2, p->dport, dport);
}

/* A well-mixed 32-bit hash of the client's side of the tuple (murmur3's finaliser). */
static __always_inline __u32 flow_hash(const struct pkt *p)
{
	__u32 h = p->saddr ^ ((__u32)p->sport << 16 | p->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The backend slot (1..count) for a new connection, or 0 when the service has none. */
static __always_inline __u16 select_slot(const struct np_svc_value *svc, const struct pkt *p,
					 __be32 fe_addr, __u64 now)
{
	__u16 count = svc->count;
	__u16 slot = 0;

	if (count == 0)
		return 0;
	if (svc->flags & NP_SVC_F_AFFINITY) {
		struct np_affinity_key ak = {.client = p->saddr, .svc_id = svc->id};
		struct np_affinity_value *av = np_affinity.lookup(&ak);
		if (av && av->slot >= 1 && av->slot <= count &&
		    now - av->last_used_ns <= (__u64)svc->affinity_timeout * NP_NSEC) {
			struct np_svc_key bk = {
				.addr = fe_addr, .port = p->dport, .proto = p->proto, .slot = av->slot};
			struct np_svc_value *be = np_services.lookup(&bk);
			/* the slot still holds that backend (backends may have moved) */
			if (be && be->ip == av->ip && be->port == av->port) {
				av->last_used_ns = now;
				stat_inc(NP_STAT_AFFINITY_HIT);
				return av->slot;
			}
		}
	}
	if (svc->flags & NP_SVC_F_MAGLEV) {
		__u32 id = svc->id;
		struct np_maglev_table *t = np_maglev.lookup(&id);
		if (t) {
			__u32 idx = flow_hash(p) % MAGLEV_M;
			asm volatile("" : "+r"(idx));
			if (idx < MAGLEV_M) {
				__u16 s = t->slot[idx];
				if (s >= 1 && s <= count) {
					slot = s;
					stat_inc(NP_STAT_MAGLEV);
				}
			}
		}
	}
	if (!slot)
		slot = bpf_get_prandom_u32() % count + 1;
	if (svc->flags & NP_SVC_F_AFFINITY) {
		struct np_svc_key bk = {
			.addr = fe_addr, .port = p->dport, .proto = p->proto, .slot = slot};
		struct np_svc_value *be = np_services.lookup(&bk);
		if (be) {
			struct np_affinity_key ak = {.client = p->saddr, .svc_id = svc->id};
			struct np_affinity_value av = {
				.last_used_ns = now, .ip = be->ip, .port = be->port, .slot = slot};
			np_affinity.update(&ak, &av);
		}
	}
	return slot;
}

/* Reserve an SNAT port for a remote-backend connection: the REPLY entry is inserted with
 * BPF_NOEXIST (atomic against other CPUs). Returns the port (network order) or 0. */
static __always_inline __be16 reserve_snat(const struct np_config *cfg, struct np_ct_key *rkey,
					   struct np_ct_entry *rval)
{
	__u32 span = (__u32)cfg->snat_max - cfg->snat_min + 1;

	for (int i = 0; i < NP_PORT_ATTEMPTS; i++) {
		__u32 cand = cfg->snat_min + bpf_get_prandom_u32() % span;
		rkey->dport = bpf_htons((__u16)cand);
		int err = np_ct.insert(rkey, rval);
		if (err == 0)
			return rkey->dport;
		if (err != -EEXIST) {
			stat_inc(NP_STAT_CT_INSERT_FAILED);
			return 0;
		}
	}
	stat_inc(NP_STAT_NO_PORT_FREE);
	return 0;
}

/* Create both halves for a new connection to backend `be`. Fills *fwd. 0 on success. */
static __always_inline int new_conn(const struct np_config *cfg, const struct pkt *p,
				    struct np_ct_key *fkey, const struct np_svc_value *svc,
				    const struct np_svc_value *be, struct np_ct_entry *fwd, __u64 now)
{
	struct np_ct_key rkey = {};
	struct np_ct_entry rval = {};

	rkey.saddr = be->ip;
	rkey.sport = be->port;
	rkey.proto = p->proto;
	rkey.dir = NP_DIR_REPLY;
	rval.to_addr = p->saddr;
	rval.to_port = p->sport;
	rval.nat_addr = p->daddr; /* the frontend: node or LoadBalancer address */
	rval.nat_port = p->dport;
	rval.svc_id = svc->id;
	rval.created_ns = now;
	refresh(&rval, cfg, p, now);

	fwd->to_addr = be->ip;
	fwd->to_port = be->port;
	fwd->svc_id = svc->id;
	fwd->created_ns = now;
	if (be->flags & NP_BE_F_REMOTE) {
		rkey.daddr = cfg->node_ip;
		rval.flags |= NP_CT_F_SNAT;
		__be16 port = reserve_snat(cfg, &rkey, &rval);
		if (!port)
			return -1;
		fwd->nat_addr = cfg->node_ip;
		fwd->nat_port = port;
		fwd->flags = NP_CT_F_SNAT;
	} else {
		rkey.daddr = p->saddr;
		rkey.dport = p->sport;
		if (np_ct.update(&rkey, &rval) < 0) {
			stat_inc(NP_STAT_CT_INSERT_FAILED);
			return -1;
		}
	}
	fwd->expires_ns = rval.expires_ns;
	fwd->flags |= rval.flags & NP_CT_F_CLOSING;
	if (np_ct.update(fkey, fwd) < 0) {
		np_ct.delete(&rkey);
		stat_inc(NP_STAT_CT_INSERT_FAILED);
		return -1;
	}
	stat_inc(NP_STAT_NEW_CONN);
	return 0;
}

/* The REPLY key of an existing FWD entry (to refresh it together). */
static __always_inline void reply_key_of(const struct np_config *cfg, const struct pkt *p,
					 const struct np_ct_entry *fwd, struct np_ct_key *rkey)
{
	rkey->saddr = fwd->to_addr;
	rkey->sport = fwd->to_port;
	rkey->proto = p->proto;
	rkey->dir = NP_DIR_REPLY;
	if (fwd->flags & NP_CT_F_SNAT) {
		rkey->daddr = cfg->node_ip;
		rkey->dport = fwd->nat_port;
	} else {
		rkey->daddr = p->saddr;
		rkey->dport = p->sport;
	}
}

/* A reply of a remote-backend connection arriving for node_ip:snat_port. */
static __always_inline int ingress_reply(struct __sk_buff *skb, const struct np_config *cfg,
					 const struct pkt *p, __u64 now)
{
	struct np_ct_key rkey = {.saddr = p->saddr,
				 .daddr = p->daddr,
				 .sport = p->sport,
				 .dport = p->dport,
				 .proto = p->proto,
				 .dir = NP_DIR_REPLY};
	struct np_ct_entry *rev = np_ct.lookup(&rkey);

	if (!rev || !(rev->flags & NP_CT_F_SNAT) || rev->expires_ns < now)
		return -1; /* not ours */
	__be32 client = rev->to_addr;
	__be16 client_port = rev->to_port;
	__be32 fe_addr = rev->nat_addr;
	__be16 fe_port = rev->nat_port;
	refresh(rev, cfg, p, now);
	struct np_ct_key fkey = {.saddr = client,
				 .daddr = fe_addr,
				 .sport = client_port,
				 .dport = fe_port,
				 .proto = p->proto,
				 .dir = NP_DIR_FWD};
	struct np_ct_entry *fwd = np_ct.lookup(&fkey);
	if (fwd)
		refresh(fwd, cfg, p, now);
	if (rewrite_both(skb, p, fe_addr, fe_port, client, client_port) < 0) {
		stat_inc(NP_STAT_CSUM_FAILED);
		return TC_ACT_SHOT;
	}
	stat_inc(NP_STAT_REVNAT_REMOTE);
	/* src is now our own address: out of the uplink again, never up the stack */
	return np_redirect_neigh(cfg->ifindex, NULL, 0, 0);
}

int np_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct np_config *cfg = np_config.lookup(&zero);
	struct pkt p = {};

	if (!cfg || !cfg->node_ip || cfg->snat_min > cfg->snat_max || cfg->snat_min == 0)
		return TC_ACT_UNSPEC;
	if (!parse(skb, &p)) {
		if (p.malformed)
			stat_inc(NP_STAT_MALFORMED);
		return TC_ACT_UNSPEC;
	}

	__u64 now = bpf_ktime_get_ns();
	/* NodePorts live at the node's IP (key addr 0); any other address can only be one of the
	 * LoadBalancer addresses the fabric routes to the nodes (key addr = that address) */
	__be32 fe_addr = 0;
	if (p.daddr != cfg->node_ip) {
		fe_addr = p.daddr;
	} else {
		__u16 dport = bpf_ntohs(p.dport);
		if (dport >= cfg->snat_min && dport <= cfg->snat_max) {
			int verdict = ingress_reply(skb, cfg, &p, now);
			if (verdict >= 0)
				return verdict;
		}
	}

	struct np_svc_key skey = {.addr = fe_addr, .port = p.dport, .proto = p.proto, .slot = 0};
	struct np_svc_value *svc = np_services.lookup(&skey);
	if (!svc)
		return TC_ACT_UNSPEC; /* not a frontend: the node's own or routed traffic */

	struct np_ct_key fkey = {.saddr = p.saddr,
				 .daddr = p.daddr,
				 .sport = p.sport,
				 .dport = p.dport,
				 .proto = p.proto,
				 .dir = NP_DIR_FWD};
	struct np_ct_entry fwd = {};
	struct np_ct_entry *cur = np_ct.lookup(&fkey);
	/* a SYN on a closing tuple is a new connection: choose again */
	int fresh_syn = p.proto == IPPROTO_TCP &&
			(p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	if (cur && cur->expires_ns >= now && cur->svc_id == svc->id &&
	    !(fresh_syn && (cur->flags & NP_CT_F_CLOSING))) {
		struct np_ct_key rkey = {};
		reply_key_of(cfg, &p, cur, &rkey);
		struct np_ct_entry *rev = np_ct.lookup(&rkey);
		refresh(cur, cfg, &p, now);
		if (rev)
			refresh(rev, cfg, &p, now);
		fwd = *cur;
	} else {
		if (cur) {
			struct np_ct_key rkey = {};
			reply_key_of(cfg, &p, cur, &rkey);
			np_ct.delete(&rkey);
		}
		__u16 slot = select_slot(svc, &p, fe_addr, now);
		if (!slot) {
			stat_inc(NP_STAT_NO_BACKEND);
			return TC_ACT_SHOT;
		}
		struct np_svc_key bkey = {
			.addr = fe_addr, .port = p.dport, .proto = p.proto, .slot = slot};
		struct np_svc_value *be = np_services.lookup(&bkey);
		if (!be) {
			stat_inc(NP_STAT_NO_BACKEND);
			return TC_ACT_SHOT;
		}
		if (new_conn(cfg, &p, &fkey, svc, be, &fwd, now) < 0)
			return TC_ACT_SHOT;
	}

	if (fwd.flags & NP_CT_F_SNAT) {
		if (rewrite_both(skb, &p, fwd.nat_addr, fwd.nat_port, fwd.to_addr, fwd.to_port) < 0) {
			stat_inc(NP_STAT_CSUM_FAILED);
			return TC_ACT_SHOT;
		}
		stat_inc(NP_STAT_DNAT_REMOTE);
		/* src is now our own address: a martian to our stack, so straight back out */
		return np_redirect_neigh(cfg->ifindex, NULL, 0, 0);
	}
	if (rewrite(skb, &p, IP_DADDR_OFF, p.daddr, fwd.to_addr, p.l4_off + 2, p.dport,
		    fwd.to_port) < 0) {
		stat_inc(NP_STAT_CSUM_FAILED);
		return TC_ACT_SHOT;
	}
	stat_inc(NP_STAT_DNAT_LOCAL);
	return TC_ACT_UNSPEC; /* routed to the pod by the stack */
}

int np_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct np_config *cfg = np_config.lookup(&zero);
	struct pkt p = {};

	if (!cfg || !cfg->node_ip)
		return TC_ACT_UNSPEC;
	if (!parse(skb, &p) || p.saddr == cfg->node_ip)
		return TC_ACT_UNSPEC;

	struct np_ct_key rkey = {.saddr = p.saddr,
				 .daddr = p.daddr,
				 .sport = p.sport,
				 .dport = p.dport,
				 .proto = p.proto,
				 .dir = NP_DIR_REPLY};
	__u64 now = bpf_ktime_get_ns();
	struct np_ct_entry *rev = np_ct.lookup(&rkey);
	if (rev && !(rev->flags & NP_CT_F_SNAT) && rev->expires_ns >= now) {
		__be32 fe_addr = rev->nat_addr;
		__be16 fe_port = rev->nat_port;
		refresh(rev, cfg, &p, now);
		struct np_ct_key fkey = {.saddr = p.daddr,
					 .daddr = fe_addr,
					 .sport = p.dport,
					 .dport = fe_port,
					 .proto = p.proto,
					 .dir = NP_DIR_FWD};
		struct np_ct_entry *fwd = np_ct.lookup(&fkey);
		if (fwd)
			refresh(fwd, cfg, &p, now);
		if (rewrite(skb, &p, IP_SADDR_OFF, p.saddr, fe_addr, p.l4_off, p.sport, fe_port) < 0) {
			stat_inc(NP_STAT_CSUM_FAILED);
			return TC_ACT_SHOT;
		}
		stat_inc(NP_STAT_REVNAT_LOCAL);
		return TC_ACT_UNSPEC;
	}

	/* overlay: a local pod answering another node's NodePort SNAT keeps its address */
	if (cfg->native_mask && (p.saddr & cfg->native_mask) == cfg->native_net) {
		__u16 dport = bpf_ntohs(p.dport);
		__be32 dst = p.daddr;
		if (dport >= cfg->snat_min && dport <= cfg->snat_max && np_nodes.lookup(&dst)) {
			stat_inc(NP_STAT_MASQ_BYPASS);
			return TC_ACT_OK; /* ends the filter chain: masquerade does not run */
		}
	}
	return TC_ACT_UNSPEC;
}
