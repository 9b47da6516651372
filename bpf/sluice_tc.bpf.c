// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sluice_tc: the TC hook, attached with tcx links to the ingress
 * (sluice_tc_in) and egress (sluice_tc_out) of every managed interface.
 *
 * Per packet, after parsing (headers pulled into the linear area if needed):
 *   1. ingress, if redirects are set: learn the peer MAC  (forward.h)
 *   2. if L7 capture is on: copy the untranslated payload (l7_capture.h)
 *   3. if forwards are set: DNAT, or a reply's reverse    (forward.h)
 *   4. ingress, if redirects are set: redirect            (forward.h)
 * A stage whose rule set is empty in sl_tc_cfg costs no lookup; with all
 * empty the packet is not even parsed. Every packet continues (TCX_NEXT)
 * unless redirected.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"
#include "parse.h"
#include "events.h"
#include "counter.h"

/* tcx return codes (linux 6.6 UAPI; linux-libc-dev 6.1 lacks them). */
#define TCX_NEXT -1

/* Shared by every stage: the daemon's switches and the hook's counters. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct tc_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_tc_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, TCS_COUNT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_tc_stats SEC(".maps");

#include "forward.h"
#include "l7_capture.h"

static __always_inline int handle(struct __sk_buff *skb, int ingress)
{
	__u32 zero = 0;
	struct tc_config *cfg = bpf_map_lookup_elem(&sl_tc_cfg, &zero);
	if (!cfg || (!cfg->nforwards && !cfg->nredirects && !cfg->l7_cap))
		return TCX_NEXT;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct pkt p = {};
	int r = parse_pkt(data, end, &p);
	/* Headers may sit in paged data (GRO/GSO skbs): only then, pull the
	 * first bytes into the linear area and parse again. */
	if ((r != PARSE_OK || (p.flags & PKT_F_L4_BAD)) && end - data < skb->len) {
		__u32 want = skb->len < 256 ? skb->len : 256;
		bpf_skb_pull_data(skb, want);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		__builtin_memset(&p, 0, sizeof(p));
		r = parse_pkt(data, end, &p);
	}
	if (r != PARSE_OK)
		return TCX_NEXT;
	if (ingress && cfg->nredirects)
		learn_peer(skb);
	if (cfg->l7_cap)
		l7_capture(skb, &p, ingress, cfg);
	forward(skb, &p, ingress, cfg);
	if (!ingress || !cfg->nredirects)
		return TCX_NEXT;
	return redirect(skb, &p);
}

SEC("classifier")
int sluice_tc_in(struct __sk_buff *skb)
{
	return handle(skb, 1);
}

SEC("classifier")
int sluice_tc_out(struct __sk_buff *skb)
{
	return handle(skb, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
