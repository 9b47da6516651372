//! Probe ids: `xdp/IFACE`, `tc-ingress/IFACE`, `tc-egress/IFACE` and
//! `trace/inet_sock_set_state` each name one program at one attach point,
//! the unit an operator lists, enables and disables; and how an XDP probe
//! runs ([`AttachMode`]).

use std::{fmt, str::FromStr};

/// The hook a probe runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    Xdp,
    TcIngress,
    TcEgress,
    Trace,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 4] = [
        ProbeKind::Xdp,
        ProbeKind::TcIngress,
        ProbeKind::TcEgress,
        ProbeKind::Trace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Xdp => "xdp",
            ProbeKind::TcIngress => "tc-ingress",
            ProbeKind::TcEgress => "tc-egress",
            ProbeKind::Trace => "trace",
        }
    }
}

/// One program at one attach point.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId {
    pub kind: ProbeKind,
    /// Interface name, or the tracepoint for `trace`.
    pub attach: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("probe id {id:?}: {why}")]
pub struct ProbeIdError {
    pub id: String,
    pub why: String,
}

impl FromStr for ProbeId {
    type Err = ProbeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ProbeIdError { id: s.into(), why };
        let (kind, attach) = s
            .split_once('/')
            .ok_or_else(|| bad("expected KIND/ATTACH, e.g. xdp/veth1a2b or trace/inet_sock_set_state".into()))?;
        let kind = ProbeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| bad(format!("unknown kind {kind:?}: xdp, tc-ingress, tc-egress or trace")))?;
        if kind == ProbeKind::Trace {
            if attach != sluice_abi::trace::TRACEPOINT {
                return Err(bad(format!(
                    "the only trace probe is trace/{}",
                    sluice_abi::trace::TRACEPOINT
                )));
            }
        } else if attach.contains('/') && attach.split_once('/').is_some_and(|(_, f)| f.starts_with("foreign-")) {
            return Err(bad(
                "other owners' programs cannot be enabled or disabled by sluice".into()
            ));
        } else {
            crate::sys::iface::check_ifname(attach).map_err(bad)?;
        }
        Ok(ProbeId {
            kind,
            attach: attach.into(),
        })
    }
}

impl fmt::Display for ProbeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.attach)
    }
}

impl ProbeId {
    pub fn new(kind: ProbeKind, attach: &str) -> Self {
        ProbeId {
            kind,
            attach: attach.into(),
        }
    }

    pub fn trace() -> Self {
        Self::new(ProbeKind::Trace, sluice_abi::trace::TRACEPOINT)
    }
}

/// How the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (veth, most NICs).
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Generic,
}

impl AttachMode {
    /// The tag in a pinned link's name (`xdp_IFINDEX_TAG`).
    pub(super) fn tag(self) -> &'static str {
        match self {
            AttachMode::Native => "drv",
            AttachMode::Generic => "skb",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_ids_say_why() {
        for s in [
            "xdp/veth1a2b",
            "tc-ingress/eth0",
            "tc-egress/v",
            "trace/inet_sock_set_state",
        ] {
            assert_eq!(s.parse::<ProbeId>().unwrap().to_string(), s);
        }
        for (s, why) in [
            ("xdp", "expected KIND/ATTACH"),
            ("kprobe/x", "unknown kind"),
            ("xdp/", "not a valid interface name"),
            ("xdp/..", "not a valid interface name"),
            ("xdp/a/b", "not a valid interface name"),
            ("xdp/a b", "not a valid interface name"),
            ("xdp/a\0", "not a valid interface name"),
            ("xdp/abcdefghijklmnop", "not a valid interface name"),
            ("trace/sys_enter", "the only trace probe"),
            ("tc-ingress/veth1/foreign-12", "other owners"),
        ] {
            let e = s.parse::<ProbeId>().unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }
}
