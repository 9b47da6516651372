/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sluice_abi.h: the one source of truth for the kernel/user ABI.
 *
 * Every map key/value and every constant shared by the BPF programs and the
 * Rust daemon lives here. The Rust mirror is crates/sluice-abi; both sides
 * assert the same sizes at compile time, and a test checks the compiled
 * object's map and program names against the mirror. Bump
 * SLUICE_ABI_VERSION whenever a pinned map's layout changes: the daemon
 * refuses to reuse pins of another version.
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#include <linux/types.h>

#define SLUICE_ABI_VERSION 1

/* Default capacity of each firewall table and of the rule counter array.
 * The daemon overrides it from its config (max_rules) at load time. */
#define SLUICE_DEFAULT_MAX_RULES 65536

/* LPM trie keys: prefix length in bits, then the address in network order. */
struct lpm_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Value of every firewall LPM entry: the rule's slot in sl_rule_cnt. */
struct fw_rule {
	__u32 slot;
	__u32 flags; /* reserved, 0 */
};

/* Per-CPU packet/byte counter: one per rule slot, one per verdict. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Firewall tables. A bit per table in fw_config.table_mask tells the XDP
 * program which tables hold entries, so empty tables cost no lookup. */
enum fw_table {
	FW_ALLOW_SRC4 = 0,
	FW_ALLOW_DST4 = 1,
	FW_ALLOW_SRC6 = 2,
	FW_ALLOW_DST6 = 3,
	FW_DENY_SRC4 = 4,
	FW_DENY_DST4 = 5,
	FW_DENY_SRC6 = 6,
	FW_DENY_DST6 = 7,
	FW_TABLE_COUNT = 8,
};

/* Single-entry array (key 0): runtime configuration written by the daemon. */
struct fw_config {
	__u32 abi_version;
	__u32 table_mask;
};

/* Indexes into sl_stats. Every packet lands in exactly one of the first
 * STAT_VERDICTS entries; the entries after that are extra notes. */
enum stat_idx {
	STAT_PASS = 0,     /* parsed, no rule matched: XDP_PASS */
	STAT_ALLOW = 1,    /* matched an allow rule: XDP_PASS */
	STAT_DENY = 2,     /* matched a deny rule: XDP_DROP */
	STAT_UNPARSED = 3, /* L2/L3 header truncated or malformed: XDP_PASS */
	STAT_NON_IP = 4,   /* neither IPv4 nor IPv6 (ARP, LLDP, ...): XDP_PASS */
	STAT_VERDICTS = 5,
	STAT_FRAGMENT = 5,     /* note: IP fragment other than the first */
	STAT_L4_UNPARSED = 6,  /* note: L4 header truncated or beyond the
				* IPv6 extension-header bound */
	STAT_COUNT = 7,
};

/* Bound on the IPv6 extension-header walk. */
#define SLUICE_MAX_IPV6_EXT 8

#ifdef __bpf__
_Static_assert(sizeof(struct lpm_v4_key) == 8, "lpm_v4_key size");
_Static_assert(sizeof(struct lpm_v6_key) == 20, "lpm_v6_key size");
_Static_assert(sizeof(struct fw_rule) == 8, "fw_rule size");
_Static_assert(sizeof(struct counter) == 16, "counter size");
_Static_assert(sizeof(struct fw_config) == 8, "fw_config size");
#endif

#endif /* SLUICE_ABI_H */
