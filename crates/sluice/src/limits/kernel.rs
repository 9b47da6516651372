//! How a limit rule becomes the kernel's entry (`struct limit_rule`): the
//! GCRA parameters of its rate as fixed-point numbers in the limiter's time
//! unit (1/2^`GCRA_TIME_SHIFT` ns, see `bpf/include/gcra.h`), and its
//! addresses and masks as the words the XDP program compares.

use sluice_abi::{LimitRule, GCRA_TIME_SHIFT as TIME_SHIFT, LIMIT_BPS, LIMIT_CONNS, LIMIT_F_PER_SOURCE, LIMIT_PPS};

use super::{spec::LimitKind, Limit};
use crate::model::{Cidr, Proto};

/// Largest frame the bytes/s math must handle without overflow.
const MAX_FRAME: u128 = 65536;

/// The kernel's fixed-point GCRA parameters of a rate. Times are in the
/// limiter's unit of 1/256 ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// Time units of rate-time per packet/byte, shifted left by `shift`.
    pub unit_fp: u64,
    pub shift: u32,
    /// Burst tolerance: burst * time units per packet/byte.
    pub tau: u64,
}

impl Gcra {
    /// Picks the largest shift (at most 32) for which the biggest packet's
    /// cost, units * unit_fp, stays below 2^62.
    pub fn new(kind: LimitKind, rate: u64, burst: u64) -> Gcra {
        let max_units: u128 = if kind == LimitKind::Bps { MAX_FRAME } else { 1 };
        let mut shift = 32u32;
        let unit_fp = loop {
            let fp = (1_000_000_000u128 << (shift + TIME_SHIFT)) / rate as u128;
            if fp * max_units < 1 << 62 || shift == 0 {
                break fp as u64;
            }
            shift -= 1;
        };
        let tau = ((burst as u128 * 1_000_000_000) << TIME_SHIFT) / rate as u128;
        let tau = tau as u64;
        Gcra { unit_fp, shift, tau }
    }
}

impl Limit {
    /// The kernel entry of this rule.
    pub fn to_kernel(&self) -> LimitRule {
        let s = &self.spec;
        let g = Gcra::new(s.kind, s.rate, s.burst);
        let mut r = LimitRule {
            family: 0,
            proto: s.m.proto.map_or(0, Proto::number),
            dport: s.m.dst_port.unwrap_or(0).to_be(),
            kind: match s.kind {
                LimitKind::Pps => LIMIT_PPS,
                LimitKind::Bps => LIMIT_BPS,
                LimitKind::Conns => LIMIT_CONNS,
            },
            flags: if s.per_source { LIMIT_F_PER_SOURCE } else { 0 },
            slot: self.slot,
            gen: self.id as u32,
            shift: g.shift,
            unit_fp: g.unit_fp,
            tau: g.tau,
            warmup_ns: s.warmup_ms * 1_000_000,
            ..Default::default()
        };
        for (cidr, addr, mask) in [
            (s.m.src, &mut r.src, &mut r.src_mask),
            (s.m.dst, &mut r.dst, &mut r.dst_mask),
        ] {
            if let Some(c) = cidr {
                r.family = if c.is_v6() { 6 } else { 4 };
                let (a, m) = words(c);
                *addr = a;
                *mask = m;
            }
        }
        r
    }
}

/// Address and mask of a CIDR as network-order u32 words (IPv4 in word 0),
/// stored so that the kernel can compare `*(u32 *)&addr_bytes[4k]` directly.
fn words(c: Cidr) -> ([u32; 4], [u32; 4]) {
    let (addr, len, bytes): ([u8; 16], u8, usize) = match c.net() {
        ipnet::IpNet::V4(n) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&n.network().octets());
            (a, n.prefix_len(), 4)
        }
        ipnet::IpNet::V6(n) => (n.network().octets(), n.prefix_len(), 16),
    };
    let mut mask = [0u8; 16];
    for (i, m) in mask.iter_mut().enumerate().take(bytes) {
        let bits = (len as i32 - 8 * i as i32).clamp(0, 8);
        *m = (0xffu16 << (8 - bits)) as u8;
    }
    let w =
        |b: [u8; 16]| std::array::from_fn(|k| u32::from_ne_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]));
    (w(addr), w(mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::spec::{LimitRequest, MAX_BYTE_RATE, MAX_RATE, MIN_BPS_BURST};

    fn req() -> LimitRequest {
        LimitRequest {
            pps: Some(1000),
            ..Default::default()
        }
    }

    #[test]
    fn gcra_parameters() {
        // 1000 pps: 1 ms per packet, burst 10 -> tau 10 ms (in 1/256 ns).
        let g = Gcra::new(LimitKind::Pps, 1000, 10);
        assert_eq!(g.unit_fp >> g.shift, 1_000_000 << TIME_SHIFT);
        assert_eq!(g.tau, 10_000_000 << TIME_SHIFT);
        // The fastest accepted rate still costs 256 units per packet.
        let g = Gcra::new(LimitKind::Pps, MAX_RATE, MAX_RATE);
        assert_eq!(g.unit_fp >> g.shift, 256);
        // Bytes: the cost of a 64 KiB frame must not overflow.
        for rate in [1u64, 7, 1500, 125_000_000, MAX_BYTE_RATE] {
            let g = Gcra::new(LimitKind::Bps, rate, rate.max(MIN_BPS_BURST));
            assert!((g.unit_fp as u128) * MAX_FRAME < 1 << 62, "rate {rate}");
            // Relative precision of the per-byte cost better than 1e-4.
            let exact = 256e9 / rate as f64;
            let got = g.unit_fp as f64 / (1u64 << g.shift) as f64;
            assert!(((got - exact) / exact).abs() < 1e-4, "rate {rate}: {got} vs {exact}");
        }
    }

    #[test]
    fn kernel_rule_layout() {
        let spec = LimitRequest {
            src: Some("198.18.1.0/24".into()),
            dst_port: Some("8080/tcp".into()),
            per_source: true,
            warmup: Some("2s".into()),
            ..req()
        }
        .validate()
        .unwrap();
        let r = Limit {
            id: 7,
            slot: 3,
            spec,
            created: 0,
        }
        .to_kernel();
        assert_eq!(r.family, 4);
        assert_eq!(r.proto, 6);
        assert_eq!(u16::from_be(r.dport), 8080);
        assert_eq!(r.src[0].to_ne_bytes(), [198, 18, 1, 0]);
        assert_eq!(r.src_mask[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(r.src_mask[1], 0);
        assert_eq!(r.dst_mask, [0; 4]);
        assert_eq!((r.slot, r.gen, r.flags), (3, 7, LIMIT_F_PER_SOURCE));
        assert_eq!(r.warmup_ns, 2_000_000_000);
        let v6 = Limit {
            id: 1,
            slot: 0,
            spec: LimitRequest {
                dst: Some("2001:2::/33".into()),
                ..req()
            }
            .validate()
            .unwrap(),
            created: 0,
        }
        .to_kernel();
        assert_eq!(v6.family, 6);
        assert_eq!(v6.dst_mask[1].to_ne_bytes(), [0x80, 0, 0, 0]);
        assert_eq!(v6.dst_mask[2], 0);
    }
}
