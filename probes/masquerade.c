// SPDX-License-Identifier: GPL-2.0
/*
 * Overlay-mode masquerading (stateful SNAT to the node IP) for a node's uplink, in the manner of
 * Cilium's BPF masquerading: no iptables, no nftables, no conntrack module.
 *
 *   masq_egress  (tc clsact egress on the uplink):  pod -> outside the native CIDR
 *                rewrites the source to node_ip:nat_port (TCP/UDP) or the echo id (ICMP).
 *   masq_ingress (tc clsact ingress on the uplink): outside -> node_ip:nat_port
 *                rewrites the destination back to pod_ip:pod_port.
 *
 * One LRU hash, nat_v4, holds both directions of every mapping (Cilium's TUPLE_F_OUT/IN):
 *   OUT key {pod, remote, pod_port, remote_port}      -> {node_ip, nat_port}
 *   IN  key {remote, node_ip, remote_port, nat_port}  -> {pod, pod_port}
 * For ICMP echo the "port" is the echo id: OUT {sport=id, dport=0}, IN {sport=0, dport=nat_id}.
 * Each packet refreshes both halves and repairs the other half if the LRU evicted it, so a pair
 * expires together; user space (dataplane/maps/natmap.py) deletes entries past expires_ns, and
 * ingress ignores expired entries so behaviour does not depend on when that GC last ran.
 *
 * The same compiled object serves every node: node IP, native CIDR, port range and timeouts come
 * from the masq_config array, written by the loader (probes/masquerade.py) before attaching.
 *
 * Verdicts: TC_ACT_UNSPEC ("no opinion", so later filters on the same hook still run) for every
 * packet we pass, translated or not; TC_ACT_SHOT only for pod traffic that would leave the cluster
 * untranslated (it would leak a pod-CIDR source onto the VNET, which cannot route replies back).
 *
 * Malformed input, decided:
 *   egress, pod source to outside: truncated IP/L4 header, IHL < 5, tot_len shorter than the
 *     header or longer than the packet, IP fragments (no L4 header to translate in non-first
 *     fragments), protocols other than TCP/UDP/ICMP echo  -> dropped and counted.
 *   egress, anything else (node's own traffic, pod-to-pod)  -> passed untouched.
 *   ingress: anything we cannot parse or that matches no live mapping -> passed untouched (the
 *     node's own IP stack validates and owns it); fragments to the node IP are counted.
 * Nothing is rewritten before every header it depends on has been read and checked.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

#include "nat_rewrite.h"

#ifndef NAT_MAP_SIZE
#define NAT_MAP_SIZE 65536
#endif
/* How many candidate ports a new mapping tries before giving up (counted as no_port_free).
 * A constant bound keeps the verifier happy; Cilium uses 32 (SNAT_COLLISION_RETRIES). */
#define NAT_PORT_ATTEMPTS 32

#define NAT_DIR_OUT 0
#define NAT_DIR_IN 1

#define NAT_F_CLOSING 0x1 /* a FIN or RST was seen: short timeout from now on */

#define MASQ_NSEC_PER_SEC 1000000000ULL

struct nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* NAT_DIR_OUT or NAT_DIR_IN */
	__u8 pad[2];
};

struct nat_entry {
	__be32 addr; /* OUT: the node IP (new source); IN: the pod IP (original source) */
	__be16 port; /* OUT: the NAT port;           IN: the pod's port or echo id      */
	__u8 flags;  /* NAT_F_* */
	__u8 pad;
	__u64 created_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 expires_ns;
};

struct masq_config {
	__be32 node_ip; /* 0: not configured, every packet passes untouched */
	__be32 native_net;
	__be32 native_mask;
	__u16 port_min; /* host order, inclusive */
	__u16 port_max;
	__u32 timeout_tcp_s; /* established */
	__u32 timeout_tcp_syn_s;
	__u32 timeout_tcp_closing_s;
	__u32 timeout_udp_s;
	__u32 timeout_icmp_s;
	__u32 pad;
};

/* Counters; keep in sync with probes/masquerade.py MasqStat. */
enum masq_stat {
	MASQ_STAT_SNAT_PACKETS = 0,
	MASQ_STAT_RNAT_PACKETS,
	MASQ_STAT_NEW_MAPPINGS,
	MASQ_STAT_NO_PORT_FREE,
	MASQ_STAT_MAP_INSERT_FAILED,
	MASQ_STAT_DROP_FRAGMENT,
	MASQ_STAT_DROP_MALFORMED,
	MASQ_STAT_DROP_UNSUPPORTED,
	MASQ_STAT_INGRESS_FRAGMENT,
	MASQ_STAT_INGRESS_MALFORMED,
	MASQ_STAT_RNAT_MISS,
	MASQ_STAT_RNAT_EXPIRED,
	MASQ_STAT_REPAIRED,
	MASQ_STAT_PORT_COLLISION,
	MASQ_STAT_CSUM_FAILED,
	MASQ_STAT_MAX,
};

BPF_TABLE("lru_hash", struct nat_key, struct nat_entry, nat_v4, NAT_MAP_SIZE);
BPF_ARRAY(masq_config, struct masq_config, 1);
BPF_PERCPU_ARRAY(masq_stats, u64, MASQ_STAT_MAX);

/* What the parser extracted from one IPv4 packet. Ports are network order. */
struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP: echo id on the pod side */
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 malformed; /* 1: cannot be translated safely */
	__u8 fragment;
	__u32 l4_off;
	__u32 csum_off; /* offset of the L4 checksum */
	__be16 l4_csum; /* its value (UDP 0 = none) */
};

static __always_inline void stat_inc(__u32 idx)
{
	u64 *v = masq_stats.lookup(&idx);
	if (v)
		*v += 1;
}

static __always_inline int in_native(const struct masq_config *cfg, __be32 addr)
{
	return (addr & cfg->native_mask) == cfg->native_net;
}

/* Read the IPv4 and L4 headers with bpf_skb_load_bytes (works for non-linear skbs and needs no
 * packet-pointer bounds proofs). Returns 0 when not IPv4 at all, 1 when *p is filled in (check
 * p->malformed / p->fragment). */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return 0; /* shorter than an IP header: addresses unknown, not ours to judge */

	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;

	__u32 ihl = ip.ihl * 4;
	__u32 tot_len = bpf_ntohs(ip.tot_len);
	/* BIG TCP: a GSO packet above 64 KiB carries tot_len 0; its real length is the skb's. */
	if (tot_len == 0 && skb->gso_size)
		tot_len = skb->len - ETH_HLEN;
	if (ip.version != 4 || ihl < sizeof(struct iphdr) || tot_len < ihl ||
	    ETH_HLEN + tot_len > skb->len) {
		p->malformed = 1;
		return 1;
	}
	if (bpf_ntohs(ip.frag_off) & IP_FRAG_MASK) {
		p->fragment = 1;
		return 1;
	}
	p->l4_off = ETH_HLEN + ihl;

	if (ip.protocol == IPPROTO_TCP) {
		struct tcphdr th;
		if (tot_len < ihl + sizeof(th) ||
		    bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0) {
			p->malformed = 1;
			return 1;
		}
		p->sport = th.source;
		p->dport = th.dest;
		p->tcp_flags = ((__u8 *)&th)[13];
		p->csum_off = p->l4_off + offsetof(struct tcphdr, check);
		p->l4_csum = th.check;
	} else if (ip.protocol == IPPROTO_UDP) {
		struct udphdr uh;
		if (tot_len < ihl + sizeof(uh) ||
		    bpf_skb_load_bytes(skb, p->l4_off, &uh, sizeof(uh)) < 0) {
			p->malformed = 1;
			return 1;
		}
		p->sport = uh.source;
		p->dport = uh.dest;
		p->csum_off = p->l4_off + offsetof(struct udphdr, check);
		p->l4_csum = uh.check;
	} else if (ip.protocol == IPPROTO_ICMP) {
		struct icmphdr ih;
		if (tot_len < ihl + sizeof(ih) ||
		    bpf_skb_load_bytes(skb, p->l4_off, &ih, sizeof(ih)) < 0) {
			p->malformed = 1;
			return 1;
		}
		p->icmp_type = ih.type;
		p->csum_off = p->l4_off + offsetof(struct icmphdr, checksum);
		p->l4_csum = ih.checksum;
		/* The echo id plays the pod-side port; set per direction by the caller. */
		p->sport = ih.un.echo.id;
		p->dport = ih.un.echo.id;
	}
	return 1;
}

/* Lifetime for an entry that this packet refreshes; sets NAT_F_CLOSING on FIN/RST. */
static __always_inline __u64 lifetime_ns(const struct masq_config *cfg, const struct pkt *p,
					 __u8 *flags)
{
	__u32 s;

	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			*flags |= NAT_F_CLOSING;
		else if ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			*flags &= ~NAT_F_CLOSING; /* a new connection reuses the tuple */
		if (*flags & NAT_F_CLOSING)
			s = cfg->timeout_tcp_closing_s;
		else if (p->tcp_flags & TCP_FLAG_ACK)
			s = cfg->timeout_tcp_s;
		else
			s = cfg->timeout_tcp_syn_s; /* unanswered SYNs must not pin a port for hours */
	} else if (p->proto == IPPROTO_UDP) {
		s = cfg->timeout_udp_s;
	} else {
		s = cfg->timeout_icmp_s;
	}
	return (__u64)s * MASQ_NSEC_PER_SEC;
}

static __always_inline void refresh(struct nat_entry *e, const struct masq_config *cfg,
				    const struct pkt *p, __u64 now)
{
	__u8 flags = e->flags;
	__u64 expires = now + lifetime_ns(cfg, p, &flags);

	e->flags = flags;
	e->expires_ns = expires;
}

/* Allocate a NAT port for a new flow: reserve the IN entry with BPF_NOEXIST (atomic against other
 * CPUs), then publish the OUT entry. The first candidate is the pod's own port when it lies in the
 * range (keeps ports stable like Linux's MASQUERADE); later candidates are random. Returns the
 * NAT port (network order) or 0 when none could be reserved. */
static __always_inline __be16 new_mapping(const struct masq_config *cfg, const struct pkt *p,
					  struct nat_key *fkey, __u64 now)
{
	struct nat_key rkey = {};
	struct nat_entry rval = {};
	struct nat_entry fval = {};
	__u32 span = (__u32)cfg->port_max - cfg->port_min + 1;
	__u32 cand = bpf_ntohs(fkey->sport);
	__be16 nat_port = 0;

	rkey.saddr = p->daddr;
	rkey.daddr = cfg->node_ip;
	rkey.sport = p->proto == IPPROTO_ICMP ? 0 : p->dport;
	rkey.proto = p->proto;
	rkey.dir = NAT_DIR_IN;
	rval.addr = p->saddr;
	rval.port = fkey->sport;
	rval.created_ns = now;
	refresh(&rval, cfg, p, now);

	if (cand < cfg->port_min || cand > cfg->port_max)
		cand = cfg->port_min + bpf_get_prandom_u32() % span;

	for (int i = 0; i < NAT_PORT_ATTEMPTS; i++) {
		rkey.dport = bpf_htons((__u16)cand);
		int err = nat_v4.insert(&rkey, &rval);
		if (err == 0) {
			nat_port = rkey.dport;
			break;
		}
		if (err != -EEXIST) {
			stat_inc(MASQ_STAT_MAP_INSERT_FAILED);
			return 0;
		}
		cand = cfg->port_min + bpf_get_prandom_u32() % span;
	}
	if (!nat_port) {
		stat_inc(MASQ_STAT_NO_PORT_FREE);
		return 0;
	}

	fval.addr = cfg->node_ip;
	fval.port = nat_port;
	fval.created_ns = now;
	fval.flags = rval.flags;
	fval.expires_ns = rval.expires_ns;
	int err = nat_v4.insert(fkey, &fval);
	if (err == 0) {
		stat_inc(MASQ_STAT_NEW_MAPPINGS);
		return nat_port;
	}
	/* Another CPU mapped the same flow first (or the insert failed): give our port back. */
	nat_v4.delete(&rkey);
	if (err != -EEXIST) {
		stat_inc(MASQ_STAT_MAP_INSERT_FAILED);
		return 0;
	}
	struct nat_entry *won = nat_v4.lookup(fkey);
	return won ? won->port : 0;
}

/* The NAT port for this egress packet's flow: the existing mapping (its IN half checked, and
 * repaired if the LRU evicted it) or a new one. 0: none. */
static __always_inline __be16 egress_mapping(const struct masq_config *cfg, const struct pkt *p,
					     __u64 now)
{
	struct nat_key fkey = {};
	struct nat_key rkey = {};

	fkey.saddr = p->saddr;
	fkey.daddr = p->daddr;
	fkey.sport = p->sport;
	fkey.dport = p->proto == IPPROTO_ICMP ? 0 : p->dport;
	fkey.proto = p->proto;
	fkey.dir = NAT_DIR_OUT;

	struct nat_entry *fwd = nat_v4.lookup(&fkey);
	if (!fwd)
		return new_mapping(cfg, p, &fkey, now);

	rkey.saddr = p->daddr;
	rkey.daddr = cfg->node_ip;
	rkey.sport = p->proto == IPPROTO_ICMP ? 0 : p->dport;
	rkey.dport = fwd->port;
	rkey.proto = p->proto;
	rkey.dir = NAT_DIR_IN;

	struct nat_entry *rev = nat_v4.lookup(&rkey);
	if (rev && rev->addr == p->saddr && rev->port == p->sport) {
		refresh(fwd, cfg, p, now);
		refresh(rev, cfg, p, now);
		return fwd->port;
	}
	if (!rev) {
		struct nat_entry rval = {};
		rval.addr = p->saddr;
		rval.port = p->sport;
		rval.created_ns = now;
		rval.flags = fwd->flags;
		refresh(&rval, cfg, p, now);
		if (nat_v4.insert(&rkey, &rval) == 0) {
			stat_inc(MASQ_STAT_REPAIRED);
			refresh(fwd, cfg, p, now);
			return fwd->port;
		}
	}
	/* Our port now belongs to another flow (our IN half expired and was reused): start over. */
	stat_inc(MASQ_STAT_PORT_COLLISION);
	nat_v4.delete(&fkey);
	return new_mapping(cfg, p, &fkey, now);
}

/* Replace an address and a port at the given offsets, fixing the checksums (nat_rewrite.h). */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 addr_off,
				   __be32 old_addr, __be32 new_addr, __u32 port_off,
				   __be16 old_port, __be16 new_port)
{
	return nat_rewrite(skb, p->proto, p->csum_off, addr_off, old_addr, new_addr, port_off,
			   old_port, new_port);
}

int masq_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct masq_config *cfg = masq_config.lookup(&zero);
	struct pkt p = {};

	if (!cfg || !cfg->node_ip || cfg->port_min > cfg->port_max)
		return TC_ACT_UNSPEC;
	if (!parse(skb, &p))
		return TC_ACT_UNSPEC;
	/* Only pod traffic leaving the native-routing CIDR is ours. */
	if (!in_native(cfg, p.saddr) || in_native(cfg, p.daddr) || p.saddr == cfg->node_ip)
		return TC_ACT_UNSPEC;

	if (p.malformed) {
		stat_inc(MASQ_STAT_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	if (p.fragment) {
		stat_inc(MASQ_STAT_DROP_FRAGMENT);
		return TC_ACT_SHOT;
	}
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP &&
	    !(p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHO)) {
		stat_inc(MASQ_STAT_DROP_UNSUPPORTED);
		return TC_ACT_SHOT;
	}

	__u64 now = bpf_ktime_get_ns();
	__be16 nat_port = egress_mapping(cfg, &p, now);
	if (!nat_port)
		return TC_ACT_SHOT; /* counted where it failed */

	/* The echo id sits where a TCP/UDP source port would. */
	__u32 port_off = p.proto == IPPROTO_ICMP ? p.l4_off + offsetof(struct icmphdr, un.echo.id)
						 : p.l4_off + offsetof(struct udphdr, source);
	if (rewrite(skb, &p, IP_SADDR_OFF, p.saddr, cfg->node_ip, port_off, p.sport, nat_port) < 0) {
		stat_inc(MASQ_STAT_CSUM_FAILED);
		return TC_ACT_SHOT;
	}
	stat_inc(MASQ_STAT_SNAT_PACKETS);
	return TC_ACT_UNSPEC;
}

int masq_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct masq_config *cfg = masq_config.lookup(&zero);
	struct pkt p = {};

	if (!cfg || !cfg->node_ip || cfg->port_min > cfg->port_max)
		return TC_ACT_UNSPEC;
	if (!parse(skb, &p) || p.daddr != cfg->node_ip)
		return TC_ACT_UNSPEC;
	if (p.malformed) {
		stat_inc(MASQ_STAT_INGRESS_MALFORMED);
		return TC_ACT_UNSPEC;
	}
	if (p.fragment) {
		stat_inc(MASQ_STAT_INGRESS_FRAGMENT);
		return TC_ACT_UNSPEC;
	}
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP &&
	    !(p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHOREPLY))
		return TC_ACT_UNSPEC;

	__u16 nat_port = bpf_ntohs(p.dport);
	if (nat_port < cfg->port_min || nat_port > cfg->port_max)
		return TC_ACT_UNSPEC; /* the node's own sockets live outside the NAT range */

	struct nat_key rkey = {};
	rkey.saddr = p.saddr;
	rkey.daddr = p.daddr;
	rkey.sport = p.proto == IPPROTO_ICMP ? 0 : p.sport;
	rkey.dport = p.dport;
	rkey.proto = p.proto;
	rkey.dir = NAT_DIR_IN;

	__u64 now = bpf_ktime_get_ns();
	struct nat_entry *rev = nat_v4.lookup(&rkey);
	if (!rev) {
		stat_inc(MASQ_STAT_RNAT_MISS);
		return TC_ACT_UNSPEC;
	}
	if (rev->expires_ns < now) {
		stat_inc(MASQ_STAT_RNAT_EXPIRED);
		return TC_ACT_UNSPEC;
	}
	__be32 pod_addr = rev->addr;
	__be16 pod_port = rev->port;
	refresh(rev, cfg, &p, now);

	/* Keep the OUT half alive (or rebuild it if the LRU evicted it). */
	struct nat_key fkey = {};
	fkey.saddr = pod_addr;
	fkey.daddr = p.saddr;
	fkey.sport = pod_port;
	fkey.dport = p.proto == IPPROTO_ICMP ? 0 : p.sport;
	fkey.proto = p.proto;
	fkey.dir = NAT_DIR_OUT;
	struct nat_entry *fwd = nat_v4.lookup(&fkey);
	if (fwd) {
		refresh(fwd, cfg, &p, now);
	} else {
		struct nat_entry fval = {};
		fval.addr = cfg->node_ip;
		fval.port = p.dport;
		fval.created_ns = now;
		fval.flags = rev->flags;
		fval.expires_ns = rev->expires_ns;
		if (nat_v4.insert(&fkey, &fval) == 0)
			stat_inc(MASQ_STAT_REPAIRED);
	}

	__u32 port_off = p.proto == IPPROTO_ICMP ? p.l4_off + offsetof(struct icmphdr, un.echo.id)
						 : p.l4_off + offsetof(struct udphdr, dest);
	if (rewrite(skb, &p, IP_DADDR_OFF, p.daddr, pod_addr, port_off, p.dport, pod_port) < 0) {
		stat_inc(MASQ_STAT_CSUM_FAILED);
		return TC_ACT_SHOT;
	}
	stat_inc(MASQ_STAT_RNAT_PACKETS);
	return TC_ACT_UNSPEC;
}
