// SPDX-License-Identifier: GPL-2.0
/*
 * Socket-based service load balancing, in the manner of Cilium's bpf_sock.c: cgroup sock_addr
 * programs translate a service address (ClusterIP:port) to a backend when a socket connects or
 * sends, so no packet ever carries the service address and nothing is translated per packet.
 * Attached to a cluster's cgroup, they cover every pod socket in the cgroups below it.
 *
 *   fs_lb_connect4   cgroup/connect4      TCP and connected UDP: the destination is rewritten
 *                                         once; established sockets never meet the maps again
 *   fs_lb_sendmsg4   cgroup/sendmsg4      unconnected UDP: the same, per datagram
 *   fs_lb_recvmsg4   cgroup/recvmsg4      UDP: a reply from the backend reads as coming from
 *                                         the service address (reverse NAT by socket)
 *   fs_lb_peername4  cgroup/getpeername4  the peer of a translated socket is the service
 *   fs_l7_sockops    sock_ops             HTTP L7 redirect: a redirected socket's original
 *                                         destination, keyed by its local port (see below)
 *
 * Maps (their Python owner is dataplane/maps/lbmap.py):
 *   lb_services    hash  {vip, dport, slot, proto, scope} -> slot 0: the service (backend count,
 *                        flags, affinity timeout, reverse-NAT id); slot i (1..count): backend id
 *   lb_backends    hash  backend id -> {ip, port, proto}
 *   lb_revnat      hash  reverse-NAT id -> {vip, port}: the service a translation came from
 *   lb_affinity    LRU   {client (netns cookie), reverse-NAT id} -> {backend id, last used}
 *   lb_sock_revnat LRU   {socket cookie, backend ip, backend port} -> {vip, port, revnat id}
 *   lb_events      ring buffer of struct lb_event (one TRANSLATED per translation)
 *   lb_stats, lb_lost: per-CPU counters.
 *   l7_redirect    hash  {backend ip, port} -> {proxy port}: pods whose port has HTTP rules
 *                        (owner: dataplane/maps/l7map.py)
 *   l7_orig_sock   LRU   socket cookie -> struct l7_orig (getpeername; the sock_ops copy)
 *   l7_orig_port   LRU   {netns cookie, local port} -> struct l7_orig (what the proxy reads)
 *
 * HTTP L7 redirect (Cilium redirects to its Envoy proxy by policy; here at the client's
 * socket): a TCP connect whose destination, after the service translation, is in l7_redirect
 * goes to 127.0.0.1:<proxy port> instead, a listener the node agent keeps inside every local
 * pod's own namespace. The original destination (the address the application asked for, a
 * service or a pod, and the backend) is recorded by socket cookie; when the kernel has chosen
 * the local port (sock_ops TCP_CONNECT_CB, before the SYN) it is copied under {netns cookie,
 * local port}, which is all the agent can see of the client on the accepted socket. A
 * redirected socket's getpeername shows the original destination, not the proxy.
 *
 * Every lookup is a hash lookup by an exact key: the cost does not depend on how many services
 * there are. Backend choice: random (prandom % count), or, with ClientIP affinity, the backend the
 * client's network namespace was last given while within the timeout. The control plane writes a
 * service's backend slots before the count that makes them reachable and lowers the count before
 * it deletes slots, so a slot a connect can pick always holds a live backend id; should a lookup
 * still miss (a reader that saw the old count), slot 1 is used, and a service with nothing left
 * refuses like one without endpoints.
 *
 * A service with no backends refuses at once: the program returns "reject" after
 * bpf_set_retval(-ECONNREFUSED), so connect() / sendto() fail with ECONNREFUSED rather than
 * sending SYNs to an address nobody owns (a plain reject would give EPERM).
 *
 * Byte orders: addresses and ports in map keys and values are network order, as in
 * struct bpf_sock_addr; event ports are host order.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#define SERVICES_MAX 65536
#define BACKENDS_MAX 65536
#define REVNAT_MAX 65536
#define AFFINITY_MAX 65536
#define SOCK_REVNAT_MAX 65536
#define EVENTS_PAGES 256 /* 1 MiB */
#define L7_REDIRECT_MAX 65536
#define L7_ORIG_MAX 65536
#define LOOPBACK_BE 0x0100007f /* 127.0.0.1 in network order (little-endian host) */

#define SYS_REJECT 0
#define SYS_PROCEED 1
#define AF_INET 2
#define ECONNREFUSED 111
#define LB_NSEC_PER_SEC 1000000000ULL

/* lb_svc_value.flags */
#define SVC_F_AFFINITY 0x1 /* sessionAffinity ClientIP */

/* lb_affinity_key.kind: what `client` holds */
#define AFF_NETNS_COOKIE 0 /* socket LB: the client's network namespace */
#define AFF_CLIENT_IP 1    /* packet LB (NodePort): the client's IPv4 address */

/* lb_event.hook */
#define HOOK_CONNECT 1
#define HOOK_SENDMSG 2

#define LB_EVENT_VERSION 2

/* bcc 0.26's helper list predates bpf_set_retval (kernel 5.18); it is helper 187. */
static long (*lb_set_retval)(int retval) = (void *)187;

struct lb_svc_key {
	__be32 vip;
	__be16 dport;
	__u16 slot; /* 0: the service entry; 1..count: its backends */
	__u8 proto; /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 scope; /* 0: all traffic (reserved for internalTrafficPolicy Local) */
	__u8 pad[2];
};

struct lb_svc_value {
	__u32 backend_id;	/* slots 1..count */
	__u32 affinity_timeout; /* slot 0: seconds */
	__u16 count;		/* slot 0: number of backend slots (0: refuse) */
	__u16 revnat_id;	/* slot 0 */
	__u8 flags;		/* slot 0: SVC_F_* */
	__u8 pad[3];
};

struct lb_backend {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct lb_revnat {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct lb_affinity_key {
	__u64 client;
	__u16 revnat_id;
	__u8 kind; /* AFF_* */
	__u8 pad[5];
};

struct lb_affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns */
	__u32 backend_id;
	__u32 pad;
};

struct lb_sock_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	__be32 backend_ip;
	__be16 backend_port;
	__u8 pad[2];
};

struct lb_sock_value {
	__be32 vip;
	__be16 vport;
	__u16 revnat_id;
};

struct lb_event {
	__u64 ktime_ns;
	__u64 sock_cookie;
	__u64 netns_cookie;
	__be32 vip;
	__be32 backend_ip;
	__u16 vport;	    /* host order */
	__u16 backend_port; /* host order */
	__u32 backend_id;
	__u16 revnat_id;
	__u8 proto;
	__u8 hook; /* HOOK_* */
	__u8 version;
	__u8 flags; /* 0x1: the backend came from an affinity entry */
	__u8 pad[2];
	__u64 cgroup_id; /* v2: the connecting task's cgroup (a pod's cgroup names the pod) */
};

struct l7_key {
	__be32 ip;   /* a pod's address (a backend after the service translation) */
	__be16 port; /* its TCP port with HTTP rules */
	__u8 pad[2];
};

struct l7_value {
	__be16 proxy_port; /* the listener's port on 127.0.0.1 in the client's namespace */
	__u16 flags;	   /* reserved */
};

struct l7_orig {
	__be32 ip;	   /* what the application connected to (a service or the pod) */
	__be32 backend_ip; /* the pod the connection is for */
	__be16 port;
	__be16 backend_port;
	__u32 pad;
};

struct l7_port_key {
	__u64 netns_cookie; /* the client's (and the listener's) network namespace */
	__u16 local_port;   /* host order: the accepted socket's peer port */
	__u8 pad[6];
};

enum lb_stat {
	STAT_TRANSLATED_CONNECT,
	STAT_TRANSLATED_SENDMSG,
	STAT_REVERSED_RECVMSG,
	STAT_REVERSED_PEERNAME,
	STAT_NO_BACKEND,
	STAT_SLOT_MISS,
	STAT_AFFINITY_HIT,
	STAT_EVENTS,
	STAT_L7_REDIRECTED,
	STAT_L7_PORT_RECORDED,
	STAT_L7_PEERNAME,
	STAT_MAX,
};

BPF_HASH(lb_services, struct lb_svc_key, struct lb_svc_value, SERVICES_MAX);
BPF_HASH(lb_backends, __u32, struct lb_backend, BACKENDS_MAX);
BPF_HASH(lb_revnat, __u16, struct lb_revnat, REVNAT_MAX);
BPF_TABLE("lru_hash", struct lb_affinity_key, struct lb_affinity_value, lb_affinity, AFFINITY_MAX);
BPF_TABLE("lru_hash", struct lb_sock_key, struct lb_sock_value, lb_sock_revnat, SOCK_REVNAT_MAX);
BPF_PERCPU_ARRAY(lb_stats, __u64, STAT_MAX);
BPF_PERCPU_ARRAY(lb_lost, __u64, 1);
BPF_RINGBUF_OUTPUT(lb_events, EVENTS_PAGES);
BPF_HASH(l7_redirect, struct l7_key, struct l7_value, L7_REDIRECT_MAX);
BPF_TABLE("lru_hash", __u64, struct l7_orig, l7_orig_sock, L7_ORIG_MAX);
BPF_TABLE("lru_hash", struct l7_port_key, struct l7_orig, l7_orig_port, L7_ORIG_MAX);

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = lb_stats.lookup(&idx);
	if (v)
		*v += 1;
}

static __always_inline void emit(struct bpf_sock_addr *ctx, const struct lb_svc_key *key,
				 const struct lb_svc_value *svc, const struct lb_backend *be,
				 __u32 backend_id, __u64 sock_cookie, __u8 hook, __u8 flags)
{
	struct lb_event ev = {};
	__u32 zero = 0;

	ev.ktime_ns = bpf_ktime_get_ns();
	ev.sock_cookie = sock_cookie;
	ev.netns_cookie = bpf_get_netns_cookie(ctx);
	ev.vip = key->vip;
	ev.backend_ip = be->ip;
	ev.vport = bpf_ntohs(key->dport);
	ev.backend_port = bpf_ntohs(be->port);
	ev.backend_id = backend_id;
	ev.revnat_id = svc->revnat_id;
	ev.proto = key->proto;
	ev.hook = hook;
	ev.version = LB_EVENT_VERSION;
	ev.flags = flags;
	ev.cgroup_id = bpf_get_current_cgroup_id();
	if (lb_events.ringbuf_output(&ev, sizeof(ev), 0) != 0) {
		__u64 *lost = lb_lost.lookup(&zero);
		if (lost)
			*lost += 1;
		return;
	}
	stat_inc(STAT_EVENTS);
}

/* The backend for a new connection or datagram to the service at `key` (slot 0). */
static __always_inline struct lb_backend *pick_backend(struct bpf_sock_addr *ctx,
						       struct lb_svc_key *key,
						       const struct lb_svc_value *svc,
						       __u32 *backend_id, __u8 *flags)
{
	struct lb_affinity_key akey = {};
	struct lb_affinity_value *aff;
	struct lb_svc_value *slot;
	struct lb_backend *be;
	__u64 now = 0;

	if (svc->flags & SVC_F_AFFINITY) {
		akey.client = bpf_get_netns_cookie(ctx);
		akey.revnat_id = svc->revnat_id;
		akey.kind = AFF_NETNS_COOKIE;
		now = bpf_ktime_get_ns();
		aff = lb_affinity.lookup(&akey);
		if (aff && now - aff->last_used_ns <= svc->affinity_timeout * LB_NSEC_PER_SEC) {
			__u32 id = aff->backend_id;
			be = lb_backends.lookup(&id);
			if (be) {
				aff->last_used_ns = now;
				*backend_id = id;
				*flags = 1;
				stat_inc(STAT_AFFINITY_HIT);
				return be;
			}
		}
	}

	key->slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = lb_services.lookup(key);
	if (!slot) {
		stat_inc(STAT_SLOT_MISS);
		key->slot = 1;
		slot = lb_services.lookup(key);
		if (!slot)
			return NULL;
	}
	__u32 id = slot->backend_id;
	be = lb_backends.lookup(&id);
	if (!be) {
		stat_inc(STAT_SLOT_MISS);
		return NULL;
	}
	*backend_id = id;
	if (svc->flags & SVC_F_AFFINITY) {
		struct lb_affinity_value fresh = {};
		fresh.last_used_ns = now;
		fresh.backend_id = id;
		lb_affinity.update(&akey, &fresh);
	}
	return be;
}

/* A TCP connect to a destination with HTTP rules (ctx holds it, translated): to the proxy in
 * the client's own namespace, the original destination recorded for the agent and getpeername. */
static __always_inline void l7_redirect_connect(struct bpf_sock_addr *ctx, __be32 asked_ip,
						__be16 asked_port)
{
	struct l7_key key = {};
	struct l7_value *val;
	struct l7_orig orig = {};

	key.ip = ctx->user_ip4;
	key.port = (__be16)ctx->user_port;
	val = l7_redirect.lookup(&key);
	if (!val)
		return;
	orig.ip = asked_ip;
	orig.port = asked_port;
	orig.backend_ip = key.ip;
	orig.backend_port = key.port;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (l7_orig_sock.update(&cookie, &orig) != 0)
		return; /* unrecorded, the proxy could not tell where to go: leave it direct */
	ctx->user_ip4 = LOOPBACK_BE;
	ctx->user_port = (__u32)val->proxy_port;
	stat_inc(STAT_L7_REDIRECTED);
}

static __always_inline int xlate_fwd(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct lb_svc_key key = {};
	struct lb_svc_value *svc;
	struct lb_backend *be;
	__u32 backend_id = 0;
	__u8 flags = 0;

	if (ctx->user_family != AF_INET)
		return SYS_PROCEED;
	__u32 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	key.vip = ctx->user_ip4;
	key.dport = (__be16)ctx->user_port;
	key.proto = proto;
	svc = lb_services.lookup(&key);
	if (!svc) {
		/* not a service address: a pod's own address may still have HTTP rules */
		if (hook == HOOK_CONNECT && proto == IPPROTO_TCP)
			l7_redirect_connect(ctx, key.vip, key.dport);
		return SYS_PROCEED;
	}
	if (svc->count == 0)
		goto refuse;
	be = pick_backend(ctx, &key, svc, &backend_id, &flags);
	if (!be)
		goto refuse;

	/* Remember where the translation came from, for replies and getpeername. */
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb_sock_key skey = {};
	struct lb_sock_value sval = {};
	skey.cookie = cookie;
	skey.backend_ip = be->ip;
	skey.backend_port = be->port;
	sval.vip = key.vip;
	sval.vport = key.dport;
	sval.revnat_id = svc->revnat_id;
	lb_sock_revnat.update(&skey, &sval);

	ctx->user_ip4 = be->ip;
	ctx->user_port = (__u32)be->port;
	stat_inc(hook == HOOK_CONNECT ? STAT_TRANSLATED_CONNECT : STAT_TRANSLATED_SENDMSG);
	emit(ctx, &key, svc, be, backend_id, cookie, hook, flags);
	/* after the translation: HTTP rules belong to the backend pod, not to the service */
	if (hook == HOOK_CONNECT && proto == IPPROTO_TCP)
		l7_redirect_connect(ctx, key.vip, key.dport);
	return SYS_PROCEED;

refuse:
	stat_inc(STAT_NO_BACKEND);
	lb_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

/* A reply's source (recvmsg) or a connected socket's peer (getpeername): backend -> service. */
static __always_inline void xlate_rev(struct bpf_sock_addr *ctx, __u32 stat)
{
	struct lb_sock_key skey = {};
	struct lb_sock_value *sval;
	struct lb_revnat *rev;

	if (ctx->user_family != AF_INET)
		return;
	skey.cookie = bpf_get_socket_cookie(ctx);
	skey.backend_ip = ctx->user_ip4;
	skey.backend_port = (__be16)ctx->user_port;
	sval = lb_sock_revnat.lookup(&skey);
	if (!sval)
		return;
	__u16 id = sval->revnat_id;
	rev = lb_revnat.lookup(&id);
	/* the service is gone or its id now names another one: show the backend as it is */
	if (!rev || rev->vip != sval->vip || rev->port != sval->vport) {
		lb_sock_revnat.delete(&skey);
		return;
	}
	ctx->user_ip4 = sval->vip;
	ctx->user_port = (__u32)sval->vport;
	stat_inc(stat);
}

int fs_lb_connect4(struct bpf_sock_addr *ctx)
{
	return xlate_fwd(ctx, HOOK_CONNECT);
}

int fs_lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return xlate_fwd(ctx, HOOK_SENDMSG);
}

int fs_lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	xlate_rev(ctx, STAT_REVERSED_RECVMSG);
	return SYS_PROCEED; /* recvmsg programs must return 1 */
}

/* A redirected socket's peer (the proxy on loopback) reads as its original destination. */
static __always_inline int l7_peer(struct bpf_sock_addr *ctx)
{
	struct l7_orig *orig;

	if (ctx->user_family != AF_INET || ctx->user_ip4 != LOOPBACK_BE)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	orig = l7_orig_sock.lookup(&cookie);
	if (!orig)
		return 0;
	ctx->user_ip4 = orig->ip;
	ctx->user_port = (__u32)orig->port;
	stat_inc(STAT_L7_PEERNAME);
	return 1;
}

int fs_lb_peername4(struct bpf_sock_addr *ctx)
{
	if (!l7_peer(ctx))
		xlate_rev(ctx, STAT_REVERSED_PEERNAME);
	return SYS_PROCEED; /* getpeername programs must return 1 */
}

/* sock_ops: at TCP_CONNECT_CB the local port is chosen and no SYN is out yet, so the record
 * is under {netns cookie, port} before the proxy can accept the connection. */
int fs_l7_sockops(struct bpf_sock_ops *skops)
{
	struct l7_port_key key = {};
	struct l7_orig *orig;

	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB || skops->family != AF_INET)
		return 1;
	if (skops->remote_ip4 != LOOPBACK_BE)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	orig = l7_orig_sock.lookup(&cookie);
	if (!orig)
		return 1;
	struct l7_orig copy = *orig;
	key.netns_cookie = bpf_get_netns_cookie(skops);
	key.local_port = (__u16)skops->local_port;
	if (l7_orig_port.update(&key, &copy) == 0)
		stat_inc(STAT_L7_PORT_RECORDED);
	return 1;
}
