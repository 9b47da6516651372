//! Seeded random and hostile frames and rule sets for the differential
//! tests of the XDP program against [`crate::xdp_model`]. Everything comes
//! from one [`Rng`] seed, so a failure is replayed by its seed.
//!
//! Frames (see [`frame`]): valid IPv4 and IPv6 of every shape (TCP, UDP,
//! ICMP and other protocols; IPv4 options; fragments, first and not;
//! IPv6 extension chains of hop-by-hop, routing, destination options, AH
//! and fragment headers, around and beyond the walk's bound), behind 0 to
//! 12 VLAN tags of both TPIDs and any TCI (often just around the parser's
//! bound); then hostile edits: a cut at any length, IHL, version, total
//! length and fragment lies, wrong EtherTypes and TPIDs, extension-header
//! lengths pointing past the frame, random bytes; and pure garbage.
//! Addresses are drawn near a few anchors that the rule sets nest prefixes
//! around, so frames hit rules, their edges and near misses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    packet::{insert_tags, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
    xdp_model::{Rule, Rules, MAX_IPV6_EXT, MAX_VLAN},
};

/// SplitMix64: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

/// Anchor addresses that rules nest prefixes around and frames are drawn
/// near. IPv6 anchors avoid the IPv4-mapped range, which rules may not use.
#[derive(Clone, Debug)]
pub struct Universe {
    pub v4: Vec<[u8; 4]>,
    pub v6: Vec<[u8; 16]>,
}

impl Universe {
    pub fn new(rng: &mut Rng) -> Self {
        let v4 = (0..4)
            .map(|_| {
                let mut a = (rng.u64() as u32).to_be_bytes();
                a[0] = rng.pick(&[10, 172, 192, 198, 203]);
                a
            })
            .collect();
        let v6 = (0..4)
            .map(|_| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&rng.bytes(16));
                a[0] = rng.pick(&[0x20, 0xfd, 0x26]);
                a[1] = 0x01;
                a
            })
            .collect();
        Universe { v4, v6 }
    }
}

/// `a` with its last `bits` bits (of `a.len() * 8`) replaced at random.
fn noise(rng: &mut Rng, a: &mut [u8], bits: usize) {
    let total = a.len() * 8;
    for bit in total - bits.min(total)..total {
        if rng.chance(50) {
            a[bit / 8] ^= 0x80 >> (bit % 8);
        }
    }
}

/// `a` with every bit after the first `prefix` cleared.
fn network(a: &[u8], prefix: usize) -> Vec<u8> {
    a.iter()
        .enumerate()
        .map(|(i, b)| {
            let keep = prefix.saturating_sub(i * 8).min(8);
            if keep == 0 {
                0
            } else {
                b & (0xffu8 << (8 - keep))
            }
        })
        .collect()
}

fn addr(v6: bool, b: &[u8]) -> IpAddr {
    if v6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        IpAddr::V4(Ipv4Addr::from(a))
    }
}

/// A random rule set: 0 to 12 allow and deny rules on sources and
/// destinations of both families, nested around the anchors (a /0 now and
/// then), and sometimes a limit rule.
pub fn rules(rng: &mut Rng, u: &Universe) -> Rules {
    let mut out = Rules {
        rules: Vec::new(),
        limits: rng.chance(30),
    };
    let n = rng.range(0, 12);
    while out.rules.len() < n as usize {
        let v6 = rng.chance(50);
        let (anchor, prefix): (Vec<u8>, usize) = if v6 {
            let p = if rng.chance(70) {
                rng.pick(&[0, 16, 32, 48, 56, 64, 96, 112, 120, 127, 128])
            } else {
                rng.range(0, 128) as usize
            };
            (rng.pick(&u.v6).to_vec(), p)
        } else {
            let p = if rng.chance(70) {
                rng.pick(&[0, 8, 12, 16, 20, 24, 28, 30, 31, 32])
            } else {
                rng.range(0, 32) as usize
            };
            (rng.pick(&u.v4).to_vec(), p)
        };
        let r = Rule {
            deny: rng.chance(60),
            dst: rng.chance(40),
            addr: addr(v6, &network(&anchor, prefix)),
            prefix: prefix as u8,
        };
        if !out.rules.contains(&r) {
            out.rules.push(r);
        }
    }
    out
}

/// An address of the family: near an anchor (the last 0 to 16 bits for
/// IPv4, 0 to 72 for IPv6 replaced) or anywhere.
fn pick_addr(rng: &mut Rng, u: &Universe, v6: bool) -> Vec<u8> {
    let mut a = if v6 {
        rng.pick(&u.v6).to_vec()
    } else {
        rng.pick(&u.v4).to_vec()
    };
    if rng.chance(85) {
        let bits = if v6 { rng.range(0, 72) } else { rng.range(0, 16) };
        noise(rng, &mut a, bits as usize);
    } else {
        a = rng.bytes(a.len());
    }
    a
}

const EXT_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAG: u8 = 44;
const EXT_AH: u8 = 51;
const EXT_DST: u8 = 60;
const EXTS: [u8; 5] = [EXT_HOP, EXT_ROUTING, EXT_FRAG, EXT_AH, EXT_DST];

/// A transport protocol and its header (random contents) plus payload.
fn transport(rng: &mut Rng, v6: bool) -> (u8, Vec<u8>) {
    let proto = match rng.below(10) {
        0..=3 => 6,
        4..=6 => 17,
        7 => {
            if v6 {
                58
            } else {
                1
            }
        }
        _ => rng.pick(&[0u8, 2, 47, 50, 59, 132, 255, EXT_FRAG, EXT_AH]),
    };
    let hdr = match proto {
        6 => 20,
        17 | 1 | 58 => 8,
        _ => rng.range(0, 8) as usize,
    };
    let payload = rng.range(0, 24) as usize;
    (proto, rng.bytes(hdr + payload))
}

/// A fragment offset in 8-byte units: mostly 0 (a first or whole packet),
/// else any.
fn frag_offset(rng: &mut Rng) -> u16 {
    if rng.chance(70) {
        0
    } else {
        rng.range(1, 0x1fff) as u16
    }
}

/// A valid IPv4 packet (no Ethernet header).
fn ipv4(rng: &mut Rng, u: &Universe) -> Vec<u8> {
    let opts = if rng.chance(30) {
        4 * rng.range(1, 10) as usize
    } else {
        0
    };
    let (proto, l4) = transport(rng, false);
    let hlen = 20 + opts;
    let frag = frag_offset(rng);
    // More fragments, don't fragment.
    let flags: u16 = if rng.chance(20) { 0x2000 } else { 0 } | if rng.chance(20) { 0x4000 } else { 0 };
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&rng.bytes(2));
    h.extend_from_slice(&(flags | frag).to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&pick_addr(rng, u, false));
    h.extend_from_slice(&pick_addr(rng, u, false));
    h.extend_from_slice(&rng.bytes(opts));
    h.extend_from_slice(&l4);
    h
}

/// How many IPv6 extension headers: often around the walk's bound.
fn chain_len(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 => 0,
        1 => rng.range(1, 3) as usize,
        2 => rng.range(MAX_IPV6_EXT as u64 - 2, MAX_IPV6_EXT as u64 + 2) as usize,
        _ => rng.range(0, MAX_IPV6_EXT as u64 + 4) as usize,
    }
}

/// A valid IPv6 packet (no Ethernet header) and the offsets of its
/// extension headers in it.
fn ipv6(rng: &mut Rng, u: &Universe) -> (Vec<u8>, Vec<usize>) {
    let kinds: Vec<u8> = (0..chain_len(rng)).map(|_| rng.pick(&EXTS)).collect();
    let (proto, l4) = transport(rng, true);
    let mut ext = Vec::new();
    let mut at = Vec::new();
    for (i, &k) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(proto);
        at.push(40 + ext.len());
        match k {
            EXT_FRAG => {
                ext.extend_from_slice(&[next, 0]);
                let more = rng.chance(30) as u16;
                ext.extend_from_slice(&(frag_offset(rng) << 3 | more).to_be_bytes());
                ext.extend_from_slice(&rng.bytes(4));
            }
            EXT_AH => {
                let len = rng.range(1, 4) as usize; // (len + 2) * 4 bytes
                ext.extend_from_slice(&[next, len as u8]);
                ext.extend_from_slice(&rng.bytes((len + 2) * 4 - 2));
            }
            _ => {
                let len = rng.range(0, 2) as usize; // (len + 1) * 8 bytes
                ext.extend_from_slice(&[next, len as u8]);
                ext.extend_from_slice(&rng.bytes((len + 1) * 8 - 2));
            }
        }
    }
    let first = kinds.first().copied().unwrap_or(proto);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[first, 64]);
    h.extend_from_slice(&pick_addr(rng, u, true));
    h.extend_from_slice(&pick_addr(rng, u, true));
    h.extend_from_slice(&ext);
    h.extend_from_slice(&l4);
    (h, at)
}

/// How many VLAN tags: none half the time, else often around the bound.
fn tag_count(rng: &mut Rng) -> usize {
    match rng.below(8) {
        0..=3 => 0,
        4 => rng.range(1, 2) as usize,
        5 | 6 => rng.range(MAX_VLAN as u64 - 1, MAX_VLAN as u64 + 2) as usize,
        _ => rng.range(1, MAX_VLAN as u64 + 4) as usize,
    }
}

/// A TCI: priority-tagged (VID 0) or any VID, with any PCP and DEI.
fn tci(rng: &mut Rng) -> u16 {
    let vid = match rng.below(4) {
        0 | 1 => 0,
        2 => rng.pick(&[1, 2, 100, 4094, 4095]),
        _ => rng.below(4096) as u16,
    };
    let pcp_dei = if rng.chance(50) { 0 } else { rng.below(16) as u16 };
    pcp_dei << 12 | vid
}

/// EtherTypes worth lying with.
const ETHERTYPES: [u16; 8] = [
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_P_8021Q,
    ETH_P_8021AD,
    0x9100,
    ETH_P_ARP,
    0x88cc,
    0x0000,
];

/// One random frame: valid or hostile, see the module documentation.
pub fn frame(rng: &mut Rng, u: &Universe) -> Vec<u8> {
    if rng.chance(4) {
        // Garbage, sometimes with a plausible EtherType.
        let len = rng.range(14, 160) as usize;
        let mut f = rng.bytes(len);
        if rng.chance(60) {
            f[12..14].copy_from_slice(&rng.pick(&ETHERTYPES).to_be_bytes());
        }
        return f;
    }
    let v6 = rng.chance(50);
    let (l3, exts) = if v6 { ipv6(rng, u) } else { (ipv4(rng, u), Vec::new()) };
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&(if v6 { ETH_P_IPV6 } else { ETH_P_IP }).to_be_bytes());
    f.extend_from_slice(&l3);
    let tags: Vec<(u16, u16)> = (0..tag_count(rng))
        .map(|_| {
            let tpid = if rng.chance(97) {
                rng.pick(&[ETH_P_8021Q, ETH_P_8021AD])
            } else {
                rng.pick(&[0x9100, ETH_P_IP, ETH_P_IPV6])
            };
            (tpid, tci(rng))
        })
        .collect();
    let mut f = insert_tags(&f, &tags);
    let l3 = 14 + 4 * tags.len();
    if rng.chance(35) {
        for _ in 0..rng.range(1, 3) {
            mutate(rng, &mut f, l3, v6, &exts);
        }
    }
    if rng.chance(15) {
        f.truncate(rng.range(14, f.len() as u64) as usize);
    }
    f
}

/// One hostile edit of a frame whose IP header starts at `l3`.
fn mutate(rng: &mut Rng, f: &mut [u8], l3: usize, v6: bool, exts: &[usize]) {
    let len = f.len();
    let mut set = |at: usize, v: &[u8]| {
        if at + v.len() <= f.len() {
            f[at..at + v.len()].copy_from_slice(v);
        }
    };
    match rng.below(9) {
        // The EtherType (or TPID) in front of the IP header.
        0 => set(l3 - 2, &rng.pick(&ETHERTYPES).to_be_bytes()),
        // Version and IHL.
        1 => set(l3, &[rng.u64() as u8]),
        2 => set(l3, &[(if v6 { 0x60 } else { 0x40 }) | rng.below(16) as u8]),
        // IPv4 total length / IPv6 payload length.
        3 => {
            let v = if rng.chance(50) {
                rng.below(64) as u16
            } else {
                rng.u64() as u16
            };
            set(l3 + 2, &v.to_be_bytes())
        }
        // IPv4 flags and fragment offset / IPv6 first next header.
        4 => {
            if v6 {
                set(
                    l3 + 6,
                    &[rng.pick(&[EXT_HOP, EXT_ROUTING, EXT_FRAG, EXT_AH, EXT_DST, 6, 17, 58, 59])],
                )
            } else {
                set(l3 + 6, &(rng.u64() as u16).to_be_bytes())
            }
        }
        // An extension header's next header or length, or a fragment
        // header's offset.
        5 if !exts.is_empty() => {
            let at = l3 + rng.pick(exts);
            match rng.below(3) {
                0 => set(at, &[rng.pick(&EXTS)]),
                1 => set(at + 1, &[rng.u64() as u8]),
                _ => set(at + 2, &(rng.u64() as u16).to_be_bytes()),
            }
        }
        // A TPID in the tag stack.
        6 if l3 > 14 => {
            let tag = rng.below(((l3 - 14) / 4) as u64) as usize;
            set(12 + 4 * tag, &rng.pick(&ETHERTYPES).to_be_bytes())
        }
        // Any byte of the headers.
        _ => {
            let at = rng.below(len.min(l3 + 80) as u64) as usize;
            set(at, &[rng.u64() as u8])
        }
    }
}

/// Lower-case hex of a frame, for failure reports.
pub fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp_model::{parse, Parsed};

    #[test]
    fn the_same_seed_gives_the_same_frames() {
        let gen = |seed| {
            let mut rng = Rng::new(seed);
            let u = Universe::new(&mut rng);
            (0..50).map(|_| frame(&mut rng, &u)).collect::<Vec<_>>()
        };
        assert_eq!(gen(7), gen(7));
        assert_ne!(gen(7), gen(8));
    }

    #[test]
    fn frames_cover_every_parse_outcome_and_rules_are_valid() {
        let mut rng = Rng::new(1);
        let u = Universe::new(&mut rng);
        let mut seen = [0usize; 6];
        for _ in 0..20_000 {
            let f = frame(&mut rng, &u);
            assert!(f.len() >= 14);
            let i = match parse(&f) {
                Parsed::Unparsed => 0,
                Parsed::NonIp => 1,
                Parsed::TooManyTags => 2,
                Parsed::Ip { fragment: true, .. } => 3,
                Parsed::Ip { l4_unparsed: true, .. } => 4,
                Parsed::Ip { .. } => 5,
            };
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&n| n > 200), "{seen:?}");
        for _ in 0..200 {
            let rs = rules(&mut rng, &u);
            for r in &rs.rules {
                assert_eq!(network(&ip_bytes(r.addr), r.prefix as usize), ip_bytes(r.addr), "{r}");
                if let IpAddr::V6(a) = r.addr {
                    assert!(a.to_ipv4_mapped().is_none(), "{r}");
                }
            }
        }
    }

    fn ip_bytes(a: IpAddr) -> Vec<u8> {
        match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}
