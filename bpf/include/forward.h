/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * forward.h: the TC hook's "forward" capability, port forwarding / service
 * DNAT and interface redirect: the sl_fwd/sl_ct/sl_redir* maps and their
 * logic. Included by sluice_tc.bpf.c only (it defines the maps), after
 * TCX_NEXT and sl_tc_stats.
 *
 * Forwarding (forward()). A packet is first looked up in sl_ct by its own
 * tuple:
 *   - a CT_DNAT entry (client -> service) rewrites the destination to the
 *     flow's target;
 *   - a CT_SNAT entry (target -> client) rewrites the source back to the
 *     service, so the client only ever sees the address it dialled.
 * Otherwise, on ingress only, a packet for a service in sl_fwd starts a flow:
 * the target is chosen by a hash of the 5-tuple (so even a flow whose state
 * was evicted lands on the same target while the rule is unchanged) and both
 * entries are created. Egress runs only the lookup: it reverse-translates
 * replies from targets on this host.
 *
 * Checksums are updated incrementally with bpf_l3/l4_csum_replace, which
 * know CHECKSUM_PARTIAL skbs (only the pseudo-header part is adjusted) and,
 * with BPF_F_MARK_MANGLED_0, leave a zero UDP checksum zero. Fragments,
 * IPv6 routing headers and truncated L4 headers are never rewritten.
 *
 * Redirect (redirect(), ingress only, after translation). The destination
 * is looked up in sl_redir4/6 and a hit goes straight to the rule's
 * interface: into a veth's peer namespace with bpf_redirect_peer (MACs
 * rewritten to what the peer expects, learned by learn_peer()), else out of
 * the interface with bpf_redirect_neigh, which resolves the next hop
 * itself. Either way the host's routing and its ip_forward setting are
 * bypassed.
 */
#ifndef SLUICE_FORWARD_H
#define SLUICE_FORWARD_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"
#include "parse.h"
#include "counter.h"

/* bpf_l4_csum_replace: the change is to an IPv6 pseudo-header (6.16 UAPI).
 * Without it a CHECKSUM_COMPLETE skb's csum would be adjusted as if an
 * IPv4 header checksum had compensated, and the stack would drop it. */
#ifndef BPF_F_IPV6
#define BPF_F_IPV6 (1ULL << 7)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fwd_key);
	__type(value, struct fwd_rule);
	__uint(max_entries, SLUICE_MAX_FORWARDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, SLUICE_MAX_FORWARDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_fwd_cnt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(max_entries, SLUICE_DEFAULT_MAX_FLOWS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v4_key);
	__type(value, struct redir_val);
	__uint(max_entries, SLUICE_MAX_REDIRECTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_redir4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_v6_key);
	__type(value, struct redir_val);
	__uint(max_entries, SLUICE_MAX_REDIRECTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_redir6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, SLUICE_MAX_REDIRECTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_redir_cnt SEC(".maps");

/* Last source MAC seen on each managed interface's ingress (learn_peer()). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct mac);
	__uint(max_entries, SLUICE_PEER_MAC_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_peer_mac SEC(".maps");

/* Flow hash of the client's tuple: deterministic, so a flow maps to the same
 * target for as long as the rule's target list is unchanged. */
static __always_inline __u32 flow_hash(const struct pkt *p)
{
	const __u32 *s = (const __u32 *)p->saddr;
	__u32 h = s[0] ^ s[1] ^ s[2] ^ s[3];
	h ^= ((__u32)p->sport << 16) | p->dport;
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

/* Writes a new address and port into one end (dst if `dst`, else src) of the
 * packet and fixes the L3 and L4 checksums. Returns 0 or a helper error. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, int dst, const __u8 *addr, __be16 port)
{
	__u32 l4csum = p->l4off + (p->l4proto == IPPROTO_TCP ? 16 : 6);
	/* UDP: a zero checksum means "none" and must stay zero. */
	__u64 mm0 = p->l4proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	const __u8 *old = dst ? p->daddr : p->saddr;
	__be16 oldport = dst ? p->dport : p->sport;
	__u32 portoff = p->l4off + (dst ? 2 : 0);
	int err;

	if (p->family == 4) {
		__u32 from, to;
		__builtin_memcpy(&from, old, 4);
		__builtin_memcpy(&to, addr, 4);
		__u32 aoff = p->l3off + (dst ? 16 : 12);
		err = bpf_l3_csum_replace(skb, p->l3off + 10, from, to, 4);
		err = err ?: bpf_l4_csum_replace(skb, l4csum, from, to, BPF_F_PSEUDO_HDR | mm0 | 4);
		err = err ?: bpf_skb_store_bytes(skb, aoff, &to, 4, 0);
	} else {
		__u8 to[16];
		__builtin_memcpy(to, addr, 16);
		/* A 16-byte change goes in as a precomputed difference (size 0). */
		__s64 diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)to, 16, 0);
		__u32 aoff = p->l3off + (dst ? 24 : 8);
		err = bpf_l4_csum_replace(skb, l4csum, 0, diff, BPF_F_PSEUDO_HDR | BPF_F_IPV6 | mm0);
		err = err ?: bpf_skb_store_bytes(skb, aoff, to, 16, 0);
	}
	if (err)
		return err;
	if (port != oldport) {
		err = bpf_l4_csum_replace(skb, l4csum, oldport, port, mm0 | 2);
		err = err ?: bpf_skb_store_bytes(skb, portoff, &port, 2, 0);
	}
	return err;
}

static __always_inline __u8 next_state(__u8 state, const struct pkt *p)
{
	if (p->l4proto != IPPROTO_TCP)
		return CT_EST;
	if (p->tcp_flags & 0x04) /* RST */
		return CT_CLOSE;
	if (p->tcp_flags & 0x01) /* FIN */
		return state == CT_CLOSE ? CT_CLOSE : CT_FIN;
	if (state == CT_NEW && (p->tcp_flags & TCP_FLAG_SYN))
		return CT_NEW; /* SYN retransmit or SYN-ACK */
	return state == CT_NEW ? CT_EST : state;
}

/* The reply direction of a client -> service packet sent to `addr`:`port`:
 * key (target -> client) and value (rewrite the source to the service). */
static __always_inline void reverse_of(const struct pkt *p, const __u8 *addr, __be16 port, __u32 slot, __u64 now,
				       struct ct_key *rk, struct ct_val *rev)
{
	rk->family = p->family;
	rk->proto = p->l4proto;
	rk->sport = port;
	rk->dport = p->sport;
	__builtin_memcpy(rk->saddr, addr, 16);
	__builtin_memcpy(rk->daddr, p->saddr, 16);
	rev->port = p->dport;
	rev->dir = CT_SNAT;
	rev->state = CT_NEW;
	rev->slot = slot;
	rev->last_ns = now;
	__builtin_memcpy(rev->addr, p->daddr, 16);
}

/* A new flow to a service: pick the target, record both directions. Returns
 * the forward entry to apply, or NULL (no service, or state not stored).
 * TCP flows start only with a SYN: stray segments cannot fill the table. */
static __always_inline struct ct_val *new_flow(const struct pkt *p, const struct ct_key *k, __u64 now)
{
	if (p->l4proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return NULL;
	struct fwd_key fk = {.family = p->family, .proto = p->l4proto, .port = p->dport};
	__builtin_memcpy(fk.addr, p->daddr, 16);
	struct fwd_rule *r = bpf_map_lookup_elem(&sl_fwd, &fk);
	if (!r || r->ntargets == 0)
		return NULL;
	/* Masking keeps the index provably inside t[] for the verifier. */
	__u32 i = (flow_hash(p) % r->ntargets) & (SLUICE_MAX_FWD_TARGETS - 1);
	struct fwd_target *t = &r->t[i];

	struct ct_val fwd = {.port = t->port, .dir = CT_DNAT, .state = CT_NEW, .slot = r->slot, .last_ns = now};
	__builtin_memcpy(fwd.addr, t->addr, 16);
	struct ct_key rk = {};
	struct ct_val rev = {};
	reverse_of(p, t->addr, t->port, r->slot, now, &rk, &rev);

	if (bpf_map_update_elem(&sl_ct, &rk, &rev, BPF_ANY) || bpf_map_update_elem(&sl_ct, k, &fwd, BPF_ANY))
		return NULL;
	count(&sl_tc_stats, TCS_NEW_FLOW, 0);
	return bpf_map_lookup_elem(&sl_ct, k);
}

/* Translates a packet of a forwarded flow (either direction), starting the
 * flow on ingress; on DNAT, p->daddr becomes the target for redirect(). */
static __always_inline void forward(struct __sk_buff *skb, struct pkt *p, int ingress, const struct tc_config *cfg)
{
	/* No forwards, no flows: deleting a forward forgets its flows. */
	if (!cfg->nforwards || (p->l4proto != IPPROTO_TCP && p->l4proto != IPPROTO_UDP))
		return;
	if (!(p->flags & PKT_F_L4) || (p->flags & (PKT_F_FRAGMENTED | PKT_F_RTHDR))) {
		/* Never guess: no ports here, or the other fragments of this
		 * datagram would go elsewhere, or the pseudo-header is not ours. */
		count(&sl_tc_stats, TCS_SKIPPED, skb->len);
		return;
	}
	struct ct_key k = {};
	ct_key_of(&k, p);
	__u64 now = bpf_ktime_get_ns();
	struct ct_val *v = bpf_map_lookup_elem(&sl_ct, &k);
	int created = 0;
	int syn = p->l4proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	if (!v) {
		if (!ingress)
			return;
		v = new_flow(p, &k, now);
		if (!v) {
			if (syn) {
				/* A direct connection (not through a service) reusing the
				 * 4-tuple of an old forwarded flow: that flow is over, and
				 * its reply entry must not rewrite this one's SYN-ACK. */
				struct ct_key rk = {.family = p->family, .proto = p->l4proto, .sport = p->dport, .dport = p->sport};
				__builtin_memcpy(rk.saddr, p->daddr, 16);
				__builtin_memcpy(rk.daddr, p->saddr, 16);
				struct ct_val *old = bpf_map_lookup_elem(&sl_ct, &rk);
				if (old && old->dir == CT_SNAT)
					bpf_map_delete_elem(&sl_ct, &rk);
			}
			return;
		}
		created = 1;
	} else if (syn && v->dir == CT_DNAT && v->state != CT_NEW) {
		/* The client reuses its port for a new connection: start over. */
		v->state = CT_NEW;
		created = 1;
	}
	v->last_ns = now;
	/* The packet that created the flow leaves it NEW (half-open timeout). */
	if (!created) {
		__u8 st = next_state(v->state, p);
		if (st != v->state)
			v->state = st;
	}
	int dst = v->dir == CT_DNAT;
	__u8 addr[16];
	__builtin_memcpy(addr, v->addr, 16);
	__be16 port = v->port;
	if (dst) {
		/* The LRU may have evicted the reply direction alone (restore it,
		 * or replies would leak with the target's address), and a new
		 * connection on a reused port starts it afresh. */
		struct ct_key rk = {};
		struct ct_val rev = {};
		reverse_of(p, addr, port, v->slot, now, &rk, &rev);
		if (syn)
			bpf_map_update_elem(&sl_ct, &rk, &rev, BPF_ANY);
		else if (!bpf_map_lookup_elem(&sl_ct, &rk))
			bpf_map_update_elem(&sl_ct, &rk, &rev, BPF_NOEXIST);
	}
	count(&sl_fwd_cnt, v->slot, skb->len);
	if (rewrite(skb, p, dst, addr, port)) {
		count(&sl_tc_stats, TCS_ERROR, skb->len);
		return;
	}
	count(&sl_tc_stats, dst ? TCS_DNAT : TCS_SNAT, skb->len);
	/* The redirect stage looks up the new destination. */
	if (dst)
		__builtin_memcpy(p->daddr, addr, 16);
}

/* Sends a packet whose destination has a redirect rule straight to the
 * rule's interface; TCX_NEXT if none (or it is the one it came in on). */
static __always_inline int redirect(struct __sk_buff *skb, const struct pkt *p)
{
	struct redir_val *r;
	if (p->family == 4) {
		struct lpm_v4_key k = {.prefixlen = 32};
		__builtin_memcpy(k.addr, p->daddr, 4);
		r = bpf_map_lookup_elem(&sl_redir4, &k);
	} else {
		struct lpm_v6_key k = {.prefixlen = 128};
		__builtin_memcpy(k.addr, p->daddr, 16);
		r = bpf_map_lookup_elem(&sl_redir6, &k);
	}
	if (!r || r->ifindex == skb->ifindex)
		return TCX_NEXT;
	count(&sl_redir_cnt, r->slot, skb->len);
	count(&sl_tc_stats, TCS_REDIRECT, skb->len);
	if (r->flags & REDIR_F_PEER) {
		/* Source: the host-side veth; destination: its peer, if seen. */
		__u32 ifindex = r->ifindex;
		struct mac *peer = bpf_map_lookup_elem(&sl_peer_mac, &ifindex);
		if (peer)
			bpf_skb_store_bytes(skb, 0, peer->a, 6, 0);
		bpf_skb_store_bytes(skb, 6, r->smac, 6, 0);
		return bpf_redirect_peer(ifindex, 0);
	}
	return bpf_redirect_neigh(r->ifindex, NULL, 0, 0);
}

/* Remembers the source MAC seen on this interface (its veth peer's). */
static __always_inline void learn_peer(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (data + 12 > end)
		return;
	__u32 ifindex = skb->ifindex;
	struct mac n = {};
	__builtin_memcpy(n.a, data + 6, 6);
	struct mac *m = bpf_map_lookup_elem(&sl_peer_mac, &ifindex);
	/* Compare as integers: __builtin_memcmp becomes a libcall in BPF. */
	if (m && *(__u64 *)m == *(__u64 *)&n)
		return;
	bpf_map_update_elem(&sl_peer_mac, &ifindex, &n, BPF_ANY);
}

#endif /* SLUICE_FORWARD_H */
