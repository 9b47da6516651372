//! The reference packet model: builds Ethernet frames (optional 802.1Q/QinQ
//! tags, IPv4 with options and fragment offsets, IPv6 with extension headers
//! and fragment offsets, TCP/UDP/ICMP) byte by byte, with correct lengths and
//! checksums, so that the BPF programs can be tested on frames whose every
//! byte is known.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Transport layer of a crafted packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP echo request (ICMPv6 on IPv6).
    Echo,
}

/// A packet description; [`Packet::build`] turns it into a frame.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// VLAN ids, outermost first; two tags make a QinQ (802.1ad outer) frame.
    pub vlans: Vec<u16>,
    /// IPv4 options (padded to a multiple of 4 bytes by the builder).
    pub ipv4_options: Vec<u8>,
    /// Fragment offset in 8-byte units: the IPv4 header's field, or on IPv6
    /// the offset of the FRAGMENT extension header (which must then be in
    /// `ipv6_ext`). Non-zero makes a non-first fragment: no L4 header is
    /// written, only the payload (and on IPv6 nothing after the fragment
    /// header, since the headers behind it belong to the first fragment).
    pub frag_offset: u16,
    /// IPv6 extension headers to insert, by protocol number
    /// (HOPOPTS, ROUTING, DSTOPTS: 8 bytes each; FRAGMENT: 8 bytes).
    pub ipv6_ext: Vec<u8>,
}

impl Packet {
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags: 0x02,
            },
        )
    }

    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self::new(src, dst, L4::Udp { sport, dport })
    }

    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed address families");
        Packet {
            src,
            dst,
            l4,
            payload: Vec::new(),
            vlans: Vec::new(),
            ipv4_options: Vec::new(),
            frag_offset: 0,
            ipv6_ext: Vec::new(),
        }
    }

    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn with_vlans(mut self, vlans: &[u16]) -> Self {
        self.vlans = vlans.to_vec();
        self
    }

    pub fn with_ipv4_options(mut self, opts: &[u8]) -> Self {
        self.ipv4_options = opts.to_vec();
        self
    }

    pub fn with_frag_offset(mut self, units: u16) -> Self {
        self.frag_offset = units;
        self
    }

    pub fn with_ipv6_ext(mut self, ext: &[u8]) -> Self {
        self.ipv6_ext = ext.to_vec();
        self
    }

    /// Serialises the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
        let ethertype = if self.src.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 };
        for (i, vid) in self.vlans.iter().enumerate() {
            let tpid = if i == 0 && self.vlans.len() > 1 {
                ETH_P_8021AD
            } else {
                ETH_P_8021Q
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(&mut f, s.octets(), d.octets()),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(&mut f, s.octets(), d.octets()),
            _ => unreachable!("checked in new"),
        }
        f
    }

    fn l4_proto(&self) -> u8 {
        match (&self.l4, self.src.is_ipv4()) {
            (L4::Tcp { .. }, _) => IPPROTO_TCP,
            (L4::Udp { .. }, _) => IPPROTO_UDP,
            (L4::Echo, true) => IPPROTO_ICMP,
            (L4::Echo, false) => IPPROTO_ICMPV6,
        }
    }

    /// Transport header + payload, with the checksum filled in.
    fn l4_bytes(&self, pseudo: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        let csum_at = match self.l4 {
            L4::Tcp { sport, dport, flags } => {
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&1u32.to_be_bytes()); // seq
                s.extend_from_slice(&0u32.to_be_bytes()); // ack
                s.extend_from_slice(&[5 << 4, flags]);
                s.extend_from_slice(&64240u16.to_be_bytes()); // window
                s.extend_from_slice(&[0, 0, 0, 0]); // csum, urg
                16
            }
            L4::Udp { sport, dport } => {
                s.extend_from_slice(&sport.to_be_bytes());
                s.extend_from_slice(&dport.to_be_bytes());
                s.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                s.extend_from_slice(&[0, 0]);
                6
            }
            L4::Echo => {
                let ty = if self.src.is_ipv4() { 8 } else { 128 };
                s.extend_from_slice(&[ty, 0, 0, 0, 0x12, 0x34, 0, 1]);
                2
            }
        };
        s.extend_from_slice(&self.payload);
        let use_pseudo = !matches!((&self.l4, self.src.is_ipv4()), (L4::Echo, true));
        let mut sum = if use_pseudo { sum16(pseudo, 0) } else { 0 };
        sum = sum16(&s, sum);
        let mut c = fold(sum);
        if c == 0 && matches!(self.l4, L4::Udp { .. }) {
            c = 0xffff;
        }
        s[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        s
    }

    fn ipv4(&self, f: &mut Vec<u8>, src: [u8; 4], dst: [u8; 4]) {
        let mut opts = self.ipv4_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0); // End of options list
        }
        let hlen = 20 + opts.len();
        let proto = self.l4_proto();
        let body = if self.frag_offset != 0 {
            self.payload.clone()
        } else {
            let l4_len = self.l4_len();
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
            self.l4_bytes(&pseudo)
        };
        let mut h = Vec::with_capacity(hlen);
        h.push(0x40 | (hlen / 4) as u8);
        h.push(0);
        h.extend_from_slice(&((hlen + body.len()) as u16).to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes()); // id
        h.extend_from_slice(&(self.frag_offset & 0x1fff).to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(&opts);
        let c = fold(sum16(&h, 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(&body);
    }

    fn l4_len(&self) -> usize {
        let hdr = match self.l4 {
            L4::Tcp { .. } => 20,
            L4::Udp { .. } | L4::Echo => 8,
        };
        hdr + self.payload.len()
    }

    fn ipv6(&self, f: &mut Vec<u8>, src: [u8; 16], dst: [u8; 16]) {
        let proto = self.l4_proto();
        // A non-first fragment ends right after its fragment header.
        let written = if self.frag_offset != 0 {
            let at = self.ipv6_ext.iter().position(|&k| k == IPPROTO_FRAGMENT);
            1 + at.expect("a non-zero IPv6 fragment offset needs a FRAGMENT header in ipv6_ext")
        } else {
            self.ipv6_ext.len()
        };
        let l4 = if self.frag_offset != 0 {
            self.payload.clone()
        } else {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&(self.l4_len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            self.l4_bytes(&pseudo)
        };

        let mut ext = Vec::new();
        for (i, &kind) in self.ipv6_ext.iter().enumerate().take(written) {
            let next = self.ipv6_ext.get(i + 1).copied().unwrap_or(proto);
            match kind {
                IPPROTO_FRAGMENT => {
                    // Offset in the upper 13 bits, M (more fragments) clear: the
                    // last fragment, like the IPv4 builder; identification 1.
                    let off = (self.frag_offset & 0x1fff) << 3;
                    ext.extend_from_slice(&[next, 0]);
                    ext.extend_from_slice(&off.to_be_bytes());
                    ext.extend_from_slice(&1u32.to_be_bytes());
                }
                // 8-byte options header: next, hdrlen 0, PadN of 4 bytes.
                _ => ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
            }
        }
        let first = self.ipv6_ext.first().copied().unwrap_or(proto);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[first, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&ext);
        f.extend_from_slice(&l4);
    }
}

/// `frame` with VLAN tags inserted after its MAC addresses, outermost first:
/// each `(tpid, tci)` pair becomes a 4-byte tag (any TPID, any PCP/DEI/VID,
/// for hostile stacks the builder's `vlans` cannot express).
pub fn insert_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    assert!(frame.len() >= 12, "a frame starts with two MAC addresses");
    let mut f = Vec::with_capacity(frame.len() + 4 * tags.len());
    f.extend_from_slice(&frame[..12]);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// An ARP request frame (not IP: the firewall passes it as `non_ip`).
pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0; 20]);
    f
}

/// One's-complement sum of big-endian 16-bit words, added to `acc`.
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

/// Folds a running sum into the final Internet checksum.
pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_tcp_frame_has_valid_checksums_and_lengths() {
        let f = Packet::tcp(v4("198.18.1.2"), v4("198.18.2.2"), 1234, 80).build();
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &ETH_P_IP.to_be_bytes());
        // IPv4 header checksum verifies to zero.
        assert_eq!(fold(sum16(&f[14..34], 0)), 0);
        // TCP checksum verifies with the pseudo header.
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(fold(sum16(&f[34..], sum16(&pseudo, 0))), 0);
    }

    #[test]
    fn vlan_tags_and_options_shift_the_ip_header() {
        let f = Packet::udp(v4("1.2.3.4"), v4("5.6.7.8"), 1, 2)
            .with_vlans(&[10, 20])
            .with_ipv4_options(&[1, 1, 1])
            .build();
        assert_eq!(&f[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&f[16..18], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&f[20..22], &ETH_P_IP.to_be_bytes());
        assert_eq!(f[22], 0x46); // IHL 6: 4 option bytes after padding
    }

    #[test]
    fn inserted_tags_come_between_the_macs_and_the_ethertype() {
        let plain = Packet::udp(v4("1.2.3.4"), v4("5.6.7.8"), 1, 2).build();
        let f = insert_tags(&plain, &[(ETH_P_8021AD, 0x2005), (ETH_P_8021Q, 0)]);
        assert_eq!(f.len(), plain.len() + 8);
        assert_eq!(&f[..12], &plain[..12]);
        assert_eq!(&f[12..20], &[0x88, 0xa8, 0x20, 0x05, 0x81, 0x00, 0, 0]);
        assert_eq!(&f[20..], &plain[12..]);
    }

    #[test]
    fn ipv6_extension_chain_links_next_headers() {
        let f = Packet::tcp(v4("::1"), v4("::2"), 1, 2)
            .with_ipv6_ext(&[IPPROTO_HOPOPTS, IPPROTO_DSTOPTS])
            .build();
        assert_eq!(f[14 + 6], IPPROTO_HOPOPTS);
        assert_eq!(f[54], IPPROTO_DSTOPTS);
        assert_eq!(f[62], IPPROTO_TCP);
        assert_eq!(f.len(), 14 + 40 + 16 + 20);
    }

    #[test]
    fn ipv6_non_first_fragment_ends_after_the_fragment_header() {
        let payload = [0xaa; 16];
        let f = Packet::udp(v4("::1"), v4("::2"), 1, 2)
            .with_ipv6_ext(&[IPPROTO_HOPOPTS, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS])
            .with_frag_offset(185)
            .with_payload(&payload)
            .build();
        // Hop-by-hop and fragment headers, then the payload: the destination
        // options and the UDP header travel in the first fragment.
        assert_eq!(f.len(), 14 + 40 + 8 + 8 + 16);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 8 + 8 + 16); // payload length
        assert_eq!(f[14 + 6], IPPROTO_HOPOPTS);
        assert_eq!(f[54], IPPROTO_FRAGMENT);
        let fh = 62;
        assert_eq!(f[fh], IPPROTO_DSTOPTS);
        assert_eq!(u16::from_be_bytes([f[fh + 2], f[fh + 3]]), 185 << 3);
        assert_eq!(&f[fh + 8..], &payload);
        // Offset 0 keeps the whole chain and the L4 header (an atomic fragment).
        let first = Packet::udp(v4("::1"), v4("::2"), 1, 2)
            .with_ipv6_ext(&[IPPROTO_FRAGMENT])
            .build();
        assert_eq!(first.len(), 14 + 40 + 8 + 8);
        assert_eq!(&first[54..62], &[IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    #[should_panic(expected = "FRAGMENT header")]
    fn ipv6_fragment_offset_without_a_fragment_header_is_refused() {
        Packet::udp(v4("::1"), v4("::2"), 1, 2).with_frag_offset(1).build();
    }

    #[test]
    fn non_first_fragment_carries_no_l4_header() {
        let f = Packet::tcp(v4("1.1.1.1"), v4("2.2.2.2"), 1, 2)
            .with_frag_offset(3)
            .with_payload(&[0xaa; 8])
            .build();
        assert_eq!(f.len(), 14 + 20 + 8);
        assert_eq!(u16::from_be_bytes([f[20], f[21]]) & 0x1fff, 3);
    }
}
