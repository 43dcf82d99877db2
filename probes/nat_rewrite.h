/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Rewriting an IPv4 packet's address and port in place, for the programs that translate
 * (masquerade.c, nodeport.c); like Cilium's bpf/lib/csum.h + l4.h, written once. Include after
 * the uapi headers (ETH_HLEN, struct iphdr, IPPROTO_*); bcc finds it through -I probes/, which
 * probes/bpfloader.py passes for every source.
 */
#ifndef FLOWSCOPE_NAT_REWRITE_H
#define FLOWSCOPE_NAT_REWRITE_H

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_FRAG_MASK 0x3fff /* MF flag | fragment offset, host order */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Replace a 4-byte address and a 2-byte port (or ICMP echo id) at the given offsets and fix the
 * checksums; what is unchanged is not touched. The L4 checksum at csum_off covers the address
 * through the pseudo header for TCP/UDP only; ICMP has none. UDP's checksum 0 means "none" and
 * must stay 0 (BPF_F_MARK_MANGLED_0 also writes 0xffff for a computed 0). 0, or -1 when a
 * helper failed (the packet is then half rewritten: drop it). */
static __always_inline int nat_rewrite(struct __sk_buff *skb, __u8 proto, __u32 csum_off,
				       __u32 addr_off, __be32 old_addr, __be32 new_addr,
				       __u32 port_off, __be16 old_port, __be16 new_port)
{
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old_addr != new_addr) {
		if (proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
					BPF_F_PSEUDO_HDR | mangled | sizeof(new_addr)) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					mangled | sizeof(new_port)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
			return -1;
	}
	return 0;
}

#endif
