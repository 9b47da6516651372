// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sluice_xdp: the XDP firewall and flow control attached to every managed
 * interface.
 *
 * Pipeline per packet: parse -> allow tries (src, dst) -> deny tries
 * (src, dst) -> rate limits -> PASS. Allow wins over deny and skips the
 * limits. A frame with more VLAN tags than the parser follows is dropped
 * while a deny rule or a limit is in force (its addresses are unknown).
 * Each matched rule's per-CPU counters are bumped, and every packet lands
 * in exactly one verdict counter (sl_stats, sl_stats_ext). Rules, buckets and
 * counters are pinned by name, so enforcement outlives the daemon and a
 * restarted daemon finds the same tables. Only the sampling counter
 * (sl_ev_sample) and the drop-event rate window (sl_ev_rl) are not: a new
 * daemon starts them afresh.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_abi.h"
#include "parse.h"
#include "gcra.h"
#include "events.h"
#include "counter.h"

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

/* Verdicts added after sl_stats was pinned with STAT_COUNT entries: index
 * (stat - STAT_COUNT). A new map, so pins of earlier versions stay valid. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, STAT_ALL - STAT_COUNT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_stats_ext SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_config SEC(".maps");

/* The import being written (0: none): its entries are pending. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_fw_pending SEC(".maps");

/* For a pending entry's slot: its parent's slot + 1 (0: no parent). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, SLUICE_DEFAULT_MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_rule_parent SEC(".maps");

/* ---- Rate limits ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct limit_rule);
	__uint(max_entries, 2 * SLUICE_MAX_LIMITS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_limits SEC(".maps");

/* (active half << SLUICE_LIM_SEL_SHIFT) | number of rules in it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_lim_sel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct limit_shared);
	__uint(max_entries, SLUICE_MAX_LIMITS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_lim_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct limit_src_key);
	__type(value, struct limit_bucket);
	__uint(max_entries, SLUICE_DEFAULT_LIMIT_SOURCES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_lim_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct limit_cnt);
	__uint(max_entries, SLUICE_MAX_LIMITS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_lim_cnt SEC(".maps");

/* ---- Events and per-interface counters ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ev_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_ev_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ev_rl);
	__uint(max_entries, 1);
} sl_ev_rl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} sl_ev_sample SEC(".maps");

/* LRU: counters of interfaces long gone make room for new ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__type(key, struct if_stat_key);
	__type(value, struct counter);
	__uint(max_entries, SLUICE_IF_STATS_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sl_if_stats SEC(".maps");

/* The rule that decides for a matched entry: the entry's own, or, while
 * the import that added it is pending, its parent's (or none). pending is
 * read after the entry, so an entry written by an import in flight is
 * never seen as in force. Returns slot + 1, or 0. */
static __always_inline __u32 decide(struct fw_rule *r, __u64 len)
{
	__u32 slot = r->slot;
	if (r->gen) {
		__u32 zero = 0;
		__u32 *pending = bpf_map_lookup_elem(&sl_fw_pending, &zero);
		if (pending && *pending == r->gen) {
			__u32 *up = bpf_map_lookup_elem(&sl_rule_parent, &slot);
			if (!up || !*up)
				return 0;
			slot = *up - 1;
		}
	}
	count(&sl_rule_cnt, slot, len);
	return slot + 1;
}

/* Looks addr up in one table if the table is non-empty; on a hit, counts
 * the deciding rule and returns its slot + 1, else 0. */
static __always_inline __u32 match4(void *map, __u32 mask, int table, __u8 *addr, __u64 len)
{
	if (!(mask & (1u << table)))
		return 0;
	struct lpm_v4_key k = { .prefixlen = 32 };
	__builtin_memcpy(k.addr, addr, 4);
	struct fw_rule *r = bpf_map_lookup_elem(map, &k);
	return r ? decide(r, len) : 0;
}

static __always_inline __u32 match6(void *map, __u32 mask, int table, __u8 *addr, __u64 len)
{
	if (!(mask & (1u << table)))
		return 0;
	struct lpm_v6_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.addr, addr, 16);
	struct fw_rule *r = bpf_map_lookup_elem(map, &k);
	return r ? decide(r, len) : 0;
}

struct lim_ctx {
	struct pkt p;
	__u64 len;
	__u64 now;    /* ns */
	__u64 now_fp; /* 1/256 ns: the unit of TATs */
	__u32 base;
	__u32 dropped;
};

static __always_inline int lim_match(struct limit_rule *r, struct pkt *p)
{
	if (r->family && r->family != p->family)
		return 0;
	if (r->proto && r->proto != p->l4proto)
		return 0;
	/* A port rule needs the transport header: fragments and truncated
	 * packets do not match it. */
	if (r->dport && (!(p->flags & PKT_F_L4) || r->dport != p->dport))
		return 0;
	if (r->family) {
		__u32 *s = (__u32 *)p->saddr, *d = (__u32 *)p->daddr;
		for (int k = 0; k < 4; k++)
			if (((s[k] ^ r->src[k]) & r->src_mask[k]) || ((d[k] ^ r->dst[k]) & r->dst_mask[k]))
				return 0;
	}
	return 1;
}

/* The bucket of a per-source rule, created on first sight. */
static __always_inline struct limit_bucket *src_bucket(struct limit_rule *r, struct lim_ctx *c, __u32 slot)
{
	struct limit_src_key k = { .slot = slot, .family = c->p.family, .gen = r->gen };
	/* IPv6 sources are bucketed per /64: a host owns a whole /64 and could
	 * otherwise rotate addresses for fresh buckets. */
	__builtin_memcpy(k.addr, c->p.saddr, 16);
	if (c->p.family == 6)
		__builtin_memset(k.addr + 8, 0, 8);
	struct limit_bucket *b = bpf_map_lookup_elem(&sl_lim_src, &k);
	if (b)
		return b;
	struct limit_bucket fresh = { .tat = c->now_fp, .warm_start = c->now, .last_seen = c->now };
	if (bpf_map_update_elem(&sl_lim_src, &k, &fresh, BPF_NOEXIST) == 0) {
		struct limit_cnt *cnt = bpf_map_lookup_elem(&sl_lim_cnt, &slot);
		if (cnt)
			cnt->new_sources++;
	}
	return bpf_map_lookup_elem(&sl_lim_src, &k);
}

/* bpf_loop callback: applies rule number i of the active half. Returns 1
 * (stop) once a rule drops the packet. The verifier checks this body once,
 * not once per rule. */
static long lim_one(__u32 i, void *data)
{
	struct lim_ctx *c = data;
	__u32 idx = c->base + i;
	struct limit_rule *r = bpf_map_lookup_elem(&sl_limits, &idx);
	if (!r || !lim_match(r, &c->p))
		return 0;
	__u64 units = 1;
	if (r->kind == LIMIT_BPS)
		units = c->len;
	else if (r->kind == LIMIT_CONNS &&
		 (c->p.l4proto != IPPROTO_TCP || !(c->p.flags & PKT_F_L4) ||
		  (c->p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN))
		return 0; /* only connection attempts count */
	__u32 slot = r->slot;
	if (slot >= SLUICE_MAX_LIMITS)
		return 0;
	struct limit_bucket *b;
	struct limit_shared *sh = 0;
	if (r->flags & LIMIT_F_PER_SOURCE) {
		b = src_bucket(r, c, slot);
	} else {
		sh = bpf_map_lookup_elem(&sl_lim_state, &slot);
		b = sh ? &sh->b : 0;
	}
	if (!b)
		return 0;
	__u64 cost = gcra_cost(units, r->unit_fp, r->shift);
	__u64 charge = cost;
	if (r->warmup_ns) {
		/* Idle for a whole warm-up period: cold again. Wrap-safe: another
		 * CPU may have stored a last_seen later than our `now`. Every
		 * packet offered counts as traffic, dropped ones too (a rule
		 * under a flood stays warm). The plain stores may race between
		 * CPUs; any of the racing values is a valid time. */
		if (gcra_after(c->now, b->last_seen + r->warmup_ns))
			b->warm_start = c->now;
		if (gcra_after(c->now, b->last_seen))
			b->last_seen = c->now;
		charge = gcra_warm(cost, c->now, b->warm_start, r->warmup_ns);
	}
	__s64 limit = gcra_limit(r->tau, cost);
	int ok;
#ifdef SLUICE_LIMIT_SPINLOCK
	if (sh) {
		__u64 ntat;
		bpf_spin_lock(&sh->lock);
		ok = gcra_check(sh->b.tat, c->now_fp, limit, charge, &ntat);
		if (ok)
			sh->b.tat = ntat;
		bpf_spin_unlock(&sh->lock);
	} else
#endif
		ok = gcra_admit(&b->tat, c->now_fp, limit, charge);
	struct limit_cnt *cnt = bpf_map_lookup_elem(&sl_lim_cnt, &slot);
	if (cnt) {
		if (ok) {
			cnt->passed++;
			cnt->passed_bytes += c->len;
		} else {
			cnt->dropped++;
			cnt->dropped_bytes += c->len;
		}
	}
	if (!ok) {
		c->dropped = slot + 1;
		return 1;
	}
	return 0;
}

/* Applies every limit rule the packet matches; the slot + 1 of the rule
 * that drops it, or 0. */
static __always_inline __u32 limited(struct pkt *p, __u64 len)
{
	__u32 zero = 0;
	__u32 *sel = bpf_map_lookup_elem(&sl_lim_sel, &zero);
	if (!sel)
		return 0;
	__u32 n = *sel & ((1u << SLUICE_LIM_SEL_SHIFT) - 1);
	if (!n)
		return 0;
	if (n > SLUICE_MAX_LIMITS)
		n = SLUICE_MAX_LIMITS;
	struct lim_ctx c = { .len = len,
			     .now = bpf_ktime_get_ns(),
			     .base = (*sel >> SLUICE_LIM_SEL_SHIFT) ? SLUICE_MAX_LIMITS : 0 };
	c.now_fp = c.now << GCRA_TIME_SHIFT;
	c.p = *p;
	bpf_loop(n, lim_one, &c, 0);
	return c.dropped;
}

/* Whether any rule could drop a packet: a non-empty deny table or a limit
 * rule. (Allow rules alone never drop anything.) */
static __always_inline int rules_may_drop(void)
{
	__u32 zero = 0;
	__u32 deny = (1u << FW_DENY_SRC4) | (1u << FW_DENY_DST4) | (1u << FW_DENY_SRC6) | (1u << FW_DENY_DST6);
	struct fw_config *cfg = bpf_map_lookup_elem(&sl_config, &zero);
	if (cfg && (cfg->table_mask & deny))
		return 1;
	__u32 *sel = bpf_map_lookup_elem(&sl_lim_sel, &zero);
	return sel && (*sel & ((1u << SLUICE_LIM_SEL_SHIFT) - 1));
}

/* Which rule decided, for drop events. */
struct why {
	__u8 kind; /* enum rule_kind */
	__u32 slot;
};

/* Counts the verdict (globally and per interface), and emits a drop event
 * (rate-limited per CPU) or a sampled packet event. */
static __always_inline void verdict(struct xdp_md *ctx, struct pkt *p, __u32 idx, __u64 len, struct why w)
{
	if (idx < STAT_COUNT)
		count(&sl_stats, idx, len);
	else
		count(&sl_stats_ext, idx - STAT_COUNT, len);
	struct if_stat_key k = { .ifindex = ctx->ingress_ifindex, .verdict = idx };
	struct counter *c = bpf_map_lookup_elem(&sl_if_stats, &k);
	if (!c) {
		struct counter zero = {};
		bpf_map_update_elem(&sl_if_stats, &k, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&sl_if_stats, &k);
	}
	if (c) {
		c->packets++;
		c->bytes += len;
	}

	__u32 zero = 0;
	struct ev_config *cfg = bpf_map_lookup_elem(&sl_ev_cfg, &zero);
	if (!cfg)
		return;
	int drop = idx == STAT_DENY || idx == STAT_LIMIT || idx == STAT_TOO_MANY_TAGS;
	__u16 kind = EV_PACKET;
	__u32 lost = EVL_PACKET;
	if (drop) {
		struct ev_rl *rl = bpf_map_lookup_elem(&sl_ev_rl, &zero);
		if (!rl)
			return;
		__u64 now = bpf_ktime_get_ns();
		if (now - rl->window_start >= 1000000000ULL) {
			rl->window_start = now;
			rl->count = 0;
		}
		if (rl->count >= cfg->drop_events_per_sec) {
			ev_lost(EVL_DROP_LIMIT);
			return;
		}
		rl->count++;
		kind = EV_DROP;
		lost = EVL_DROP;
	} else {
		if (!cfg->sample_every) /* the default: no per-packet counter work */
			return;
		__u64 *n = bpf_map_lookup_elem(&sl_ev_sample, &zero);
		if (!n || ++*n % cfg->sample_every)
			return;
	}
	struct ev_packet *e = ev_reserve(sizeof(*e), kind, lost);
	if (!e)
		return;
	e->ifindex = ctx->ingress_ifindex;
	e->len = len;
	e->family = p->family;
	e->l4proto = p->l4proto;
	e->verdict = idx;
	e->rule_kind = w.kind;
	e->rule_slot = w.slot;
	e->sport = bpf_ntohs(p->sport);
	e->dport = bpf_ntohs(p->dport);
	e->_pad = 0;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	bpf_ringbuf_submit(e, 0);
}

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 len = end - data;
	struct pkt p = {};
	struct why w = {};
	__u32 zero = 0, hit;

	int rc = parse_pkt(data, end, &p);
	if (rc == PARSE_TOO_DEEP) {
		/* Addresses out of reach, yet the kernel may deliver the frame:
		 * drop it while any rule could drop a packet; with none, pass it
		 * as unparsed like any other. */
		if (rules_may_drop()) {
			verdict(ctx, &p, STAT_TOO_MANY_TAGS, len, w);
			return XDP_DROP;
		}
		rc = PARSE_BAD;
	}
	if (rc != PARSE_OK) {
		verdict(ctx, &p, rc == PARSE_NON_IP ? STAT_NON_IP : STAT_UNPARSED, len, w);
		return XDP_PASS;
	}
	if (p.flags & PKT_F_FRAG)
		count(&sl_stats, STAT_FRAGMENT, len);
	if (p.flags & PKT_F_L4_BAD)
		count(&sl_stats, STAT_L4_UNPARSED, len);

	struct fw_config *cfg = bpf_map_lookup_elem(&sl_config, &zero);
	__u32 mask = cfg ? cfg->table_mask : 0;

	if (p.family == 4) {
		if ((hit = match4(&sl_allow_src4, mask, FW_ALLOW_SRC4, p.saddr, len)) ||
		    (hit = match4(&sl_allow_dst4, mask, FW_ALLOW_DST4, p.daddr, len)))
			goto allow;
		if ((hit = match4(&sl_deny_src4, mask, FW_DENY_SRC4, p.saddr, len)) ||
		    (hit = match4(&sl_deny_dst4, mask, FW_DENY_DST4, p.daddr, len)))
			goto deny;
	} else {
		if ((hit = match6(&sl_allow_src6, mask, FW_ALLOW_SRC6, p.saddr, len)) ||
		    (hit = match6(&sl_allow_dst6, mask, FW_ALLOW_DST6, p.daddr, len)))
			goto allow;
		if ((hit = match6(&sl_deny_src6, mask, FW_DENY_SRC6, p.saddr, len)) ||
		    (hit = match6(&sl_deny_dst6, mask, FW_DENY_DST6, p.daddr, len)))
			goto deny;
	}
	hit = limited(&p, len);
	if (hit) {
		w.kind = RULE_LIMIT;
		w.slot = hit - 1;
		verdict(ctx, &p, STAT_LIMIT, len, w);
		return XDP_DROP;
	}
	verdict(ctx, &p, STAT_PASS, len, w);
	return XDP_PASS;
allow:
	w.kind = RULE_ALLOW;
	w.slot = hit - 1;
	verdict(ctx, &p, STAT_ALLOW, len, w);
	return XDP_PASS;
deny:
	w.kind = RULE_DENY;
	w.slot = hit - 1;
	verdict(ctx, &p, STAT_DENY, len, w);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
