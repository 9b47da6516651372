//! The limit rule model: what a rule matches (source, destination, port),
//! what it counts (packets/s, bytes/s or new TCP connections/s), its burst,
//! per-source buckets and warm-up, and the validation of a request into
//! one. Pure code.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use crate::model::{normalize_comment, Cidr, CidrError, CommentError, Proto};

/// Largest packets/s or connections/s accepted: one packet then costs 256
/// of the limiter's 1/256 ns time units, so rounding stays below 0.4%.
pub const MAX_RATE: u64 = 1_000_000_000;
/// Largest bytes/s accepted (8 Tbit/s).
pub const MAX_BYTE_RATE: u64 = 1_000_000_000_000;
/// Longest warm-up, and the most rate-time a burst may hold.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Smallest `--bps` burst: one full-size frame with a VLAN tag.
pub const MIN_BPS_BURST: u64 = 1518;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error(transparent)]
    Cidr(#[from] CidrError),
    #[error(transparent)]
    Comment(#[from] CommentError),
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

/// Parses `PORT`, `PORT/tcp` or `PORT/udp`.
pub fn parse_port(s: &str) -> Result<(u16, Option<Proto>), LimitError> {
    let (p, proto) = match s.split_once('/') {
        Some((p, proto)) => (
            p,
            Some(
                proto
                    .parse::<Proto>()
                    .map_err(|_| LimitError::Proto(proto.to_string()))?,
            ),
        ),
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
        let comment = normalize_comment(self.comment.clone())?;
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

impl LimitSpec {
    /// The request that validates back to this spec (export).
    pub fn request(&self) -> LimitRequest {
        let rate = Some(self.rate as i64);
        let (mut pps, mut bps, mut conns) = (None, None, None);
        match self.kind {
            LimitKind::Pps => pps = rate,
            LimitKind::Bps => bps = rate,
            LimitKind::Conns => conns = rate,
        }
        let dst_port = match (self.m.dst_port, self.m.proto) {
            // A conns rule's tcp is implied.
            (Some(p), Some(pr)) if self.kind != LimitKind::Conns => Some(format!("{p}/{pr}")),
            (Some(p), _) => Some(p.to_string()),
            (None, _) => None,
        };
        LimitRequest {
            src: self.m.src.map(|c| c.to_string()),
            dst: self.m.dst.map(|c| c.to_string()),
            dst_port,
            pps,
            bps,
            conns,
            burst: Some(self.burst as i64),
            per_source: self.per_source,
            warmup: (self.warmup_ms > 0)
                .then(|| humantime::format_duration(Duration::from_millis(self.warmup_ms)).to_string()),
            comment: self.comment.clone(),
        }
    }

    /// One line of a policy diff.
    pub fn describe(&self) -> String {
        let mut l = format!(
            "limit {} {} {}/s burst {}",
            self.m,
            self.kind.as_str(),
            self.rate,
            self.burst
        );
        if self.per_source {
            l.push_str(" per-source");
        }
        if self.warmup_ms > 0 {
            l.push_str(&format!(" warmup {}ms", self.warmup_ms));
        }
        l
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
            LimitError::Cidr(_)
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
    fn a_limit_exports_to_the_request_that_validates_back_to_it() {
        let reqs = [
            LimitRequest {
                pps: Some(100),
                ..Default::default()
            },
            LimitRequest {
                src: Some("10.0.0.0/8".into()),
                dst_port: Some("53/udp".into()),
                bps: Some(1_000_000),
                burst: Some(3000),
                per_source: true,
                warmup: Some("1m".into()),
                comment: Some("dns".into()),
                ..Default::default()
            },
            LimitRequest {
                dst: Some("2001:db8::/32".into()),
                dst_port: Some("443".into()),
                conns: Some(5),
                ..Default::default()
            },
            LimitRequest {
                conns: Some(7),
                warmup: Some("1500ms".into()),
                ..Default::default()
            },
        ];
        for r in reqs {
            let spec = r.validate().unwrap();
            assert_eq!(spec.request().validate().unwrap(), spec, "{r:?}");
        }
    }
}
