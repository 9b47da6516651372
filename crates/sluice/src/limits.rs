//! Flow control rules, in the spirit of Alibaba Sentinel but enforced in the
//! kernel: packets/s, bytes/s or new TCP connections/s per rule, with a burst
//! depth, optional per-source buckets and a cold-start warm-up.
//!
//! This module owns the model, the validation of user input, and the math
//! that turns a rule into the kernel's GCRA parameters (see `bpf/include/gcra.h`):
//! ns of rate-time per unit as a fixed-point number, and the burst
//! tolerance `tau`. [`Limiter`] keeps the store and the kernel rule set equal,
//! like the firewall does for deny/allow.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use sluice_abi::{LimitCnt, LimitRule, LIMIT_BPS, LIMIT_CONNS, LIMIT_F_PER_SOURCE, LIMIT_PPS, MAX_LIMITS};

use crate::{
    dataplane::{DataplaneError, LimitTables},
    rules::{validate_comment, Cidr, RuleError},
    store::{Store, StoreError},
};

/// Largest packets/s or connections/s accepted: one packet then costs 256
/// of the limiter's 1/256 ns time units, so rounding stays below 0.4%.
pub const MAX_RATE: u64 = 1_000_000_000;
/// Largest bytes/s accepted (8 Tbit/s).
pub const MAX_BYTE_RATE: u64 = 1_000_000_000_000;
/// The limiter's time unit: TATs are in 1/2^TIME_SHIFT ns (`GCRA_TIME_SHIFT`).
pub const TIME_SHIFT: u32 = 8;
/// Longest warm-up, and the most rate-time a burst may hold.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Smallest `--bps` burst: one full-size frame with a VLAN tag.
pub const MIN_BPS_BURST: u64 = 1518;
/// Largest frame the bytes/s math must handle without overflow.
const MAX_FRAME: u128 = 65536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("give exactly one of --pps, --bps or --conns")]
    Kind,
    #[error("{what} must be a positive number, not {value}")]
    NotPositive { what: &'static str, value: i64 },
    #[error("rate {0} is above the maximum of {1} per second")]
    RateTooHigh(i64, u64),
    #[error("burst {burst} is smaller than one packet ({min} {unit})")]
    BurstTooSmall { burst: i64, min: u64, unit: &'static str },
    #[error("burst {burst} holds more than an hour of the rate {rate}/s")]
    BurstTooLarge { burst: u64, rate: u64 },
    #[error("invalid port {0:?}: expected PORT or PORT/tcp or PORT/udp with PORT in 1..=65535")]
    Port(String),
    #[error("unknown protocol {0:?}: expected tcp or udp")]
    Proto(String),
    #[error("--conns counts TCP connections; it cannot match {0}")]
    ConnsNotTcp(String),
    #[error("--src and --dst must be the same address family")]
    MixedFamilies,
    #[error("invalid warm-up {0:?}: expected a duration like 500ms, 10s or 2m, at most 1h")]
    Warmup(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKind {
    Pps,
    Bps,
    Conns,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Pps => "pps",
            LimitKind::Bps => "bps",
            LimitKind::Conns => "conns",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = LimitError;
    fn from_str(s: &str) -> Result<Self, LimitError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(LimitError::Proto(s.to_string())),
        }
    }
}

/// Parses `PORT`, `PORT/tcp` or `PORT/udp`.
pub fn parse_port(s: &str) -> Result<(u16, Option<Proto>), LimitError> {
    let (p, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, Some(proto.parse()?)),
        None => (s, None),
    };
    let port: u16 = p.trim().parse().map_err(|_| LimitError::Port(s.to_string()))?;
    if port == 0 {
        return Err(LimitError::Port(s.to_string()));
    }
    Ok((port, proto))
}

/// Parses a warm-up duration (`500ms`, `10s`, `2m`).
pub fn parse_warmup(s: &str) -> Result<Duration, LimitError> {
    let d = humantime::parse_duration(s.trim()).map_err(|_| LimitError::Warmup(s.to_string()))?;
    if d < Duration::from_millis(1) || d > MAX_WINDOW {
        return Err(LimitError::Warmup(s.to_string()));
    }
    Ok(d)
}

/// What a limit rule matches. Two rules with the same match and kind conflict.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitMatch {
    pub src: Option<Cidr>,
    pub dst: Option<Cidr>,
    pub dst_port: Option<u16>,
    pub proto: Option<Proto>,
}

impl fmt::Display for LimitMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(s) = self.src {
            parts.push(format!("src {s}"));
        }
        if let Some(d) = self.dst {
            parts.push(format!("dst {d}"));
        }
        match (self.dst_port, self.proto) {
            (Some(p), Some(pr)) => parts.push(format!("port {p}/{pr}")),
            (Some(p), None) => parts.push(format!("port {p}")),
            (None, Some(pr)) => parts.push(pr.to_string()),
            (None, None) => {}
        }
        if parts.is_empty() {
            f.write_str("all traffic")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// A validated limit rule, before it has an id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    #[serde(rename = "match")]
    pub m: LimitMatch,
    pub kind: LimitKind,
    pub rate: u64,
    /// Bucket depth in units (packets, bytes or connections).
    pub burst: u64,
    pub per_source: bool,
    /// 0 = no warm-up.
    pub warmup_ms: u64,
    pub comment: Option<String>,
}

/// Body of `POST /v1/limits`, also what the CLI sends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// `PORT`, `PORT/tcp` or `PORT/udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_source: bool,
    /// A duration such as `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl LimitRequest {
    pub fn validate(&self) -> Result<LimitSpec, LimitError> {
        let (kind, rate) = match (self.pps, self.bps, self.conns) {
            (Some(r), None, None) => (LimitKind::Pps, r),
            (None, Some(r), None) => (LimitKind::Bps, r),
            (None, None, Some(r)) => (LimitKind::Conns, r),
            _ => return Err(LimitError::Kind),
        };
        if rate <= 0 {
            return Err(LimitError::NotPositive {
                what: "rate",
                value: rate,
            });
        }
        let max = if kind == LimitKind::Bps {
            MAX_BYTE_RATE
        } else {
            MAX_RATE
        };
        if rate as u64 > max {
            return Err(LimitError::RateTooHigh(rate, max));
        }
        let rate = rate as u64;
        let min = if kind == LimitKind::Bps { MIN_BPS_BURST } else { 1 };
        let burst = match self.burst {
            None => rate.max(min),
            Some(b) if b <= 0 => {
                return Err(LimitError::NotPositive {
                    what: "burst",
                    value: b,
                })
            }
            Some(b) if (b as u64) < min => {
                let unit = if kind == LimitKind::Bps { "bytes" } else { "packet" };
                return Err(LimitError::BurstTooSmall { burst: b, min, unit });
            }
            Some(b) => b as u64,
        };
        if burst as u128 > rate as u128 * MAX_WINDOW.as_secs() as u128 {
            return Err(LimitError::BurstTooLarge { burst, rate });
        }
        let src = self.src.as_deref().map(str::parse::<Cidr>).transpose()?;
        let dst = self.dst.as_deref().map(str::parse::<Cidr>).transpose()?;
        if let (Some(s), Some(d)) = (src, dst) {
            if s.is_v6() != d.is_v6() {
                return Err(LimitError::MixedFamilies);
            }
        }
        let (dst_port, mut proto) = match self.dst_port.as_deref() {
            Some(p) => {
                let (port, proto) = parse_port(p)?;
                (Some(port), proto)
            }
            None => (None, None),
        };
        if kind == LimitKind::Conns {
            if proto == Some(Proto::Udp) {
                return Err(LimitError::ConnsNotTcp(self.dst_port.clone().unwrap_or_default()));
            }
            proto = Some(Proto::Tcp);
        }
        let warmup_ms = match self.warmup.as_deref() {
            Some(w) => parse_warmup(w)?.as_millis() as u64,
            None => 0,
        };
        let comment = self.comment.clone().filter(|c| !c.is_empty());
        if let Some(c) = &comment {
            validate_comment(c)?;
        }
        Ok(LimitSpec {
            m: LimitMatch {
                src,
                dst,
                dst_port,
                proto,
            },
            kind,
            rate,
            burst,
            per_source: self.per_source,
            warmup_ms,
            comment,
        })
    }
}

/// The kernel's fixed-point GCRA parameters of a rate. Times are in the
/// limiter's unit of 1/256 ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// Time units of rate-time per packet/byte, shifted left by `shift`.
    pub unit_fp: u64,
    pub shift: u32,
    /// Burst tolerance: burst * time units per packet/byte.
    pub tau: u64,
}

impl Gcra {
    /// Picks the largest shift (at most 32) for which the biggest packet's
    /// cost, units * unit_fp, stays below 2^62.
    pub fn new(kind: LimitKind, rate: u64, burst: u64) -> Gcra {
        let max_units: u128 = if kind == LimitKind::Bps { MAX_FRAME } else { 1 };
        let mut shift = 32u32;
        let unit_fp = loop {
            let fp = (1_000_000_000u128 << (shift + TIME_SHIFT)) / rate as u128;
            if fp * max_units < 1 << 62 || shift == 0 {
                break fp as u64;
            }
            shift -= 1;
        };
        let tau = ((burst as u128 * 1_000_000_000) << TIME_SHIFT) / rate as u128;
        let tau = tau as u64;
        Gcra { unit_fp, shift, tau }
    }
}

/// A stored limit rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub id: i64,
    /// Index of its bucket and counters in the kernel.
    pub slot: u16,
    pub spec: LimitSpec,
    pub created: i64,
}

impl Limit {
    /// The kernel entry of this rule.
    pub fn to_kernel(&self) -> LimitRule {
        let s = &self.spec;
        let g = Gcra::new(s.kind, s.rate, s.burst);
        let mut r = LimitRule {
            family: 0,
            proto: s.m.proto.map_or(0, Proto::number),
            dport: s.m.dst_port.unwrap_or(0).to_be(),
            kind: match s.kind {
                LimitKind::Pps => LIMIT_PPS,
                LimitKind::Bps => LIMIT_BPS,
                LimitKind::Conns => LIMIT_CONNS,
            },
            flags: if s.per_source { LIMIT_F_PER_SOURCE } else { 0 },
            slot: self.slot,
            gen: self.id as u32,
            shift: g.shift,
            unit_fp: g.unit_fp,
            tau: g.tau,
            warmup_ns: s.warmup_ms * 1_000_000,
            ..Default::default()
        };
        for (cidr, addr, mask) in [
            (s.m.src, &mut r.src, &mut r.src_mask),
            (s.m.dst, &mut r.dst, &mut r.dst_mask),
        ] {
            if let Some(c) = cidr {
                r.family = if c.is_v6() { 6 } else { 4 };
                let (a, m) = words(c);
                *addr = a;
                *mask = m;
            }
        }
        r
    }
}

/// Address and mask of a CIDR as network-order u32 words (IPv4 in word 0),
/// stored so that the kernel can compare `*(u32 *)&addr_bytes[4k]` directly.
fn words(c: Cidr) -> ([u32; 4], [u32; 4]) {
    let (addr, len, bytes): ([u8; 16], u8, usize) = match c.net() {
        ipnet::IpNet::V4(n) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&n.network().octets());
            (a, n.prefix_len(), 4)
        }
        ipnet::IpNet::V6(n) => (n.network().octets(), n.prefix_len(), 16),
    };
    let mut mask = [0u8; 16];
    for (i, m) in mask.iter_mut().enumerate().take(bytes) {
        let bits = (len as i32 - 8 * i as i32).clamp(0, 8);
        *m = (0xffu16 << (8 - bits)) as u8;
    }
    let w =
        |b: [u8; 16]| std::array::from_fn(|k| u32::from_ne_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]));
    (w(addr), w(mask))
}

/// A rule's counters as shown by `limit list`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStats {
    pub passed: u64,
    pub passed_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// Per-source rules: buckets currently tracked.
    pub sources: u64,
    /// Per-source rules: buckets evicted from the LRU to make room.
    pub evictions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error(transparent)]
    Invalid(#[from] LimitError),
    #[error("conflicts with limit rule {id} ({what}): same match and kind; delete it first")]
    Conflict { id: i64, what: String },
    #[error("no limit rule with id {0}")]
    NotFound(i64),
    #[error("all {MAX_LIMITS} limit rules are in use")]
    Full,
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Keeps the limit rules in the store and in the kernel equal.
pub struct Limiter {
    store: Store,
    tables: Box<dyn LimitTables>,
    rules: BTreeMap<i64, Limit>,
}

fn publish(tables: &mut dyn LimitTables, rules: &BTreeMap<i64, Limit>) -> Result<(), LimiterError> {
    let list: Vec<LimitRule> = rules.values().map(Limit::to_kernel).collect();
    Ok(tables.publish(&list)?)
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Limiter {
    /// Loads the rules and publishes them to the kernel. Buckets and
    /// counters are left as they are, so a restart neither refills bursts
    /// nor forgets warm-up.
    pub fn open(store: Store, tables: Box<dyn LimitTables>) -> Result<Self, LimiterError> {
        let rules = store.limits()?.into_iter().map(|l| (l.id, l)).collect();
        let mut l = Limiter { store, tables, rules };
        l.publish()?;
        Ok(l)
    }

    fn publish(&mut self) -> Result<(), LimiterError> {
        publish(self.tables.as_mut(), &self.rules)
    }

    pub fn add(&mut self, spec: LimitSpec) -> Result<Limit, LimiterError> {
        if let Some(other) = self
            .rules
            .values()
            .find(|r| r.spec.m == spec.m && r.spec.kind == spec.kind)
        {
            return Err(LimiterError::Conflict {
                id: other.id,
                what: format!("{} {}", other.spec.kind.as_str(), other.spec.m),
            });
        }
        let slot = (0..MAX_LIMITS as u16)
            .find(|s| !self.rules.values().any(|r| r.slot == *s))
            .ok_or(LimiterError::Full)?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let tx = self.store.begin()?;
        let id = tx.insert_limit(&spec, slot, created)?;
        let limit = Limit {
            id,
            slot,
            spec,
            created,
        };
        self.tables.reset_slot(slot, monotonic_ns())?;
        self.rules.insert(id, limit.clone());
        let published =
            publish(self.tables.as_mut(), &self.rules).and_then(|_| tx.commit().map_err(LimiterError::from));
        if let Err(e) = published {
            self.rules.remove(&id);
            let _ = self.publish();
            return Err(e);
        }
        Ok(limit)
    }

    pub fn delete(&mut self, id: i64) -> Result<Limit, LimiterError> {
        let limit = self.rules.get(&id).cloned().ok_or(LimiterError::NotFound(id))?;
        let tx = self.store.begin()?;
        tx.delete_limit(id)?;
        self.rules.remove(&id);
        let done = publish(self.tables.as_mut(), &self.rules).and_then(|_| tx.commit().map_err(LimiterError::from));
        if let Err(e) = done {
            self.rules.insert(id, limit);
            let _ = self.publish();
            return Err(e);
        }
        Ok(limit)
    }

    /// Every rule with its counters.
    pub fn list(&self) -> Result<Vec<(Limit, LimitStats)>, LimiterError> {
        let sources = self.tables.sources()?;
        self.rules
            .values()
            .map(|l| {
                let c: LimitCnt = self.tables.counters(l.slot)?;
                let tracked = sources.get(&(l.slot, l.id as u32)).copied().unwrap_or(0);
                Ok((
                    l.clone(),
                    LimitStats {
                        passed: c.passed,
                        passed_bytes: c.passed_bytes,
                        dropped: c.dropped,
                        dropped_bytes: c.dropped_bytes,
                        sources: tracked,
                        evictions: c.new_sources.saturating_sub(tracked),
                    },
                ))
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.rules.len()
    }

    /// The rule in kernel slot `slot` (for drop events).
    pub fn by_slot(&self, slot: u16) -> Option<&Limit> {
        self.rules.values().find(|l| l.slot == slot)
    }

    pub fn source_capacity(&self) -> u32 {
        self.tables.source_capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> LimitRequest {
        LimitRequest {
            pps: Some(1000),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_kinds() {
        let s = req().validate().unwrap();
        assert_eq!((s.kind, s.rate, s.burst), (LimitKind::Pps, 1000, 1000));
        let s = LimitRequest {
            bps: Some(100),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(
            s.burst, MIN_BPS_BURST,
            "one second of a tiny bps rate is less than a packet"
        );
        let s = LimitRequest {
            conns: Some(5),
            dst_port: Some("80".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(s.m.proto, Some(Proto::Tcp));
        assert_eq!(LimitRequest::default().validate(), Err(LimitError::Kind));
        assert_eq!(
            LimitRequest {
                pps: Some(1),
                bps: Some(1),
                ..Default::default()
            }
            .validate(),
            Err(LimitError::Kind)
        );
    }

    #[test]
    fn bad_input() {
        let bad = |r: LimitRequest| r.validate().unwrap_err();
        assert!(matches!(
            bad(LimitRequest { pps: Some(0), ..req() }),
            LimitError::NotPositive { what: "rate", .. }
        ));
        assert!(matches!(
            bad(LimitRequest { pps: Some(-5), ..req() }),
            LimitError::NotPositive { .. }
        ));
        assert!(matches!(
            bad(LimitRequest {
                burst: Some(0),
                ..req()
            }),
            LimitError::NotPositive { what: "burst", .. }
        ));
        assert!(matches!(
            bad(LimitRequest {
                pps: None,
                bps: Some(10_000),
                burst: Some(100),
                ..req()
            }),
            LimitError::BurstTooSmall { .. }
        ));
        assert!(matches!(
            bad(LimitRequest {
                burst: Some(1000 * 3601),
                ..req()
            }),
            LimitError::BurstTooLarge { .. }
        ));
        for p in ["0", "65536", "x", "-1", ""] {
            assert!(
                bad(LimitRequest {
                    dst_port: Some(p.into()),
                    ..req()
                })
                .to_string()
                .contains(p),
                "{p}"
            );
        }
        assert!(matches!(
            bad(LimitRequest {
                dst_port: Some("80/sctp".into()),
                ..req()
            }),
            LimitError::Proto(_)
        ));
        assert!(matches!(
            bad(LimitRequest {
                pps: None,
                conns: Some(1),
                dst_port: Some("53/udp".into()),
                ..req()
            }),
            LimitError::ConnsNotTcp(_)
        ));
        assert_eq!(
            bad(LimitRequest {
                src: Some("10.0.0.0/8".into()),
                dst: Some("2001:2::/48".into()),
                ..req()
            }),
            LimitError::MixedFamilies
        );
        assert!(matches!(
            bad(LimitRequest {
                src: Some("10.0.0.1/8".into()),
                ..req()
            }),
            LimitError::Rule(_)
        ));
        for w in ["0s", "2h", "fast", "-1s"] {
            assert!(
                matches!(
                    bad(LimitRequest {
                        warmup: Some(w.into()),
                        ..req()
                    }),
                    LimitError::Warmup(_)
                ),
                "{w}"
            );
        }
        assert!(matches!(
            bad(LimitRequest {
                pps: Some(MAX_RATE as i64 + 1),
                ..req()
            }),
            LimitError::RateTooHigh(..)
        ));
        assert!(LimitRequest {
            pps: None,
            bps: Some(MAX_RATE as i64 * 10),
            ..req()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn gcra_parameters() {
        // 1000 pps: 1 ms per packet, burst 10 -> tau 10 ms (in 1/256 ns).
        let g = Gcra::new(LimitKind::Pps, 1000, 10);
        assert_eq!(g.unit_fp >> g.shift, 1_000_000 << TIME_SHIFT);
        assert_eq!(g.tau, 10_000_000 << TIME_SHIFT);
        // The fastest accepted rate still costs 256 units per packet.
        let g = Gcra::new(LimitKind::Pps, MAX_RATE, MAX_RATE);
        assert_eq!(g.unit_fp >> g.shift, 256);
        // Bytes: the cost of a 64 KiB frame must not overflow.
        for rate in [1u64, 7, 1500, 125_000_000, MAX_BYTE_RATE] {
            let g = Gcra::new(LimitKind::Bps, rate, rate.max(MIN_BPS_BURST));
            assert!((g.unit_fp as u128) * MAX_FRAME < 1 << 62, "rate {rate}");
            // Relative precision of the per-byte cost better than 1e-4.
            let exact = 256e9 / rate as f64;
            let got = g.unit_fp as f64 / (1u64 << g.shift) as f64;
            assert!(((got - exact) / exact).abs() < 1e-4, "rate {rate}: {got} vs {exact}");
        }
    }

    #[test]
    fn kernel_rule_layout() {
        let spec = LimitRequest {
            src: Some("198.18.1.0/24".into()),
            dst_port: Some("8080/tcp".into()),
            per_source: true,
            warmup: Some("2s".into()),
            ..req()
        }
        .validate()
        .unwrap();
        let r = Limit {
            id: 7,
            slot: 3,
            spec,
            created: 0,
        }
        .to_kernel();
        assert_eq!(r.family, 4);
        assert_eq!(r.proto, 6);
        assert_eq!(u16::from_be(r.dport), 8080);
        assert_eq!(r.src[0].to_ne_bytes(), [198, 18, 1, 0]);
        assert_eq!(r.src_mask[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(r.src_mask[1], 0);
        assert_eq!(r.dst_mask, [0; 4]);
        assert_eq!((r.slot, r.gen, r.flags), (3, 7, LIMIT_F_PER_SOURCE));
        assert_eq!(r.warmup_ns, 2_000_000_000);
        let v6 = Limit {
            id: 1,
            slot: 0,
            spec: LimitRequest {
                dst: Some("2001:2::/33".into()),
                ..req()
            }
            .validate()
            .unwrap(),
            created: 0,
        }
        .to_kernel();
        assert_eq!(v6.family, 6);
        assert_eq!(v6.dst_mask[1].to_ne_bytes(), [0x80, 0, 0, 0]);
        assert_eq!(v6.dst_mask[2], 0);
    }
}
