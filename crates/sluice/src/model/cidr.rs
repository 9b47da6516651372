//! CIDRs as rules take them. A bare address is a host (`/32`, `/128`); a
//! CIDR with host bits set (`10.1.2.3/8`) is **rejected**, naming the
//! network the user probably meant, because silently widening or narrowing
//! a rule is worse than asking. IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is
//! rejected too: the programs see IPv4 packets as IPv4, so such a rule could
//! never match.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
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
    #[error("invalid CIDR {input:?}: write the prefix length without leading zeros (/{len})")]
    LeadingZero { input: String, len: u32 },
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

    /// The network of the first `len` bits (`len` at most this prefix's).
    pub fn truncate(&self, len: u8) -> Cidr {
        Cidr(IpNet::new(self.0.network(), len).expect("a shorter prefix").trunc())
    }

    /// The host network of one address (`/32`, `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr(IpNet::from(addr))
    }

    /// True if `addr` falls inside this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, CidrError> {
        let s = input.trim();
        let syntax = || CidrError::Syntax(input.to_string());
        let (addr_s, len) = match s.split_once('/') {
            Some((a, l)) => {
                // u32 parse rejects signs, spaces and empty strings.
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                let len = l.parse::<u32>().map_err(|_| syntax())?;
                // One spelling per prefix: `/08` is not `/8` to a reader
                // (some tools read it as octal).
                if l.len() > 1 && l.starts_with('0') {
                    return Err(CidrError::LeadingZero {
                        input: input.to_string(),
                        len,
                    });
                }
                (a, Some(len))
            }
            None => (s, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| syntax())?;
        if let IpAddr::V6(v6) = addr {
            if v6.to_ipv4_mapped().is_some() {
                return Err(CidrError::Mapped(input.to_string()));
            }
        }
        let max = if addr.is_ipv4() { 32u8 } else { 128 };
        let len = len.unwrap_or(max as u32);
        if len > max as u32 {
            return Err(CidrError::PrefixLen {
                input: input.to_string(),
                len,
                max,
                family: if addr.is_ipv4() { 4 } else { 6 },
            });
        }
        let net = IpNet::new(addr, len as u8).map_err(|_| syntax())?;
        if net.network() != addr {
            return Err(CidrError::HostBits {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        s.parse::<Cidr>().unwrap().to_string()
    }

    fn err(s: &str) -> CidrError {
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
            CidrError::PrefixLen { len: 33, max: 32, .. }
        ));
        assert!(matches!(
            err("2001:2::/129"),
            CidrError::PrefixLen { len: 129, max: 128, .. }
        ));
        assert!(matches!(err("10.0.0.0/99999999999"), CidrError::Syntax(_)));
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
            assert!(matches!(err(s), CidrError::Syntax(_)), "{s:?} should be a syntax error");
        }
    }

    #[test]
    fn rejects_host_bits_and_names_the_network() {
        match err("10.1.2.3/8") {
            CidrError::HostBits { network, .. } => assert_eq!(network.to_string(), "10.0.0.0/8"),
            e => panic!("unexpected {e:?}"),
        }
        assert_eq!(
            err("2001:2::1/48").to_string(),
            "CIDR \"2001:2::1/48\" has host bits set; did you mean 2001:2::/48?"
        );
    }

    #[test]
    fn prefix_lengths_have_one_spelling() {
        for s in ["10.0.0.0/08", "10.0.0.0/008", "2001:2::/048", "0.0.0.0/00"] {
            assert!(matches!(err(s), CidrError::LeadingZero { .. }), "{s}");
        }
        assert_eq!(
            err("10.0.0.0/08").to_string(),
            "invalid CIDR \"10.0.0.0/08\": write the prefix length without leading zeros (/8)"
        );
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
    }

    #[test]
    fn rejects_ipv4_mapped_ipv6() {
        assert!(matches!(err("::ffff:1.2.3.4"), CidrError::Mapped(_)));
    }
}
