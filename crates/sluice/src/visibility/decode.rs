//! Decoding: raw ring-buffer records into the ABI structs (checked for
//! kind and size), then into [`Event`]s with interface names, the rule
//! behind a drop and wall-clock time.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{atomic::Ordering, Arc},
};

use sluice_abi::{ev, stat, EvConn, EvHdr, EvPacket};

use super::{
    event::{ConnEvent, Event, PacketEvent, RuleRef, TCP_CLOSE, TCP_STATES},
    l7::{decode_segment, Done, L7Stage},
};
use crate::sys::{
    iface,
    time::{monotonic_ns, Clock},
};

/// A decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Conn(EvConn),
    Packet(EvPacket),
    Drop(EvPacket),
}

fn read<T: Copy>(b: &[u8]) -> Option<T> {
    // SAFETY: length checked; the ABI structs are plain integers, valid for
    // any bit pattern, and read_unaligned does not need alignment.
    (b.len() >= std::mem::size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Decodes one record; None for a record of unknown kind or wrong size.
pub fn decode(b: &[u8]) -> Option<RawEvent> {
    let h: EvHdr = read(b)?;
    match h.kind {
        ev::CONN if h.size as usize == std::mem::size_of::<EvConn>() => read(b).map(RawEvent::Conn),
        ev::PACKET if h.size as usize == std::mem::size_of::<EvPacket>() => read(b).map(RawEvent::Packet),
        ev::DROP if h.size as usize == std::mem::size_of::<EvPacket>() => read(b).map(RawEvent::Drop),
        _ => None,
    }
}

fn state(s: u8) -> String {
    TCP_STATES.get(s as usize).copied().unwrap_or("UNKNOWN").to_string()
}

/// An address of a record, in its one form (an IPv4-mapped IPv6 address
/// as the IPv4 address it is).
fn addr(family: u8, b: [u8; 16]) -> IpAddr {
    if family == 6 {
        crate::model::canonical(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

fn proto(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Names a drop's rule from its kind and slot.
pub trait RuleNames: Send + Sync {
    fn name(&self, rule_kind: u8, slot: u32) -> Option<(i64, String)>;
}

pub(super) fn conn_event(c: &EvConn, clock: &Clock) -> ConnEvent {
    let comm_len = c.comm.iter().position(|&b| b == 0).unwrap_or(16);
    ConnEvent {
        time: clock.wall(c.h.ts_ns),
        comm: String::from_utf8_lossy(&c.comm[..comm_len]).into_owned(),
        pid: c.pid,
        src: addr(c.family, c.saddr),
        sport: c.sport,
        dst: addr(c.family, c.daddr),
        dport: c.dport,
        state: state(c.newstate),
        old_state: state(c.oldstate),
        direction: match c.dir {
            ev::DIR_OUT => "out",
            ev::DIR_IN => "in",
            _ => "unknown",
        }
        .into(),
        netns: c.netns,
        duration_ms: (c.newstate == TCP_CLOSE).then(|| c.duration_ns as f64 / 1e6),
        container: None,
        peer_container: None,
        sock: c.sock,
        ts_ns: c.h.ts_ns,
    }
}

/// Turns raw records into events, with interface names cached.
pub struct Decoder {
    pub clock: Clock,
    pub rules: Arc<dyn RuleNames>,
    ifnames: HashMap<u32, String>,
    /// The L7 stage; None drops L7 captures (counted as malformed).
    pub l7: Option<L7Stage>,
}

impl Decoder {
    pub fn new(rules: Arc<dyn RuleNames>) -> Self {
        Decoder {
            clock: Clock::new(),
            rules,
            ifnames: HashMap::new(),
            l7: None,
        }
    }

    fn ifname(&mut self, ifindex: u32) -> String {
        self.ifnames
            .entry(ifindex)
            .or_insert_with(|| iface::ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}")))
            .clone()
    }

    /// Records finished by reassembly, as events.
    fn l7_events(&mut self, done: Vec<Done>) -> Vec<Event> {
        let mut out = Vec::with_capacity(done.len());
        for d in done {
            let name = self.ifname(d.ifindex);
            if let Some(a) = &self.l7 {
                out.push(Event::L7(Box::new(a.record(d, &self.clock, name))));
            }
        }
        out
    }

    /// Feeds one L7 capture; returns the records it completed.
    pub fn l7_segment(&mut self, bytes: &[u8]) -> Option<Vec<Event>> {
        let seg = decode_segment(bytes)?;
        let a = self.l7.as_mut()?;
        a.metrics.segments.fetch_add(1, Ordering::Relaxed);
        let done = a.assembler.segment(seg);
        Some(self.l7_events(done))
    }

    /// Periodic L7 housekeeping (skipped holes, idle connections).
    pub fn l7_tick(&mut self) -> Vec<Event> {
        let Some(a) = self.l7.as_mut() else {
            return Vec::new();
        };
        let done = a.assembler.tick(monotonic_ns());
        self.l7_events(done)
    }

    fn packet(&mut self, p: &EvPacket) -> PacketEvent {
        let interface = self.ifname(p.ifindex);
        let rule = match p.rule_kind {
            ev::RULE_DENY | ev::RULE_ALLOW | ev::RULE_LIMIT => {
                let kind = match p.rule_kind {
                    ev::RULE_DENY => "deny",
                    ev::RULE_ALLOW => "allow",
                    _ => "limit",
                };
                let named = self.rules.name(p.rule_kind, p.rule_slot);
                Some(RuleRef {
                    kind: kind.into(),
                    id: named.as_ref().map(|n| n.0),
                    what: named.map(|n| n.1),
                })
            }
            _ => None,
        };
        PacketEvent {
            time: self.clock.wall(p.h.ts_ns),
            interface,
            ifindex: p.ifindex,
            len: p.len,
            src: addr(p.family, p.saddr),
            sport: p.sport,
            dst: addr(p.family, p.daddr),
            dport: p.dport,
            proto: proto(p.l4proto),
            verdict: stat::NAMES.get(p.verdict as usize).copied().unwrap_or("unknown").into(),
            rule,
            container: None,
            peer_container: None,
        }
    }

    pub fn event(&mut self, raw: &RawEvent) -> Event {
        match raw {
            RawEvent::Conn(c) => Event::Conn(conn_event(c, &self.clock)),
            RawEvent::Packet(p) => Event::Packet(self.packet(p)),
            RawEvent::Drop(p) if p.rule_kind == ev::RULE_LIMIT => Event::Limit(self.packet(p)),
            RawEvent::Drop(p) => Event::Drop(self.packet(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoRules;
    impl RuleNames for NoRules {
        fn name(&self, _: u8, slot: u32) -> Option<(i64, String)> {
            (slot == 3).then(|| (42, "deny src 198.18.1.2/32".into()))
        }
    }

    fn drop_event(kind: u8, slot: u32) -> RawEvent {
        let mut p = EvPacket {
            family: 4,
            l4proto: 6,
            verdict: stat::DENY as u8,
            rule_kind: kind,
            rule_slot: slot,
            ..Default::default()
        };
        p.saddr[..4].copy_from_slice(&[198, 18, 1, 2]);
        p.sport = 40000;
        RawEvent::Drop(p)
    }

    #[test]
    fn drops_name_their_rule() {
        let mut d = Decoder::new(Arc::new(NoRules));
        match d.event(&drop_event(ev::RULE_DENY, 3)) {
            Event::Drop(p) => {
                assert_eq!(p.rule.unwrap().id, Some(42));
                assert_eq!(p.src.to_string(), "198.18.1.2");
                assert_eq!((p.proto.as_str(), p.verdict.as_str()), ("tcp", "deny"));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(d.event(&drop_event(ev::RULE_LIMIT, 9)), Event::Limit(_)));
    }

    #[test]
    fn conn_events_decode_addresses_comm_and_duration() {
        let mut c = EvConn {
            pid: 7,
            sock: 0xffff_8881_0000_1234,
            family: 6,
            oldstate: 1,
            newstate: 7,
            dir: ev::DIR_OUT,
            sport: 1,
            dport: 80,
            duration_ns: 1_500_000,
            ..Default::default()
        };
        c.comm[..4].copy_from_slice(b"curl");
        c.daddr = "2001:2::2".parse::<Ipv6Addr>().unwrap().octets();
        let e = conn_event(&c, &Clock::new());
        assert_eq!(
            (e.comm.as_str(), e.state.as_str(), e.old_state.as_str()),
            ("curl", "CLOSE", "ESTABLISHED")
        );
        assert_eq!(e.dst.to_string(), "2001:2::2");
        assert_eq!(e.duration_ms, Some(1.5));
        assert_eq!(e.direction, "out");
        let json = serde_json::to_value(Event::Conn(e)).unwrap();
        for k in ["time", "comm", "pid", "src", "sport", "dst", "dport", "state", "netns"] {
            assert!(json.get(k).is_some(), "{k} missing: {json}");
        }
        assert_eq!(json["kind"], "conn");
        assert!(json.get("sock").is_none(), "a kernel address in the output: {json}");
    }

    #[test]
    fn decode_checks_kind_and_size() {
        let mut c = EvConn {
            pid: 42,
            ..Default::default()
        };
        c.h = EvHdr {
            kind: ev::CONN,
            size: 96,
            cpu: 0,
            ts_ns: 1,
        };
        // SAFETY: EvConn is plain integers.
        let bytes = unsafe { std::slice::from_raw_parts((&c as *const EvConn).cast::<u8>(), 96) }.to_vec();
        assert_eq!(decode(&bytes), Some(RawEvent::Conn(c)));
        assert_eq!(decode(&bytes[..50]), None, "truncated");
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(decode(&wrong), None, "unknown kind");
        let mut wrong = bytes;
        wrong[2] = 72; // size says packet, kind says conn
        assert_eq!(decode(&wrong), None);
        assert_eq!(decode(&[]), None);
    }
}
