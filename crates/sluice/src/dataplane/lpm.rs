//! The key of every LPM trie (firewall tables, redirect tables): a prefix
//! length and the network address, in the kernel's layout.

use ipnet::IpNet;
use sluice_abi::{LpmV4Key, LpmV6Key};

/// An LPM trie key, IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LpmKey {
    V4(LpmV4Key),
    V6(LpmV6Key),
}

impl From<IpNet> for LpmKey {
    fn from(n: IpNet) -> Self {
        match n {
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

    #[test]
    fn keys_hold_the_network_address() {
        let n: IpNet = "198.18.1.0/24".parse().unwrap();
        assert_eq!(
            LpmKey::from(n),
            LpmKey::V4(LpmV4Key {
                prefixlen: 24,
                addr: [198, 18, 1, 0]
            })
        );
    }
}
