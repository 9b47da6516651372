// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sluice_xdp: the XDP firewall attached to every managed interface.
 *
 * Pipeline per packet: parse -> allow tries (src, dst) -> deny tries
 * (src, dst) -> PASS. Allow wins over deny. Each matched rule's per-CPU
 * counter slot is bumped, and every packet lands in exactly one verdict
 * counter of sl_stats. All maps are pinned by name, so enforcement outlives
 * the daemon and a restarted daemon finds the same tables.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"
#include "parse.h"

#define LPM_MAP(NAME, KEY)                                   \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);         \
		__type(key, struct KEY);                     \
		__type(value, struct fw_rule);               \
		__uint(max_entries, SLUICE_DEFAULT_MAX_RULES); \
		__uint(map_flags, BPF_F_NO_PREALLOC);        \
		__uint(pinning, LIBBPF_PIN_BY_NAME);         \
	} NAME SEC(".maps")

LPM_MAP(sl_allow_src4, lpm_v4_key);
LPM_MAP(sl_allow_dst4, lpm_v4_key);
LPM_MAP(sl_allow_src6, lpm_v6_key);
LPM_MAP(sl_allow_dst6, lpm_v6_key);
LPM_MAP(sl_deny_src4, lpm_v4_key);
LPM_MAP(sl_deny_dst4, lpm_v4_key);
LPM_MAP(sl_deny_src6, lpm_v6_key);
LPM_MAP(sl_deny_dst6, lpm_v6_key);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, SLUICE_DEFAULT_MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_rule_cnt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, STAT_COUNT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_config SEC(".maps");

static __always_inline void count(void *map, __u32 idx, __u64 len)
{
	struct counter *c = bpf_map_lookup_elem(map, &idx);
	if (c) { /* per-CPU slot: no atomics needed */
		c->packets++;
		c->bytes += len;
	}
}

/* Looks addr up in one table if the table is non-empty; on a hit, counts
 * the rule and returns 1. */
static __always_inline int match4(void *map, __u32 mask, int table, __u8 *addr, __u64 len)
{
	if (!(mask & (1u << table)))
		return 0;
	struct lpm_v4_key k = { .prefixlen = 32 };
	__builtin_memcpy(k.addr, addr, 4);
	struct fw_rule *r = bpf_map_lookup_elem(map, &k);
	if (!r)
		return 0;
	count(&sl_rule_cnt, r->slot, len);
	return 1;
}

static __always_inline int match6(void *map, __u32 mask, int table, __u8 *addr, __u64 len)
{
	if (!(mask & (1u << table)))
		return 0;
	struct lpm_v6_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.addr, addr, 16);
	struct fw_rule *r = bpf_map_lookup_elem(map, &k);
	if (!r)
		return 0;
	count(&sl_rule_cnt, r->slot, len);
	return 1;
}

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 len = end - data;
	struct pkt p = {};
	__u32 zero = 0;

	int rc = parse_pkt(data, end, &p);
	if (rc == PARSE_NON_IP) {
		count(&sl_stats, STAT_NON_IP, len);
		return XDP_PASS;
	}
	if (rc != PARSE_OK) {
		count(&sl_stats, STAT_UNPARSED, len);
		return XDP_PASS;
	}
	if (p.flags & PKT_F_FRAG)
		count(&sl_stats, STAT_FRAGMENT, len);
	if (p.flags & PKT_F_L4_BAD)
		count(&sl_stats, STAT_L4_UNPARSED, len);

	struct fw_config *cfg = bpf_map_lookup_elem(&sl_config, &zero);
	__u32 mask = cfg ? cfg->table_mask : 0;

	if (p.family == 4) {
		if (match4(&sl_allow_src4, mask, FW_ALLOW_SRC4, p.saddr, len) ||
		    match4(&sl_allow_dst4, mask, FW_ALLOW_DST4, p.daddr, len))
			goto allow;
		if (match4(&sl_deny_src4, mask, FW_DENY_SRC4, p.saddr, len) ||
		    match4(&sl_deny_dst4, mask, FW_DENY_DST4, p.daddr, len))
			goto deny;
	} else {
		if (match6(&sl_allow_src6, mask, FW_ALLOW_SRC6, p.saddr, len) ||
		    match6(&sl_allow_dst6, mask, FW_ALLOW_DST6, p.daddr, len))
			goto allow;
		if (match6(&sl_deny_src6, mask, FW_DENY_SRC6, p.saddr, len) ||
		    match6(&sl_deny_dst6, mask, FW_DENY_DST6, p.daddr, len))
			goto deny;
	}
	count(&sl_stats, STAT_PASS, len);
	return XDP_PASS;
allow:
	count(&sl_stats, STAT_ALLOW, len);
	return XDP_PASS;
deny:
	count(&sl_stats, STAT_DENY, len);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
