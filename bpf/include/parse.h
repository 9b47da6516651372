/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h: bounds-checked packet parser shared by the XDP and TC programs.
 *
 * Ethernet, up to SLUICE_MAX_VLAN stacked VLAN tags (802.1Q 0x8100 and
 * 802.1ad 0x88a8, in any order, any VID), IPv4 with options and fragments,
 * IPv6 with a walk of up to SLUICE_MAX_IPV6_EXT extension headers, then the
 * TCP/UDP ports. Every read is checked against data_end before it happens,
 * so a truncated or hostile frame is reported, never misread:
 *   PARSE_BAD      L2/L3 header truncated or malformed: addresses unknown
 *   PARSE_NON_IP   neither IPv4 nor IPv6
 *   PARSE_OK       addresses valid; PKT_F_L4 says whether ports are too
 *   PARSE_TOO_DEEP still a VLAN tag after SLUICE_MAX_VLAN of them: addresses
 *                  unknown, yet the kernel may deliver such a frame (it
 *                  strips stacked priority tags, VLAN devices their own),
 *                  so the caller must not take it for harmless
 */
#ifndef SLUICE_PARSE_H
#define SLUICE_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "sluice_abi.h"

#define PARSE_OK 0
#define PARSE_NON_IP 1
#define PARSE_BAD 2
#define PARSE_TOO_DEEP 3

#define PKT_F_L4 0x1        /* sport/dport (or ICMP) header fully present */
#define PKT_F_FRAG 0x2      /* non-first fragment: no L4 header here */
#define PKT_F_L4_BAD 0x4    /* L4 header truncated or ext-header bound hit */
#define PKT_F_RTHDR 0x8     /* IPv6 routing header: the pseudo-header uses the
			     * final destination, so NAT leaves it alone */
#define PKT_F_FRAGMENTED 0x10 /* any fragment, the first included (MF or an
			       * offset; an IPv6 fragment header) */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

struct pkt {
	__u8 family; /* 4 or 6 */
	__u8 l4proto;
	__u8 flags;
	__u8 tcp_flags; /* TCP only, when PKT_F_L4 */
	__be16 sport;
	__be16 dport;
	__u8 saddr[16]; /* IPv4 uses the first 4 bytes */
	__u8 daddr[16];
	__u16 l3off; /* offsets from the frame start, for rewriting (TC) */
	__u16 l4off;
};

/* Ports of TCP/UDP; other protocols only need to be present. */
static __always_inline void parse_l4(void *l4, void *end, struct pkt *p, void *data)
{
	p->l4off = l4 - data;
	if (p->l4proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			goto bad;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
	} else if (p->l4proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			goto bad;
		p->sport = uh->source;
		p->dport = uh->dest;
	}
	p->flags |= PKT_F_L4;
	return;
bad:
	p->flags |= PKT_F_L4_BAD;
}

static __always_inline int parse_ipv6(void *cur, void *end, struct pkt *p, void *data)
{
	struct ipv6hdr *ip6 = cur;
	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		return PARSE_BAD;
	p->family = 6;
	__builtin_memcpy(p->saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr, &ip6->daddr, 16);

	__u8 nexthdr = ip6->nexthdr;
	cur = ip6 + 1;
	/* Bounded walk: the verifier sees at most SLUICE_MAX_IPV6_EXT rounds,
	 * and each round re-checks the header against data_end. */
	for (int i = 0; i < SLUICE_MAX_IPV6_EXT; i++) {
		struct ipv6_opt_hdr *oh = cur;
		if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
		    nexthdr == IPPROTO_DSTOPTS) {
			if ((void *)(oh + 1) > end)
				goto l4_bad;
			if (nexthdr == IPPROTO_ROUTING)
				p->flags |= PKT_F_RTHDR;
			nexthdr = oh->nexthdr;
			cur += ((__u32)oh->hdrlen + 1) * 8;
		} else if (nexthdr == IPPROTO_AH) {
			if ((void *)(oh + 1) > end)
				goto l4_bad;
			nexthdr = oh->nexthdr;
			cur += ((__u32)oh->hdrlen + 2) * 4;
		} else if (nexthdr == IPPROTO_FRAGMENT) {
			struct frag_hdr {
				__u8 nexthdr, reserved;
				__be16 frag_off;
				__be32 id;
			} *fh = cur;
			if ((void *)(fh + 1) > end)
				goto l4_bad;
			nexthdr = fh->nexthdr;
			p->l4proto = nexthdr;
			p->flags |= PKT_F_FRAGMENTED;
			if (bpf_ntohs(fh->frag_off) & 0xfff8) {
				p->flags |= PKT_F_FRAG;
				return PARSE_OK;
			}
			cur = fh + 1;
		} else {
			p->l4proto = nexthdr;
			parse_l4(cur, end, p, data);
			return PARSE_OK;
		}
	}
	/* SLUICE_MAX_IPV6_EXT headers walked: the transport header may follow
	 * the last of them; one more extension header is beyond the bound. */
	if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING && nexthdr != IPPROTO_DSTOPTS &&
	    nexthdr != IPPROTO_AH && nexthdr != IPPROTO_FRAGMENT) {
		p->l4proto = nexthdr;
		parse_l4(cur, end, p, data);
		return PARSE_OK;
	}
l4_bad:
	/* Addresses are valid; only the transport header is out of reach. */
	p->l4proto = nexthdr;
	p->flags |= PKT_F_L4_BAD;
	return PARSE_OK;
}

static __always_inline int parse_ipv4(void *cur, void *end, struct pkt *p, void *data)
{
	struct iphdr *ip = cur;
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return PARSE_BAD;
	__u32 hlen = ip->ihl * 4;
	if (cur + hlen > end || bpf_ntohs(ip->tot_len) < hlen)
		return PARSE_BAD;
	p->family = 4;
	p->l4proto = ip->protocol;
	__builtin_memcpy(p->saddr, &ip->saddr, 4);
	__builtin_memcpy(p->daddr, &ip->daddr, 4);
	if (bpf_ntohs(ip->frag_off) & 0x3fff) /* MF or an offset */
		p->flags |= PKT_F_FRAGMENTED;
	if (bpf_ntohs(ip->frag_off) & 0x1fff) {
		p->flags |= PKT_F_FRAG;
		return PARSE_OK;
	}
	parse_l4(cur + hlen, end, p, data);
	return PARSE_OK;
}

/* 1 if `t` (network order) is an 802.1Q or 802.1ad TPID, else 0, without a
 * branch (x - 1 has bit 63 set only for x == 0), so the verifier sees an
 * unknown 0 or 1 rather than two paths. The empty asm hides x's 16-bit
 * range from clang, which would otherwise turn this back into a branch. */
static __always_inline __u64 is_tpid(__u64 t)
{
	__u64 q = t ^ bpf_htons(ETH_P_8021Q), ad = t ^ bpf_htons(ETH_P_8021AD);
	asm volatile("" : "+r"(q), "+r"(ad));
	return ((q - 1) >> 63) | ((ad - 1) >> 63);
}

static __always_inline int parse_pkt(void *data, void *end, struct pkt *p)
{
	if (data + ETH_HLEN > end)
		return PARSE_BAD;

	/* Up to SLUICE_MAX_VLAN tags; `at` is where the Ethernet header would
	 * start if the tags so far were cut out (its EtherType at +12).
	 * Verifier: were the tag offset a constant per tag count, the rest of
	 * the program would be verified once per count (9 times: near the
	 * 1M-instruction limit). So `next` is computed from is_tpid()'s
	 * unknown 0/1 before the branch on it (the branch refines `more`, not
	 * `next`; the asm stops clang from folding `next` to off + 4 below the
	 * branch): past the first tag the offset is one bounded variable. The
	 * deepest path is verified first and its range covers every earlier
	 * exit, which the verifier then prunes. Untagged frames keep the
	 * constant offset of their own fast path. */
	__u64 off = 0;
	void *at = data;
#pragma unroll
	for (int i = 0; i < SLUICE_MAX_VLAN; i++) {
		__u64 more = is_tpid(*(__be16 *)(at + 12));
		__u64 next = off + (more << 2);
		asm volatile("" : "+r"(next));
		if (!more)
			break;
		off = next;
		at = data + off;
		if (at + ETH_HLEN > end) /* a tag cut short */
			return PARSE_BAD;
	}
	__be16 proto = *(__be16 *)(at + 12);
	if (is_tpid(proto))
		return PARSE_TOO_DEEP;
	void *cur = at + ETH_HLEN;

	p->l3off = cur - data;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(cur, end, p, data);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(cur, end, p, data);
	return PARSE_NON_IP;
}

/* The packet's own tuple as a flow key (`struct ct_key`): the forward
 * state (sl_ct) and the L7 capture's detected flows (sl_l7_flows) are both
 * keyed by it. */
static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p)
{
	k->family = p->family;
	k->proto = p->l4proto;
	k->sport = p->sport;
	k->dport = p->dport;
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
}

#endif /* SLUICE_PARSE_H */
