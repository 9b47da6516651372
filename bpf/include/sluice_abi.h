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
#ifdef __bpf__
#include <linux/bpf.h>
#define SLUICE_SPIN_LOCK struct bpf_spin_lock
#else
#define SLUICE_SPIN_LOCK __u32
#endif

#define SLUICE_ABI_VERSION 4

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

/* Value of every firewall LPM entry: the rule's slot in sl_rule_cnt, and
 * the import generation that added it (0: a rule added on its own). While
 * sl_fw_pending[0] holds that generation, the import is not in force yet:
 * the entry answers with its parent (sl_rule_parent[slot]), the rule that
 * decided its addresses before, so no packet sees half an import. Builds
 * before the field had a name wrote 0 there. */
struct fw_rule {
	__u32 slot;
	__u32 gen;
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

/* Verdict and note counters. Every packet lands in exactly one verdict:
 * an index below STAT_VERDICTS, or STAT_TOO_MANY_TAGS; FRAGMENT and
 * L4_UNPARSED are extra notes. Indexes below STAT_COUNT live in sl_stats,
 * whose size is fixed by pins of earlier versions; later ones live in
 * sl_stats_ext at (index - STAT_COUNT). */
enum stat_idx {
	STAT_PASS = 0,     /* parsed, no rule dropped it: XDP_PASS */
	STAT_ALLOW = 1,    /* matched an allow rule: XDP_PASS */
	STAT_DENY = 2,     /* matched a deny rule: XDP_DROP */
	STAT_LIMIT = 3,    /* over a rate limit: XDP_DROP */
	STAT_UNPARSED = 4, /* L2/L3 header truncated or malformed, or more than
			    * SLUICE_MAX_VLAN tags with no rule that drops:
			    * XDP_PASS */
	STAT_NON_IP = 5,   /* neither IPv4 nor IPv6 (ARP, LLDP, ...): XDP_PASS */
	STAT_VERDICTS = 6,
	STAT_FRAGMENT = 6,     /* note: IP fragment other than the first */
	STAT_L4_UNPARSED = 7,  /* note: L4 header truncated or beyond the
				* IPv6 extension-header bound */
	STAT_COUNT = 8,        /* entries of sl_stats */
	STAT_TOO_MANY_TAGS = 8, /* more than SLUICE_MAX_VLAN tags while a deny
				 * rule or a limit is in force: XDP_DROP */
	STAT_ALL = 9,
};

/* Most stacked VLAN tags (802.1Q or 802.1ad) the parser follows to the IP
 * header. The kernel strips stacked priority tags (VID 0; 6.18 up to 8) and
 * the tags of its VLAN devices, so a frame with more tags is dropped while
 * a rule could drop it (STAT_TOO_MANY_TAGS), never passed unjudged. */
#define SLUICE_MAX_VLAN 8

/* ---- Rate limits (flow control) ---- */

/* Most limit rules at once. sl_limits holds two halves of this size: the
 * daemon writes the idle half, then flips sl_lim_sel, so a packet never
 * sees a half-written rule set. */
#define SLUICE_MAX_LIMITS 64
/* Default capacity of the per-source bucket LRU (config: limit_sources). */
#define SLUICE_DEFAULT_LIMIT_SOURCES 65536
/* sl_lim_sel[0] = (active half << SLUICE_LIM_SEL_SHIFT) | rules in it. */
#define SLUICE_LIM_SEL_SHIFT 16
/* The rate limiter's time unit: TATs, costs and tau are in 1/2^shift ns
 * (gcra.h's GCRA_TIME_SHIFT). */
#define SLUICE_GCRA_TIME_SHIFT 8

enum limit_kind {
	LIMIT_PPS = 1,   /* packets per second */
	LIMIT_BPS = 2,   /* bytes per second (frame length) */
	LIMIT_CONNS = 3, /* new TCP connections per second (SYN without ACK) */
};

#define LIMIT_F_PER_SOURCE 0x1

/* One limit rule. Addresses and masks are in network order, as 32-bit
 * words; IPv4 uses word 0. family 0 matches both families (no CIDR given). */
struct limit_rule {
	__u32 src[4];
	__u32 src_mask[4];
	__u32 dst[4];
	__u32 dst_mask[4];
	__u8 family;   /* 0, 4 or 6 */
	__u8 proto;    /* 0 any, IPPROTO_TCP, IPPROTO_UDP */
	__be16 dport;  /* 0 any */
	__u8 kind;     /* enum limit_kind */
	__u8 flags;    /* LIMIT_F_* */
	__u16 slot;    /* index into sl_lim_state and sl_lim_cnt */
	__u32 gen;     /* generation of the rule in this slot */
	__u32 shift;   /* fixed-point shift of unit_fp */
	__u64 unit_fp; /* 1/256 ns of rate-time per unit (packet/byte), << shift */
	__u64 tau;     /* burst tolerance: burst * time per unit, 1/256 ns */
	__u64 warmup_ns;
};

/* A bucket (see gcra.h): TAT (1/256 ns) plus warm-up bookkeeping (ns). */
struct limit_bucket {
	__u64 tat;
	__u64 warm_start;
	__u64 last_seen;
};

/* A rule's shared bucket (sl_lim_state[slot]). The lock is used only by
 * the spin-lock build that the benchmark compares with compare-and-swap. */
struct limit_shared {
	struct limit_bucket b;
	SLUICE_SPIN_LOCK lock;
	__u32 _pad;
};

/* Key of a per-source bucket in the sl_lim_src LRU. */
struct limit_src_key {
	__u16 slot;
	__u8 family;
	__u8 _pad;
	__u32 gen;
	__u8 addr[16];
};

/* Per-CPU counters of one limit rule (sl_lim_cnt[slot]). */
struct limit_cnt {
	__u64 passed;
	__u64 passed_bytes;
	__u64 dropped;
	__u64 dropped_bytes;
	__u64 new_sources; /* per-source buckets created */
};

/* Bound on the IPv6 extension-header walk. */
#define SLUICE_MAX_IPV6_EXT 8

/* ---- Events (ring buffer sl_events, shared by every program) ---- */

/* Default ring size in bytes (config: events_ring_bytes; a power of 2). */
#define SLUICE_DEFAULT_RING_BYTES (1 << 22)
/* Default: one packet event per this many packets, per CPU (0 = off). */
#define SLUICE_DEFAULT_SAMPLE_EVERY 0
/* Default cap on drop events per second, per CPU. */
#define SLUICE_DEFAULT_DROP_EVENTS 1000

enum ev_kind {
	EV_CONN = 1,   /* struct ev_conn */
	EV_PACKET = 2, /* struct ev_packet: a sampled packet */
	EV_DROP = 3,   /* struct ev_packet: a dropped packet */
	EV_L7 = 4,     /* struct ev_l7: TCP payload bytes for L7 parsing */
};

/* Indexes of sl_ev_lost (per-CPU u64): events the kernel could not deliver. */
enum ev_lost_idx {
	EVL_CONN = 0,       /* ring buffer full */
	EVL_PACKET = 1,     /* ring buffer full */
	EVL_DROP = 2,       /* ring buffer full */
	EVL_DROP_LIMIT = 3, /* over drop_events_per_sec: not even tried */
	EVL_L7 = 4,         /* ring buffer full */
	EVL_COUNT = 5,
};

struct ev_hdr {
	__u16 kind;
	__u16 size;
	__u32 cpu;
	__u64 ts_ns; /* CLOCK_MONOTONIC */
};

enum conn_dir {
	CONN_DIR_UNKNOWN = 0,
	CONN_DIR_OUT = 1, /* this host (or container) connected */
	CONN_DIR_IN = 2,  /* accepted by a local listener */
};

/* A TCP state change. Addresses and ports are as the kernel names them on
 * this socket: s* is the local end, d* the remote end. */
struct ev_conn {
	struct ev_hdr h;
	__u64 sock;        /* kernel socket address: an id, valid until close */
	__u64 duration_ns; /* newstate == CLOSE: time since the first state seen */
	__u32 pid;         /* owning process (tgid) */
	__u32 netns;       /* network namespace inode */
	char comm[16];
	__u8 family;       /* 4 or 6 */
	__u8 oldstate;
	__u8 newstate;     /* TCP_* numbering of the kernel */
	__u8 dir;          /* enum conn_dir */
	__u16 sport;       /* host order */
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

enum rule_kind {
	RULE_NONE = 0,
	RULE_DENY = 1,
	RULE_ALLOW = 2,
	RULE_LIMIT = 3,
};

/* A sampled or dropped packet seen by XDP. */
struct ev_packet {
	struct ev_hdr h;
	__u32 ifindex;
	__u32 len;
	__u8 family;
	__u8 l4proto;
	__u8 verdict;   /* enum stat_idx */
	__u8 rule_kind; /* enum rule_kind */
	__u32 rule_slot;
	__u16 sport;    /* host order; 0 without a transport header */
	__u16 dport;
	__u32 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* sl_ev_cfg[0], written by the daemon. */
struct ev_config {
	__u32 sample_every;
	__u32 drop_events_per_sec;
};

/* Per-CPU state of the drop-event rate limit. */
struct ev_rl {
	__u64 window_start;
	__u64 count;
};

/* sl_listeners (trace object): owner of each listening socket, by
 * (netns, family, port). Seeded from /proc by the daemon at start for
 * listeners older than the daemon, then kept by the tracepoint. */
struct listen_key {
	__u32 netns;
	__u16 family; /* AF_INET 2, AF_INET6 10 */
	__u16 port;   /* host order */
};

struct owner {
	__u32 pid;
	char comm[16];
};

/* Capacity of sl_socks (trace object): live TCP sockets followed at once;
 * the daemon's connection table keeps as many open connections. */
#define SLUICE_SOCKS_ENTRIES 65536

/* Key of sl_if_stats: packets by interface and verdict. */
struct if_stat_key {
	__u32 ifindex;
	__u32 verdict;
};

/* Capacity of sl_if_stats (an LRU: counters of interfaces long gone make
 * room for new ones). */
#define SLUICE_IF_STATS_ENTRIES 8192


/* ---- Forwarding (DNAT) and redirect: the TC programs (sluice_tc.bpf.c) ---- */

/* Most targets one forward rule spreads its flows over. */
#define SLUICE_MAX_FWD_TARGETS 16
/* Capacity of the forward table and its counter array. */
#define SLUICE_MAX_FORWARDS 1024
/* Capacity of each redirect table and its counter array. */
#define SLUICE_MAX_REDIRECTS 1024
/* Default capacity of the translation-state LRU (config: max_flows). */
#define SLUICE_DEFAULT_MAX_FLOWS 65536

/* sl_fwd key: the service address a client sends to. */
struct fwd_key {
	__u8 family; /* 4 or 6 */
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__be16 port;
	__u8 addr[16]; /* IPv4 uses the first 4 bytes, the rest is zero */
};

struct fwd_target {
	__u8 addr[16];
	__be16 port;
	__u16 _pad;
};

/* sl_fwd value. A new flow takes target (flow hash % ntargets). */
struct fwd_rule {
	__u32 slot; /* index into sl_fwd_cnt */
	__u32 ntargets;
	struct fwd_target t[SLUICE_MAX_FWD_TARGETS];
};

/* sl_ct key: a packet's own tuple (family, proto, addresses, ports). */
struct ct_key {
	__u8 family;
	__u8 proto;
	__be16 sport;
	__be16 dport;
	__u16 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

enum ct_dir {
	CT_DNAT = 1, /* client -> service: rewrite the destination */
	CT_SNAT = 2, /* target -> client: rewrite the source back to the service */
};

/* TCP-aware state of one direction; the daemon expires entries by it. */
enum ct_state {
	CT_NEW = 0,   /* first packet (TCP SYN / UDP) seen, no more */
	CT_EST = 1,   /* further packets seen */
	CT_FIN = 2,   /* a FIN went this way */
	CT_CLOSE = 3, /* a RST went this way */
};

struct ct_val {
	__u8 addr[16]; /* the address to write (dst for DNAT, src for SNAT) */
	__be16 port;
	__u8 dir;   /* enum ct_dir */
	__u8 state; /* enum ct_state */
	__u32 slot; /* forward rule slot, for counters and flow counts */
	__u64 last_ns; /* bpf_ktime_get_ns of the last packet */
};

#define REDIR_F_PEER 1 /* bpf_redirect_peer into the veth's namespace */

/* sl_redir4 / sl_redir6 value (LPM keys as the firewall's). */
struct redir_val {
	__u32 ifindex;
	__u32 flags;  /* REDIR_F_* */
	__u32 slot;   /* index into sl_redir_cnt */
	__u8 smac[6]; /* IFACE's MAC, the new source MAC */
	__u16 _pad;
};

/* sl_peer_mac value: the source MAC last seen on a managed interface's
 * ingress. For a host-side veth that is its peer's MAC, the destination MAC
 * a peer redirect writes. 8 bytes, so the program compares it as a u64. */
struct mac {
	__u8 a[6];
	__u16 _pad;
};

/* Capacity of sl_peer_mac (key: ifindex). */
#define SLUICE_PEER_MAC_ENTRIES 4096

/* sl_tc_cfg[0], written by the daemon: empty rule sets cost no lookup. */
struct tc_config {
	__u32 abi_version;
	__u32 nforwards;
	__u32 nredirects;
	__u32 l7_cap;    /* payload bytes captured per packet; 0 = L7 off */
	__u32 l7_detect; /* 1: also look for the protocols on other ports */
	__u32 _pad;
};

/* ---- L7 capture (sluice_tc.bpf.c) ---- */

/* Most TCP payload bytes one ev_l7 carries (config: l7_capture_bytes). */
#define SLUICE_L7_CAP 1024
#define SLUICE_L7_PORTS 64
#define SLUICE_L7_FLOWS 65536

enum l7_proto {
	L7_HTTP = 1,
	L7_REDIS = 2,
	L7_MYSQL = 3,
};

enum l7_dir {
	L7_TO_SERVER = 1,
	L7_TO_CLIENT = 2,
};

/* sl_l7_flows value: a connection found by protocol detection. */
struct l7_flow {
	__u8 proto;
	__u8 dir;
	__u16 _pad;
	__u32 _pad2;
};

/* ev_l7 flags: the packet belongs to a forwarded flow (forward.h's sl_ct). */
enum l7_flags {
	L7_F_DNAT = 1, /* client -> service; xaddr/xport: the flow's target */
	L7_F_SNAT = 2, /* target -> client; xaddr/xport: the service dialled */
};

/* Header of an L7 capture event; cap_len payload bytes follow at data.
 * The record is header + cap_len bytes long (h.size says so). Addresses
 * and ports are the packet's, before any translation. A packet with no
 * payload is sent only for a FIN or RST (payload_len 0): it ends a stream.
 * The header was 72 bytes before xaddr/xport (SLUICE_EV_L7_HDR_V1); the
 * daemon reads both, told apart by h.size - cap_len, since the previous
 * version's programs may still write into the pinned ring. Not a pinned
 * map layout: SLUICE_ABI_VERSION stays. */
struct ev_l7 {
	struct ev_hdr h;
	__u32 ifindex;
	__u32 seq;         /* TCP sequence number of the first payload byte */
	__u16 sport;       /* host order */
	__u16 dport;
	__u8 family;
	__u8 proto;        /* enum l7_proto */
	__u8 dir;          /* enum l7_dir */
	__u8 tcp_flags;
	__u32 payload_len; /* TCP payload bytes in the packet */
	__u16 cap_len;     /* of which captured here */
	__u16 flags;       /* enum l7_flags (was padding: 0 in the V1 header) */
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 xaddr[16];    /* with L7_F_DNAT/L7_F_SNAT: the other address */
	__u16 xport;       /* host order */
	__u16 _pad;
	__u32 _pad2;
	__u8 data[SLUICE_L7_CAP];
};

#define SLUICE_EV_L7_HDR 96
#define SLUICE_EV_L7_HDR_V1 72

/* Indexes into sl_tc_stats (per-CPU struct counter). */
enum tc_stat_idx {
	TCS_DNAT = 0,      /* packets translated client -> target */
	TCS_SNAT = 1,      /* replies translated back */
	TCS_NEW_FLOW = 2,  /* flows created */
	TCS_REDIRECT = 3,  /* packets redirected */
	TCS_SKIPPED = 4,   /* TCP/UDP but not translatable: fragment, IPv6
			    * routing header or truncated L4 header */
	TCS_ERROR = 5,     /* a helper failed; packet passed unchanged */
	TCS_L7 = 6,        /* L7 captures attempted (delivered + lost) */
	TCS_COUNT = 7,
};

#ifdef __bpf__
_Static_assert(sizeof(struct ev_hdr) == 16, "ev_hdr size");
_Static_assert(sizeof(struct ev_conn) == 96, "ev_conn size");
_Static_assert(sizeof(struct ev_packet) == 72, "ev_packet size");
_Static_assert(sizeof(struct ev_config) == 8, "ev_config size");
_Static_assert(sizeof(struct if_stat_key) == 8, "if_stat_key size");
_Static_assert(sizeof(struct listen_key) == 8, "listen_key size");
_Static_assert(sizeof(struct owner) == 20, "owner size");
_Static_assert(sizeof(struct lpm_v4_key) == 8, "lpm_v4_key size");
_Static_assert(sizeof(struct lpm_v6_key) == 20, "lpm_v6_key size");
_Static_assert(sizeof(struct fw_rule) == 8, "fw_rule size");
_Static_assert(sizeof(struct counter) == 16, "counter size");
_Static_assert(sizeof(struct fw_config) == 8, "fw_config size");
_Static_assert(sizeof(struct limit_rule) == 104, "limit_rule size");
_Static_assert(sizeof(struct limit_bucket) == 24, "limit_bucket size");
_Static_assert(sizeof(struct limit_shared) == 32, "limit_shared size");
_Static_assert(sizeof(struct limit_src_key) == 24, "limit_src_key size");
_Static_assert(sizeof(struct limit_cnt) == 40, "limit_cnt size");
_Static_assert(sizeof(struct fwd_key) == 20, "fwd_key size");
_Static_assert(sizeof(struct fwd_target) == 20, "fwd_target size");
_Static_assert(sizeof(struct fwd_rule) == 328, "fwd_rule size");
_Static_assert(sizeof(struct ct_key) == 40, "ct_key size");
_Static_assert(sizeof(struct ct_val) == 32, "ct_val size");
_Static_assert(sizeof(struct redir_val) == 20, "redir_val size");
_Static_assert(sizeof(struct mac) == 8, "mac size");
_Static_assert(sizeof(struct tc_config) == 24, "tc_config size");
_Static_assert(sizeof(struct l7_flow) == 8, "l7_flow size");
_Static_assert(__builtin_offsetof(struct ev_l7, data) == SLUICE_EV_L7_HDR, "ev_l7 header size");
_Static_assert(__builtin_offsetof(struct ev_l7, xaddr) == SLUICE_EV_L7_HDR_V1, "ev_l7 V1 header is a prefix");
_Static_assert(sizeof(struct ev_l7) == SLUICE_EV_L7_HDR + SLUICE_L7_CAP, "ev_l7 size");
#endif /* __bpf__ */

#endif /* SLUICE_ABI_H */
