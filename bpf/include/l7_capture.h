/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * l7_capture.h: L7 payload capture for the daemon's HTTP/Redis/MySQL
 * parsers. Included by sluice_tc.bpf.c only (it defines the maps), after
 * sl_tc_stats and forward.h (it reads forward.h's sl_ct).
 *
 * TCP packets with payload to or from a configured port (sl_l7_ports), or
 * of a connection recognised by its first bytes (sl_l7_flows), are copied,
 * up to l7_cap bytes, into the event ring; so is a FIN or RST without
 * payload (it ends a stream: a response delimited by the close is complete
 * then). The hook runs this before any translation. Ingress sees every
 * packet that enters the host from a managed interface; egress adds only
 * packets the host itself sent (a forwarded packet was already seen at its
 * ingress).
 *
 * Forwarded flows: a packet with an sl_ct entry is matched as the client
 * sees its connection (a target's reply as coming from the service, so a
 * target on another port is still captured), and the record carries the
 * other address of the translation (L7_F_DNAT/L7_F_SNAT, xaddr/xport), so
 * the daemon pairs the request to the service with the target's reply.
 */
#ifndef SLUICE_L7_CAPTURE_H
#define SLUICE_L7_CAPTURE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"
#include "parse.h"
#include "events.h"
#include "counter.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u8);
	__uint(max_entries, SLUICE_L7_PORTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_l7_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct l7_flow);
	__uint(max_entries, SLUICE_L7_FLOWS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_l7_flows SEC(".maps");

/* Scratch space for one event: too big for the 512-byte stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ev_l7);
	__uint(max_entries, 1);
} sl_l7_buf SEC(".maps");

/* The protocol a connection's first payload bytes announce, and which way
 * they go: HTTP methods and status lines, a RESP array, a MySQL server
 * greeting (3-byte length, sequence 0, protocol version 10). */
static __always_inline int l7_detect(const __u8 *b, __u32 len, __u8 *dir)
{
	if (len < 8)
		return 0; /* too short to tell */
	__u32 w = b[0] | b[1] << 8 | b[2] << 16 | (__u32)b[3] << 24;
#define W(a, b_, c, d) ((__u32)(a) | (b_) << 8 | (c) << 16 | (__u32)(d) << 24)
	*dir = L7_TO_SERVER;
	if (w == W('G', 'E', 'T', ' ') || w == W('P', 'O', 'S', 'T') || w == W('P', 'U', 'T', ' ') ||
	    w == W('H', 'E', 'A', 'D') || w == W('D', 'E', 'L', 'E') || w == W('P', 'A', 'T', 'C') ||
	    w == W('O', 'P', 'T', 'I'))
		return L7_HTTP;
	if (b[0] == '*' && b[1] >= '1' && b[1] <= '9')
		return L7_REDIS;
	*dir = L7_TO_CLIENT;
	if (w == W('H', 'T', 'T', 'P'))
		return L7_HTTP;
	if (b[3] == 0 && b[4] == 10 && (b[0] | b[1] << 8 | b[2] << 16) + 4 == len)
		return L7_MYSQL;
#undef W
	return 0;
}

/* Copies a matching packet's TCP payload, up to l7_cap bytes, into the
 * event ring as an ev_l7 (the top comment says which packets match). */
static __always_inline void l7_capture(struct __sk_buff *skb, const struct pkt *p, int ingress,
				       const struct tc_config *cfg)
{
	if (p->l4proto != IPPROTO_TCP || !(p->flags & PKT_F_L4) || (p->flags & PKT_F_FRAG))
		return;
	if (!ingress && skb->ingress_ifindex)
		return; /* forwarded through the host: captured where it came in */
	/* Payload bounds from the IP length, not skb->len (padding). */
	__u8 doff;
	__be16 iplen;
	if (bpf_skb_load_bytes(skb, p->l4off + 12, &doff, 1) ||
	    bpf_skb_load_bytes(skb, p->l3off + (p->family == 4 ? 2 : 4), &iplen, 2))
		return;
	if ((doff >> 4) < 5)
		return; /* a TCP header shorter than 20 bytes is bogus */
	__u32 end = p->l3off + bpf_ntohs(iplen) + (p->family == 4 ? 0 : 40);
	__u32 off = p->l4off + (doff >> 4) * 4;
	if (end > skb->len)
		end = skb->len;
	__u32 plen = end > off ? end - off : 0;
	if (!plen && !(p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		return; /* nothing to parse, and no end of stream */

	/* The connection as its client sees it: k is the packet's tuple, with
	 * a target's reply turned into the service's. */
	struct ct_key k = {};
	ct_key_of(&k, p);
	__u16 xflags = 0;
	__u8 xaddr[16] = {};
	__be16 xport = 0;
	if (cfg->nforwards) {
		struct ct_val *v = bpf_map_lookup_elem(&sl_ct, &k);
		if (v && v->dir == CT_DNAT) {
			xflags = L7_F_DNAT;
			__builtin_memcpy(xaddr, v->addr, 16);
			xport = v->port;
		} else if (v && v->dir == CT_SNAT) {
			xflags = L7_F_SNAT;
			__builtin_memcpy(xaddr, v->addr, 16);
			xport = v->port;
			/* Match as the client sees it: from the service. */
			__builtin_memcpy(k.saddr, v->addr, 16);
			k.sport = v->port;
		}
	}

	__u16 dp = bpf_ntohs(k.dport), sp = bpf_ntohs(k.sport);
	/* A target's own port, when not the service's, matches too. */
	__u16 tp = xflags ? bpf_ntohs(xflags == L7_F_DNAT ? xport : p->sport) : 0;
	__u8 proto = 0, dir = 0;
	__u8 *pr = bpf_map_lookup_elem(&sl_l7_ports, &dp);
	if (pr) {
		proto = *pr;
		dir = L7_TO_SERVER;
	} else if ((pr = bpf_map_lookup_elem(&sl_l7_ports, &sp))) {
		proto = *pr;
		dir = L7_TO_CLIENT;
	} else if (tp && (pr = bpf_map_lookup_elem(&sl_l7_ports, &tp))) {
		proto = *pr;
		dir = xflags == L7_F_DNAT ? L7_TO_SERVER : L7_TO_CLIENT;
	} else if (cfg->l7_detect) {
		struct l7_flow *f = bpf_map_lookup_elem(&sl_l7_flows, &k);
		if (f) {
			proto = f->proto;
			dir = f->dir;
		} else {
			/* Only the first bytes are needed to recognise a protocol. */
			__u8 first[8] = {};
			if (plen < 8 || bpf_skb_load_bytes(skb, off, first, 8))
				return;
			proto = l7_detect(first, plen, &dir);
			if (!proto)
				return;
			struct l7_flow fl = {.proto = proto, .dir = dir};
			bpf_map_update_elem(&sl_l7_flows, &k, &fl, BPF_ANY);
			struct ct_key r = {.family = k.family, .proto = k.proto, .sport = k.dport, .dport = k.sport};
			__builtin_memcpy(r.saddr, k.daddr, 16);
			__builtin_memcpy(r.daddr, k.saddr, 16);
			fl.dir = dir == L7_TO_SERVER ? L7_TO_CLIENT : L7_TO_SERVER;
			bpf_map_update_elem(&sl_l7_flows, &r, &fl, BPF_ANY);
		}
	}
	if (!proto)
		return;

	/* A match: now copy the payload, up to the cap. */
	__u32 zero = 0;
	struct ev_l7 *ev = bpf_map_lookup_elem(&sl_l7_buf, &zero);
	if (!ev)
		return;
	__u32 n = plen < cfg->l7_cap ? plen : cfg->l7_cap;
	/* n == 0: a FIN or RST alone, nothing to copy. The verifier needs
	 * n <= SLUICE_L7_CAP (and n > 0) for the copy. */
	if (n > SLUICE_L7_CAP)
		return;
	if (n > 0 && bpf_skb_load_bytes(skb, off, ev->data, n))
		return;
	__be32 seq;
	if (bpf_skb_load_bytes(skb, p->l4off + 4, &seq, 4))
		return;
	ev->h.kind = EV_L7;
	ev->h.size = SLUICE_EV_L7_HDR + n;
	ev->h.cpu = bpf_get_smp_processor_id();
	ev->h.ts_ns = bpf_ktime_get_ns();
	ev->ifindex = skb->ifindex;
	ev->seq = bpf_ntohl(seq);
	ev->sport = bpf_ntohs(p->sport);
	ev->dport = bpf_ntohs(p->dport);
	ev->family = p->family;
	ev->proto = proto;
	ev->dir = dir;
	ev->tcp_flags = p->tcp_flags;
	ev->payload_len = plen;
	ev->cap_len = n;
	ev->flags = xflags;
	ev->xport = bpf_ntohs(xport);
	ev->_pad = 0;
	ev->_pad2 = 0;
	__builtin_memcpy(ev->saddr, p->saddr, 16);
	__builtin_memcpy(ev->daddr, p->daddr, 16);
	__builtin_memcpy(ev->xaddr, xaddr, 16);
	count(&sl_tc_stats, TCS_L7, plen);
	/* A wakeup per record costs more than the capture itself under load:
	 * wake the reader only once 64 KiB wait; it also drains every 100 ms. */
	__u64 wake = bpf_ringbuf_query(&sl_events, BPF_RB_AVAIL_DATA) > (64 << 10) ? BPF_RB_FORCE_WAKEUP
										    : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&sl_events, ev, SLUICE_EV_L7_HDR + n, wake))
		ev_lost(EVL_L7);
}

#endif /* SLUICE_L7_CAPTURE_H */
