//! Who is behind an interface, an address or a process: the container
//! that owns it. Records (connections, drops, L7 exchanges) are named with
//! it. The container registry implements [`Identify`]; the record side
//! only sees this trait, so it needs no runtime to be tested. Pure code.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A container, as a record names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Who {
    /// The container's name (Docker's, or the runtime id's first 12
    /// characters where the runtime gives no name).
    pub name: String,
    /// The runtime's full id.
    pub id: String,
}

/// Answers "which container?" for the things a record carries.
pub trait Identify: Send + Sync {
    /// The container whose host-side interface this is.
    fn by_ifindex(&self, ifindex: u32) -> Option<Who>;
    /// The container that holds this address now.
    fn by_addr(&self, addr: IpAddr) -> Option<Who>;
    /// The container a process runs in.
    fn by_pid(&self, pid: u32) -> Option<Who>;
    /// Changes whenever any answer may have changed (containers came, went
    /// or moved): caches of answers are valid while it stays the same.
    fn generation(&self) -> u64 {
        0
    }
}

/// Knows no container: a host without a runtime, and tests.
pub struct Nobody;

impl Identify for Nobody {
    fn by_ifindex(&self, _: u32) -> Option<Who> {
        None
    }
    fn by_addr(&self, _: IpAddr) -> Option<Who> {
        None
    }
    fn by_pid(&self, _: u32) -> Option<Who> {
        None
    }
}

/// The one form of an address in every record: an IPv4-mapped IPv6
/// address (`::ffff:172.17.0.2`, what a dual-stack socket reports for an
/// IPv4 peer) is shown as the IPv4 address it is.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_shown_as_ipv4() {
        let a: IpAddr = "::ffff:172.17.0.2".parse().unwrap();
        assert_eq!(canonical(a), "172.17.0.2".parse::<IpAddr>().unwrap());
        let b: IpAddr = "2001:2::1".parse().unwrap();
        assert_eq!(canonical(b), b);
        let c: IpAddr = "::1".parse().unwrap();
        assert_eq!(canonical(c), c, "loopback stays IPv6");
    }
}
