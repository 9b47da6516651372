//! A reference model of the XDP firewall's documented semantics (README,
//! "Firewall" and "Flow control"), written from the documentation and not
//! from the C code: given a rule set and a frame, it says whether the
//! program passes or drops the frame, which verdict counter counts it,
//! which notes are counted with it, and which rule's counter moves. The
//! differential tests run random and hostile frames through the real
//! program (BPF_PROG_TEST_RUN) and compare every outcome with this model.
//!
//! Parsing, as documented:
//! - Ethernet, then up to [`MAX_VLAN`] stacked tags (TPID 0x8100 or 0x88a8,
//!   in any order, any VID). A tag cut short, or a frame shorter than an
//!   Ethernet header, is `unparsed`. A frame that still has a tag after
//!   [`MAX_VLAN`] of them has addresses out of reach: while a rule could
//!   drop a packet (any deny rule, or any limit rule) it is dropped and
//!   counted as `too_many_tags`; otherwise it is passed as `unparsed`.
//! - An EtherType other than IPv4 or IPv6 (after the tags) is `non_ip`.
//! - IPv4: the header must be there (20 bytes), version 4, IHL >= 5, the
//!   whole IHL inside the frame, and a total length of at least the header;
//!   otherwise `unparsed`. A non-zero fragment offset is a non-first
//!   fragment: note `fragment`, no transport header.
//! - IPv6: 40 bytes and version 6, otherwise `unparsed`. Then a walk of up
//!   to [`MAX_IPV6_EXT`] extension headers (hop-by-hop, routing, destination
//!   options: (len + 1) * 8 bytes; AH: (len + 2) * 4 bytes; fragment: 8
//!   bytes, and a non-zero offset ends the walk with note `fragment`). An
//!   extension header cut short, or one more than the bound, is note
//!   `l4_unparsed`; the addresses are valid all the same.
//! - The transport header: TCP needs 20 bytes and UDP 8 from its start to
//!   the end of the frame, or note `l4_unparsed`; other protocols need
//!   nothing (not even a start inside the frame). Length fields beyond those above (IPv4 total length above
//!   the header, IPv6 payload length) are not consulted.
//!
//! Verdicts of a parsed packet: an allow rule matching the source, then one
//! matching the destination, passes it (`allow`); else a deny rule matching
//! the source, then the destination, drops it (`deny`); else `pass` (the
//! model's limit rules never drop). Within one table the longest matching
//! prefix is the rule that is counted. The frame length is what every
//! counter adds as bytes.

use std::net::IpAddr;

use sluice_abi::stat;

pub use sluice_abi::{MAX_IPV6_EXT, MAX_VLAN};

const ETH_HLEN: usize = 14;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

const HOPOPTS: u8 = 0;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
const DSTOPTS: u8 = 60;

/// What the parser makes of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// L2/L3 header cut short or malformed.
    Unparsed,
    /// Neither IPv4 nor IPv6.
    NonIp,
    /// A tag still follows [`MAX_VLAN`] of them.
    TooManyTags,
    /// Addresses known.
    Ip {
        src: IpAddr,
        dst: IpAddr,
        /// A non-first fragment.
        fragment: bool,
        /// The transport header is out of reach.
        l4_unparsed: bool,
    },
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Parses a frame as the documentation describes.
pub fn parse(f: &[u8]) -> Parsed {
    if f.len() < ETH_HLEN {
        return Parsed::Unparsed;
    }
    // `at` is the offset of the EtherType (or TPID) being looked at.
    let mut at = 12;
    let mut tags = 0;
    let mut ethertype = be16(f, at);
    while ethertype == TPID_8021Q || ethertype == TPID_8021AD {
        if tags == MAX_VLAN {
            return Parsed::TooManyTags;
        }
        // The tag's TCI and the EtherType after it.
        if at + 6 > f.len() {
            return Parsed::Unparsed;
        }
        at += 4;
        tags += 1;
        ethertype = be16(f, at);
    }
    let l3 = at + 2;
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(f, l3),
        ETHERTYPE_IPV6 => ipv6(f, l3),
        _ => Parsed::NonIp,
    }
}

/// Whether the transport header of `proto` starting at `at` is out of
/// reach. Only TCP and UDP headers are read; any other protocol needs
/// nothing, even where the header before it claims to run past the frame.
fn l4_cut(f: &[u8], at: usize, proto: u8) -> bool {
    match proto {
        TCP => at + 20 > f.len(),
        UDP => at + 8 > f.len(),
        _ => false,
    }
}

fn ipv4(f: &[u8], l3: usize) -> Parsed {
    if l3 + 20 > f.len() {
        return Parsed::Unparsed;
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let total = be16(f, l3 + 2) as usize;
    if f[l3] >> 4 != 4 || ihl < 20 || l3 + ihl > f.len() || total < ihl {
        return Parsed::Unparsed;
    }
    let mut a = [0u8; 4];
    a.copy_from_slice(&f[l3 + 12..l3 + 16]);
    let src = IpAddr::from(a);
    a.copy_from_slice(&f[l3 + 16..l3 + 20]);
    let dst = IpAddr::from(a);
    let fragment = be16(f, l3 + 6) & 0x1fff != 0;
    let l4_unparsed = !fragment && l4_cut(f, l3 + ihl, f[l3 + 9]);
    Parsed::Ip {
        src,
        dst,
        fragment,
        l4_unparsed,
    }
}

fn ipv6(f: &[u8], l3: usize) -> Parsed {
    if l3 + 40 > f.len() || f[l3] >> 4 != 6 {
        return Parsed::Unparsed;
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&f[l3 + 8..l3 + 24]);
    let src = IpAddr::from(a);
    a.copy_from_slice(&f[l3 + 24..l3 + 40]);
    let dst = IpAddr::from(a);
    let ip = |fragment, l4_unparsed| Parsed::Ip {
        src,
        dst,
        fragment,
        l4_unparsed,
    };
    let mut next = f[l3 + 6];
    let mut at = l3 + 40;
    let mut walked = 0;
    loop {
        let ext = matches!(next, HOPOPTS | ROUTING | DSTOPTS | AH | FRAGMENT);
        if !ext {
            return ip(false, l4_cut(f, at, next));
        }
        if walked == MAX_IPV6_EXT {
            return ip(false, true);
        }
        walked += 1;
        if next == FRAGMENT {
            if at + 8 > f.len() {
                return ip(false, true);
            }
            if be16(f, at + 2) & 0xfff8 != 0 {
                return ip(true, false);
            }
            next = f[at];
            at += 8;
        } else {
            if at + 2 > f.len() {
                return ip(false, true);
            }
            let len = f[at + 1] as usize;
            let size = if next == AH { (len + 2) * 4 } else { (len + 1) * 8 };
            next = f[at];
            at += size;
        }
    }
}

/// One firewall rule: `deny` or allow, matching the source or (`dst`) the
/// destination address against `addr/prefix` (host bits zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub deny: bool,
    pub dst: bool,
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Rule {
    /// Whether `a` is inside this rule's prefix (same family only).
    pub fn contains(&self, a: IpAddr) -> bool {
        fn within(a: &[u8], n: &[u8], bits: u8) -> bool {
            let (bytes, rest) = ((bits / 8) as usize, bits % 8);
            if a[..bytes] != n[..bytes] {
                return false;
            }
            rest == 0 || (a[bytes] ^ n[bytes]) >> (8 - rest) == 0
        }
        match (a, self.addr) {
            (IpAddr::V4(a), IpAddr::V4(n)) => within(&a.octets(), &n.octets(), self.prefix),
            (IpAddr::V6(a), IpAddr::V6(n)) => within(&a.octets(), &n.octets(), self.prefix),
            _ => false,
        }
    }

    /// The CIDR as the CLI takes it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = if self.deny { "deny" } else { "allow" };
        let dir = if self.dst { "dst" } else { "src" };
        write!(f, "{action} {dir} {}", self.cidr())
    }
}

/// The rules in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub rules: Vec<Rule>,
    /// Whether any limit rule is in force. The model's limit rules never
    /// drop (their rate is far above any test), so they matter only to a
    /// frame with too many tags.
    pub limits: bool,
}

impl Rules {
    /// Whether any rule could drop a packet: a deny rule or a limit rule.
    pub fn may_drop(&self) -> bool {
        self.limits || self.rules.iter().any(|r| r.deny)
    }

    /// The longest-prefix rule of one table that contains `a`.
    fn lookup(&self, deny: bool, dst: bool, a: IpAddr) -> Option<usize> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.deny == deny && r.dst == dst && r.contains(a))
            .max_by_key(|(_, r)| r.prefix)
            .map(|(i, _)| i)
    }
}

/// What the program does with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// XDP_DROP (else XDP_PASS).
    pub drop: bool,
    /// The verdict counter (a `sluice_abi::stat` index).
    pub verdict: u32,
    /// Note counters counted too (`stat::FRAGMENT`, `stat::L4_UNPARSED`).
    pub notes: Vec<u32>,
    /// Index in [`Rules::rules`] of the rule whose counter moves.
    pub rule: Option<usize>,
}

impl Outcome {
    fn new(drop: bool, verdict: u32) -> Self {
        Outcome {
            drop,
            verdict,
            notes: Vec::new(),
            rule: None,
        }
    }
}

/// The outcome of `frame` under `rules`.
pub fn judge(rules: &Rules, frame: &[u8]) -> Outcome {
    let (src, dst, fragment, l4_unparsed) = match parse(frame) {
        Parsed::Unparsed => return Outcome::new(false, stat::UNPARSED),
        Parsed::NonIp => return Outcome::new(false, stat::NON_IP),
        Parsed::TooManyTags if rules.may_drop() => return Outcome::new(true, stat::TOO_MANY_TAGS),
        Parsed::TooManyTags => return Outcome::new(false, stat::UNPARSED),
        Parsed::Ip {
            src,
            dst,
            fragment,
            l4_unparsed,
        } => (src, dst, fragment, l4_unparsed),
    };
    let mut notes = Vec::new();
    if fragment {
        notes.push(stat::FRAGMENT);
    }
    if l4_unparsed {
        notes.push(stat::L4_UNPARSED);
    }
    let order = [
        (false, false, src),
        (false, true, dst),
        (true, false, src),
        (true, true, dst),
    ];
    for (deny, on_dst, a) in order {
        if let Some(i) = rules.lookup(deny, on_dst, a) {
            let verdict = if deny { stat::DENY } else { stat::ALLOW };
            return Outcome {
                drop: deny,
                verdict,
                notes,
                rule: Some(i),
            };
        }
    }
    Outcome {
        drop: false,
        verdict: stat::PASS,
        notes,
        rule: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{insert_tags, Packet, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(deny: bool, dst: bool, cidr: &str) -> Rule {
        let (a, p) = cidr.split_once('/').unwrap();
        Rule {
            deny,
            dst,
            addr: ip(a),
            prefix: p.parse().unwrap(),
        }
    }

    fn tcp(src: &str, dst: &str) -> Vec<u8> {
        Packet::tcp(ip(src), ip(dst), 1, 2).build()
    }

    #[test]
    fn tags_up_to_the_bound_reach_the_ip_header() {
        let plain = tcp("10.0.0.1", "10.0.0.2");
        for n in 0..=MAX_VLAN {
            let tags: Vec<(u16, u16)> = (0..n)
                .map(|i| (if i % 2 == 0 { TPID_8021AD } else { TPID_8021Q }, i as u16))
                .collect();
            let f = insert_tags(&plain, &tags);
            assert!(matches!(parse(&f), Parsed::Ip { l4_unparsed: false, .. }), "{n} tags");
            // Every cut inside the tag stack is unparsed.
            for len in 14..12 + 4 * n + 2 {
                assert_eq!(parse(&f[..len]), Parsed::Unparsed, "{n} tags cut at {len}");
            }
        }
        let deep = insert_tags(&plain, &[(TPID_8021Q, 0); MAX_VLAN + 1]);
        assert_eq!(parse(&deep), Parsed::TooManyTags);
        // Too deep even if the extra tag itself is cut short.
        assert_eq!(parse(&deep[..12 + 4 * MAX_VLAN + 2]), Parsed::TooManyTags);
        // 0x9100 is no tag to the kernel, nor to the parser.
        assert_eq!(parse(&insert_tags(&plain, &[(0x9100, 0)])), Parsed::NonIp);
    }

    #[test]
    fn too_many_tags_are_dropped_only_while_a_rule_could_drop() {
        let deep = insert_tags(&tcp("10.0.0.1", "10.0.0.2"), &[(TPID_8021AD, 0); MAX_VLAN + 3]);
        let mut rules = Rules::default();
        assert_eq!(judge(&rules, &deep), Outcome::new(false, stat::UNPARSED));
        rules.rules.push(rule(false, false, "10.0.0.0/8"));
        assert_eq!(judge(&rules, &deep), Outcome::new(false, stat::UNPARSED), "allow only");
        rules.limits = true;
        assert_eq!(judge(&rules, &deep), Outcome::new(true, stat::TOO_MANY_TAGS));
        rules.limits = false;
        rules.rules.push(rule(true, true, "2001:db8::/32"));
        assert_eq!(judge(&rules, &deep), Outcome::new(true, stat::TOO_MANY_TAGS));
    }

    #[test]
    fn allow_wins_and_the_longest_prefix_is_counted() {
        let rules = Rules {
            rules: vec![
                rule(true, false, "10.0.0.0/8"),
                rule(true, false, "10.1.0.0/16"),
                rule(false, true, "10.9.9.9/32"),
                rule(true, true, "2001:db8::/32"),
            ],
            limits: false,
        };
        let o = judge(&rules, &tcp("10.1.2.3", "10.2.2.2"));
        assert_eq!((o.drop, o.verdict, o.rule), (true, stat::DENY, Some(1)));
        let o = judge(&rules, &tcp("10.2.2.3", "10.2.2.2"));
        assert_eq!((o.drop, o.verdict, o.rule), (true, stat::DENY, Some(0)));
        let o = judge(&rules, &tcp("10.1.2.3", "10.9.9.9"));
        assert_eq!((o.drop, o.verdict, o.rule), (false, stat::ALLOW, Some(2)));
        let o = judge(&rules, &tcp("2001:db8::1", "2001:db9::1"));
        assert_eq!((o.drop, o.verdict, o.rule), (false, stat::PASS, None));
        let o = judge(&rules, &tcp("2001:db9::1", "2001:db8::1"));
        assert_eq!((o.drop, o.verdict, o.rule), (true, stat::DENY, Some(3)));
        // A prefix of a non-byte length.
        assert!(rule(true, false, "10.0.0.0/9").contains(ip("10.127.0.1")));
        assert!(!rule(true, false, "10.0.0.0/9").contains(ip("10.128.0.1")));
        assert!(rule(true, false, "0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!rule(true, false, "0.0.0.0/0").contains(ip("::1")));
    }

    #[test]
    fn ipv4_header_checks_and_fragments() {
        let good = tcp("10.0.0.1", "10.0.0.2");
        let mut bad = good.clone();
        bad[14] = 0x44; // IHL 4
        assert_eq!(parse(&bad), Parsed::Unparsed);
        let mut bad = good.clone();
        bad[16..18].copy_from_slice(&19u16.to_be_bytes()); // total < header
        assert_eq!(parse(&bad), Parsed::Unparsed);
        let mut long = good.clone();
        long[16..18].copy_from_slice(&9000u16.to_be_bytes()); // total > frame: still parsed
        assert!(matches!(parse(&long), Parsed::Ip { l4_unparsed: false, .. }));
        assert!(matches!(
            parse(&good[..14 + 20 + 19]),
            Parsed::Ip { l4_unparsed: true, .. }
        ));
        let frag = Packet::tcp(ip("10.0.0.1"), ip("10.0.0.2"), 1, 2)
            .with_frag_offset(3)
            .build();
        let o = judge(&Rules::default(), &frag);
        assert_eq!((o.verdict, o.notes), (stat::PASS, vec![stat::FRAGMENT]));
    }

    #[test]
    fn ipv6_walk_takes_exactly_the_bound() {
        let chain = |n: usize| {
            Packet::tcp(ip("2001:db8::1"), ip("2001:db8::2"), 1, 2)
                .with_ipv6_ext(&vec![IPPROTO_DSTOPTS; n])
                .build()
        };
        let l4 = |f: &[u8]| match parse(f) {
            Parsed::Ip { l4_unparsed, .. } => !l4_unparsed,
            p => panic!("{p:?}"),
        };
        assert!(l4(&chain(MAX_IPV6_EXT)), "{MAX_IPV6_EXT} headers are walked");
        assert!(!l4(&chain(MAX_IPV6_EXT + 1)), "one more is beyond the bound");
        // A non-first fragment ends the walk as a fragment.
        let frag = Packet::udp(ip("2001:db8::1"), ip("2001:db8::2"), 1, 2)
            .with_ipv6_ext(&[IPPROTO_DSTOPTS, IPPROTO_FRAGMENT])
            .with_frag_offset(9)
            .build();
        let o = judge(&Rules::default(), &frag);
        assert_eq!(o.notes, vec![stat::FRAGMENT]);
        // An AH header claiming far more bytes than the frame has, then a
        // protocol whose header is never read: nothing is out of reach.
        let mut f = Packet::udp(ip("2001:db8::1"), ip("2001:db8::2"), 1, 2).build();
        f[14 + 6] = AH;
        f.truncate(14 + 40);
        f.extend_from_slice(&[132, 200, 0, 0]);
        assert!(matches!(parse(&f), Parsed::Ip { l4_unparsed: false, .. }));
        f[14 + 40] = TCP;
        assert!(matches!(parse(&f), Parsed::Ip { l4_unparsed: true, .. }));
    }
}
