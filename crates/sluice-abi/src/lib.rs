//! Rust mirror of `bpf/include/sluice_abi.h`, the single source of truth for
//! the kernel/user ABI: map key/value layouts, table and counter indexes, and
//! the names of the maps and programs in the compiled objects.
//!
//! The header is the master. Every struct here is `#[repr(C)]` and carries
//! compile-time size and offset assertions that match the header's
//! `_Static_assert`s, and the daemon's tests check the embedded object's map
//! and program names against the constants below.

#![no_std]

use core::mem::{offset_of, size_of};

/// `SLUICE_ABI_VERSION`: bumped whenever a pinned map's layout changes.
pub const ABI_VERSION: u32 = 4;
/// `SLUICE_DEFAULT_MAX_RULES`: capacity compiled into the object.
pub const DEFAULT_MAX_RULES: u32 = 65536;
/// `SLUICE_MAX_IPV6_EXT`: bound on the IPv6 extension-header walk.
pub const MAX_IPV6_EXT: usize = 8;
/// `SLUICE_MAX_VLAN`: most stacked VLAN tags the parser follows.
pub const MAX_VLAN: usize = 8;
/// `SLUICE_MAX_LIMITS`: most limit rules at once.
pub const MAX_LIMITS: u32 = 64;
/// `SLUICE_DEFAULT_LIMIT_SOURCES`: default per-source LRU capacity.
pub const DEFAULT_LIMIT_SOURCES: u32 = 65536;
/// `SLUICE_LIM_SEL_SHIFT`: `sl_lim_sel[0]` is `(active half << this) | rules in it`.
pub const LIM_SEL_SHIFT: u32 = 16;
/// `SLUICE_GCRA_TIME_SHIFT`: the limiter's time unit, TATs in 1/2^shift ns.
pub const GCRA_TIME_SHIFT: u32 = 8;
/// `enum limit_kind`.
pub const LIMIT_PPS: u8 = 1;
pub const LIMIT_BPS: u8 = 2;
pub const LIMIT_CONNS: u8 = 3;
/// `LIMIT_F_PER_SOURCE`.
pub const LIMIT_F_PER_SOURCE: u8 = 1;

/// `struct limit_rule`: one entry of `sl_limits`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitRule {
    pub src: [u32; 4],
    pub src_mask: [u32; 4],
    pub dst: [u32; 4],
    pub dst_mask: [u32; 4],
    pub family: u8,
    pub proto: u8,
    /// Network order.
    pub dport: u16,
    pub kind: u8,
    pub flags: u8,
    pub slot: u16,
    pub gen: u32,
    pub shift: u32,
    pub unit_fp: u64,
    pub tau: u64,
    pub warmup_ns: u64,
}

/// `struct limit_bucket`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitBucket {
    pub tat: u64,
    pub warm_start: u64,
    pub last_seen: u64,
}

/// `struct limit_shared`: entry of `sl_lim_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitShared {
    pub b: LimitBucket,
    pub lock: u32,
    pub _pad: u32,
}

/// `struct limit_src_key`: key of `sl_lim_src`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitSrcKey {
    pub slot: u16,
    pub family: u8,
    pub _pad: u8,
    pub gen: u32,
    pub addr: [u8; 16],
}

/// `struct limit_cnt`: per-CPU counters of one limit rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCnt {
    pub passed: u64,
    pub passed_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub new_sources: u64,
}

/// `struct lpm_v4_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LpmV4Key {
    pub prefixlen: u32,
    pub addr: [u8; 4],
}

/// `struct lpm_v6_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LpmV6Key {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

/// `struct fw_rule`: value of every firewall LPM entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwRule {
    pub slot: u32,
    /// The import generation that added it (0: added on its own); pending
    /// while `sl_fw_pending[0]` equals it.
    pub gen: u32,
}

/// `struct counter`: a per-CPU packets/bytes pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `struct fw_config`: entry 0 of `sl_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwConfig {
    pub abi_version: u32,
    pub table_mask: u32,
}

/// `enum fw_table`: one LPM trie per (action, direction, family).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FwTable {
    AllowSrc4 = 0,
    AllowDst4 = 1,
    AllowSrc6 = 2,
    AllowDst6 = 3,
    DenySrc4 = 4,
    DenyDst4 = 5,
    DenySrc6 = 6,
    DenyDst6 = 7,
}

impl FwTable {
    pub const ALL: [FwTable; 8] = [
        FwTable::AllowSrc4,
        FwTable::AllowDst4,
        FwTable::AllowSrc6,
        FwTable::AllowDst6,
        FwTable::DenySrc4,
        FwTable::DenyDst4,
        FwTable::DenySrc6,
        FwTable::DenyDst6,
    ];

    /// Picks the table for an action (`deny == true` for deny), direction and family.
    pub const fn new(deny: bool, dst: bool, v6: bool) -> Self {
        Self::ALL[(deny as usize) * 4 + (v6 as usize) * 2 + dst as usize]
    }

    /// Bit of this table in [`FwConfig::table_mask`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// Name of the pinned LPM trie backing this table.
    pub const fn map_name(self) -> &'static str {
        match self {
            FwTable::AllowSrc4 => "sl_allow_src4",
            FwTable::AllowDst4 => "sl_allow_dst4",
            FwTable::AllowSrc6 => "sl_allow_src6",
            FwTable::AllowDst6 => "sl_allow_dst6",
            FwTable::DenySrc4 => "sl_deny_src4",
            FwTable::DenyDst4 => "sl_deny_dst4",
            FwTable::DenySrc6 => "sl_deny_src6",
            FwTable::DenyDst6 => "sl_deny_dst6",
        }
    }

    pub const fn is_v6(self) -> bool {
        (self as u32 / 2) % 2 == 1
    }
}

/// `enum stat_idx`: the verdict and note counters. Indexes below [`stat::COUNT`]
/// live in `sl_stats`, the later ones in `sl_stats_ext` at `index - COUNT`.
pub mod stat {
    pub const PASS: u32 = 0;
    pub const ALLOW: u32 = 1;
    pub const DENY: u32 = 2;
    pub const LIMIT: u32 = 3;
    pub const UNPARSED: u32 = 4;
    pub const NON_IP: u32 = 5;
    /// The verdicts of `sl_stats` are the indexes below this (see [`is_verdict`]).
    pub const VERDICTS: u32 = 6;
    pub const FRAGMENT: u32 = 6;
    pub const L4_UNPARSED: u32 = 7;
    /// Entries of `sl_stats` (fixed: pins of earlier versions have this many).
    pub const COUNT: u32 = 8;
    /// More than [`crate::MAX_VLAN`] tags while a deny rule or a limit is in
    /// force: dropped. Entry 0 of `sl_stats_ext`.
    pub const TOO_MANY_TAGS: u32 = 8;
    /// Every index, both maps.
    pub const ALL: u32 = 9;
    /// Names used by `status` and the API, by index.
    pub const NAMES: [&str; ALL as usize] = [
        "pass",
        "allow",
        "deny",
        "limit",
        "unparsed",
        "non_ip",
        "fragment",
        "l4_unparsed",
        "too_many_tags",
    ];

    /// Whether index `i` is a verdict (every packet lands in exactly one)
    /// rather than a note.
    pub const fn is_verdict(i: u32) -> bool {
        i < VERDICTS || i == TOO_MANY_TAGS
    }
}

/// Names in the compiled XDP object.
pub mod xdp {
    pub const PROGRAM: &str = "sluice_xdp";
    pub const RULE_COUNTERS: &str = "sl_rule_cnt";
    pub const STATS: &str = "sl_stats";
    pub const CONFIG: &str = "sl_config";
    pub const LIMITS: &str = "sl_limits";
    pub const LIMIT_SELECT: &str = "sl_lim_sel";
    pub const LIMIT_STATE: &str = "sl_lim_state";
    pub const LIMIT_SOURCES: &str = "sl_lim_src";
    pub const LIMIT_COUNTERS: &str = "sl_lim_cnt";
    /// The import in flight (array of one u32: its generation, 0 = none).
    pub const PENDING: &str = "sl_fw_pending";
    /// Per rule slot: the parent's slot + 1 of a pending entry.
    pub const RULE_PARENT: &str = "sl_rule_parent";
    /// Verdict counters added after `sl_stats` (stat index - `stat::COUNT`).
    pub const STATS_EXT: &str = "sl_stats_ext";
    /// Every map the object defines, table maps included.
    pub const MAPS: [&str; 25] = [
        "sl_allow_src4",
        "sl_allow_dst4",
        "sl_allow_src6",
        "sl_allow_dst6",
        "sl_deny_src4",
        "sl_deny_dst4",
        "sl_deny_src6",
        "sl_deny_dst6",
        RULE_COUNTERS,
        STATS,
        STATS_EXT,
        CONFIG,
        PENDING,
        RULE_PARENT,
        LIMITS,
        LIMIT_SELECT,
        LIMIT_STATE,
        LIMIT_SOURCES,
        LIMIT_COUNTERS,
        "sl_events",
        "sl_ev_lost",
        "sl_ev_cfg",
        "sl_ev_rl",
        "sl_ev_sample",
        "sl_if_stats",
    ];
}

/// Events (`sl_events` ring buffer).
pub mod ev {
    pub const DEFAULT_RING_BYTES: u32 = 1 << 22;
    pub const DEFAULT_SAMPLE_EVERY: u32 = 0;
    pub const DEFAULT_DROP_EVENTS: u32 = 1000;
    pub const CONN: u16 = 1;
    pub const PACKET: u16 = 2;
    pub const DROP: u16 = 3;
    pub const L7: u16 = 4;
    /// `sl_ev_lost` indexes.
    pub const LOST_CONN: u32 = 0;
    pub const LOST_PACKET: u32 = 1;
    pub const LOST_DROP: u32 = 2;
    pub const LOST_DROP_LIMIT: u32 = 3;
    pub const LOST_L7: u32 = 4;
    pub const LOST_COUNT: u32 = 5;
    /// Names of the `sl_ev_lost` indexes, as status and metrics show them.
    pub const LOST_NAMES: [&str; LOST_COUNT as usize] = ["conn", "packet", "drop", "drop_rate_limited", "l7"];
    pub const DIR_OUT: u8 = 1;
    pub const DIR_IN: u8 = 2;
    pub const RULE_DENY: u8 = 1;
    pub const RULE_ALLOW: u8 = 2;
    pub const RULE_LIMIT: u8 = 3;
    pub const RING: &str = "sl_events";
    pub const LOST: &str = "sl_ev_lost";
    pub const CONFIG: &str = "sl_ev_cfg";
    pub const IF_STATS: &str = "sl_if_stats";
    /// `SLUICE_IF_STATS_ENTRIES`: capacity of `sl_if_stats`.
    pub const IF_STATS_ENTRIES: u32 = 8192;
}

/// `struct ev_hdr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvHdr {
    pub kind: u16,
    pub size: u16,
    pub cpu: u32,
    pub ts_ns: u64,
}

/// `struct ev_conn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvConn {
    pub h: EvHdr,
    pub sock: u64,
    pub duration_ns: u64,
    pub pid: u32,
    pub netns: u32,
    pub comm: [u8; 16],
    pub family: u8,
    pub oldstate: u8,
    pub newstate: u8,
    pub dir: u8,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `struct ev_packet`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvPacket {
    pub h: EvHdr,
    pub ifindex: u32,
    pub len: u32,
    pub family: u8,
    pub l4proto: u8,
    pub verdict: u8,
    pub rule_kind: u8,
    pub rule_slot: u32,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `struct ev_config`: entry 0 of `sl_ev_cfg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvConfig {
    pub sample_every: u32,
    pub drop_events_per_sec: u32,
}

/// `struct listen_key`: key of the tracer's `sl_listeners`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub family: u16,
    pub port: u16,
}

/// `struct owner`: value of `sl_listeners`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: [u8; 16],
}

/// `struct if_stat_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfStatKey {
    pub ifindex: u32,
    pub verdict: u32,
}

/// Names in the connection-tracing object.
pub mod trace {
    pub const PROGRAM: &str = "sluice_conn";
    pub const CATEGORY: &str = "sock";
    pub const TRACEPOINT: &str = "inet_sock_set_state";
    pub const MAPS: [&str; 4] = ["sl_events", "sl_ev_lost", "sl_socks", "sl_listeners"];
    /// `SLUICE_SOCKS_ENTRIES`: capacity of `sl_socks`.
    pub const SOCKS_ENTRIES: u32 = 65536;
}

/// Names in the traffic-generator object (tests and benchmarks only).
pub mod gen {
    pub const PROGRAM: &str = "sluice_gen";
    pub const CONFIG: &str = "sl_gen_cfg";
}

/// `struct gen_cfg` of the generator.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenCfg {
    pub src_base: u32,
    pub src_mask: u32,
}

/// Forwarding (DNAT) and redirect: the TC programs of `sluice_tc.bpf.c`.
pub mod tc {
    pub const INGRESS: &str = "sluice_tc_in";
    pub const EGRESS: &str = "sluice_tc_out";
    pub const FORWARDS: &str = "sl_fwd";
    pub const FORWARD_COUNTERS: &str = "sl_fwd_cnt";
    pub const CT: &str = "sl_ct";
    pub const REDIRECT4: &str = "sl_redir4";
    pub const REDIRECT6: &str = "sl_redir6";
    pub const REDIRECT_COUNTERS: &str = "sl_redir_cnt";
    pub const PEER_MAC: &str = "sl_peer_mac";
    pub const CONFIG: &str = "sl_tc_cfg";
    pub const STATS: &str = "sl_tc_stats";
    pub const MAPS: [&str; 14] = [
        FORWARDS,
        FORWARD_COUNTERS,
        CT,
        REDIRECT4,
        REDIRECT6,
        REDIRECT_COUNTERS,
        PEER_MAC,
        CONFIG,
        STATS,
        super::l7::PORTS_MAP,
        super::l7::FLOWS_MAP,
        super::l7::BUF_MAP,
        super::ev::RING,
        super::ev::LOST,
    ];
    pub const MAX_FWD_TARGETS: usize = 16;
    pub const MAX_FORWARDS: u32 = 1024;
    pub const MAX_REDIRECTS: u32 = 1024;
    pub const DEFAULT_MAX_FLOWS: u32 = 65536;
    pub const PEER_MAC_ENTRIES: u32 = 4096;
    pub const CT_DNAT: u8 = 1;
    pub const CT_SNAT: u8 = 2;
    pub const CT_NEW: u8 = 0;
    pub const CT_EST: u8 = 1;
    pub const CT_FIN: u8 = 2;
    pub const CT_CLOSE: u8 = 3;
    pub const REDIR_F_PEER: u32 = 1;
    pub const STAT_DNAT: u32 = 0;
    pub const STAT_SNAT: u32 = 1;
    pub const STAT_NEW_FLOW: u32 = 2;
    pub const STAT_REDIRECT: u32 = 3;
    pub const STAT_SKIPPED: u32 = 4;
    pub const STAT_ERROR: u32 = 5;
    pub const STAT_L7: u32 = 6;
    pub const STAT_COUNT: u32 = 7;
    pub const STAT_NAMES: [&str; STAT_COUNT as usize] = [
        "dnat",
        "snat",
        "new_flows",
        "redirected",
        "skipped",
        "errors",
        "l7_captures",
    ];
}

/// `struct fwd_key`: the service address (network order) a client sends to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FwdKey {
    pub family: u8,
    pub proto: u8,
    /// Network order.
    pub port: u16,
    pub addr: [u8; 16],
}

/// `struct fwd_target`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdTarget {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub _pad: u16,
}

/// `struct fwd_rule`: the value of `sl_fwd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdRule {
    pub slot: u32,
    pub ntargets: u32,
    pub t: [FwdTarget; tc::MAX_FWD_TARGETS],
}

/// `struct ct_key`: a packet's own tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub family: u8,
    pub proto: u8,
    /// Network order.
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `struct ct_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtVal {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub dir: u8,
    pub state: u8,
    pub slot: u32,
    pub last_ns: u64,
}

/// `struct redir_val`: the value of `sl_redir4` / `sl_redir6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirVal {
    pub ifindex: u32,
    pub flags: u32,
    pub slot: u32,
    pub smac: [u8; 6],
    pub _pad: u16,
}

/// `struct tc_config`: `sl_tc_cfg[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcConfig {
    pub abi_version: u32,
    pub nforwards: u32,
    pub nredirects: u32,
    /// Payload bytes captured per packet for L7; 0 turns L7 capture off.
    pub l7_cap: u32,
    /// 1: also recognise the L7 protocols on other ports.
    pub l7_detect: u32,
    pub _pad: u32,
}

/// L7 capture: constants of `sluice_tc.bpf.c`.
pub mod l7 {
    pub const CAP: usize = 1024;
    pub const PORTS: u32 = 64;
    pub const FLOWS: u32 = 65536;
    /// `SLUICE_EV_L7_HDR`: the header of `struct ev_l7` ([`super::EvL7`]).
    pub const HDR: usize = 96;
    /// `SLUICE_EV_L7_HDR_V1`: the header before `xaddr`/`xport` (a prefix
    /// of [`super::EvL7`], `flags` 0), which the previous version's
    /// programs write.
    pub const HDR_V1: usize = 72;
    /// `enum l7_flags`.
    pub const F_DNAT: u16 = 1;
    pub const F_SNAT: u16 = 2;
    pub const HTTP: u8 = 1;
    pub const REDIS: u8 = 2;
    pub const MYSQL: u8 = 3;
    pub const TO_SERVER: u8 = 1;
    pub const TO_CLIENT: u8 = 2;
    pub const PORTS_MAP: &str = "sl_l7_ports";
    pub const FLOWS_MAP: &str = "sl_l7_flows";
    pub const BUF_MAP: &str = "sl_l7_buf";
}

/// `struct l7_flow`: value of `sl_l7_flows`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Flow {
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
    pub _pad2: u32,
}

/// The fixed header of `struct ev_l7`; `cap_len` payload bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvL7 {
    pub h: EvHdr,
    pub ifindex: u32,
    pub seq: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub dir: u8,
    pub tcp_flags: u8,
    pub payload_len: u32,
    pub cap_len: u16,
    /// `l7::F_*`.
    pub flags: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// With `l7::F_DNAT`/`F_SNAT`: the other address of the translation.
    pub xaddr: [u8; 16],
    pub xport: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// `struct mac` of `sl_peer_mac`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mac {
    pub a: [u8; 6],
    pub _pad: u16,
}

// Layout checks: these numbers are the header's `_Static_assert`s.
const _: () = {
    assert!(size_of::<LpmV4Key>() == 8);
    assert!(offset_of!(LpmV4Key, addr) == 4);
    assert!(size_of::<LpmV6Key>() == 20);
    assert!(offset_of!(LpmV6Key, addr) == 4);
    assert!(size_of::<FwRule>() == 8);
    assert!(size_of::<Counter>() == 16);
    assert!(offset_of!(Counter, bytes) == 8);
    assert!(size_of::<FwConfig>() == 8);
    assert!(offset_of!(FwConfig, table_mask) == 4);
    assert!(size_of::<LimitRule>() == 104);
    assert!(offset_of!(LimitRule, family) == 64);
    assert!(offset_of!(LimitRule, dport) == 66);
    assert!(offset_of!(LimitRule, slot) == 70);
    assert!(offset_of!(LimitRule, gen) == 72);
    assert!(offset_of!(LimitRule, unit_fp) == 80);
    assert!(offset_of!(LimitRule, warmup_ns) == 96);
    assert!(size_of::<LimitBucket>() == 24);
    assert!(size_of::<LimitShared>() == 32);
    assert!(size_of::<LimitSrcKey>() == 24);
    assert!(offset_of!(LimitSrcKey, addr) == 8);
    assert!(size_of::<LimitCnt>() == 40);
    assert!(size_of::<GenCfg>() == 8);
    assert!(size_of::<EvHdr>() == 16);
    assert!(size_of::<EvConn>() == 96);
    assert!(offset_of!(EvConn, comm) == 40);
    assert!(offset_of!(EvConn, sport) == 60);
    assert!(offset_of!(EvConn, saddr) == 64);
    assert!(size_of::<EvPacket>() == 72);
    assert!(offset_of!(EvPacket, rule_slot) == 28);
    assert!(offset_of!(EvPacket, saddr) == 40);
    assert!(size_of::<EvConfig>() == 8);
    assert!(size_of::<IfStatKey>() == 8);
    assert!(size_of::<ListenKey>() == 8);
    assert!(size_of::<Owner>() == 20);
    assert!(size_of::<FwdKey>() == 20);
    assert!(offset_of!(FwdKey, addr) == 4);
    assert!(size_of::<FwdTarget>() == 20);
    assert!(size_of::<FwdRule>() == 328);
    assert!(offset_of!(FwdRule, t) == 8);
    assert!(size_of::<CtKey>() == 40);
    assert!(offset_of!(CtKey, saddr) == 8);
    assert!(size_of::<CtVal>() == 32);
    assert!(offset_of!(CtVal, slot) == 20);
    assert!(offset_of!(CtVal, last_ns) == 24);
    assert!(size_of::<RedirVal>() == 20);
    assert!(offset_of!(RedirVal, smac) == 12);
    assert!(size_of::<TcConfig>() == 24);
    assert!(size_of::<L7Flow>() == 8);
    assert!(size_of::<EvL7>() == l7::HDR);
    assert!(offset_of!(EvL7, payload_len) == 32);
    assert!(offset_of!(EvL7, cap_len) == 36);
    assert!(offset_of!(EvL7, saddr) == 40);
    assert!(offset_of!(EvL7, xaddr) == 72);
    assert!(offset_of!(EvL7, xport) == 88);
    // The previous header is the prefix up to xaddr.
    assert!(offset_of!(EvL7, xaddr) == l7::HDR_V1);
    assert!(size_of::<Mac>() == 8);
};

#[cfg(feature = "aya")]
mod pod {
    // SAFETY: all of these are #[repr(C)], hold only integers, and have no
    // padding (checked by the size assertions above).
    unsafe impl aya::Pod for super::LpmV4Key {}
    unsafe impl aya::Pod for super::LpmV6Key {}
    unsafe impl aya::Pod for super::FwRule {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::FwConfig {}
    unsafe impl aya::Pod for super::LimitRule {}
    unsafe impl aya::Pod for super::LimitBucket {}
    unsafe impl aya::Pod for super::LimitShared {}
    unsafe impl aya::Pod for super::LimitSrcKey {}
    unsafe impl aya::Pod for super::LimitCnt {}
    unsafe impl aya::Pod for super::GenCfg {}
    unsafe impl aya::Pod for super::EvConfig {}
    unsafe impl aya::Pod for super::IfStatKey {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::FwdKey {}
    unsafe impl aya::Pod for super::FwdTarget {}
    unsafe impl aya::Pod for super::FwdRule {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtVal {}
    unsafe impl aya::Pod for super::RedirVal {}
    unsafe impl aya::Pod for super::TcConfig {}
    unsafe impl aya::Pod for super::Mac {}
    unsafe impl aya::Pod for super::L7Flow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_selection_matches_header_numbering() {
        assert_eq!(FwTable::new(false, false, false), FwTable::AllowSrc4);
        assert_eq!(FwTable::new(false, true, true), FwTable::AllowDst6);
        assert_eq!(FwTable::new(true, false, false), FwTable::DenySrc4);
        assert_eq!(FwTable::new(true, true, true), FwTable::DenyDst6);
        for t in FwTable::ALL {
            assert_eq!(t.is_v6(), t.map_name().ends_with('6'));
        }
    }
}

/// Reads the C header and checks every shared constant against this mirror,
/// so a change on one side only fails the build's tests, not production.
#[cfg(test)]
mod header_sync {
    extern crate std;
    use std::{string::String, vec::Vec};

    /// A header value: a decimal or hex integer, optionally `(A << B)`.
    fn value(v: &str) -> Option<i64> {
        let v = v.trim().trim_start_matches('(').trim_end_matches(')');
        if let Some((a, b)) = v.split_once("<<") {
            return Some(value(a)? << value(b)?);
        }
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(hex) => i64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    /// Every `#define NAME VALUE` and `NAME = VALUE` of the header, with its
    /// value if it is a number.
    fn header_values() -> Vec<(String, Option<i64>)> {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bpf/include/sluice_abi.h")).unwrap();
        let mut out = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            let (name, val) = if let Some(rest) = l.strip_prefix("#define ") {
                let rest = rest.split("/*").next().unwrap_or("");
                match rest.split_once(char::is_whitespace) {
                    Some((n, v)) => (n, v.trim()),
                    None => (rest.trim(), ""),
                }
            } else if let Some((n, v)) = l.split_once(" = ").filter(|(n, _)| {
                n.bytes()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
            }) {
                (n.trim(), v.split([',', ' ']).next().unwrap_or(""))
            } else {
                continue;
            };
            out.push((name.into(), value(val)));
        }
        out
    }

    /// Header names that are not shared constants: the include guard and
    /// the spin-lock type that differs between the BPF and host builds.
    const C_ONLY: [&str; 2] = ["SLUICE_ABI_H", "SLUICE_SPIN_LOCK"];

    #[test]
    fn constants_match_the_c_header() {
        let h = header_values();
        let checked = core::cell::RefCell::new(std::collections::BTreeSet::new());
        let get = |n: &str| {
            checked.borrow_mut().insert(String::from(n));
            h.iter()
                .find(|(k, _)| k == n)
                .unwrap_or_else(|| panic!("{n} missing from header"))
                .1
                .unwrap_or_else(|| panic!("{n} is not a number"))
        };
        assert_eq!(get("LIMIT_F_PER_SOURCE"), super::LIMIT_F_PER_SOURCE as i64);
        assert_eq!(get("SLUICE_DEFAULT_RING_BYTES"), super::ev::DEFAULT_RING_BYTES as i64);
        assert_eq!(get("RULE_NONE"), 0);
        assert_eq!(get("CONN_DIR_UNKNOWN"), 0);
        assert_eq!(get("FW_TABLE_COUNT"), super::FwTable::ALL.len() as i64);
        assert_eq!(get("SLUICE_ABI_VERSION"), super::ABI_VERSION as i64);
        assert_eq!(get("SLUICE_DEFAULT_MAX_RULES"), super::DEFAULT_MAX_RULES as i64);
        assert_eq!(get("SLUICE_MAX_IPV6_EXT"), super::MAX_IPV6_EXT as i64);
        assert_eq!(get("SLUICE_MAX_VLAN"), super::MAX_VLAN as i64);
        assert_eq!(get("SLUICE_MAX_LIMITS"), super::MAX_LIMITS as i64);
        assert_eq!(get("SLUICE_DEFAULT_LIMIT_SOURCES"), super::DEFAULT_LIMIT_SOURCES as i64);
        assert_eq!(get("SLUICE_LIM_SEL_SHIFT"), super::LIM_SEL_SHIFT as i64);
        assert_eq!(get("SLUICE_GCRA_TIME_SHIFT"), super::GCRA_TIME_SHIFT as i64);
        assert_eq!(get("SLUICE_SOCKS_ENTRIES"), super::trace::SOCKS_ENTRIES as i64);
        assert_eq!(get("LIMIT_PPS"), super::LIMIT_PPS as i64);
        assert_eq!(get("LIMIT_BPS"), super::LIMIT_BPS as i64);
        assert_eq!(get("LIMIT_CONNS"), super::LIMIT_CONNS as i64);
        use super::ev;
        for (n, v) in [
            ("EV_CONN", ev::CONN as u32),
            ("EV_PACKET", ev::PACKET as u32),
            ("EV_DROP", ev::DROP as u32),
            ("EVL_CONN", ev::LOST_CONN),
            ("EVL_PACKET", ev::LOST_PACKET),
            ("EVL_DROP", ev::LOST_DROP),
            ("EVL_DROP_LIMIT", ev::LOST_DROP_LIMIT),
            ("EVL_COUNT", ev::LOST_COUNT),
            ("EVL_L7", ev::LOST_L7),
            ("EV_L7", ev::L7 as u32),
            ("SLUICE_L7_CAP", super::l7::CAP as u32),
            ("SLUICE_L7_PORTS", super::l7::PORTS),
            ("SLUICE_L7_FLOWS", super::l7::FLOWS),
            ("SLUICE_EV_L7_HDR", super::l7::HDR as u32),
            ("SLUICE_EV_L7_HDR_V1", super::l7::HDR_V1 as u32),
            ("L7_F_DNAT", super::l7::F_DNAT as u32),
            ("L7_F_SNAT", super::l7::F_SNAT as u32),
            ("L7_HTTP", super::l7::HTTP as u32),
            ("L7_REDIS", super::l7::REDIS as u32),
            ("L7_MYSQL", super::l7::MYSQL as u32),
            ("L7_TO_SERVER", super::l7::TO_SERVER as u32),
            ("L7_TO_CLIENT", super::l7::TO_CLIENT as u32),
            ("CONN_DIR_OUT", ev::DIR_OUT as u32),
            ("CONN_DIR_IN", ev::DIR_IN as u32),
            ("RULE_DENY", ev::RULE_DENY as u32),
            ("RULE_ALLOW", ev::RULE_ALLOW as u32),
            ("RULE_LIMIT", ev::RULE_LIMIT as u32),
            ("SLUICE_DEFAULT_SAMPLE_EVERY", ev::DEFAULT_SAMPLE_EVERY),
            ("SLUICE_DEFAULT_DROP_EVENTS", ev::DEFAULT_DROP_EVENTS),
            ("SLUICE_IF_STATS_ENTRIES", ev::IF_STATS_ENTRIES),
        ] {
            assert_eq!(get(n), v as i64, "{n}");
        }
        use super::tc;
        for (n, v) in [
            ("SLUICE_MAX_FWD_TARGETS", tc::MAX_FWD_TARGETS as u32),
            ("SLUICE_MAX_FORWARDS", tc::MAX_FORWARDS),
            ("SLUICE_MAX_REDIRECTS", tc::MAX_REDIRECTS),
            ("SLUICE_DEFAULT_MAX_FLOWS", tc::DEFAULT_MAX_FLOWS),
            ("SLUICE_PEER_MAC_ENTRIES", tc::PEER_MAC_ENTRIES),
            ("CT_DNAT", tc::CT_DNAT as u32),
            ("CT_SNAT", tc::CT_SNAT as u32),
            ("CT_NEW", tc::CT_NEW as u32),
            ("CT_EST", tc::CT_EST as u32),
            ("CT_FIN", tc::CT_FIN as u32),
            ("CT_CLOSE", tc::CT_CLOSE as u32),
            ("REDIR_F_PEER", tc::REDIR_F_PEER),
            ("TCS_DNAT", tc::STAT_DNAT),
            ("TCS_SNAT", tc::STAT_SNAT),
            ("TCS_NEW_FLOW", tc::STAT_NEW_FLOW),
            ("TCS_REDIRECT", tc::STAT_REDIRECT),
            ("TCS_SKIPPED", tc::STAT_SKIPPED),
            ("TCS_ERROR", tc::STAT_ERROR),
            ("TCS_L7", tc::STAT_L7),
            ("TCS_COUNT", tc::STAT_COUNT),
        ] {
            assert_eq!(get(n), v as i64, "{n}");
        }
        use super::stat::*;
        for (n, v) in [
            ("STAT_PASS", PASS),
            ("STAT_ALLOW", ALLOW),
            ("STAT_DENY", DENY),
            ("STAT_LIMIT", LIMIT),
            ("STAT_UNPARSED", UNPARSED),
            ("STAT_NON_IP", NON_IP),
            ("STAT_VERDICTS", VERDICTS),
            ("STAT_FRAGMENT", FRAGMENT),
            ("STAT_L4_UNPARSED", L4_UNPARSED),
            ("STAT_COUNT", COUNT),
            ("STAT_TOO_MANY_TAGS", TOO_MANY_TAGS),
            ("STAT_ALL", ALL),
        ] {
            assert_eq!(get(n), v as i64, "{n}");
        }
        for (n, t) in [
            ("FW_ALLOW_SRC4", super::FwTable::AllowSrc4),
            ("FW_ALLOW_DST4", super::FwTable::AllowDst4),
            ("FW_ALLOW_SRC6", super::FwTable::AllowSrc6),
            ("FW_ALLOW_DST6", super::FwTable::AllowDst6),
            ("FW_DENY_SRC4", super::FwTable::DenySrc4),
            ("FW_DENY_DST4", super::FwTable::DenyDst4),
            ("FW_DENY_SRC6", super::FwTable::DenySrc6),
            ("FW_DENY_DST6", super::FwTable::DenyDst6),
        ] {
            assert_eq!(get(n), t as i64, "{n}");
        }
        // Every constant of the header is compared with its mirror above.
        let unchecked: Vec<&str> = h
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !C_ONLY.contains(n) && !checked.borrow().contains(*n))
            .collect();
        assert!(
            unchecked.is_empty(),
            "header constants with no mirror check: {unchecked:?}"
        );
    }
}
