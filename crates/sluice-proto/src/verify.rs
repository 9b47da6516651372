//! An independent frame parser and checksum verifier, used to check the
//! frames a BPF program returns from `BPF_PROG_TEST_RUN` (e.g. after a TC
//! DNAT program rewrote addresses and ports). It shares no code with
//! [`crate::packet`]: the parser and the one's-complement sum are written
//! again here, so that a bug in the builder cannot hide the same bug in the
//! check. [`verify`] walks Ethernet (0-8 VLAN tags), IPv4 (with options) or
//! IPv6 (with hop-by-hop, routing, destination-options, fragment and AH
//! extension headers), then TCP, UDP, ICMP or ICMPv6, and checks every
//! length field and checksum it can.
//!
//! Checksum rules:
//! * The IPv4 header checksum and the TCP, UDP, ICMP and ICMPv6 checksums are
//!   checked the way a receiver does: the one's-complement sum over the
//!   covered bytes, the field included, must be `0xffff` (so `0x0000` and
//!   `0xffff` are both accepted where they are equivalent). A mismatch reports
//!   the field as found and the canonical value it should hold.
//! * UDP over IPv4 with checksum 0 carries no checksum and is accepted; UDP
//!   over IPv6 with checksum 0 is rejected ([`VerifyError::ZeroUdpChecksumIpv6`]).
//! * The TCP/UDP/ICMPv6 pseudo-header uses the IPv6 final destination (RFC 8200
//!   8.1): with a routing header of type 0, 2 (Mobile IPv6) or 4 (segment
//!   routing) whose segments-left is non-zero, that is the last address of the
//!   route (type 0: last address, type 2: the home address, type 4: segment
//!   list\[0\]); otherwise, and for other routing types, the IPv6 destination.
//! * Fragments: a non-first fragment (offset != 0) has no L4 header, so its
//!   ports, L4 checksum and payload are `None`/empty and nothing above IP is
//!   checked. A first fragment (offset 0, more-fragments set) has its L4
//!   header parsed, but its L4 checksum covers the whole reassembled datagram
//!   and **cannot be verified from one fragment: it is skipped** (only the
//!   UDP/IPv6 zero-checksum rule still applies).
//!
//! Bytes that no checksum covers (MAC addresses, VLAN tags, IPv6 traffic
//! class/flow label/hop limit, extension-header contents) cannot be verified.
//! Trailing bytes beyond the IP length (Ethernet padding) are ignored.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;
const TPID_QINQ_LEGACY: u16 = 0x9100;
/// As many as the programs' parser follows (`SLUICE_MAX_VLAN`).
const MAX_VLAN_TAGS: usize = 8;

const NH_HOPOPTS: u8 = 0;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const PROTO_ICMPV6: u8 = 58;
const NH_DSTOPTS: u8 = 60;

/// What a frame carries, as parsed independently of packet.rs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// IP source address.
    pub src: IpAddr,
    /// IP destination address, as in the IP header (not a routing header's final destination).
    pub dst: IpAddr,
    /// Upper-layer protocol: 6 TCP, 17 UDP, else other (after IPv6 extension headers).
    pub proto: u8,
    /// Source port; `None` for non-first fragments and protocols without ports.
    pub sport: Option<u16>,
    /// Destination port; `None` for non-first fragments and protocols without ports.
    pub dport: Option<u16>,
    /// The TCP/UDP checksum field as found; `None` without a TCP/UDP header.
    pub l4_checksum: Option<u16>,
    /// The TCP/UDP payload (after the header and TCP options); empty without a TCP/UDP header.
    pub payload: Vec<u8>,
}

/// Why a frame failed [`verify`]. Byte counts in `Truncated` are relative to
/// the start of the enclosing layer (frame, IP packet or L4 segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The data ends before a header (or the length an IP header declares) does.
    Truncated {
        layer: &'static str,
        needed: usize,
        available: usize,
    },
    /// The EtherType after the VLAN tags is neither IPv4 nor IPv6.
    NotIp { ethertype: u16 },
    /// More than two VLAN tags.
    TooManyVlanTags,
    /// The IP version nibble does not match the EtherType.
    BadIpVersion { expected: u8, found: u8 },
    /// IPv4 IHL below 5.
    BadIpv4HeaderLength { ihl: u8 },
    /// The IPv4 header checksum does not verify; `expected` is the value the field should hold.
    BadIpv4HeaderChecksum { found: u16, expected: u16 },
    /// A length field disagrees with the bytes it describes.
    LengthMismatch {
        field: &'static str,
        declared: usize,
        actual: usize,
    },
    /// A malformed IPv6 extension header.
    BadExtensionHeader { next_header: u8, reason: &'static str },
    /// TCP data offset below 5.
    BadTcpDataOffset { data_offset: u8 },
    /// UDP over IPv6 with checksum 0 (RFC 8200 8.1: must be discarded).
    ZeroUdpChecksumIpv6,
    /// The TCP/UDP/ICMP/ICMPv6 checksum does not verify; `expected` is the value the field should hold.
    BadL4Checksum { found: u16, expected: u16 },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VerifyError::*;
        match self {
            Truncated {
                layer,
                needed,
                available,
            } => write!(f, "truncated {layer}: need {needed} bytes, have {available}"),
            NotIp { ethertype } => write!(f, "not IP: ethertype {ethertype:#06x}"),
            TooManyVlanTags => write!(f, "more than {MAX_VLAN_TAGS} VLAN tags"),
            BadIpVersion { expected, found } => write!(f, "bad IP version {found}, expected {expected}"),
            BadIpv4HeaderLength { ihl } => write!(f, "bad IPv4 header length (IHL {ihl})"),
            BadIpv4HeaderChecksum { found, expected } => {
                write!(f, "bad IPv4 header checksum {found:#06x}, expected {expected:#06x}")
            }
            LengthMismatch {
                field,
                declared,
                actual,
            } => write!(f, "length mismatch: {field} says {declared}, actual {actual}"),
            BadExtensionHeader { next_header, reason } => {
                write!(f, "bad IPv6 extension header {next_header}: {reason}")
            }
            BadTcpDataOffset { data_offset } => write!(f, "bad TCP data offset {data_offset}"),
            ZeroUdpChecksumIpv6 => write!(f, "UDP over IPv6 with checksum 0"),
            BadL4Checksum { found, expected } => write!(f, "bad L4 checksum {found:#06x}, expected {expected:#06x}"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Parses an Ethernet frame and verifies its lengths and checksums; see the
/// module documentation for the exact rules (notably: the L4 checksum of a
/// first fragment is not verified, non-first fragments have no L4 at all).
pub fn verify(frame: &[u8]) -> Result<Parsed, VerifyError> {
    take(frame, 0, 14, "ethernet header")?;
    let mut at = 12;
    let mut tags = 0;
    loop {
        let ethertype = be16(take(frame, at, 2, "ethertype")?, 0);
        match ethertype {
            TPID_8021Q | TPID_8021AD | TPID_QINQ_LEGACY => {
                if tags == MAX_VLAN_TAGS {
                    return Err(VerifyError::TooManyVlanTags);
                }
                take(frame, at, 6, "vlan tag")?;
                tags += 1;
                at += 4;
            }
            ETHERTYPE_IPV4 => return ipv4(&frame[at + 2..]),
            ETHERTYPE_IPV6 => return ipv6(&frame[at + 2..]),
            other => return Err(VerifyError::NotIp { ethertype: other }),
        }
    }
}

/// The one's-complement sum of RFC 1071, fed byte by byte so that pieces of
/// any length can be chained (a piece may end in the middle of a word).
#[derive(Clone, Copy, Debug, Default)]
struct OnesSum {
    acc: u64,
    /// The next byte is the low byte of a 16-bit word.
    odd: bool,
}

impl OnesSum {
    fn add(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.acc += if self.odd { u64::from(b) } else { u64::from(b) << 8 };
            self.odd = !self.odd;
        }
        self
    }

    /// Adds one aligned 16-bit word whatever the current byte position.
    fn add_word(mut self, word: u16) -> Self {
        self.acc += u64::from(word);
        self
    }

    /// The sum folded to 16 bits with end-around carry (not complemented).
    fn folded(self) -> u16 {
        let mut a = self.acc;
        while a > 0xffff {
            a = (a & 0xffff) + (a >> 16);
        }
        a as u16
    }
}

/// `sum_without_field` covers everything except the checksum field (or has
/// it as zero). Returns the canonical checksum when `found` does not verify.
fn check_sum(sum_without_field: OnesSum, found: u16) -> Result<(), u16> {
    if sum_without_field.add_word(found).folded() == 0xffff {
        Ok(())
    } else {
        Err(!sum_without_field.folded())
    }
}

/// Checks an L4 checksum at offset `at` of `seg`, over `pseudo` (may be empty) and `seg`.
fn check_l4(pseudo: &[u8], seg: &[u8], at: usize, udp: bool) -> Result<(), VerifyError> {
    let found = be16(seg, at);
    let sum = OnesSum::default()
        .add(pseudo)
        .add(&seg[..at])
        .add(&[0, 0])
        .add(&seg[at + 2..]);
    check_sum(sum, found).map_err(|expected| VerifyError::BadL4Checksum {
        found,
        // UDP transmits a computed 0 as 0xffff (0 means "no checksum").
        expected: if udp && expected == 0 { 0xffff } else { expected },
    })
}

fn take<'a>(buf: &'a [u8], start: usize, len: usize, layer: &'static str) -> Result<&'a [u8], VerifyError> {
    let end = start.saturating_add(len);
    buf.get(start..end).ok_or(VerifyError::Truncated {
        layer,
        needed: end,
        available: buf.len(),
    })
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr6(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    /// Not fragmented (or an atomic fragment): everything is checked.
    Whole,
    /// Offset 0, more fragments: L4 header present, checksum not verifiable.
    First,
    /// Offset != 0: no L4 header.
    Later,
}

#[derive(Default)]
struct L4Info {
    sport: Option<u16>,
    dport: Option<u16>,
    l4_checksum: Option<u16>,
    payload: Vec<u8>,
}

fn ipv4(pkt: &[u8]) -> Result<Parsed, VerifyError> {
    let base = take(pkt, 0, 20, "ipv4 header")?;
    let version = base[0] >> 4;
    if version != 4 {
        return Err(VerifyError::BadIpVersion {
            expected: 4,
            found: version,
        });
    }
    let ihl = base[0] & 0x0f;
    if ihl < 5 {
        return Err(VerifyError::BadIpv4HeaderLength { ihl });
    }
    let hlen = usize::from(ihl) * 4;
    let hdr = take(pkt, 0, hlen, "ipv4 options")?;
    let found = be16(hdr, 10);
    let sum = OnesSum::default().add(&hdr[..10]).add(&[0, 0]).add(&hdr[12..]);
    check_sum(sum, found).map_err(|expected| VerifyError::BadIpv4HeaderChecksum { found, expected })?;

    let total = usize::from(be16(hdr, 2));
    if total < hlen {
        return Err(VerifyError::LengthMismatch {
            field: "ipv4 total length",
            declared: total,
            actual: hlen,
        });
    }
    let ip = take(pkt, 0, total, "ipv4 packet")?;
    let flags_offset = be16(hdr, 6);
    let fragment = if flags_offset & 0x1fff != 0 {
        Fragment::Later
    } else if flags_offset & 0x2000 != 0 {
        Fragment::First
    } else {
        Fragment::Whole
    };
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    let proto = hdr[9];
    let seg = &ip[hlen..];

    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let l4 = transport(proto, seg, &pseudo, false, fragment)?;
    Ok(parsed(src.into(), dst.into(), proto, l4))
}

fn ipv6(pkt: &[u8]) -> Result<Parsed, VerifyError> {
    let hdr = take(pkt, 0, 40, "ipv6 header")?;
    let version = hdr[0] >> 4;
    if version != 6 {
        return Err(VerifyError::BadIpVersion {
            expected: 6,
            found: version,
        });
    }
    let ip = take(pkt, 0, 40 + usize::from(be16(hdr, 4)), "ipv6 packet")?;
    let src = addr6(&hdr[8..24]);
    let dst = addr6(&hdr[24..40]);
    let mut final_dst = dst;
    let mut next = hdr[6];
    let mut at = 40;
    let mut fragment = Fragment::Whole;
    loop {
        let len = match next {
            NH_HOPOPTS | NH_ROUTING | NH_DSTOPTS => (usize::from(take(ip, at, 2, "ipv6 extension header")?[1]) + 1) * 8,
            NH_FRAGMENT => 8,
            NH_AH => (usize::from(take(ip, at, 2, "ipv6 extension header")?[1]) + 2) * 4,
            _ => break,
        };
        if next == NH_HOPOPTS && at != 40 {
            return Err(VerifyError::BadExtensionHeader {
                next_header: next,
                reason: "hop-by-hop options header not first",
            });
        }
        let ext = take(ip, at, len, "ipv6 extension header")?;
        match next {
            NH_ROUTING => final_dst = routing_final_destination(ext, final_dst)?,
            NH_FRAGMENT => {
                let offset_flags = be16(ext, 2);
                if offset_flags >> 3 != 0 {
                    fragment = Fragment::Later;
                } else if offset_flags & 1 != 0 {
                    fragment = Fragment::First;
                }
            }
            _ => {}
        }
        next = ext[0];
        at += len;
        if fragment == Fragment::Later {
            break; // the rest is fragment data, not headers
        }
    }
    let seg = &ip[at..];
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&final_dst.octets());
    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    let l4 = transport(next, seg, &pseudo, true, fragment)?;
    Ok(parsed(src.into(), dst.into(), next, l4))
}

/// The final destination a routing header names (RFC 8200 8.1), or `current`
/// when segments-left is 0 or the routing type is not 0, 2 or 4.
fn routing_final_destination(ext: &[u8], current: Ipv6Addr) -> Result<Ipv6Addr, VerifyError> {
    let (hdr_len, ty, left) = (usize::from(ext[1]), ext[2], usize::from(ext[3]));
    if left == 0 {
        return Ok(current);
    }
    let bad = |reason| {
        Err(VerifyError::BadExtensionHeader {
            next_header: NH_ROUTING,
            reason,
        })
    };
    let at = match ty {
        0 => {
            let n = hdr_len / 2;
            if hdr_len % 2 != 0 || left > n {
                return bad("type 0: segments left exceeds the address list");
            }
            8 + 16 * (n - 1)
        }
        2 => {
            if hdr_len != 2 || left != 1 {
                return bad("type 2: must hold one address with segments left 1");
            }
            8
        }
        4 => {
            let last_entry = usize::from(ext[4]);
            if 8 + 16 * (last_entry + 1) > ext.len() || left > last_entry {
                return bad("type 4: segment list does not fit or segments left exceeds last entry");
            }
            8
        }
        _ => return Ok(current),
    };
    Ok(addr6(&ext[at..at + 16]))
}

fn transport(proto: u8, seg: &[u8], pseudo: &[u8], ipv6: bool, fragment: Fragment) -> Result<L4Info, VerifyError> {
    if fragment == Fragment::Later {
        return Ok(L4Info::default());
    }
    let check = fragment == Fragment::Whole;
    match proto {
        PROTO_TCP => {
            let base = take(seg, 0, 20, "tcp header")?;
            let data_offset = base[12] >> 4;
            if data_offset < 5 {
                return Err(VerifyError::BadTcpDataOffset { data_offset });
            }
            let hlen = usize::from(data_offset) * 4;
            take(seg, 0, hlen, "tcp options")?;
            if check {
                check_l4(pseudo, seg, 16, false)?;
            }
            Ok(L4Info {
                sport: Some(be16(seg, 0)),
                dport: Some(be16(seg, 2)),
                l4_checksum: Some(be16(seg, 16)),
                payload: seg[hlen..].to_vec(),
            })
        }
        PROTO_UDP => {
            take(seg, 0, 8, "udp header")?;
            let ulen = usize::from(be16(seg, 4));
            // A first fragment holds only the start of the datagram.
            let fits = if check { ulen == seg.len() } else { ulen >= seg.len() };
            if ulen < 8 || !fits {
                return Err(VerifyError::LengthMismatch {
                    field: "udp length",
                    declared: ulen,
                    actual: seg.len(),
                });
            }
            let found = be16(seg, 6);
            if found == 0 {
                if ipv6 {
                    return Err(VerifyError::ZeroUdpChecksumIpv6);
                }
            } else if check {
                check_l4(pseudo, seg, 6, true)?;
            }
            Ok(L4Info {
                sport: Some(be16(seg, 0)),
                dport: Some(be16(seg, 2)),
                l4_checksum: Some(found),
                payload: seg[8..].to_vec(),
            })
        }
        PROTO_ICMP | PROTO_ICMPV6 if (proto == PROTO_ICMPV6) == ipv6 => {
            take(seg, 0, 8, "icmp header")?;
            if check {
                // ICMPv4 has no pseudo-header; ICMPv6 has.
                check_l4(if ipv6 { pseudo } else { &[] }, seg, 2, false)?;
            }
            Ok(L4Info::default())
        }
        _ => Ok(L4Info::default()),
    }
}

fn parsed(src: IpAddr, dst: IpAddr, proto: u8, l4: L4Info) -> Parsed {
    Parsed {
        src,
        dst,
        proto,
        sport: l4.sport,
        dport: l4.dport,
        l4_checksum: l4.l4_checksum,
        payload: l4.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Packet, L4};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Offset of the IP header in a frame (test frames are well-formed).
    fn l3_offset(f: &[u8]) -> usize {
        let mut at = 12;
        while matches!(be16(f, at), TPID_8021Q | TPID_8021AD) {
            at += 4;
        }
        at + 2
    }

    /// Recomputes the IPv4 header checksum in place (with this module's sum).
    fn fix_ipv4_checksum(f: &mut [u8]) {
        let l3 = l3_offset(f);
        let hlen = usize::from(f[l3] & 0x0f) * 4;
        f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = !OnesSum::default().add(&f[l3..l3 + hlen]).folded();
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }

    fn corpus() -> Vec<(&'static str, Packet)> {
        let (a4, b4) = (ip("198.18.1.2"), ip("198.18.2.2"));
        let (a6, b6) = (ip("2001:db8::1"), ip("2001:db8:0:2::2"));
        let all_ext = [NH_HOPOPTS, NH_ROUTING, NH_DSTOPTS, NH_FRAGMENT];
        vec![
            ("v4 tcp", Packet::tcp(a4, b4, 40000, 80)),
            (
                "v4 tcp odd payload",
                Packet::tcp(a4, b4, 1, 65535).with_payload(b"hello"),
            ),
            ("v4 udp", Packet::udp(a4, b4, 5353, 53).with_payload(b"query!")),
            (
                "v4 udp vlan router-alert",
                Packet::udp(a4, b4, 1, 2)
                    .with_vlans(&[100])
                    .with_ipv4_options(&[0x94, 4, 0, 0])
                    .with_payload(b"x"),
            ),
            (
                "v4 tcp qinq nop options",
                Packet::tcp(a4, b4, 3, 4)
                    .with_vlans(&[10, 20])
                    .with_ipv4_options(&[1, 1, 1])
                    .with_payload(&[0xff; 33]),
            ),
            ("v4 echo", Packet::new(a4, b4, L4::Echo).with_payload(b"ping")),
            ("v6 tcp", Packet::tcp(a6, b6, 40000, 443).with_payload(b"GET /")),
            ("v6 udp", Packet::udp(a6, b6, 1000, 2000).with_payload(&[0; 7])),
            (
                "v6 udp all ext vlan",
                Packet::udp(a6, b6, 9, 10)
                    .with_ipv6_ext(&all_ext)
                    .with_vlans(&[7])
                    .with_payload(b"abc"),
            ),
            (
                "v6 tcp qinq dstopts",
                Packet::tcp(a6, b6, 11, 12)
                    .with_ipv6_ext(&[NH_DSTOPTS])
                    .with_vlans(&[1, 2])
                    .with_payload(b"data"),
            ),
            (
                "v6 echo hbh",
                Packet::new(a6, b6, L4::Echo).with_ipv6_ext(&[NH_HOPOPTS]),
            ),
        ]
    }

    fn expected(p: &Packet) -> Parsed {
        let (proto, sport, dport) = match p.l4 {
            L4::Tcp { sport, dport, .. } => (PROTO_TCP, Some(sport), Some(dport)),
            L4::Udp { sport, dport } => (PROTO_UDP, Some(sport), Some(dport)),
            L4::Echo if p.src.is_ipv4() => (PROTO_ICMP, None, None),
            L4::Echo => (PROTO_ICMPV6, None, None),
        };
        Parsed {
            src: p.src,
            dst: p.dst,
            proto,
            sport,
            dport,
            l4_checksum: None, // compared separately
            payload: if sport.is_some() { p.payload.clone() } else { Vec::new() },
        }
    }

    #[test]
    fn rfc1071_example_sum() {
        let s = OnesSum::default().add(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(s.folded(), 0xddf2);
        // Chaining odd-length pieces gives the same sum.
        let s2 = OnesSum::default()
            .add(&[0x00])
            .add(&[0x01, 0xf2, 0x03])
            .add(&[0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(s2.folded(), 0xddf2);
        assert_eq!(OnesSum::default().add(&[0xab]).folded(), 0xab00);
    }

    #[test]
    fn packet_frames_verify() {
        for (name, p) in corpus() {
            let f = p.build();
            let got = verify(&f).unwrap_or_else(|e| panic!("{name}: {e}"));
            let want = expected(&p);
            assert_eq!(
                Parsed {
                    l4_checksum: None,
                    ..got.clone()
                },
                want,
                "{name}"
            );
            assert_eq!(got.l4_checksum.is_some(), want.sport.is_some(), "{name}");
            // Ethernet padding after the IP packet is ignored.
            let mut padded = f.clone();
            padded.resize(f.len().max(60) + 4, 0);
            assert_eq!(verify(&padded), Ok(got), "{name} padded");
        }
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        /// Not covered by any check: anything but a panic.
        Anything,
        /// A structural field: some error.
        AnyErr,
        /// Covered by the IPv4 header checksum.
        Ipv4Checksum,
        /// Covered by the L4 checksum (or, on IPv6, the UDP zero-checksum rule).
        L4Checksum,
    }

    /// What flipping byte `i` of a frame built from `p` must produce.
    fn classify(p: &Packet, f: &[u8], i: usize) -> Expect {
        let l3 = l3_offset(f);
        if i < l3 {
            return Expect::Anything; // MACs, tags: not covered
        }
        let r = i - l3;
        let o = if p.src.is_ipv4() {
            let hlen = 20 + p.ipv4_options.len().next_multiple_of(4);
            match r {
                0 => return Expect::AnyErr, // version / IHL
                _ if r < hlen => return Expect::Ipv4Checksum,
                _ => r - hlen,
            }
        } else {
            let ext = 8 * p.ipv6_ext.len();
            match r {
                4 | 5 => return Expect::AnyErr,               // payload length
                0..8 => return Expect::Anything,              // version/TC/flow, next header, hop limit
                8..40 => return Expect::L4Checksum,           // addresses: pseudo-header
                _ if r < 40 + ext => return Expect::Anything, // extension headers
                _ => r - 40 - ext,
            }
        };
        match p.l4 {
            L4::Tcp { .. } if o == 12 => Expect::AnyErr,          // data offset
            L4::Udp { .. } if o == 4 || o == 5 => Expect::AnyErr, // length
            _ => Expect::L4Checksum,
        }
    }

    #[test]
    fn single_byte_flips_are_detected() {
        for (name, p) in corpus() {
            let f = p.build();
            let udp_csum_at = f.len() - p.payload.len() - 2;
            let mut checked = 0;
            for i in 0..f.len() {
                for mask in [0x01u8, 0x10, 0x80, 0xff] {
                    let mut g = f.clone();
                    g[i] ^= mask;
                    let got = verify(&g);
                    let udp_v4_zeroed =
                        matches!(p.l4, L4::Udp { .. }) && p.src.is_ipv4() && g[udp_csum_at..udp_csum_at + 2] == [0, 0];
                    let ok = match classify(&p, &f, i) {
                        _ if udp_v4_zeroed => got.is_ok(),
                        Expect::Anything => true,
                        Expect::AnyErr => got.is_err(),
                        Expect::Ipv4Checksum => matches!(got, Err(VerifyError::BadIpv4HeaderChecksum { .. })),
                        Expect::L4Checksum => matches!(
                            got,
                            Err(VerifyError::BadL4Checksum { .. } | VerifyError::ZeroUdpChecksumIpv6)
                        ),
                    };
                    checked += usize::from(got.is_err());
                    assert!(ok, "{name}: byte {i} ^ {mask:#x}: {got:?}");
                }
            }
            assert!(checked >= 4 * 28, "{name}: only {checked} flips detected");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (name, p) in corpus() {
            let f = p.build();
            for len in 0..f.len() {
                assert!(verify(&f[..len]).is_err(), "{name}: truncated to {len} accepted");
            }
        }
        for p in [
            Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 1, 2).with_frag_offset(3),
            Packet::udp(ip("::1"), ip("::2"), 1, 2).with_ipv6_ext(&[NH_FRAGMENT]),
        ] {
            let f = p.with_payload(&[0xaa; 8]).build();
            for len in 0..f.len() {
                assert!(verify(&f[..len]).is_err(), "fragment truncated to {len} accepted");
            }
        }
    }

    #[test]
    fn udp_zero_checksum_ok_on_ipv4_rejected_on_ipv6() {
        let mut f = Packet::udp(ip("10.0.0.1"), ip("10.0.0.2"), 1, 2)
            .with_payload(b"abc")
            .build();
        let at = f.len() - 3 - 2;
        f[at..at + 2].copy_from_slice(&[0, 0]);
        *f.last_mut().unwrap() ^= 0x55; // not checked any more
        let got = verify(&f).unwrap();
        assert_eq!(got.l4_checksum, Some(0));
        assert_eq!(got.payload, [b'a', b'b', b'c' ^ 0x55]);

        let mut f = Packet::udp(ip("::1"), ip("::2"), 1, 2).with_payload(b"abc").build();
        let at = f.len() - 3 - 2;
        f[at..at + 2].copy_from_slice(&[0, 0]);
        assert_eq!(verify(&f), Err(VerifyError::ZeroUdpChecksumIpv6));
    }

    #[test]
    fn checksum_errors_report_found_and_expected() {
        let good = Packet::tcp(ip("10.0.0.1"), ip("10.0.0.2"), 1, 2).build();
        let l3 = l3_offset(&good);
        let mut f = good.clone();
        f[l3 + 10] ^= 0x01;
        let orig = be16(&good, l3 + 10);
        assert_eq!(
            verify(&f),
            Err(VerifyError::BadIpv4HeaderChecksum {
                found: orig ^ 0x0100,
                expected: orig
            })
        );
        let mut f = good.clone();
        f[l3 + 20 + 17] ^= 0x01;
        let orig = be16(&good, l3 + 20 + 16);
        assert_eq!(
            verify(&f),
            Err(VerifyError::BadL4Checksum {
                found: orig ^ 0x0001,
                expected: orig
            })
        );
    }

    /// A DNAT that rewrites the destination but fixes only the IP header
    /// checksum is caught; fixing the L4 checksum too gives exactly the frame
    /// packet.rs builds for the new destination.
    #[test]
    fn dnat_rewrite_needs_the_l4_checksum_fixed() {
        for (new_dst, new_port) in [("198.18.9.9", 8080), ("10.255.0.1", 80)] {
            let p = Packet::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 80).with_payload(b"hi");
            let want = Packet::tcp(p.src, ip(new_dst), 40000, new_port)
                .with_payload(b"hi")
                .build();
            let mut f = p.build();
            let l3 = l3_offset(&f);
            let IpAddr::V4(d) = ip(new_dst) else { unreachable!() };
            f[l3 + 16..l3 + 20].copy_from_slice(&d.octets());
            f[l3 + 22..l3 + 24].copy_from_slice(&new_port.to_be_bytes());
            fix_ipv4_checksum(&mut f);
            let Err(VerifyError::BadL4Checksum { expected, .. }) = verify(&f) else {
                panic!("stale L4 checksum accepted")
            };
            assert_eq!(expected, be16(&want, l3 + 36));
            f[l3 + 36..l3 + 38].copy_from_slice(&expected.to_be_bytes());
            assert_eq!(f, want);
            assert_eq!(verify(&f).unwrap().dport, Some(new_port));
        }
    }

    #[test]
    fn fragments() {
        // IPv4 non-first fragment: no L4.
        let f = Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 1, 2)
            .with_frag_offset(3)
            .with_payload(&[0xaa; 8])
            .build();
        let got = verify(&f).unwrap();
        assert_eq!(
            (got.proto, got.sport, got.dport, got.l4_checksum),
            (6, None, None, None)
        );
        assert!(got.payload.is_empty());

        // IPv4 first fragment: header parsed, checksum skipped.
        let mut f = Packet::udp(ip("1.1.1.1"), ip("2.2.2.2"), 7, 9)
            .with_payload(b"abcdefgh")
            .build();
        *f.last_mut().unwrap() ^= 1;
        assert!(matches!(verify(&f), Err(VerifyError::BadL4Checksum { .. })));
        let l3 = l3_offset(&f);
        f[l3 + 6] |= 0x20; // MF
        fix_ipv4_checksum(&mut f);
        let got = verify(&f).unwrap();
        assert_eq!((got.sport, got.dport), (Some(7), Some(9)));
        assert_eq!(got.payload, b"abcdefgi");

        // IPv6 atomic fragment: fully checked.
        let good = Packet::udp(ip("::1"), ip("::2"), 7, 9)
            .with_ipv6_ext(&[NH_FRAGMENT])
            .with_payload(b"abcdefgh")
            .build();
        assert_eq!(verify(&good).unwrap().sport, Some(7));
        let frag_at = l3_offset(&good) + 40;
        // IPv6 first fragment (M set): checksum skipped.
        let mut f = good.clone();
        f[frag_at + 3] |= 1;
        *f.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&f).unwrap().sport, Some(7));
        // IPv6 non-first fragment.
        let mut f = good.clone();
        f[frag_at + 2..frag_at + 4].copy_from_slice(&(2u16 << 3).to_be_bytes());
        let got = verify(&f).unwrap();
        assert_eq!((got.proto, got.sport, got.l4_checksum), (PROTO_UDP, None, None));
    }

    /// A UDP frame whose checksum was computed towards `final_dst`, sent to
    /// `hdr_dst` with routing header `rh` (its next-header byte is set here).
    fn routed(final_dst: &str, hdr_dst: &str, rh: &[u8]) -> Vec<u8> {
        let IpAddr::V6(h) = ip(hdr_dst) else { unreachable!() };
        let f = Packet::udp(ip("2001:db8::1"), ip(final_dst), 5, 6)
            .with_payload(b"rt")
            .build();
        let mut out = f[..54].to_vec();
        out[14 + 24..54].copy_from_slice(&h.octets());
        out[14 + 6] = NH_ROUTING;
        let plen = be16(&out, 18) + rh.len() as u16;
        out[18..20].copy_from_slice(&plen.to_be_bytes());
        out.extend_from_slice(rh);
        out[54] = PROTO_UDP;
        out.extend_from_slice(&f[54..]);
        out
    }

    #[test]
    fn routing_header_final_destination_in_pseudo_header() {
        let (fin, mid) = ("2001:db8:f::1", "2001:db8:a::1");
        let IpAddr::V6(fin6) = ip(fin) else { unreachable!() };
        let IpAddr::V6(mid6) = ip(mid) else { unreachable!() };
        let with_addrs = |head: &[u8], addrs: &[Ipv6Addr]| {
            let mut rh = head.to_vec();
            for a in addrs {
                rh.extend_from_slice(&a.octets());
            }
            rh
        };
        let type0 = with_addrs(&[0, 2, 0, 1, 0, 0, 0, 0], &[fin6]);
        let type2 = with_addrs(&[0, 2, 2, 1, 0, 0, 0, 0], &[fin6]);
        let srh = with_addrs(&[0, 4, 4, 1, 1, 0, 0, 0], &[fin6, mid6]);
        for rh in [&type0, &type2, &srh] {
            let got = verify(&routed(fin, mid, rh)).unwrap_or_else(|e| panic!("type {}: {e}", rh[2]));
            assert_eq!(got.dst, ip(mid));
            assert_eq!(got.payload, b"rt");
            // Segments left 0: the IPv6 destination is final.
            let mut done = rh.clone();
            done[3] = 0;
            assert!(matches!(
                verify(&routed(fin, mid, &done)),
                Err(VerifyError::BadL4Checksum { .. })
            ));
            assert!(verify(&routed(mid, mid, &done)).is_ok());
        }
        // Malformed: type 2 without its address.
        let bad = [0, 0, 2, 1, 0, 0, 0, 0];
        assert!(matches!(
            verify(&routed(fin, mid, &bad)),
            Err(VerifyError::BadExtensionHeader {
                next_header: NH_ROUTING,
                ..
            })
        ));
    }

    #[test]
    fn structural_errors() {
        assert_eq!(
            verify(&crate::packet::arp_frame()),
            Err(VerifyError::NotIp { ethertype: 0x0806 })
        );
        let mut f = Packet::tcp(ip("1.1.1.1"), ip("2.2.2.2"), 1, 2)
            .with_vlans(&[1, 2, 3, 4, 5, 6, 7, 8])
            .build();
        assert!(verify(&f).is_ok());
        f.splice(12..12, [0x81, 0x00, 0x00, 0x09]);
        assert_eq!(verify(&f), Err(VerifyError::TooManyVlanTags));
        let f = Packet::tcp(ip("::1"), ip("::2"), 1, 2)
            .with_ipv6_ext(&[NH_DSTOPTS, NH_HOPOPTS])
            .build();
        assert!(matches!(
            verify(&f),
            Err(VerifyError::BadExtensionHeader { next_header: 0, .. })
        ));
        let mut f = Packet::tcp(ip("::1"), ip("::2"), 1, 2).build();
        f[14] = 0x40;
        assert_eq!(verify(&f), Err(VerifyError::BadIpVersion { expected: 6, found: 4 }));
        let mut f = Packet::udp(ip("1.1.1.1"), ip("2.2.2.2"), 1, 2).build();
        let l4 = l3_offset(&f) + 20;
        f[l4 + 5] += 1;
        assert!(matches!(
            verify(&f),
            Err(VerifyError::LengthMismatch {
                field: "udp length",
                ..
            })
        ));
        assert!(!VerifyError::ZeroUdpChecksumIpv6.to_string().is_empty());
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        // Random byte strings, nudged towards IP so the parser gets past Ethernet.
        for _ in 0..10_000 {
            let len = (rng.next() % 160) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len >= 16 {
                let et = [0x0800u16, 0x86dd, 0x8100, 0x88a8][(rng.next() % 4) as usize];
                f[12..14].copy_from_slice(&et.to_be_bytes());
                f[14] = [0x45, 0x46, 0x60, 0x00][(rng.next() % 4) as usize];
            }
            let _ = verify(&f);
        }
        // Mutations of valid frames.
        let frames: Vec<Vec<u8>> = corpus().iter().map(|(_, p)| p.build()).collect();
        for _ in 0..10_000 {
            let mut f = frames[(rng.next() % frames.len() as u64) as usize].clone();
            for _ in 0..=rng.next() % 4 {
                let i = (rng.next() % f.len() as u64) as usize;
                f[i] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(4) {
                f.truncate((rng.next() % (f.len() as u64 + 1)) as usize);
            }
            let _ = verify(&f);
        }
    }
}
