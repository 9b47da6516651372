//! The firewall rule model: what a deny/allow rule is, how user input becomes
//! one, and how a rule maps onto a kernel table key. Pure code with no I/O.
//!
//! Input policy: a bare address is a host rule (`/32`, `/128`); a CIDR with
//! host bits set (`10.1.2.3/8`) is **rejected**, naming the network the user
//! probably meant, because silently widening or narrowing a firewall rule is
//! worse than asking. IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is rejected too: the
//! XDP program sees IPv4 packets as IPv4, so such a rule could never match.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_abi::{FwTable, LpmV4Key, LpmV6Key};

/// Longest comment accepted on a rule, in bytes.
pub const MAX_COMMENT: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("invalid CIDR {0:?}: expected an IPv4/IPv6 address or ADDR/PREFIX, e.g. 198.18.1.0/24 or 2001:2::/48")]
    Syntax(String),
    #[error("invalid CIDR {input:?}: prefix length {len} is out of range (max {max} for IPv{family})")]
    PrefixLen {
        input: String,
        len: u32,
        max: u8,
        family: u8,
    },
    #[error("CIDR {input:?} has host bits set; did you mean {network}?")]
    HostBits { input: String, network: IpNet },
    #[error("CIDR {0:?} is an IPv4-mapped IPv6 address; write the IPv4 form instead")]
    Mapped(String),
    #[error("comment is {0} bytes long; the limit is {MAX_COMMENT}")]
    CommentTooLong(usize),
    #[error("comment must not contain control characters")]
    CommentControl,
}

/// Deny drops matching packets; allow passes them and wins over any deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(format!("unknown action {s:?}")),
        }
    }
}

/// Which address of the packet the CIDR is matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Src,
    Dst,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Src => "src",
            Direction::Dst => "dst",
        }
    }
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "src" => Ok(Direction::Src),
            "dst" => Ok(Direction::Dst),
            _ => Err(format!("unknown direction {s:?}")),
        }
    }
}

/// A validated CIDR: network address with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }

    pub fn is_v6(&self) -> bool {
        matches!(self.0, IpNet::V6(_))
    }

    /// True if `addr` falls inside this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }
}

impl FromStr for Cidr {
    type Err = RuleError;

    fn from_str(input: &str) -> Result<Self, RuleError> {
        let s = input.trim();
        let syntax = || RuleError::Syntax(input.to_string());
        let (addr_s, len) = match s.split_once('/') {
            Some((a, l)) => {
                // u32 parse rejects signs, spaces and empty strings.
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                (a, Some(l.parse::<u32>().map_err(|_| syntax())?))
            }
            None => (s, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| syntax())?;
        if let IpAddr::V6(v6) = addr {
            if v6.to_ipv4_mapped().is_some() {
                return Err(RuleError::Mapped(input.to_string()));
            }
        }
        let max = if addr.is_ipv4() { 32u8 } else { 128 };
        let len = len.unwrap_or(max as u32);
        if len > max as u32 {
            return Err(RuleError::PrefixLen {
                input: input.to_string(),
                len,
                max,
                family: if addr.is_ipv4() { 4 } else { 6 },
            });
        }
        let net = IpNet::new(addr, len as u8).map_err(|_| syntax())?;
        if net.network() != addr {
            return Err(RuleError::HostBits {
                input: input.to_string(),
                network: net.trunc(),
            });
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a rule comment: bounded length, no control characters.
pub fn validate_comment(c: &str) -> Result<(), RuleError> {
    if c.len() > MAX_COMMENT {
        return Err(RuleError::CommentTooLong(c.len()));
    }
    if c.chars().any(char::is_control) {
        return Err(RuleError::CommentControl);
    }
    Ok(())
}

/// A validated rule, before it has an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub action: Action,
    pub cidr: Cidr,
    pub dir: Direction,
    pub comment: Option<String>,
}

impl RuleSpec {
    pub fn new(action: Action, cidr: &str, dst: bool, comment: Option<String>) -> Result<Self, RuleError> {
        let cidr = cidr.parse()?;
        let comment = comment.filter(|c| !c.is_empty());
        if let Some(c) = &comment {
            validate_comment(c)?;
        }
        Ok(RuleSpec {
            action,
            cidr,
            dir: if dst { Direction::Dst } else { Direction::Src },
            comment,
        })
    }

    pub fn table(&self) -> FwTable {
        table_for(self.action, self.dir, self.cidr)
    }

    /// The identity of a rule: one rule per (action, direction, CIDR).
    pub fn key(&self) -> RuleKey {
        RuleKey {
            action: self.action,
            dir: self.dir,
            cidr: self.cidr,
        }
    }
}

/// What makes two rules the same rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub action: Action,
    pub dir: Direction,
    pub cidr: Cidr,
}

/// A stored rule: a spec plus its id, counter slot and creation time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: i64,
    pub slot: u32,
    pub spec: RuleSpec,
    /// Unix seconds.
    pub created: i64,
}

pub fn table_for(action: Action, dir: Direction, cidr: Cidr) -> FwTable {
    FwTable::new(action == Action::Deny, dir == Direction::Dst, cidr.is_v6())
}

/// The kernel key of a CIDR in its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LpmKey {
    V4(LpmV4Key),
    V6(LpmV6Key),
}

impl From<Cidr> for LpmKey {
    fn from(c: Cidr) -> Self {
        match c.0 {
            IpNet::V4(n) => LpmKey::V4(LpmV4Key {
                prefixlen: n.prefix_len() as u32,
                addr: n.network().octets(),
            }),
            IpNet::V6(n) => LpmKey::V6(LpmV6Key {
                prefixlen: n.prefix_len() as u32,
                addr: n.network().octets(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        s.parse::<Cidr>().unwrap().to_string()
    }

    fn err(s: &str) -> RuleError {
        s.parse::<Cidr>().unwrap_err()
    }

    #[test]
    fn parses_networks_and_hosts() {
        assert_eq!(ok("198.18.0.0/15"), "198.18.0.0/15");
        assert_eq!(ok("198.18.1.2"), "198.18.1.2/32");
        assert_eq!(ok(" 10.0.0.0/8 "), "10.0.0.0/8");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("2001:2::/48"), "2001:2::/48");
        assert_eq!(ok("2001:2::1"), "2001:2::1/128");
        assert_eq!(ok("::/0"), "::/0");
    }

    #[test]
    fn rejects_out_of_range_prefixes() {
        assert!(matches!(
            err("10.0.0.0/33"),
            RuleError::PrefixLen { len: 33, max: 32, .. }
        ));
        assert!(matches!(
            err("2001:2::/129"),
            RuleError::PrefixLen { len: 129, max: 128, .. }
        ));
        assert!(matches!(err("10.0.0.0/99999999999"), RuleError::Syntax(_)));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "abc",
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "1.2.3.4.5",
            "10.0.0.0/ 8",
            "fe80::1%eth0",
        ] {
            assert!(matches!(err(s), RuleError::Syntax(_)), "{s:?} should be a syntax error");
        }
    }

    #[test]
    fn rejects_host_bits_and_names_the_network() {
        match err("10.1.2.3/8") {
            RuleError::HostBits { network, .. } => assert_eq!(network.to_string(), "10.0.0.0/8"),
            e => panic!("unexpected {e:?}"),
        }
        assert_eq!(
            err("2001:2::1/48").to_string(),
            "CIDR \"2001:2::1/48\" has host bits set; did you mean 2001:2::/48?"
        );
    }

    #[test]
    fn rejects_ipv4_mapped_ipv6() {
        assert!(matches!(err("::ffff:1.2.3.4"), RuleError::Mapped(_)));
    }

    #[test]
    fn comment_rules() {
        assert!(RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some("x".repeat(MAX_COMMENT))).is_ok());
        assert_eq!(
            RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some("x".repeat(MAX_COMMENT + 1))).unwrap_err(),
            RuleError::CommentTooLong(MAX_COMMENT + 1)
        );
        assert_eq!(
            RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some("a\nb".into())).unwrap_err(),
            RuleError::CommentControl
        );
        assert_eq!(
            RuleSpec::new(Action::Deny, "10.0.0.0/8", false, Some(String::new()))
                .unwrap()
                .comment,
            None
        );
    }

    #[test]
    fn tables_and_keys() {
        let r = RuleSpec::new(Action::Allow, "2001:2::/48", true, None).unwrap();
        assert_eq!(r.table(), FwTable::AllowDst6);
        let r = RuleSpec::new(Action::Deny, "198.18.1.0/24", false, None).unwrap();
        assert_eq!(r.table(), FwTable::DenySrc4);
        assert_eq!(
            LpmKey::from(r.cidr),
            LpmKey::V4(LpmV4Key {
                prefixlen: 24,
                addr: [198, 18, 1, 0]
            })
        );
    }
}
