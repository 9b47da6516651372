//! Tier 2: the XDP firewall run by the kernel (BPF_PROG_TEST_RUN) on crafted
//! frames: good, truncated at every length, and hostile. Rules go in through
//! the real Firewall + FirewallMaps path, and each case checks the verdict,
//! the verdict counters and the per-rule counters. Needs root.

mod common;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions};
use common::{require_root, PinDir};
use sluice::{
    dataplane::{Capacity, Dataplane, EventMaps},
    firewall::Firewall,
    firewall::{Action, RuleSpec},
    limits::Limiter,
    store::Store,
};
use sluice_abi::{stat, Counter};
use sluice_proto::packet::{self, Packet, L4};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Fixture {
    dp: Dataplane,
    fw: Firewall,
    limits: Limiter,
    events: Option<EventMaps>,
    _pins: PinDir,
}

impl Fixture {
    fn new(rules: &[(Action, &str, bool)]) -> Self {
        require_root();
        let pins = PinDir::new("run");
        let cap = Capacity {
            max_rules: 1024,
            limit_sources: 64,
            ..Default::default()
        };
        let (dp, maps) = Dataplane::load(&pins.0, cap).expect("load XDP object");
        let (mut fw, _) = Firewall::open(Store::in_memory().unwrap(), Box::new(maps.firewall)).unwrap();
        let specs: Vec<_> = rules
            .iter()
            .map(|(a, c, dst)| RuleSpec::new(*a, c, *dst, None).unwrap())
            .collect();
        if !specs.is_empty() {
            fw.add(specs).unwrap();
        }
        let limits = Limiter::open(Store::in_memory().unwrap(), Box::new(maps.limits)).unwrap();
        Fixture {
            dp,
            fw,
            limits,
            events: Some(maps.events),
            _pins: pins,
        }
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let prog = self.dp.xdp_program();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        };
        prog.test_run(opts).expect("test_run").return_value
    }

    fn stats(&self) -> Vec<Counter> {
        self.fw.stats().unwrap()
    }

    /// Runs the frame and returns (verdict, the stat indexes that moved).
    fn run_counted(&mut self, frame: &[u8]) -> (u32, Vec<u32>) {
        let before = self.stats();
        let v = self.run(frame);
        let after = self.stats();
        let moved = (0..stat::ALL)
            .filter(|i| after[*i as usize].packets != before[*i as usize].packets)
            .collect();
        (v, moved)
    }

    fn rule_packets(&self, action: Action) -> Vec<u64> {
        self.fw.list(action).unwrap().iter().map(|(_, c)| c.packets).collect()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(src: &str, dst: &str) -> Packet {
    Packet::tcp(ip(src), ip(dst), 40000, 80)
}

/// The object's maps and programs are exactly these.
fn assert_names(obj: &[u8], maps: &[&str], progs: &[&str]) {
    let obj = aya_obj::Object::parse(obj).expect("parse embedded object");
    let mut got: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
    got.sort();
    let mut want = maps.to_vec();
    want.sort();
    assert_eq!(got, want);
    let got: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
    assert_eq!(got, progs);
}

#[test]
fn object_names_match_the_abi_mirror() {
    use sluice::dataplane::objects::{GEN_OBJ, XDP_OBJ, XDP_SPIN_OBJ};
    use sluice_abi::{gen, xdp};
    assert_names(XDP_OBJ, &xdp::MAPS, &[xdp::PROGRAM]);
    // The test-only builds: the spin-lock XDP program and the generator.
    assert_names(XDP_SPIN_OBJ, &xdp::MAPS, &[xdp::PROGRAM]);
    assert_names(GEN_OBJ, &[gen::CONFIG], &[gen::PROGRAM]);
}

/// Runs `frame` through `dp`'s XDP program.
fn run_on(dp: &mut Dataplane, frame: &[u8]) -> u32 {
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    };
    dp.xdp_program().test_run(opts).expect("test_run").return_value
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn an_import_is_in_force_all_at_once_and_pending_entries_answer_as_before() {
    // Existing rules: deny 10/8 and 2001:2::/32, allow 10.1.0.0/16 (allow
    // wins). The import: deny prefixes inside, across and outside them,
    // and allow entries inside a deny.
    let mut f = Fixture::new(&[
        (Action::Deny, "10.0.0.0/8", false),
        (Action::Deny, "2001:2::/32", false),
        (Action::Allow, "10.1.0.0/16", false),
    ]);
    let import: Vec<RuleSpec> = [
        (Action::Deny, "10.1.2.0/24"),
        (Action::Deny, "192.0.2.0/24"),
        (Action::Deny, "192.0.2.7"),
        (Action::Deny, "2001:2:0:9::/64"),
        (Action::Deny, "2001:db8::/32"),
        (Action::Allow, "10.9.0.0/16"),
        (Action::Allow, "2001:2:0:7::/64"),
    ]
    .iter()
    .map(|(a, c)| RuleSpec::new(*a, c, false, None).unwrap())
    .collect();
    // (source, verdict before, verdict after)
    let cases = [
        ("10.1.2.3", XDP_PASS, XDP_PASS),   // allow 10.1/16 still wins
        ("10.2.0.1", XDP_DROP, XDP_DROP),   // deny 10/8, untouched
        ("10.9.0.1", XDP_DROP, XDP_PASS),   // the imported allow
        ("192.0.2.7", XDP_PASS, XDP_DROP),  // new deny, and a longer one inside it
        ("192.0.2.99", XDP_PASS, XDP_DROP), // new deny
        ("198.18.0.1", XDP_PASS, XDP_PASS), // nothing
        ("2001:2:0:9::1", XDP_DROP, XDP_DROP),
        ("2001:2:0:7::1", XDP_DROP, XDP_PASS),
        ("2001:db8::1", XDP_PASS, XDP_DROP),
    ];
    let frame = |src: &str| {
        let dst = if src.contains(':') {
            "2001:2:0:ffff::2"
        } else {
            "198.18.2.2"
        };
        tcp(src, dst).build()
    };
    let Fixture { dp, fw, .. } = &mut f;
    let mut pending = Vec::new();
    fw.add_paused(import, || {
        // Every entry is in the kernel now, pending: nothing may show.
        for (src, _, _) in cases {
            pending.push(run_on(dp, &frame(src)));
        }
    })
    .unwrap();
    let before: Vec<u32> = cases.iter().map(|c| c.1).collect();
    assert_eq!(pending, before, "verdicts while the import is pending");
    let after: Vec<u32> = cases.iter().map(|(src, _, _)| run_on(&mut f.dp, &frame(src))).collect();
    assert_eq!(
        after,
        cases.iter().map(|c| c.2).collect::<Vec<_>>(),
        "verdicts once in force"
    );
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn deny_and_allow_ipv4_and_ipv6_by_source_and_destination() {
    let mut f = Fixture::new(&[
        (Action::Deny, "198.18.1.0/24", false),
        (Action::Deny, "198.18.9.9", true),
        (Action::Deny, "2001:2:0:1::/64", false),
        (Action::Deny, "2001:2:0:9::9", true),
    ]);
    let cases = [
        ("198.18.1.2", "198.18.2.2", XDP_DROP, stat::DENY),
        ("198.18.2.2", "198.18.1.2", XDP_PASS, stat::PASS), // dst in a src-only rule
        ("198.18.2.2", "198.18.9.9", XDP_DROP, stat::DENY),
        ("198.18.9.9", "198.18.2.2", XDP_PASS, stat::PASS), // src in a dst-only rule
        ("2001:2:0:1::2", "2001:2:0:2::2", XDP_DROP, stat::DENY),
        ("2001:2:0:2::2", "2001:2:0:1::2", XDP_PASS, stat::PASS),
        ("2001:2:0:2::2", "2001:2:0:9::9", XDP_DROP, stat::DENY),
        ("2001:2:0:3::2", "2001:2:0:9::8", XDP_PASS, stat::PASS),
    ];
    for (src, dst, want, counter) in cases {
        let (v, moved) = f.run_counted(&tcp(src, dst).build());
        assert_eq!(v, want, "{src} -> {dst}");
        assert_eq!(moved, vec![counter], "{src} -> {dst}");
    }
    // Each deny rule was hit exactly once.
    assert_eq!(f.rule_packets(Action::Deny), vec![1, 1, 1, 1]);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn allow_wins_over_deny_and_counts_bytes() {
    let mut f = Fixture::new(&[
        (Action::Deny, "198.18.0.0/15", false),
        (Action::Allow, "198.18.1.2", false),
        (Action::Deny, "::/0", false),
        (Action::Allow, "2001:2::/48", true),
    ]);
    let frame = tcp("198.18.1.2", "198.18.2.2").build();
    assert_eq!(f.run_counted(&frame), (XDP_PASS, vec![stat::ALLOW]));
    assert_eq!(
        f.run_counted(&tcp("198.18.1.3", "198.18.2.2").build()),
        (XDP_DROP, vec![stat::DENY])
    );
    assert_eq!(
        f.run_counted(&tcp("2001:db8::1", "2001:2::1").build()),
        (XDP_PASS, vec![stat::ALLOW])
    );
    assert_eq!(
        f.run_counted(&tcp("2001:db8::1", "2001:db8::2").build()),
        (XDP_DROP, vec![stat::DENY])
    );
    let allow = f.fw.list(Action::Allow).unwrap();
    let v4_allow = allow
        .iter()
        .find(|(r, _)| r.spec.target.to_string() == "198.18.1.2/32")
        .unwrap();
    assert_eq!(
        v4_allow.1,
        Counter {
            packets: 1,
            bytes: frame.len() as u64
        }
    );
}

/// `n` tags of the given TPID pattern and VID kind, outermost first.
fn tags(n: usize, tpids: &str, vids: &str) -> Vec<(u16, u16)> {
    use packet::{ETH_P_8021AD as AD, ETH_P_8021Q as Q};
    (0..n)
        .map(|i| {
            let tpid = match tpids {
                "802.1Q" => Q,
                "802.1ad" => AD,
                "alternating" => [AD, Q][i % 2],
                _ => [Q, AD][(i * 7 + n) % 3 % 2], // an irregular mix
            };
            let tci = match vids {
                "priority" => 0,                                      // VID 0, the tags the kernel strips
                "priority+pcp" => 0xe000 | (0x1000 * (i as u16 % 2)), // VID 0, PCP 7, DEI
                "vid 1" => 1,
                "vid 4095" => 0x0fff,
                _ => i as u16 * 4877 + 3, // any PCP, DEI and VID
            };
            (tpid, tci)
        })
        .collect()
}

const TPIDS: [&str; 4] = ["802.1Q", "802.1ad", "alternating", "mixed"];
const VIDS: [&str; 5] = ["priority", "priority+pcp", "vid 1", "vid 4095", "any"];

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn stacked_tags_of_any_depth_tpid_and_vid_are_judged_by_their_ip_header() {
    use packet::insert_tags;
    let max = sluice_abi::MAX_VLAN;
    let mut f = Fixture::new(&[(Action::Deny, "198.18.1.2", false), (Action::Deny, "2001:2::2", false)]);
    let flows = [
        (tcp("198.18.1.2", "198.18.2.2").build(), XDP_DROP, stat::DENY),
        (tcp("198.18.7.7", "198.18.2.2").build(), XDP_PASS, stat::PASS),
        (
            Packet::udp(ip("2001:2::2"), ip("2001:2::3"), 5, 53).build(),
            XDP_DROP,
            stat::DENY,
        ),
        (
            Packet::udp(ip("2001:2::7"), ip("2001:2::3"), 5, 53).build(),
            XDP_PASS,
            stat::PASS,
        ),
    ];
    for n in 0..=max + 4 {
        for tpids in TPIDS {
            for vids in VIDS {
                let t = tags(n, tpids, vids);
                for (plain, want, counter) in &flows {
                    let frame = insert_tags(plain, &t);
                    let what = format!("{n} tags ({tpids}, {vids}): {frame:02x?}");
                    if n <= max {
                        assert_eq!(f.run_counted(&frame), (*want, vec![*counter]), "{what}");
                    } else {
                        // Out of the parser's reach while deny rules are in
                        // force: dropped, whatever the source.
                        assert_eq!(f.run_counted(&frame), (XDP_DROP, vec![stat::TOO_MANY_TAGS]), "{what}");
                    }
                }
            }
        }
        // Every cut inside the tag stack (and of the EtherType after it) is
        // unparsed; the cut after the 8th tag is too deep already.
        let frame = insert_tags(&flows[0].0, &tags(n, "mixed", "any"));
        for len in 14..(12 + 4 * n + 2).min(12 + 4 * max + 2) {
            let (v, moved) = f.run_counted(&frame[..len]);
            assert_eq!((v, moved), (XDP_PASS, vec![stat::UNPARSED]), "{n} tags cut at {len}");
        }
    }
    // Only 0x8100 and 0x88a8 are tags, to the kernel and to the parser: a
    // 0x9100 "tag" is just another EtherType.
    let legacy = insert_tags(&flows[0].0, &[(0x9100, 0)]);
    assert_eq!(f.run_counted(&legacy), (XDP_PASS, vec![stat::NON_IP]));
    let behind = insert_tags(&flows[0].0, &[(packet::ETH_P_8021Q, 0), (0x9100, 0)]);
    assert_eq!(f.run_counted(&behind), (XDP_PASS, vec![stat::NON_IP]));
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn too_many_tags_are_dropped_only_while_a_rule_could_drop() {
    use packet::insert_tags;
    let deep_tags = tags(sluice_abi::MAX_VLAN + 1, "802.1ad", "priority");
    let deep = insert_tags(&tcp("198.18.1.2", "198.18.2.2").build(), &deep_tags);
    let deep6 = insert_tags(&tcp("2001:2::2", "2001:2::3").build(), &deep_tags);
    let unparsed = (XDP_PASS, vec![stat::UNPARSED]);
    let dropped = (XDP_DROP, vec![stat::TOO_MANY_TAGS]);

    // No rules: nothing to enforce, passed as unparsed like any frame the
    // parser cannot read.
    let mut f = Fixture::new(&[]);
    assert_eq!(f.run_counted(&deep), unparsed);
    // Allow rules alone never drop anything.
    f.fw.add(vec![RuleSpec::new(Action::Allow, "0.0.0.0/0", false, None).unwrap()])
        .unwrap();
    assert_eq!(f.run_counted(&deep), unparsed, "allow rules only");
    // A limit rule could drop a packet: the frame is dropped, even one the
    // limit would not have charged.
    let lim = f.limit(LimitRequest {
        pps: Some(1_000_000_000),
        ..Default::default()
    });
    assert_eq!(f.run_counted(&deep), dropped, "a limit");
    assert_eq!(f.run_counted(&deep6), dropped, "a limit, IPv6");
    f.limits.delete(lim).unwrap();
    assert_eq!(f.run_counted(&deep), unparsed, "limit deleted");
    // Any deny rule, of either family or direction.
    for (cidr, dst) in [("203.0.113.0/24", false), ("2001:db8::/32", true)] {
        f.fw.add(vec![RuleSpec::new(Action::Deny, cidr, dst, None).unwrap()])
            .unwrap();
        assert_eq!(f.run_counted(&deep), dropped, "deny {cidr}");
        assert_eq!(f.run_counted(&deep6), dropped, "deny {cidr}, IPv6");
        let id = f.fw.list(Action::Deny).unwrap()[0].0.id;
        f.fw.delete(Action::Deny, &sluice::firewall::Which::Id(id)).unwrap();
        assert_eq!(f.run_counted(&deep), unparsed, "deny {cidr} deleted");
    }
    // Counted with its bytes in the new counter, no rule's counter moved,
    // and the drop event names it.
    let before = f.stats()[stat::TOO_MANY_TAGS as usize];
    let mut ev = f.events.take().unwrap();
    ev.configure(0, 1000).unwrap();
    let mut ring = ev.take_ring().unwrap();
    f.fw.add(vec![RuleSpec::new(Action::Deny, "198.18.9.9", false, None).unwrap()])
        .unwrap();
    assert_eq!(f.run(&deep), XDP_DROP);
    let after = f.stats()[stat::TOO_MANY_TAGS as usize];
    assert_eq!(
        (after.packets - before.packets, after.bytes - before.bytes),
        (1, deep.len() as u64)
    );
    assert_eq!(f.rule_packets(Action::Deny), vec![0]);
    assert_eq!(f.rule_packets(Action::Allow), vec![0]);
    let mut events = Vec::new();
    while ring.poll(1, |item| events.push(sluice::visibility::decode::decode(item))) > 0 {}
    match events.as_slice() {
        [Some(sluice::visibility::RawEvent::Drop(p))] => {
            assert_eq!(
                (p.verdict as u32, p.rule_kind, p.len),
                (stat::TOO_MANY_TAGS, 0, deep.len() as u32)
            );
        }
        other => panic!("want one drop event, got {other:?}"),
    }
}

/// The verifier's work stays far from its 1M-instruction limit. The VLAN
/// walk is what made it grow: a constant tag offset per tag count had the
/// rest of each program verified once per count (the XDP program at 0.92M,
/// the TC programs refused).
#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn the_programs_verify_within_an_instruction_budget() {
    let mut f = Fixture::new(&[]);
    let xdp = f.dp.xdp_program().info().unwrap().verified_instruction_count();
    let tc: Vec<Option<u32>> = [sluice_abi::tc::INGRESS, sluice_abi::tc::EGRESS]
        .iter()
        .map(|n| f.dp.tc_program(n).unwrap().info().unwrap().verified_instruction_count())
        .collect();
    eprintln!("verified instructions: XDP {xdp:?}, TC {tc:?}");
    assert!(xdp.unwrap() < 400_000, "XDP: {xdp:?}");
    for n in tc {
        assert!(n.unwrap() < 200_000, "TC: {n:?}");
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn ipv4_options_and_fragments() {
    let mut f = Fixture::new(&[(Action::Deny, "198.18.1.2", false)]);
    // 40 bytes of options (IHL 15): NOPs then a record-route-like blob.
    let mut opts = vec![1u8; 36];
    opts.extend_from_slice(&[7, 3, 4, 0]);
    let with_opts = tcp("198.18.1.2", "198.18.2.2").with_ipv4_options(&opts).build();
    assert_eq!(with_opts[14], 0x4f);
    assert_eq!(f.run_counted(&with_opts), (XDP_DROP, vec![stat::DENY]));
    let other = tcp("198.18.5.5", "198.18.2.2").with_ipv4_options(&opts).build();
    assert_eq!(f.run_counted(&other), (XDP_PASS, vec![stat::PASS]));

    // A non-first fragment has no L4 header: still matched by address,
    // counted as a fragment, and its payload is never read as ports.
    let frag = tcp("198.18.1.2", "198.18.2.2")
        .with_frag_offset(185)
        .with_payload(&[0xab; 64])
        .build();
    assert_eq!(f.run_counted(&frag), (XDP_DROP, vec![stat::DENY, stat::FRAGMENT]));
    let frag6 = Packet::udp(ip("2001:2::5"), ip("2001:2::6"), 1, 2)
        .with_ipv6_ext(&[packet::IPPROTO_FRAGMENT])
        .build();
    // First fragment (offset 0): L4 is parsed normally.
    assert_eq!(f.run_counted(&frag6), (XDP_PASS, vec![stat::PASS]));
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn every_truncation_of_tcp_ipv4_and_ipv6() {
    let mut f = Fixture::new(&[(Action::Deny, "198.18.1.2", false), (Action::Deny, "2001:2::2", false)]);
    for (frame, l3_end) in [
        (tcp("198.18.1.2", "198.18.2.2").build(), 14 + 20),
        (tcp("2001:2::2", "2001:2::3").build(), 14 + 40),
    ] {
        let full = frame.len();
        // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header.
        for len in 14..=full {
            let (v, moved) = f.run_counted(&frame[..len]);
            if len < l3_end {
                assert_eq!((v, moved), (XDP_PASS, vec![stat::UNPARSED]), "len {len} of {full}");
            } else if len < full {
                assert_eq!(
                    (v, moved),
                    (XDP_DROP, vec![stat::DENY, stat::L4_UNPARSED]),
                    "len {len} of {full}"
                );
            } else {
                assert_eq!((v, moved), (XDP_DROP, vec![stat::DENY]), "len {len} of {full}");
            }
        }
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn ipv6_extension_chains_within_and_beyond_the_bound() {
    let mut f = Fixture::new(&[(Action::Deny, "2001:2::2", false)]);
    let chain = |n: usize| {
        let ext: Vec<u8> = (0..n)
            .map(|i| {
                if i == 0 {
                    packet::IPPROTO_HOPOPTS
                } else {
                    packet::IPPROTO_DSTOPTS
                }
            })
            .collect();
        tcp("2001:2::2", "2001:2::3").with_ipv6_ext(&ext).build()
    };
    let ok = chain(sluice_abi::MAX_IPV6_EXT - 1);
    assert_eq!(f.run_counted(&ok), (XDP_DROP, vec![stat::DENY]));
    // Exactly as many as the bound: all walked, and the transport header
    // behind them is reached too.
    let full = chain(sluice_abi::MAX_IPV6_EXT);
    assert_eq!(f.run_counted(&full), (XDP_DROP, vec![stat::DENY]));
    // One more header than the walk allows: the addresses are still known and
    // enforced; only the transport header is reported as out of reach.
    let long = chain(sluice_abi::MAX_IPV6_EXT + 1);
    assert_eq!(f.run_counted(&long), (XDP_DROP, vec![stat::DENY, stat::L4_UNPARSED]));
    let long_other = Packet::tcp(ip("2001:2::9"), ip("2001:2::3"), 1, 2)
        .with_ipv6_ext(&[packet::IPPROTO_DSTOPTS; 12])
        .build();
    assert_eq!(
        f.run_counted(&long_other),
        (XDP_PASS, vec![stat::PASS, stat::L4_UNPARSED])
    );
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn hostile_and_non_ip_frames_are_passed_and_counted() {
    let mut f = Fixture::new(&[(Action::Deny, "198.18.1.2", false), (Action::Deny, "2001:2::2", false)]);
    assert_eq!(f.run_counted(&packet::arp_frame()), (XDP_PASS, vec![stat::NON_IP]));

    let good = tcp("198.18.1.2", "198.18.2.2").build();
    // IHL below 5.
    let mut bad = good.clone();
    bad[14] = 0x44;
    assert_eq!(f.run_counted(&bad), (XDP_PASS, vec![stat::UNPARSED]));
    // IHL 15 but the frame ends first.
    let mut bad = good.clone();
    bad[14] = 0x4f;
    bad.truncate(14 + 40);
    assert_eq!(f.run_counted(&bad), (XDP_PASS, vec![stat::UNPARSED]));
    // EtherType IPv4 carrying an IPv6 header.
    let mut bad = tcp("2001:2::2", "2001:2::3").build();
    bad[12..14].copy_from_slice(&packet::ETH_P_IP.to_be_bytes());
    assert_eq!(f.run_counted(&bad), (XDP_PASS, vec![stat::UNPARSED]));
    // Total length shorter than the header.
    let mut bad = good.clone();
    bad[16..18].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(f.run_counted(&bad), (XDP_PASS, vec![stat::UNPARSED]));
    // IPv6 extension header whose length points far past the frame.
    let mut bad = tcp("2001:2::2", "2001:2::3")
        .with_ipv6_ext(&[packet::IPPROTO_HOPOPTS])
        .build();
    bad[14 + 40 + 1] = 255;
    assert_eq!(f.run_counted(&bad), (XDP_DROP, vec![stat::DENY, stat::L4_UNPARSED]));
    // ICMP and UDP parse fine.
    let echo = Packet::new(ip("198.18.1.2"), ip("198.18.2.2"), L4::Echo).build();
    assert_eq!(f.run_counted(&echo), (XDP_DROP, vec![stat::DENY]));
    let udp = Packet::udp(ip("198.18.3.3"), ip("198.18.2.2"), 53, 53).build();
    assert_eq!(f.run_counted(&udp), (XDP_PASS, vec![stat::PASS]));
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn rule_deletion_takes_effect_and_empty_tables_are_skipped() {
    let mut f = Fixture::new(&[(Action::Deny, "198.18.1.2", false)]);
    let frame = tcp("198.18.1.2", "198.18.2.2").build();
    assert_eq!(f.run(&frame), XDP_DROP);
    let id = f.fw.list(Action::Deny).unwrap()[0].0.id;
    f.fw.delete(Action::Deny, &sluice::firewall::Which::Id(id)).unwrap();
    assert_eq!(f.run_counted(&frame), (XDP_PASS, vec![stat::PASS]));
}

// ---- Rate limits (issue 3): matching, kinds, per-source, ordering ----

use sluice::limits::LimitRequest;

impl Fixture {
    fn limit(&mut self, req: LimitRequest) -> i64 {
        self.limits.add(req.validate().unwrap()).unwrap().id
    }

    /// How many of `n` copies of the frame pass.
    fn passes(&mut self, frame: &[u8], n: usize) -> usize {
        (0..n).filter(|_| self.run(frame) == XDP_PASS).count()
    }

    fn limit_stats(&self, id: i64) -> sluice::limits::LimitStats {
        self.limits
            .list()
            .unwrap()
            .into_iter()
            .find(|(l, _)| l.id == id)
            .unwrap()
            .1
    }
}

/// A 1 pps limit: in a test that lasts milliseconds, only the burst passes.
fn slow(burst: i64) -> LimitRequest {
    LimitRequest {
        pps: Some(1),
        burst: Some(burst),
        ..Default::default()
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn limit_by_source_cidr_passes_the_burst_and_drops_the_rest() {
    let mut f = Fixture::new(&[]);
    let id = f.limit(LimitRequest {
        src: Some("198.18.1.0/24".into()),
        ..slow(3)
    });
    let a = tcp("198.18.1.2", "198.18.2.2").build();
    let (v, moved) = f.run_counted(&a);
    assert_eq!((v, moved), (XDP_PASS, vec![stat::PASS]));
    assert_eq!(f.passes(&a, 4), 2);
    assert_eq!(f.run_counted(&a), (XDP_DROP, vec![stat::LIMIT]));
    assert_eq!(
        f.passes(&tcp("198.18.2.2", "198.18.1.2").build(), 10),
        10,
        "other sources untouched"
    );
    let st = f.limit_stats(id);
    assert_eq!((st.passed, st.dropped), (3, 3));
    assert_eq!(st.passed_bytes, 3 * a.len() as u64);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn limit_by_destination_port_and_protocol() {
    let mut f = Fixture::new(&[]);
    f.limit(LimitRequest {
        dst: Some("198.18.2.2".into()),
        dst_port: Some("80/tcp".into()),
        ..slow(2)
    });
    let web = Packet::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 80).build();
    assert_eq!(f.passes(&web, 5), 2);
    assert_eq!(
        f.passes(&Packet::udp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 80).build(), 5),
        5,
        "udp"
    );
    assert_eq!(
        f.passes(&Packet::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 81).build(), 5),
        5,
        "port"
    );
    assert_eq!(
        f.passes(&Packet::tcp(ip("198.18.1.2"), ip("198.18.2.3"), 40000, 80).build(), 5),
        5,
        "dst"
    );
    // No transport header, no port match: fragments are not charged.
    let frag = Packet::tcp(ip("198.18.1.2"), ip("198.18.2.2"), 40000, 80)
        .with_frag_offset(10)
        .build();
    assert_eq!(f.passes(&frag, 5), 5);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn conns_counts_only_syns() {
    let mut f = Fixture::new(&[]);
    f.limit(LimitRequest {
        pps: None,
        conns: Some(1),
        burst: Some(2),
        dst_port: Some("80".into()),
        ..Default::default()
    });
    let seg = |flags| {
        Packet::new(
            ip("198.18.1.2"),
            ip("198.18.2.2"),
            L4::Tcp {
                sport: 40000,
                dport: 80,
                flags,
            },
        )
        .build()
    };
    assert_eq!(f.passes(&seg(0x02), 5), 2, "SYNs beyond the burst are dropped");
    assert_eq!(f.passes(&seg(0x10), 5), 5, "ACKs are not connection attempts");
    assert_eq!(f.passes(&seg(0x12), 5), 5, "SYN-ACKs are not connection attempts");
    assert_eq!(
        f.passes(&Packet::udp(ip("198.18.1.2"), ip("198.18.2.2"), 1, 80).build(), 5),
        5
    );
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn per_source_buckets_are_independent_and_counted() {
    let mut f = Fixture::new(&[]);
    let id = f.limit(LimitRequest {
        per_source: true,
        ..slow(2)
    });
    for src in ["198.18.1.2", "198.18.1.3", "2001:2::5"] {
        let dst = if src.contains(':') { "2001:2::1" } else { "198.18.2.2" };
        assert_eq!(f.passes(&tcp(src, dst).build(), 5), 2, "{src}");
    }
    let st = f.limit_stats(id);
    assert_eq!((st.passed, st.dropped, st.sources, st.evictions), (6, 9, 3, 0));
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn the_per_source_lru_stays_within_its_bound() {
    let mut f = Fixture::new(&[]); // limit_sources = 64
    let id = f.limit(LimitRequest {
        per_source: true,
        ..slow(1)
    });
    for i in 0..500u32 {
        let src = format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250);
        assert_eq!(f.run(&tcp(&src, "198.18.9.9").build()), XDP_PASS);
    }
    let st = f.limit_stats(id);
    assert!(st.sources <= 64, "{st:?}");
    assert_eq!(st.sources + st.evictions, 500, "{st:?}");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn bytes_per_second_charges_frame_length() {
    let mut f = Fixture::new(&[]);
    f.limit(LimitRequest {
        bps: Some(1518),
        burst: Some(1518),
        ..Default::default()
    });
    let frame = tcp("198.18.1.2", "198.18.2.2").build();
    assert_eq!(frame.len(), 54);
    assert_eq!(f.passes(&frame, 40), 1518 / 54);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn ipv6_limits_and_family_mismatch() {
    let mut f = Fixture::new(&[]);
    f.limit(LimitRequest {
        src: Some("2001:2:0:1::/64".into()),
        ..slow(1)
    });
    assert_eq!(f.passes(&tcp("2001:2:0:1::2", "2001:2::1").build(), 3), 1);
    assert_eq!(f.passes(&tcp("2001:2:0:2::2", "2001:2::1").build(), 3), 3);
    assert_eq!(
        f.passes(&tcp("198.18.1.2", "198.18.2.2").build(), 3),
        3,
        "an IPv6 rule never matches IPv4"
    );
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_packet_must_pass_every_rule_it_matches_and_the_firewall_comes_first() {
    let mut f = Fixture::new(&[
        (Action::Deny, "198.18.1.9", false),
        (Action::Allow, "198.18.1.7", false),
    ]);
    let broad = f.limit(slow(10));
    let narrow = f.limit(LimitRequest {
        src: Some("198.18.1.2".into()),
        ..slow(1)
    });
    let a = tcp("198.18.1.2", "198.18.2.2").build();
    assert_eq!(f.passes(&a, 3), 1);
    assert_eq!(f.limit_stats(narrow).dropped, 2);
    assert_eq!(f.limit_stats(broad).passed, 3, "the broad rule saw all three");
    // Deny drops before any limit is charged; allow skips the limits.
    assert_eq!(
        f.run_counted(&tcp("198.18.1.9", "198.18.2.2").build()),
        (XDP_DROP, vec![stat::DENY])
    );
    assert_eq!(f.passes(&tcp("198.18.1.7", "198.18.2.2").build(), 20), 20);
    assert_eq!(f.limit_stats(broad).passed, 3);
    // Deleting a rule takes effect at once.
    f.limits.delete(narrow).unwrap();
    f.limits.delete(broad).unwrap();
    assert_eq!(f.passes(&a, 20), 20);
}

// ---- Events (issue 4): loss accounting in the kernel ----

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn ring_overflow_is_counted_exactly_when_the_consumer_is_slow() {
    require_root();
    let pins = PinDir::new("ring");
    // The smallest ring (one page) and no reader while packets run: most
    // sampled events cannot be delivered and must be counted as lost.
    let cap = Capacity {
        max_rules: 16,
        limit_sources: 16,
        ring_bytes: 4096,
        ..Default::default()
    };
    let (mut dp, maps) = Dataplane::load(&pins.0, cap).unwrap();
    let mut ev = maps.events;
    ev.configure(1, 1000).unwrap(); // every packet is sampled
    let mut ring = ev.take_ring().unwrap();
    let frame = tcp("198.18.1.2", "198.18.2.2").build();
    let n = 5000u64;
    let opts = TestRunOptions {
        data_in: Some(&frame),
        repeat: n as u32,
        ..Default::default()
    };
    assert_eq!(dp.xdp_program().test_run(opts).unwrap().return_value, XDP_PASS);
    let mut received = 0u64;
    while ring.poll(1, |item| {
        assert!(matches!(
            sluice::visibility::decode::decode(item),
            Some(sluice::visibility::RawEvent::Packet(_))
        ));
        received += 1;
    }) > 0
    {}
    let lost = ev.lost().unwrap()[sluice_abi::ev::LOST_PACKET as usize];
    assert!(received > 0 && lost > 0, "received {received}, lost {lost}");
    assert_eq!(received + lost, n, "received + counted lost == generated");
    // Drop events are capped per CPU per second; the excess is counted too.
    let mut f = Fixture::new(&[(Action::Deny, "198.18.1.2", false)]);
    let mut ev = f.events.take().unwrap();
    ev.configure(0, 100).unwrap();
    let mut ring = ev.take_ring().unwrap();
    let opts = TestRunOptions {
        data_in: Some(&frame),
        repeat: 1000,
        ..Default::default()
    };
    assert_eq!(f.dp.xdp_program().test_run(opts).unwrap().return_value, XDP_DROP);
    let mut drops = 0u64;
    while ring.poll(1, |item| {
        if let Some(sluice::visibility::RawEvent::Drop(p)) = sluice::visibility::decode::decode(item) {
            assert_eq!(p.rule_kind, sluice_abi::ev::RULE_DENY);
            drops += 1;
        }
    }) > 0
    {}
    let limited = ev.lost().unwrap()[sluice_abi::ev::LOST_DROP_LIMIT as usize];
    assert!(drops >= 100, "{drops}");
    assert_eq!(drops + limited, 1000, "delivered + rate-limited == dropped packets");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn ring_loss_is_counted_exactly_with_a_slow_reader_running_concurrently() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    require_root();
    let pins = PinDir::new("slowring");
    // One page of ring: 51 packet records (an 8-byte record header plus the
    // 72-byte event each). A reader that only read after the injection
    // could never receive more than that.
    const RING_BYTES: u32 = 4096;
    let ring_holds = RING_BYTES as u64 / (8 + std::mem::size_of::<sluice_abi::EvPacket>() as u64);
    let cap = Capacity {
        max_rules: 16,
        limit_sources: 16,
        ring_bytes: RING_BYTES,
        ..Default::default()
    };
    let (mut dp, maps) = Dataplane::load(&pins.0, cap).unwrap();
    let mut ev = maps.events;
    ev.configure(1, 1000).unwrap(); // every packet is sampled
    let mut ring = ev.take_ring().unwrap();
    assert_eq!(ev.lost().unwrap(), [0; sluice_abi::ev::LOST_COUNT as usize]);

    // The reader consumes while the packets run, but slowly: it sleeps 1 ms
    // after every record, far below the rate the kernel writes at.
    let injected = Arc::new(AtomicBool::new(false));
    let reader = {
        let injected = injected.clone();
        std::thread::spawn(move || {
            let (mut received, mut during) = (0u64, 0u64);
            loop {
                // Seen before this pass: every record of the injection is
                // committed, so the pass below drains the ring to the end.
                let last = injected.load(Ordering::SeqCst);
                while ring.poll(1, |item| {
                    match sluice::visibility::decode::decode(item) {
                        Some(sluice::visibility::RawEvent::Packet(p)) => {
                            assert_eq!((p.verdict as u32, p.dport), (stat::PASS, 80))
                        }
                        other => panic!("unexpected event {other:?}"),
                    }
                    received += 1;
                    if !last {
                        during += 1;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }) > 0
                {}
                if last {
                    return (received, during);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    // N packets in 40 runs of 250, 3 ms apart: each run overfills the ring
    // at once, and the reader frees a few slots between runs.
    let frame = tcp("198.18.1.2", "198.18.2.2").build();
    let (runs, per_run) = (40u32, 250u32);
    let n = (runs * per_run) as u64;
    let t0 = Instant::now();
    for _ in 0..runs {
        let opts = TestRunOptions {
            data_in: Some(&frame),
            repeat: per_run,
            ..Default::default()
        };
        assert_eq!(dp.xdp_program().test_run(opts).unwrap().return_value, XDP_PASS);
        std::thread::sleep(Duration::from_millis(3));
    }
    let injecting = t0.elapsed();
    injected.store(true, Ordering::SeqCst);
    let (received, during) = reader.join().unwrap();
    let lost = ev.lost().unwrap();
    let packet_lost = lost[sluice_abi::ev::LOST_PACKET as usize];
    eprintln!(
        "slow reader: N {n} in {injecting:?}, received {received} ({during} while injecting), lost {packet_lost}, ring holds {ring_holds}"
    );
    assert_eq!(received + packet_lost, n, "received + counted lost == generated");
    assert!(packet_lost > 0, "the slow reader fell behind: lost {packet_lost}");
    assert!(
        during > ring_holds,
        "the reader consumed while packets ran: {during} received during injection, ring holds {ring_holds}"
    );
    assert!(received < n, "received {received} of {n}");
    // Only packet events were generated, so only their counter moved.
    for (i, v) in lost.iter().enumerate() {
        if i as u32 != sluice_abi::ev::LOST_PACKET {
            assert_eq!(*v, 0, "lost[{}]", sluice_abi::ev::LOST_NAMES[i]);
        }
    }
}

// ---- IPv6 non-first fragments: addresses only, never ports ----

/// A non-first IPv6 fragment (offset 185 * 8 bytes) of a TCP SYN from `src`
/// to `dst`:`dport`. Its payload is the very TCP header the first fragment
/// would carry, so a parser that ignored the offset would read ports 40000
/// -> `dport` and a SYN out of it and be caught by the port and conns rules.
fn frag6(src: &str, dst: &str, dport: u16, ext: &[u8]) -> Vec<u8> {
    let whole = Packet::tcp(ip(src), ip(dst), 40000, dport).build();
    Packet::tcp(ip(src), ip(dst), 40000, dport)
        .with_ipv6_ext(ext)
        .with_frag_offset(185)
        .with_payload(&whole[whole.len() - 20..])
        .build()
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn ipv6_non_first_fragments_are_matched_by_address_only() {
    use packet::{IPPROTO_FRAGMENT as FRAG, IPPROTO_HOPOPTS as HOP};
    let mut f = Fixture::new(&[
        (Action::Deny, "2001:2::2", false),
        (Action::Deny, "2001:2:0:9::9", true),
    ]);
    // Deny by source and by destination still drops it, with the fragment
    // header first or behind another extension header; every one is also
    // counted as a fragment.
    let cases = [
        ("2001:2::2", "2001:2::3", &[FRAG][..], XDP_DROP, stat::DENY),
        ("2001:2::2", "2001:2::3", &[HOP, FRAG][..], XDP_DROP, stat::DENY),
        ("2001:2::3", "2001:2:0:9::9", &[FRAG][..], XDP_DROP, stat::DENY),
        ("2001:2::3", "2001:2:0:9::9", &[HOP, FRAG][..], XDP_DROP, stat::DENY),
        ("2001:2::3", "2001:2::2", &[FRAG][..], XDP_PASS, stat::PASS), // dst in a src-only rule
        ("2001:2:0:9::9", "2001:2::3", &[FRAG][..], XDP_PASS, stat::PASS), // src in a dst-only rule
    ];
    for (src, dst, ext, want, counter) in cases {
        let (v, moved) = f.run_counted(&frag6(src, dst, 80, ext));
        assert_eq!(v, want, "{src} -> {dst} {ext:?}");
        assert_eq!(moved, vec![counter, stat::FRAGMENT], "{src} -> {dst} {ext:?}");
    }
    assert_eq!(f.rule_packets(Action::Deny), vec![2, 2]);
    // The first fragment (offset 0) has its transport header: not a
    // `fragment`, and parsed normally.
    let first = Packet::tcp(ip("2001:2::2"), ip("2001:2::3"), 40000, 80)
        .with_ipv6_ext(&[FRAG])
        .build();
    assert_eq!(f.run_counted(&first), (XDP_DROP, vec![stat::DENY]));

    // Limits: a port rule and a conns rule need the transport header, so
    // they never match a non-first fragment; an address-only rule does.
    let mut f = Fixture::new(&[]);
    let port = f.limit(LimitRequest {
        dst: Some("2001:2::1".into()),
        dst_port: Some("80/tcp".into()),
        ..slow(2)
    });
    let conns = f.limit(LimitRequest {
        pps: None,
        conns: Some(1),
        burst: Some(1),
        dst_port: Some("443".into()),
        ..Default::default()
    });
    let by_addr = f.limit(LimitRequest {
        src: Some("2001:2:0:5::/64".into()),
        ..slow(1)
    });
    let web = Packet::tcp(ip("2001:2::7"), ip("2001:2::1"), 40000, 80).build();
    assert_eq!(f.passes(&web, 5), 2);
    let first = Packet::tcp(ip("2001:2::7"), ip("2001:2::1"), 40000, 80)
        .with_ipv6_ext(&[FRAG])
        .build();
    assert_eq!(f.run(&first), XDP_DROP, "a first fragment is charged like any packet");
    let syn = Packet::tcp(ip("2001:2::7"), ip("2001:2::1"), 40000, 443).build();
    assert_eq!(f.passes(&syn, 3), 1);
    // Both buckets are empty now, yet no fragment is charged or dropped.
    for (dport, ext) in [
        (80, &[FRAG][..]),
        (80, &[HOP, FRAG]),
        (443, &[FRAG]),
        (443, &[HOP, FRAG]),
    ] {
        let frag = frag6("2001:2::7", "2001:2::1", dport, ext);
        let (v, moved) = f.run_counted(&frag);
        assert_eq!(
            (v, moved),
            (XDP_PASS, vec![stat::PASS, stat::FRAGMENT]),
            "{dport} {ext:?}"
        );
        assert_eq!(f.passes(&frag, 4), 4, "{dport} {ext:?}");
    }
    let st = f.limit_stats(port);
    assert_eq!((st.passed, st.dropped), (2, 4), "port rule: only the whole packets");
    let st = f.limit_stats(conns);
    assert_eq!((st.passed, st.dropped), (1, 2), "conns rule: only the whole SYNs");
    // An address-only rule applies to fragments: 1 of 3 passes.
    assert_eq!(f.passes(&frag6("2001:2:0:5::7", "2001:2::1", 80, &[FRAG]), 3), 1);
    let st = f.limit_stats(by_addr);
    assert_eq!((st.passed, st.dropped), (1, 2));
}

// ---- Allow lists: every family and direction ----

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn allow_wins_over_a_covering_deny_for_ipv4_destination_and_ipv6_source() {
    let mut f = Fixture::new(&[
        (Action::Deny, "198.18.0.0/15", false),
        (Action::Allow, "198.18.5.5", true),
        (Action::Deny, "2001:2::/48", true),
        (Action::Allow, "2001:2:0:7::/64", false),
    ]);
    let cases = [
        // IPv4 allow-dst inside a deny-src.
        ("198.18.1.2", "198.18.5.5", XDP_PASS, stat::ALLOW),
        ("198.18.1.2", "198.18.5.6", XDP_DROP, stat::DENY),
        ("198.18.5.5", "198.18.1.2", XDP_DROP, stat::DENY), // allowed address as the source
        // IPv6 allow-src inside a deny-dst.
        ("2001:2:0:7::1", "2001:2::1", XDP_PASS, stat::ALLOW),
        ("2001:2:0:8::1", "2001:2::1", XDP_DROP, stat::DENY),
        ("2001:2::1", "2001:2:0:7::1", XDP_DROP, stat::DENY), // allowed prefix as the destination
    ];
    for (src, dst, want, counter) in cases {
        let (v, moved) = f.run_counted(&tcp(src, dst).build());
        assert_eq!(v, want, "{src} -> {dst}");
        assert_eq!(moved, vec![counter], "{src} -> {dst}");
    }
    // Each allow rule passed one packet; each deny rule dropped two.
    assert_eq!(f.rule_packets(Action::Allow), vec![1, 1]);
    assert_eq!(f.rule_packets(Action::Deny), vec![2, 2]);
}

// ---- Packet sampling: one in N passing packets per CPU ----

/// Keeps the calling test thread on the CPU it is running on, so that every
/// BPF_PROG_TEST_RUN it makes runs there too (a run with `repeat` may
/// otherwise migrate when it yields between repetitions).
fn stay_on_this_cpu() {
    // SAFETY: no preconditions; an all-zero cpu_set_t is a valid empty set,
    // CPU_SET stays in bounds for a CPU the kernel reported, and pid 0 is
    // the calling thread.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn packet_sampling_takes_one_in_n_passing_packets() {
    stay_on_this_cpu();
    let mut f = Fixture::new(&[]);
    let mut ev = f.events.take().unwrap();
    let mut ring = ev.take_ring().unwrap();
    let frame = tcp("198.18.1.2", "198.18.2.2").build();
    // Sets 1-in-`every`, runs 100 passing packets, and returns the packet
    // events delivered plus those counted lost.
    let mut sample = |f: &mut Fixture, every: u32| {
        ev.configure(every, 1000).unwrap();
        let lost_before = ev.lost().unwrap()[sluice_abi::ev::LOST_PACKET as usize];
        let opts = TestRunOptions {
            data_in: Some(&frame),
            repeat: 100,
            ..Default::default()
        };
        assert_eq!(f.dp.xdp_program().test_run(opts).unwrap().return_value, XDP_PASS);
        let mut received = 0u64;
        while ring.poll(1, |item| match sluice::visibility::decode::decode(item) {
            Some(sluice::visibility::RawEvent::Packet(p)) => {
                assert_eq!((p.verdict as u32, p.dport), (stat::PASS, 80));
                received += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }) > 0
        {}
        let lost = ev.lost().unwrap()[sluice_abi::ev::LOST_PACKET as usize] - lost_before;
        assert_eq!(lost, 0, "the ring has room for 100 events");
        received + lost
    };
    // The per-CPU counter starts at 0 in a freshly loaded object (it is not
    // pinned) and counts only while sampling is on; packet number n (from
    // 1) is sampled when n % every == 0. Every run here is on one CPU.
    assert_eq!(sample(&mut f, 0), 0, "off: the counter does not move");
    assert_eq!(sample(&mut f, 4), 25, "n = 1..=100: 4, 8, ..., 100");
    assert_eq!(sample(&mut f, 1), 100, "every packet");
    // The count depends on the counter's phase when 100 is not a multiple
    // of N: n = 201..=300 holds the 34 multiples of 3 from 201 to 300.
    assert_eq!(sample(&mut f, 3), 34, "n = 201..=300");
}

// ---- Warm-up after idle (Sentinel cold start) ----
//
// The rules below allow 1000 pps with a burst of 100 and a 500 ms warm-up.
// In gcra.h terms: a packet costs c = 1 ms of rate-time, tau = 100 c, and a
// packet conforms while TAT - now <= tau - c = 99 ms, then pushes TAT by its
// charge. Over a burst far shorter than 1 ms of rate-time per packet (one
// BPF_PROG_TEST_RUN with `repeat`, ~0.1-1 us per packet), starting from a
// full bucket (TAT <= now):
//   warm (charge c):   k * 1 ms <= 99 ms for k = 0..=99  -> 100 pass;
//   cold (charge 3 c): k * 3 ms <= 99 ms for k = 0..=33  ->  34 pass,
// since p = elapsed * 1024 / 500 ms stays 0 for the first 488 us after
// warm_start (a new per-source bucket, or a bucket coming back from idle:
// 34 exactly). A shared rule's warm_start is set when the rule is added, a
// few ms before its first packet: at 10 ms, p = 20 scales c by 3072 / 1064
// = 2.89 and k <= 34 -> 35 pass (35-36 measured). Each ms the burst lasts
// adds at most one packet (a third of one cold). The bands below leave
// room for a burst slowed down by a busy machine.

const WARM_BURST: u64 = 100;
const WARMUP: Duration = Duration::from_millis(500);
/// Packets in one "instantaneous" burst.
const BURST_RUN: u32 = 1000;

fn warm_limit(f: &mut Fixture, per_source: bool) -> i64 {
    f.limit(LimitRequest {
        src: Some("198.18.0.0/15".into()),
        pps: Some(1000),
        burst: Some(WARM_BURST as i64),
        per_source,
        warmup: Some("500ms".into()),
        ..Default::default()
    })
}

fn assert_cold(passed: u64, what: &str) {
    assert!(
        (30..=WARM_BURST * 6 / 10).contains(&passed),
        "{what}: {passed} passed, want about a third of {WARM_BURST} (34)"
    );
}

fn assert_warm(passed: u64, what: &str) {
    assert!(
        (WARM_BURST * 85 / 100..=WARM_BURST * 13 / 10).contains(&passed),
        "{what}: {passed} passed, want about the full burst of {WARM_BURST}"
    );
}

impl Fixture {
    /// Runs `BURST_RUN` copies of the frame in one BPF_PROG_TEST_RUN and
    /// returns how many limit rule `id` passed.
    fn burst(&mut self, id: i64, frame: &[u8]) -> u64 {
        let before = self.limit_stats(id);
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: BURST_RUN,
            ..Default::default()
        };
        self.dp.xdp_program().test_run(opts).expect("test_run");
        let after = self.limit_stats(id);
        let passed = after.passed - before.passed;
        assert_eq!(
            passed + after.dropped - before.dropped,
            BURST_RUN as u64,
            "every packet is charged"
        );
        passed
    }

    /// One packet every 10 ms for `d`: a tenth of the rate, never idle for
    /// anything near the warm-up period.
    fn trickle(&mut self, frame: &[u8], d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.run(frame);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Long enough after a trickle for the bucket to refill (TAT was at most
/// one 3 ms charge ahead), far shorter than the warm-up period.
const REFILL: Duration = Duration::from_millis(150);
/// Idle for longer than the warm-up period.
const IDLE: Duration = Duration::from_millis(700);

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_shared_limit_warms_up_with_traffic_and_cools_down_when_idle() {
    let mut f = Fixture::new(&[]);
    let id = warm_limit(&mut f, false);
    let a = tcp("198.18.1.2", "198.18.2.2").build();
    let b = tcp("198.18.1.3", "198.18.2.2").build();
    // (a) Just created: cold.
    let cold = f.burst(id, &a);
    // (b) Steady traffic for 1.5 warm-ups (from another source: the bucket
    // is the rule's), then a pause that refills the bucket: warm.
    f.trickle(&b, WARMUP * 3 / 2);
    std::thread::sleep(REFILL);
    let warm = f.burst(id, &a);
    // (c) Idle for longer than the warm-up: cold again.
    std::thread::sleep(IDLE);
    let cold_again = f.burst(id, &a);
    eprintln!("shared: cold {cold}, warm {warm}, cold again {cold_again}");
    assert_cold(cold, "new rule");
    assert_warm(warm, "after steady traffic");
    assert_cold(cold_again, "after idling");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn per_source_limits_warm_up_and_cool_down_per_source() {
    let mut f = Fixture::new(&[]);
    let id = warm_limit(&mut f, true);
    let a = tcp("198.18.1.2", "198.18.2.2").build();
    let b = tcp("198.18.1.3", "198.18.2.2").build();
    // (a) A's bucket is new: cold.
    let a_cold = f.burst(id, &a);
    // (b) A trickles for 1.5 warm-ups, pauses to refill: warm. B is seen for
    // the first time now, long after the rule was created: its own bucket
    // starts cold.
    f.trickle(&a, WARMUP * 3 / 2);
    std::thread::sleep(REFILL);
    let a_warm = f.burst(id, &a);
    let b_cold = f.burst(id, &b);
    // (c) A idles while B trickles: B's traffic keeps only B's bucket warm.
    f.trickle(&b, IDLE);
    std::thread::sleep(REFILL);
    let a_cold_again = f.burst(id, &a);
    let b_warm = f.burst(id, &b);
    eprintln!("per-source: A cold {a_cold}, warm {a_warm}, cold again {a_cold_again}; B cold {b_cold}, warm {b_warm}");
    assert_cold(a_cold, "A, new bucket");
    assert_warm(a_warm, "A after steady traffic");
    assert_cold(b_cold, "B, new bucket of an old rule");
    assert_cold(a_cold_again, "A after idling while B was busy");
    assert_warm(b_warm, "B after steady traffic");
    assert_eq!(f.limit_stats(id).sources, 2);
}
