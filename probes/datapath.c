// SPDX-License-Identifier: GPL-2.0
/*
 * The per-endpoint datapath: policy, connection tracking and flow events on every pod's
 * host-side veth, in the manner of Cilium's bpf_lxc.c. One compiled object serves every endpoint
 * of a node; the endpoint a packet belongs to is found by the interface it crosses.
 *
 *   from_endpoint  tc clsact INGRESS of the host veth: packets the pod sends (policy EGRESS)
 *   to_endpoint    tc clsact EGRESS of the host veth:  packets delivered to the pod (INGRESS)
 *
 * Maps (their Python owners are under dataplane/maps/):
 *   endpoints  hash      host ifindex -> endpoint id, identity, IPv4, flags   (endpointmap.py)
 *   ipcache    LPM trie  IPv4 prefix  -> identity, CIDR identity, node IP    (ipcache.py)
 *   policy     hash of maps: endpoint id -> that endpoint's policy LPM trie  (policymap.py)
 *              (policy_inner is only the template the kernel checks inner maps against)
 *   ct         LRU hash  5-tuple + scope -> lifetime, flags, counters, cookie (ctmap.py)
 *   frags      LRU hash  (saddr, daddr, IP id, proto) -> the first fragment's ports
 *   events     ring buffer of struct flow_event                             (flowevent.py)
 *   drops, stats, lost_events: per-CPU counters; dp_config: CT lifetimes.
 *
 * A packet's way:
 *   1. Ethernet: ARP passes; anything but IPv4 is dropped (UNSUPPORTED_L3_PROTOCOL).
 *   2. Endpoint by skb->ifindex; unknown -> dropped (NO_MATCHING_LOCAL_CONTAINER_FOUND).
 *   3. IPv4 and L4 headers, every length checked (INVALID_PACKET_DROPPED for a broken IP
 *      header, CT_TRUNCATED_OR_INVALID_HEADER for a broken L4 header). Fragments: the first
 *      one carries the ports and records them in `frags`; later ones take the ports from there
 *      (none recorded: FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND), as Cilium's IPv4 fragment
 *      tracking does. So every fragment gets its datagram's verdict.
 *   4. from_endpoint only: source address must be the endpoint's (INVALID_SOURCE_IP).
 *   5. Conntrack: an entry for this tuple in this direction (established), for the reverse
 *      tuple in the other direction (reply), or for the header inside an ICMP error (related)
 *      passes. Entries past expires_ns count as missing.
 *   6. New connection: peer identity from the ipcache (miss: WORLD), then the endpoint's policy
 *      trie is asked for the peer identity, its CIDR identity (when nonzero), then identity 0;
 *      within one identity the longest prefix wins. This is EndpointPolicy.decide
 *      (dataplane/policy/entry.py). Allowed: a CT entry is created and a POLICY_VERDICT event
 *      FORWARDED is sent. Denied: DROPPED (POLICY_DENIED), or in audit mode passed with verdict
 *      AUDIT and a CT entry. No policy map for the endpoint: dropped
 *      (NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION), never allowed.
 *
 * Events (Hubble's "medium" monitor aggregation): every drop; every new connection's verdict;
 * a TRACE for the first reply of a connection, for the first SYN, FIN or RST in each direction
 * of a TCP connection, and for each related ICMP error. Nothing for plain established packets.
 * A full ring counts in lost_events, never silently.
 *
 * Everything on the fast path is bounded (no loops) and lock-free: per-CPU counters, LRU maps,
 * atomic adds for the per-connection counters. Verdicts: TC_ACT_UNSPEC to pass (so filters
 * after ours on the same hook still run), TC_ACT_SHOT to drop.
 *
 * Byte orders: addresses are network order everywhere; CT keys and frags hold network-order
 * ports as in the packet; events carry host-order ports.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

/* Default sizes; the loader sets the real ones per node (Datapath.load). */
#define ENDPOINTS_MAX 1024
#define IPCACHE_MAX 65536
#define POLICY_ENTRIES_MAX 16384
#define CT_MAX 262144
#define FRAGS_MAX 8192
#define EVENTS_PAGES 1024 /* 4 MiB */

/* Direction of a policy decision and CT scope: as dataplane.policy.entry.Direction. */
#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* Hubble's enums (cilium api/v1/flow/flow.proto) and Cilium's monitor message types. */
#define VERDICT_FORWARDED 1
#define VERDICT_DROPPED 2
#define VERDICT_AUDIT 4
#define TRAFFIC_INGRESS 1
#define TRAFFIC_EGRESS 2
#define OBS_FROM_ENDPOINT 5
#define OBS_TO_ENDPOINT 101
#define EVENT_DROP 1
#define EVENT_TRACE 4
#define EVENT_POLICY_VERDICT 5 /* CILIUM_NOTIFY_POLICY_VERDICT */

#define REASON_INVALID_SOURCE_IP 132
#define REASON_POLICY_DENIED 133
#define REASON_INVALID_PACKET 134
#define REASON_CT_TRUNCATED_OR_INVALID_HEADER 135
#define REASON_UNSUPPORTED_L3_PROTOCOL 139
#define REASON_NO_MATCHING_LOCAL_CONTAINER 152
#define REASON_CT_MAP_INSERTION_FAILED 155
#define REASON_NO_CONFIGURATION 165
#define REASON_FRAGMENT_NOT_FOUND 175
#define DROP_REASONS_MAX 256

#define CT_NONE 0
#define CT_NEW 1
#define CT_ESTABLISHED 2
#define CT_REPLY 3
#define CT_RELATED 4

#define IS_REPLY_UNKNOWN 0xff
#define FLOW_EVENT_VERSION 1

/* flow_event.flags */
#define FLOW_F_FRAGMENT 0x01   /* an IP fragment (ports from the fragment tracker if not first) */
#define FLOW_F_AUDIT_MODE 0x02 /* the endpoint is in policy audit mode */
#define FLOW_F_NO_POLICY 0x04  /* the endpoint has no policy map */
#define FLOW_F_ICMP_ERROR 0x08 /* an ICMP error; the tuple is the packet's own */

/* endpoint_info.flags */
#define EP_F_AUDIT 0x1

/* ct_entry.flags */
#define CT_F_REPLY_SEEN 0x1
#define CT_F_CLOSING 0x2 /* FIN or RST seen: short lifetime */
#define CT_F_AUDIT 0x4   /* created by an audit-mode would-be drop */

#define TCP_F_FIN 0x01
#define TCP_F_SYN 0x02
#define TCP_F_RST 0x04
#define TCP_F_ACK 0x10
#define TCP_F_EVENT (TCP_F_SYN | TCP_F_FIN | TCP_F_RST)

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define DP_NSEC_PER_SEC 1000000000ULL

#define POLICY_STATIC_PREFIX 40 /* identity (32) + direction (8): always matched */

struct endpoint_info {
	__u32 endpoint_id; /* the host-side ifindex */
	__u32 identity;
	__be32 ipv4;
	__u32 flags; /* EP_F_* */
};

struct ipcache_key {
	__u32 prefixlen; /* 0-32 */
	__be32 addr;
};

struct ipcache_info {
	__u32 identity;
	__u32 cidr_identity; /* the longest ipBlock (CIDR identity) prefix covering it; 0: none */
	__be32 node_ip;      /* the node that hosts the address; 0 outside the cluster */
	__u32 flags;
};

/* LPM key: identity and direction always match in full (POLICY_STATIC_PREFIX bits), then the
 * protocol (8 bits, only when not "any"), then the port's leading prefix_len bits. The port is
 * network order so that its high bits come first; the identity is host order (matched whole). */
struct policy_key {
	__u32 prefixlen;
	__u32 identity;
	__u8 direction;
	__u8 protocol;
	__be16 dport;
};

struct policy_value {
	__u32 cookie;
	__u32 flags;
};

/* A connection as its first packet saw it; scope says whose decision made it (DIR_*). */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP echo: the id on the request side, 0 on the other */
	__be16 dport;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

struct ct_entry {
	__u64 expires_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u64 created_ns;
	__u64 packets_fwd;
	__u64 bytes_fwd;
	__u64 packets_rev;
	__u64 bytes_rev;
	__u32 cookie;        /* the policy entry that allowed it (0 for audit) */
	__u32 peer_identity; /* the remote side's identity when it was decided */
	__u8 tcp_flags_fwd;  /* every TCP flag seen, per direction */
	__u8 tcp_flags_rev;
	__u8 flags; /* CT_F_* */
	__u8 pad[5];
};

struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_l4 {
	__be16 sport;
	__be16 dport;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 pad[2];
};

/* CT lifetimes in seconds; 0 means the built-in default below. */
struct dp_config {
	__u32 ct_tcp_s;         /* established: 6 h */
	__u32 ct_tcp_syn_s;     /* before any reply: 60 s */
	__u32 ct_tcp_closing_s; /* after FIN or RST: 10 s */
	__u32 ct_other_s;       /* UDP, ICMP, SCTP and the rest: 60 s */
};

/* The one record the ring buffer carries; mirrored by dataplane/maps/flowevent.py. */
struct flow_event {
	__u64 ktime_ns;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 endpoint_id;
	__u32 ifindex;
	__u32 policy_cookie;
	__u32 pkt_len;
	__be32 saddr;
	__be32 daddr;
	__u16 sport; /* host order; 0 for ICMP and protocols without ports */
	__u16 dport;
	__u16 drop_reason; /* Hubble DropReason; 0 unless DROPPED */
	__u8 event_type;   /* EVENT_* */
	__u8 verdict;      /* VERDICT_* */
	__u8 traffic_direction;
	__u8 obs_point;
	__u8 is_reply; /* 0, 1, or IS_REPLY_UNKNOWN */
	__u8 ct_state; /* CT_* */
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u16 ethertype; /* host order */
	__u8 flags;      /* FLOW_F_* */
	__u8 version;    /* FLOW_EVENT_VERSION */
	__u32 cidr_identity;
};

/* Counters; keep in sync with probes/datapath.py DatapathStat. */
enum dp_stat {
	STAT_FORWARDED = 0,
	STAT_DROPPED,
	STAT_CT_NEW,
	STAT_CT_ESTABLISHED,
	STAT_CT_REPLY,
	STAT_CT_RELATED,
	STAT_AUDITED,
	STAT_ARP,
	STAT_FRAGMENTS,
	STAT_FRAG_TRACK_FAILED,
	STAT_EVENTS,
	STAT_MAX,
};

BPF_HASH(endpoints, __u32, struct endpoint_info, ENDPOINTS_MAX);
BPF_LPM_TRIE(ipcache, struct ipcache_key, struct ipcache_info, IPCACHE_MAX);
BPF_LPM_TRIE(policy_inner, struct policy_key, struct policy_value, POLICY_ENTRIES_MAX);
BPF_HASH_OF_MAPS(policy, __u32, "policy_inner", ENDPOINTS_MAX);
BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, ct, CT_MAX);
BPF_TABLE("lru_hash", struct frag_key, struct frag_l4, frags, FRAGS_MAX);
BPF_ARRAY(dp_config, struct dp_config, 1);
BPF_PERCPU_ARRAY(drops, __u64, DROP_REASONS_MAX);
BPF_PERCPU_ARRAY(stats, __u64, STAT_MAX);
BPF_PERCPU_ARRAY(lost_events, __u64, 1);
BPF_RINGBUF_OUTPUT(events, EVENTS_PAGES);

/* What the parser found. Tuple ports are network order, as in the packet. */
struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 ethertype;
	__u16 policy_port; /* host order: TCP/UDP/SCTP destination port, ICMP type */
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 icmp_error; /* the tuple below is the embedded (offending) packet's */
	__u8 fragment;
	__u8 pad[2];
	/* ICMP errors: the header the error quotes, as its sender sent it */
	__be32 in_saddr;
	__be32 in_daddr;
	__be16 in_sport;
	__be16 in_dport;
	__u8 in_proto;
	__u8 in_pad[3];
};

/* Where the packet is and whose it is. */
struct where {
	__u32 ifindex;
	__u32 endpoint_id;
	__u32 identity;
	__u8 dir; /* DIR_EGRESS: from_endpoint, DIR_INGRESS: to_endpoint */
	__u8 ep_flags;
	__u8 pad[2];
};

/* One event's verdict part. */
struct outcome {
	__u32 cookie;
	__u32 peer_identity;
	__u32 cidr_identity;
	__u16 drop_reason;
	__u8 event_type;
	__u8 verdict;
	__u8 is_reply;
	__u8 ct_state;
	__u8 flags;
	__u8 pad;
};

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = stats.lookup(&idx);
	if (v)
		*v += 1;
}

static __always_inline void emit(struct __sk_buff *skb, const struct where *w,
				 const struct pkt *p, const struct outcome *o)
{
	struct flow_event ev = {};
	__u32 zero = 0;

	ev.ktime_ns = bpf_ktime_get_ns();
	ev.endpoint_id = w->endpoint_id;
	ev.ifindex = w->ifindex;
	ev.policy_cookie = o->cookie;
	ev.pkt_len = skb->len;
	ev.saddr = p->saddr;
	ev.daddr = p->daddr;
	if (p->proto != IPPROTO_ICMP && !p->icmp_error) {
		ev.sport = bpf_ntohs(p->sport);
		ev.dport = bpf_ntohs(p->dport);
	}
	ev.drop_reason = o->drop_reason;
	ev.event_type = o->event_type;
	ev.verdict = o->verdict;
	if (w->dir == DIR_EGRESS) {
		ev.traffic_direction = TRAFFIC_EGRESS;
		ev.obs_point = OBS_FROM_ENDPOINT;
		ev.src_identity = w->identity;
		ev.dst_identity = o->peer_identity;
	} else {
		ev.traffic_direction = TRAFFIC_INGRESS;
		ev.obs_point = OBS_TO_ENDPOINT;
		ev.src_identity = o->peer_identity;
		ev.dst_identity = w->identity;
	}
	ev.is_reply = o->is_reply;
	ev.ct_state = o->ct_state;
	ev.proto = p->proto;
	ev.tcp_flags = p->tcp_flags;
	ev.icmp_type = p->icmp_type;
	ev.icmp_code = p->icmp_code;
	ev.ethertype = p->ethertype;
	ev.flags = o->flags | (p->fragment ? FLOW_F_FRAGMENT : 0) |
		   (w->ep_flags & EP_F_AUDIT ? FLOW_F_AUDIT_MODE : 0) |
		   (p->icmp_error ? FLOW_F_ICMP_ERROR : 0);
	ev.version = FLOW_EVENT_VERSION;
	ev.cidr_identity = o->cidr_identity;

	if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0) {
		__u64 *lost = lost_events.lookup(&zero);
		if (lost)
			*lost += 1;
		return;
	}
	stat_inc(STAT_EVENTS);
}

static __always_inline int drop(struct __sk_buff *skb, const struct where *w, const struct pkt *p,
				struct outcome *o, __u16 reason)
{
	__u32 idx = reason;
	__u64 *v = drops.lookup(&idx);

	if (v)
		*v += 1;
	stat_inc(STAT_DROPPED);
	o->event_type = EVENT_DROP;
	o->verdict = VERDICT_DROPPED;
	o->drop_reason = reason;
	emit(skb, w, p, o);
	return TC_ACT_SHOT;
}

static __always_inline int pass(void)
{
	stat_inc(STAT_FORWARDED);
	return TC_ACT_UNSPEC;
}

/* ICMP types whose payload quotes the packet that caused them. */
static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_SOURCE_QUENCH || type == ICMP_REDIRECT ||
	       type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/* The first 8 bytes of an L4 header at `off` (ports / ICMP echo id), for the tuple. */
static __always_inline int l4_ports(struct __sk_buff *skb, __u32 off, __u8 proto, __u32 avail,
				    __be16 *sport, __be16 *dport, __u8 *icmp_type,
				    __u8 *icmp_code)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) {
		__be16 ports[2];
		if (avail < sizeof(ports) || bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		*sport = ports[0];
		*dport = ports[1];
	} else if (proto == IPPROTO_ICMP) {
		struct icmphdr ih;
		if (avail < sizeof(ih) || bpf_skb_load_bytes(skb, off, &ih, sizeof(ih)) < 0)
			return -1;
		*icmp_type = ih.type;
		*icmp_code = ih.code;
		/* Echo: the id plays the port on the requester's side; reversing a reply's tuple
		 * gives the request's. Other ICMP has no ports. */
		if (ih.type == ICMP_ECHO)
			*sport = ih.un.echo.id;
		else if (ih.type == ICMP_ECHOREPLY)
			*dport = ih.un.echo.id;
	}
	return 0;
}

/* Parse Ethernet, IPv4 and L4. Returns 0 when *p is filled in, 1 for ARP (pass), or the Hubble
 * drop reason. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ethhdr eth;
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return REASON_INVALID_PACKET;
	p->ethertype = bpf_ntohs(eth.h_proto);
	if (eth.h_proto == bpf_htons(ETH_P_ARP))
		return 1;
	if (eth.h_proto != bpf_htons(ETH_P_IP))
		return REASON_UNSUPPORTED_L3_PROTOCOL;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return REASON_INVALID_PACKET;

	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;

	__u32 ihl = ip.ihl * 4;
	__u32 tot_len = bpf_ntohs(ip.tot_len);
	/* BIG TCP: a GSO packet above 64 KiB carries tot_len 0; its length is the skb's. */
	if (tot_len == 0 && skb->gso_size)
		tot_len = skb->len - ETH_HLEN;
	if (ip.version != 4 || ihl < sizeof(struct iphdr) || tot_len < ihl ||
	    ETH_HLEN + tot_len > skb->len)
		return REASON_INVALID_PACKET;

	__u16 frag = bpf_ntohs(ip.frag_off);
	__u32 l4_off = ETH_HLEN + ihl;
	__u32 avail = tot_len - ihl;
	struct frag_key fk = {};

	if (frag & (IP_MF | IP_OFFSET)) {
		p->fragment = 1;
		fk.saddr = ip.saddr;
		fk.daddr = ip.daddr;
		fk.id = ip.id;
		fk.proto = ip.protocol;
		if (frag & IP_OFFSET) {
			/* No L4 header here: take the first fragment's. */
			struct frag_l4 *l4 = frags.lookup(&fk);
			if (!l4)
				return REASON_FRAGMENT_NOT_FOUND;
			p->sport = l4->sport;
			p->dport = l4->dport;
			p->icmp_type = l4->icmp_type;
			p->icmp_code = l4->icmp_code;
			goto policy_port;
		}
	}

	if (l4_ports(skb, l4_off, ip.protocol, avail, &p->sport, &p->dport, &p->icmp_type,
		     &p->icmp_code) < 0)
		return REASON_CT_TRUNCATED_OR_INVALID_HEADER;

	if (ip.protocol == IPPROTO_TCP) {
		__u8 flags;
		if (avail < sizeof(struct tcphdr) || bpf_skb_load_bytes(skb, l4_off + 13, &flags, 1) < 0)
			return REASON_CT_TRUNCATED_OR_INVALID_HEADER;
		p->tcp_flags = flags;
	} else if (ip.protocol == IPPROTO_UDP) {
		if (avail < sizeof(struct udphdr))
			return REASON_CT_TRUNCATED_OR_INVALID_HEADER;
	} else if (ip.protocol == IPPROTO_SCTP) {
		if (avail < 12) /* the SCTP common header */
			return REASON_CT_TRUNCATED_OR_INVALID_HEADER;
	} else if (ip.protocol == IPPROTO_ICMP && icmp_is_error(p->icmp_type)) {
		/* The quoted header: its IP header and the first 8 bytes of its L4 header. */
		struct iphdr in;
		__u32 in_off = l4_off + sizeof(struct icmphdr);
		if (avail < sizeof(struct icmphdr) + sizeof(in) ||
		    bpf_skb_load_bytes(skb, in_off, &in, sizeof(in)) < 0)
			return REASON_CT_TRUNCATED_OR_INVALID_HEADER;
		__u32 in_ihl = in.ihl * 4;
		if (in.version != 4 || in_ihl < sizeof(in) ||
		    avail < sizeof(struct icmphdr) + in_ihl + 8)
			return REASON_CT_TRUNCATED_OR_INVALID_HEADER;
		__u8 t = 0, c = 0;
		p->icmp_error = 1;
		p->in_saddr = in.saddr;
		p->in_daddr = in.daddr;
		p->in_proto = in.protocol;
		if (!(bpf_ntohs(in.frag_off) & IP_OFFSET) &&
		    l4_ports(skb, in_off + in_ihl, in.protocol, 8, &p->in_sport, &p->in_dport, &t,
			     &c) < 0)
			return REASON_CT_TRUNCATED_OR_INVALID_HEADER;
	}

	if (p->fragment) {
		struct frag_l4 l4 = {};
		l4.sport = p->sport;
		l4.dport = p->dport;
		l4.icmp_type = p->icmp_type;
		l4.icmp_code = p->icmp_code;
		if (frags.update(&fk, &l4) != 0)
			stat_inc(STAT_FRAG_TRACK_FAILED);
	}

policy_port:
	if (p->fragment)
		stat_inc(STAT_FRAGMENTS);
	if (p->proto == IPPROTO_ICMP)
		p->policy_port = p->icmp_type;
	else
		p->policy_port = bpf_ntohs(p->dport);
	return 0;
}

static __always_inline __u64 lifetime_ns(__u8 proto, __u8 ct_flags)
{
	__u32 zero = 0;
	struct dp_config *cfg = dp_config.lookup(&zero);
	__u32 s;

	if (proto == IPPROTO_TCP) {
		if (ct_flags & CT_F_CLOSING)
			s = cfg && cfg->ct_tcp_closing_s ? cfg->ct_tcp_closing_s : 10;
		else if (ct_flags & CT_F_REPLY_SEEN)
			s = cfg && cfg->ct_tcp_s ? cfg->ct_tcp_s : 21600;
		else
			s = cfg && cfg->ct_tcp_syn_s ? cfg->ct_tcp_syn_s : 60;
	} else {
		s = cfg && cfg->ct_other_s ? cfg->ct_other_s : 60;
	}
	return (__u64)s * DP_NSEC_PER_SEC;
}

static __always_inline void ct_fill(struct ct_key *k, __be32 saddr, __be32 daddr, __be16 sport,
				    __be16 dport, __u8 proto, __u8 scope)
{
	k->saddr = saddr;
	k->daddr = daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->scope = scope;
}

/* The live entry this tuple belongs to, travelling in direction `dir` of the endpoint: its own
 * (*reply = 0) or the reverse of one the other direction created (*reply = 1). */
static __always_inline struct ct_entry *ct_find(__be32 saddr, __be32 daddr, __be16 sport,
						__be16 dport, __u8 proto, __u8 dir, __u64 now,
						__u8 *reply)
{
	struct ct_key k = {};
	struct ct_entry *e;

	ct_fill(&k, saddr, daddr, sport, dport, proto, dir);
	e = ct.lookup(&k);
	if (e && e->expires_ns > now) {
		*reply = 0;
		return e;
	}
	ct_fill(&k, daddr, saddr, dport, sport, proto, dir ^ 1);
	e = ct.lookup(&k);
	if (e && e->expires_ns > now) {
		*reply = 1;
		return e;
	}
	return 0;
}

/* Account a packet to its connection; returns nonzero when it is worth a TRACE event (the
 * first reply, or a SYN, FIN or RST new to its direction). */
static __always_inline int ct_update(struct ct_entry *e, const struct pkt *p, __u8 reply,
				     __u32 len, __u64 now)
{
	__u8 flags = e->flags;
	__u8 seen = reply ? e->tcp_flags_rev : e->tcp_flags_fwd;
	int notable = 0;

	if (reply) {
		__sync_fetch_and_add(&e->packets_rev, 1);
		__sync_fetch_and_add(&e->bytes_rev, len);
		if (!(flags & CT_F_REPLY_SEEN))
			notable = 1;
		flags |= CT_F_REPLY_SEEN;
	} else {
		__sync_fetch_and_add(&e->packets_fwd, 1);
		__sync_fetch_and_add(&e->bytes_fwd, len);
	}
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_F_EVENT & ~seen)
			notable = 1;
		if ((p->tcp_flags | seen) != seen) {
			if (reply)
				e->tcp_flags_rev = seen | p->tcp_flags;
			else
				e->tcp_flags_fwd = seen | p->tcp_flags;
		}
		if (p->tcp_flags & (TCP_F_FIN | TCP_F_RST))
			flags |= CT_F_CLOSING;
		else if (!reply && (p->tcp_flags & (TCP_F_SYN | TCP_F_ACK)) == TCP_F_SYN)
			flags &= ~CT_F_CLOSING; /* a new connection reuses the tuple */
	}
	if (flags != e->flags)
		e->flags = flags;
	/* Write the lifetime only when it moves (a shorter one, or a second further): fewer
	 * stores to a line every CPU of the flow shares. */
	__u64 expires = now + lifetime_ns(p->proto, flags);
	if (expires < e->expires_ns || expires > e->expires_ns + DP_NSEC_PER_SEC)
		e->expires_ns = expires;
	return notable;
}

/* The endpoint's policy decision for a new connection: 1 allowed (cookie set), 0 denied,
 * -1 no policy map for this endpoint. */
static __always_inline int policy_decide(const struct where *w, const struct pkt *p, __u32 peer,
					 __u32 cidr, __u32 *cookie)
{
	__u32 epid = w->endpoint_id;
	void *inner = policy.lookup(&epid);
	struct policy_key k = {};
	struct policy_value *v;

	if (!inner)
		return -1;
	k.prefixlen = POLICY_STATIC_PREFIX + 8 + 16;
	k.direction = w->dir;
	k.protocol = p->proto;
	k.dport = bpf_htons(p->policy_port);

	k.identity = peer;
	v = bpf_map_lookup_elem(inner, &k);
	if (!v && cidr) {
		k.identity = cidr;
		v = bpf_map_lookup_elem(inner, &k);
	}
	if (!v) {
		k.identity = 0;
		v = bpf_map_lookup_elem(inner, &k);
	}
	if (!v)
		return 0;
	*cookie = v->cookie;
	return 1;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct pkt p = {};
	struct where w = {};
	struct outcome o = {};
	__u32 ifindex = skb->ifindex;

	w.ifindex = ifindex;
	w.dir = dir;
	o.is_reply = IS_REPLY_UNKNOWN;

	int rc = parse(skb, &p);
	if (rc == 1) {
		stat_inc(STAT_ARP);
		return pass();
	}
	struct endpoint_info *ep = endpoints.lookup(&ifindex);
	if (ep) {
		w.endpoint_id = ep->endpoint_id;
		w.identity = ep->identity;
		w.ep_flags = ep->flags;
	}
	if (rc)
		return drop(skb, &w, &p, &o, rc);
	if (!ep)
		return drop(skb, &w, &p, &o, REASON_NO_MATCHING_LOCAL_CONTAINER);
	if (dir == DIR_EGRESS && p.saddr != ep->ipv4)
		return drop(skb, &w, &p, &o, REASON_INVALID_SOURCE_IP);

	__u64 now = bpf_ktime_get_ns();
	__u8 reply = 0;
	struct ct_entry *e;

	if (p.icmp_error) {
		/* The quoted packet went the other way: sent by the endpoint when the error comes
		 * in, received by it when the error goes out. */
		e = ct_find(p.in_saddr, p.in_daddr, p.in_sport, p.in_dport, p.in_proto, dir ^ 1, now,
			    &reply);
		if (e) {
			stat_inc(STAT_CT_RELATED);
			o.event_type = EVENT_TRACE;
			o.verdict = VERDICT_FORWARDED;
			o.is_reply = 0;
			o.ct_state = CT_RELATED;
			o.cookie = e->cookie;
			o.peer_identity = e->peer_identity;
			emit(skb, &w, &p, &o);
			return pass();
		}
	} else {
		e = ct_find(p.saddr, p.daddr, p.sport, p.dport, p.proto, dir, now, &reply);
		if (e) {
			stat_inc(reply ? STAT_CT_REPLY : STAT_CT_ESTABLISHED);
			if (ct_update(e, &p, reply, skb->len, now)) {
				o.event_type = EVENT_TRACE;
				o.verdict = VERDICT_FORWARDED;
				o.is_reply = reply;
				o.ct_state = reply ? CT_REPLY : CT_ESTABLISHED;
				o.cookie = e->cookie;
				o.peer_identity = e->peer_identity;
				emit(skb, &w, &p, &o);
			}
			return pass();
		}
	}

	/* A new connection (or an ICMP error nothing here asked for): the policy decides. */
	struct ipcache_key ik = {};
	ik.prefixlen = 32;
	ik.addr = dir == DIR_EGRESS ? p.daddr : p.saddr;
	struct ipcache_info *peer = ipcache.lookup(&ik);
	o.peer_identity = peer ? peer->identity : 2; /* Reserved.WORLD */
	o.cidr_identity = peer ? peer->cidr_identity : 0;
	o.is_reply = 0;
	o.ct_state = CT_NEW;

	__u32 cookie = 0;
	int allowed = policy_decide(&w, &p, o.peer_identity, o.cidr_identity, &cookie);
	if (allowed < 0) {
		o.flags = FLOW_F_NO_POLICY;
		return drop(skb, &w, &p, &o, REASON_NO_CONFIGURATION);
	}
	o.cookie = cookie;
	if (!allowed && !(w.ep_flags & EP_F_AUDIT))
		return drop(skb, &w, &p, &o, REASON_POLICY_DENIED);

	if (!p.icmp_error) {
		struct ct_key k = {};
		struct ct_entry v = {};
		ct_fill(&k, p.saddr, p.daddr, p.sport, p.dport, p.proto, dir);
		v.created_ns = now;
		v.cookie = cookie;
		v.peer_identity = o.peer_identity;
		v.packets_fwd = 1;
		v.bytes_fwd = skb->len;
		v.tcp_flags_fwd = p.tcp_flags;
		if (p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_F_FIN | TCP_F_RST)))
			v.flags |= CT_F_CLOSING;
		if (!allowed)
			v.flags |= CT_F_AUDIT;
		v.expires_ns = now + lifetime_ns(p.proto, v.flags);
		/* BPF_ANY: an expired entry for the tuple is replaced, not kept. */
		if (ct.update(&k, &v) != 0)
			return drop(skb, &w, &p, &o, REASON_CT_MAP_INSERTION_FAILED);
		stat_inc(STAT_CT_NEW);
	}
	o.event_type = EVENT_POLICY_VERDICT;
	if (allowed) {
		o.verdict = VERDICT_FORWARDED;
	} else {
		o.verdict = VERDICT_AUDIT;
		stat_inc(STAT_AUDITED);
	}
	emit(skb, &w, &p, &o);
	return pass();
}

int from_endpoint(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

int to_endpoint(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}
