//! Tier 2: the TC forward/redirect programs run by the kernel
//! (BPF_PROG_TEST_RUN) on crafted frames. Rules go in through the real
//! `Forwarder` controller and kernel maps; every rewritten frame is checked by an
//! independent parser and checksum implementation (`sluice_proto::verify`),
//! and frames that must not be touched (fragments, routing headers,
//! truncated headers, unrelated traffic) must come back byte-identical.
//! The L7 capture of forwarded flows is read back from the event ring.
//! Needs root.

mod common;

use std::net::{IpAddr, SocketAddr};

use aya::programs::{TestRun, TestRunOptions};
use common::{require_root, PinDir};
use sluice::{
    dataplane::{Capacity, Dataplane, EventMaps, L7CaptureMaps},
    forward::{ForwardRequest, Forwarder, RedirectRequest},
    store::Store,
};
use sluice_abi::tc;
use sluice_proto::{
    packet::{Packet, L4},
    verify::{verify, Parsed},
};

const TCX_NEXT: u32 = u32::MAX; // -1
const TC_ACT_REDIRECT: u32 = 7;

struct Fixture {
    dp: Dataplane,
    fwd: Forwarder,
    l7: L7CaptureMaps,
    events: EventMaps,
    _pins: PinDir,
}

impl Fixture {
    fn new(forwards: &[(&str, &[&str])]) -> Self {
        require_root();
        let pins = PinDir::new("tc");
        let cap = Capacity {
            max_rules: 64,
            limit_sources: 64,
            max_flows: 16384,
            ..Default::default()
        };
        let (dp, maps) = Dataplane::load(&pins.0, cap).expect("load");
        let (mut fwd, _) = Forwarder::open(Store::in_memory().unwrap(), Box::new(maps.forward)).unwrap();
        for (m, to) in forwards {
            fwd.add_forward(&ForwardRequest {
                service: m.to_string(),
                to: to.iter().map(|s| s.to_string()).collect(),
                comment: None,
            })
            .unwrap();
        }
        Fixture {
            dp,
            fwd,
            l7: maps.l7,
            events: maps.events,
            _pins: pins,
        }
    }

    /// Runs `frame` through ingress (or egress) and returns (verdict, frame out).
    fn run(&mut self, frame: &[u8], ingress: bool) -> (u32, Vec<u8>) {
        self.try_run(frame, ingress)
            .unwrap_or_else(|e| panic!("test_run of {} bytes: {e:?}", frame.len()))
    }

    fn try_run(&mut self, frame: &[u8], ingress: bool) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let name = if ingress { tc::INGRESS } else { tc::EGRESS };
        let prog = self.dp.tc_program(name).expect("tc program");
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Checks a rewritten frame with the independent verifier.
fn checked(frame: &[u8]) -> Parsed {
    verify(frame).unwrap_or_else(|e| panic!("bad frame after rewrite: {e}"))
}

fn ends(p: &Parsed) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(p.src, p.sport.unwrap()),
        SocketAddr::new(p.dst, p.dport.unwrap()),
    )
}

fn frame(proto: &str, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Packet {
    let l4 = match proto {
        "tcp" => L4::Tcp {
            sport: src.port(),
            dport: dst.port(),
            flags: 0x18, // PSH|ACK: mid-stream data
        },
        _ => L4::Udp {
            sport: src.port(),
            dport: dst.port(),
        },
    };
    Packet::new(src.ip(), dst.ip(), l4).with_payload(payload)
}

/// The round trip every case shares: client -> service is rewritten to the
/// target, target -> client back to the service, both with valid checksums
/// and the payload intact. The reply is tried on ingress (target behind a
/// managed veth) and egress (target on this host).
fn round_trip(
    f: &mut Fixture,
    proto: &str,
    client: &str,
    service: &str,
    target: &str,
    shape: impl Fn(Packet) -> Packet,
) {
    let (client, service, target) = (sa(client), sa(service), sa(target));
    let payload = b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n";
    if proto == "tcp" {
        // A TCP flow starts with a SYN; mid-stream segments of an unknown
        // flow are left alone.
        let data = shape(frame(proto, client, service, payload)).build();
        assert_eq!(f.run(&data, true).1, data, "no flow without a SYN");
        let syn = shape(Packet::tcp(client.ip(), service.ip(), client.port(), service.port())).build();
        let (_, out) = f.run(&syn, true);
        assert_eq!(ends(&checked(&out)), (client, target), "the SYN is translated");
    }
    let fwd = shape(frame(proto, client, service, payload)).build();
    checked(&fwd); // the input itself is well-formed
    let (v, out) = f.run(&fwd, true);
    assert_eq!(v, TCX_NEXT, "forwarded packets continue to the stack");
    let p = checked(&out);
    assert_eq!(
        ends(&p),
        (client, target),
        "{proto} client -> service becomes client -> target"
    );
    assert_eq!(p.payload, payload);
    assert_eq!(out.len(), fwd.len());

    for ingress in [true, false] {
        let reply = shape(frame(proto, target, client, b"HTTP/1.1 200 OK\r\n\r\n")).build();
        let (v, out) = f.run(&reply, ingress);
        assert_eq!(v, TCX_NEXT);
        let p = checked(&out);
        assert_eq!(
            ends(&p),
            (service, client),
            "{proto} reply (ingress {ingress}) comes from the service"
        );
        assert_eq!(p.payload, b"HTTP/1.1 200 OK\r\n\r\n");
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn tcp_and_udp_over_ipv4_are_rewritten_and_reversed_with_valid_checksums() {
    let mut f = Fixture::new(&[
        ("198.18.9.9:80", &["198.18.2.2:8080"]),
        ("198.18.9.9:53/udp", &["198.18.2.3:5353"]),
    ]);
    round_trip(
        &mut f,
        "tcp",
        "198.18.1.2:40000",
        "198.18.9.9:80",
        "198.18.2.2:8080",
        |p| p,
    );
    round_trip(
        &mut f,
        "udp",
        "198.18.1.2:40001",
        "198.18.9.9:53",
        "198.18.2.3:5353",
        |p| p,
    );
    // IPv4 options and VLAN tags move the headers; offsets must follow.
    round_trip(
        &mut f,
        "tcp",
        "198.18.1.2:40002",
        "198.18.9.9:80",
        "198.18.2.2:8080",
        |p| p.with_ipv4_options(&[1, 1, 1, 1, 0x44, 4, 5, 0]).with_vlans(&[7]),
    );
    let list = f.fwd.forwards().next().unwrap().slot;
    let c = f.fwd.forward_counter(list).unwrap();
    assert_eq!(c.packets, 8, "2 TCP flows x (SYN + request + 2 replies) on rule 1");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn tcp_and_udp_over_ipv6_with_extension_headers() {
    let mut f = Fixture::new(&[
        ("[2001:2:0:99::9]:80", &["[2001:2:0:2::2]:8080"]),
        ("[2001:2:0:99::9]:53/udp", &["[2001:2:0:2::3]:53"]),
    ]);
    round_trip(
        &mut f,
        "tcp",
        "[2001:2:0:1::2]:40000",
        "[2001:2:0:99::9]:80",
        "[2001:2:0:2::2]:8080",
        |p| p,
    );
    round_trip(
        &mut f,
        "udp",
        "[2001:2:0:1::2]:40001",
        "[2001:2:0:99::9]:53",
        "[2001:2:0:2::3]:53",
        |p| p,
    );
    round_trip(
        &mut f,
        "tcp",
        "[2001:2:0:1::2]:40002",
        "[2001:2:0:99::9]:80",
        "[2001:2:0:2::2]:8080",
        |p| {
            p.with_ipv6_ext(&[0, 60]) // hop-by-hop, destination options
        },
    );
    // Stacked tags (the parser follows 8) and the most extension headers
    // the walk takes: the offsets are variables the programs must follow.
    round_trip(
        &mut f,
        "udp",
        "[2001:2:0:1::2]:40003",
        "[2001:2:0:99::9]:53",
        "[2001:2:0:2::3]:53",
        |p| {
            p.with_vlans(&[0, 1, 2, 3, 4, 5, 6, 4095])
                .with_ipv6_ext(&[60; sluice_abi::MAX_IPV6_EXT])
        },
    );
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_zero_udp_checksum_stays_zero() {
    let mut f = Fixture::new(&[("198.18.9.9:53/udp", &["198.18.2.3:5353"])]);
    let mut fr = frame("udp", sa("198.18.1.2:40000"), sa("198.18.9.9:53"), b"q").build();
    let csum = 14 + 20 + 6;
    fr[csum..csum + 2].copy_from_slice(&[0, 0]); // "no checksum" in IPv4
    let (_, out) = f.run(&fr, true);
    let p = checked(&out);
    assert_eq!(p.dst, ip("198.18.2.3"));
    assert_eq!(p.l4_checksum, Some(0), "zero means none and must stay zero");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn fragments_routing_headers_and_other_traffic_pass_untouched() {
    let mut f = Fixture::new(&[
        ("198.18.9.9:80", &["198.18.2.2:8080"]),
        ("[2001:2:0:99::9]:80", &["[2001:2:0:2::2]:8080"]),
    ]);
    let untouched = [
        // A non-first fragment has no ports: never rewritten with guesses.
        frame("tcp", sa("198.18.1.2:40000"), sa("198.18.9.9:80"), b"x")
            .with_frag_offset(10)
            .build(),
        // A first fragment (MF set, offset 0) has ports, but the rest of the
        // datagram would not follow it: not rewritten either.
        {
            let mut b = frame("udp", sa("198.18.1.2:40000"), sa("198.18.9.9:80"), b"x").build();
            b[14 + 6] |= 0x20;
            b
        },
        // IPv6 fragment header with a non-zero offset.
        {
            let mut b = frame("tcp", sa("[2001:2:0:1::2]:40000"), sa("[2001:2:0:99::9]:80"), b"x")
                .with_ipv6_ext(&[44])
                .build();
            b[14 + 40 + 2] = 0x01; // fragment offset 32 bytes
            b
        },
        // A routing header: the pseudo-header uses its final destination.
        frame("tcp", sa("[2001:2:0:1::2]:40000"), sa("[2001:2:0:99::9]:80"), b"x")
            .with_ipv6_ext(&[43])
            .build(),
        // Not a service: other port, other address, other protocol.
        frame("tcp", sa("198.18.1.2:40000"), sa("198.18.9.9:81"), b"x").build(),
        frame("tcp", sa("198.18.1.2:40000"), sa("198.18.9.8:80"), b"x").build(),
        frame("udp", sa("198.18.1.2:40000"), sa("198.18.9.9:80"), b"x").build(),
        Packet::new(ip("198.18.1.2"), ip("198.18.9.9"), L4::Echo).build(),
        sluice_proto::packet::arp_frame(),
    ];
    for (i, fr) in untouched.iter().enumerate() {
        let (v, out) = f.run(fr, true);
        assert_eq!(v, TCX_NEXT, "case {i}");
        assert_eq!(&out, fr, "case {i} must pass byte-identical");
    }
    let stats = f.fwd.stats().unwrap();
    assert_eq!(stats["new_flows"].packets, 0, "{stats:?}");
    assert_eq!(
        stats["skipped"].packets, 4,
        "three fragments and a routing header: {stats:?}"
    );
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn truncated_frames_are_never_rewritten_or_misread() {
    let mut f = Fixture::new(&[("198.18.9.9:80", &["198.18.2.2:8080"])]);
    let full = frame("tcp", sa("198.18.1.2:40000"), sa("198.18.9.9:80"), b"").build();
    // BPF_PROG_TEST_RUN needs at least an Ethernet header.
    for len in 14..full.len() {
        let fr = &full[..len];
        // The kernel itself refuses skbs shorter than the IPv4 header its
        // test harness parses; everything it accepts must pass untouched.
        let Ok((v, out)) = f.try_run(fr, true) else {
            assert!(len < 14 + 20, "test_run refused a {len}-byte frame");
            continue;
        };
        assert_eq!(v, TCX_NEXT, "len {len}");
        assert_eq!(
            out, fr,
            "a frame cut at {len} bytes has no complete TCP header: untouched"
        );
    }
    assert_eq!(f.fwd.stats().unwrap()["new_flows"].packets, 0);
    // Hostile: IHL pointing past the end, garbage version.
    let mut bad = full.clone();
    bad[14] = 0x4f;
    assert_eq!(f.run(&bad, true).1, bad);
    let mut bad = full.clone();
    bad[14] = 0x75;
    assert_eq!(f.run(&bad, true).1, bad);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn flows_spread_over_targets_and_each_flow_stays_put() {
    let targets = ["198.18.2.2:80", "198.18.3.2:80"];
    let mut f = Fixture::new(&[("198.18.9.9:80", &targets)]);
    let mut seen = std::collections::HashMap::new();
    for port in 40000..40064u16 {
        let client = SocketAddr::new(ip("198.18.1.2"), port);
        let fr = Packet::tcp(client.ip(), ip("198.18.9.9"), port, 80).build();
        let first = checked(&f.run(&fr, true).1).dst;
        for _ in 0..3 {
            assert_eq!(checked(&f.run(&fr, true).1).dst, first, "flow {port} moved");
        }
        *seen.entry(first).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both targets get flows: {seen:?}");
    assert!(seen.values().all(|n| *n >= 16), "roughly even: {seen:?}");
    let slot = f.fwd.forwards().next().unwrap().slot;
    assert_eq!(f.fwd.flow_counts().get(&slot), Some(&64));
    // Deleting the rule forgets its flows: the next packet passes as is.
    let id = f.fwd.forwards().next().unwrap().id;
    f.fwd.del_forward(id).unwrap();
    let fr = frame("tcp", sa("198.18.1.2:40000"), sa("198.18.9.9:80"), b"x").build();
    assert_eq!(f.run(&fr, true).1, fr);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn redirects_send_matching_destinations_to_the_interface() {
    let mut f = Fixture::new(&[]);
    f.fwd
        .add_redirect(&RedirectRequest {
            cidr: "198.18.7.0/24".into(),
            iface: "lo".into(),
            comment: None,
        })
        .unwrap();
    let hit = frame("udp", sa("198.18.1.2:4000"), sa("198.18.7.5:9"), b"x").build();
    let miss = frame("udp", sa("198.18.1.2:4000"), sa("198.18.8.5:9"), b"x").build();
    assert_eq!(f.run(&miss, true).0, TCX_NEXT);
    // test_run runs on lo: a redirect back to the arrival interface is a no-op.
    assert_eq!(f.run(&hit, true).0, TCX_NEXT);
    let r = f.fwd.redirects().next().unwrap().clone();
    assert_eq!(f.fwd.redirect_counter(r.slot).unwrap().packets, 0);
    // Egress never redirects.
    assert_eq!(f.run(&hit, false).0, TCX_NEXT);
    // A redirect to another interface (a bridge made for the test) fires.
    let br = format!("slbr{}", std::process::id() % 100000);
    let ok = std::process::Command::new("ip")
        .args(["link", "add", &br, "type", "bridge"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "creating bridge {br}");
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _del = Del(br.clone());
    f.fwd
        .add_redirect(&RedirectRequest {
            cidr: "198.18.6.0/24".into(),
            iface: br.clone(),
            comment: None,
        })
        .unwrap();
    let to_br = frame("udp", sa("198.18.1.2:4000"), sa("198.18.6.5:9"), b"x").build();
    assert_eq!(f.run(&to_br, true).0, TC_ACT_REDIRECT);
    let r = f.fwd.redirects().find(|r| r.spec.iface == br).unwrap().clone();
    assert_eq!(f.fwd.redirect_counter(r.slot).unwrap().packets, 1);
    assert!(!r.target.unwrap().peer, "a bridge gets bpf_redirect_neigh");
}

#[test]
fn object_names_match_the_abi_mirror() {
    let obj = aya_obj::Object::parse(sluice::dataplane::objects::TC_OBJ).expect("parse embedded object");
    let mut maps: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
    maps.sort();
    let mut want = tc::MAPS.to_vec();
    want.sort();
    assert_eq!(maps, want);
    let mut progs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
    progs.sort();
    assert_eq!(progs, vec![tc::INGRESS, tc::EGRESS]);
}

#[test]
fn trace_object_names_match_the_abi_mirror() {
    let obj = aya_obj::Object::parse(sluice::dataplane::objects::TRACE_OBJ).expect("parse embedded object");
    let mut maps: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
    maps.sort();
    let mut want = sluice_abi::trace::MAPS.to_vec();
    want.sort();
    assert_eq!(maps, want);
    let progs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
    assert_eq!(progs, vec![sluice_abi::trace::PROGRAM]);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn translation_state_expires_by_tcp_state() {
    let mut f = Fixture::new(&[("198.18.9.9:80", &["198.18.2.2:80"])]);
    let tcp = |sport: u16, flags: u8| {
        Packet::new(
            ip("198.18.1.2"),
            ip("198.18.9.9"),
            L4::Tcp {
                sport,
                dport: 80,
                flags,
            },
        )
        .build()
    };
    // Flow 1 is established (SYN, then ACK); flow 2 is reset (SYN, RST).
    f.run(&tcp(41000, 0x02), true);
    f.run(&tcp(41000, 0x10), true);
    f.run(&tcp(41001, 0x02), true);
    f.run(&tcp(41001, 0x04), true);
    let slot = f.fwd.forwards().next().unwrap().slot;
    assert_eq!(f.fwd.flow_counts().get(&slot), Some(&1), "a reset flow is not live");
    let now = sluice::sys::time::monotonic_ns();
    assert_eq!(f.fwd.gc_at(now).unwrap(), 0, "nothing is old yet");
    // 11 s later: the reset flow (10 s) goes, both directions; the
    // established one (2 h) and its half-open reply direction (60 s) stay.
    assert_eq!(f.fwd.gc_at(now + 11_000_000_000).unwrap(), 2);
    assert_eq!(f.fwd.flow_counts().get(&slot), Some(&1));
    // 61 s: the reply direction that never saw a packet goes too.
    assert_eq!(f.fwd.gc_at(now + 61_000_000_000).unwrap(), 1);
    // 2 h + 1 s: everything.
    assert_eq!(f.fwd.gc_at(now + 7_201_000_000_000).unwrap(), 1);
    assert_eq!(f.fwd.flow_counts().get(&slot), None);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn udp_flows_seen_once_expire_as_one_way() {
    let mut f = Fixture::new(&[("198.18.9.9:53/udp", &["198.18.2.2:53"])]);
    let q = frame("udp", sa("198.18.1.2:41000"), sa("198.18.9.9:53"), b"q").build();
    f.run(&q, true);
    let now = sluice::sys::time::monotonic_ns();
    // One packet, no answer: both directions go after the one-way 30 s.
    assert_eq!(f.fwd.gc_at(now + 31_000_000_000).unwrap(), 2);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_direct_connection_reusing_an_old_forwarded_tuple_is_not_hijacked() {
    let mut f = Fixture::new(&[("198.18.9.9:80", &["198.18.2.2:80"])]);
    let (client, service, target) = (sa("198.18.1.2:42000"), sa("198.18.9.9:80"), sa("198.18.2.2:80"));
    let syn = |dst: SocketAddr| Packet::tcp(client.ip(), dst.ip(), client.port(), dst.port()).build();
    let synack = Packet::new(
        target.ip(),
        client.ip(),
        L4::Tcp {
            sport: target.port(),
            dport: client.port(),
            flags: 0x12,
        },
    )
    .build();
    // A forwarded flow: its SYN-ACK comes back from the service address.
    f.run(&syn(service), true);
    assert_eq!(ends(&checked(&f.run(&synack, true).1)).0, service);
    // Later the client connects to the target directly from the same port:
    // the old flow's reply entry must not rewrite this SYN-ACK.
    f.run(&syn(target), true);
    assert_eq!(f.run(&synack, true).1, synack, "the direct SYN-ACK passes untouched");
    // And a new forwarded connection on that port works again.
    f.run(&syn(service), true);
    assert_eq!(ends(&checked(&f.run(&synack, true).1)).0, service);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn l7_captures_of_a_forwarded_flow_carry_the_translation_and_the_fin() {
    use sluice::visibility::l7::{decode_segment, Assembler, Segment, Xlat, TCP_FIN};
    use sluice_proto::l7::{Dir, Summary};
    // The targets listen on 8080, which no L7 list names: their replies are
    // matched as coming from the service's port 80.
    let mut f = Fixture::new(&[
        ("198.18.9.9:80", &["198.18.2.2:8080"]),
        ("[2001:2:0:99::9]:80", &["[2001:2:0:2::2]:8080"]),
    ]);
    f.l7.configure(1024, false, &[(80, sluice_abi::l7::HTTP)]).unwrap();
    let mut ring = f.events.take_ring().unwrap();
    for (client, service, target) in [
        ("198.18.1.2:40000", "198.18.9.9:80", "198.18.2.2:8080"),
        ("[2001:2:0:1::2]:40000", "[2001:2:0:99::9]:80", "[2001:2:0:2::2]:8080"),
    ] {
        let (client, service, target) = (sa(client), sa(service), sa(target));
        let tcp = |src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]| {
            Packet::new(
                src.ip(),
                dst.ip(),
                L4::Tcp {
                    sport: src.port(),
                    dport: dst.port(),
                    flags,
                },
            )
            .with_payload(payload)
            .build()
        };
        let (req, resp) = (b"GET /fwd HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nuntil the close");
        f.run(&tcp(client, service, 0x02, b""), true); // SYN: the flow
        f.run(&tcp(client, service, 0x18, req), true);
        f.run(&tcp(target, client, 0x18, resp), true);
        f.run(&tcp(target, client, 0x10, b""), true); // a pure ACK: nothing
        f.run(&tcp(target, client, 0x11, b""), true); // FIN
        let mut segs: Vec<Segment> = Vec::new();
        ring.poll(100, |b| segs.push(decode_segment(b).expect("a well-formed capture")));
        let got: Vec<_> = segs
            .iter()
            .map(|s| (s.dir, s.src, s.dst, s.xlat, s.payload_len, s.tcp_flags & TCP_FIN))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Dir::ToServer,
                    client,
                    service,
                    Some(Xlat::Dnat { target }),
                    req.len() as u32,
                    0
                ),
                (
                    Dir::ToClient,
                    target,
                    client,
                    Some(Xlat::Snat { service }),
                    resp.len() as u32,
                    0
                ),
                (Dir::ToClient, target, client, Some(Xlat::Snat { service }), 0, TCP_FIN),
            ],
            "request, reply and FIN, each with the flow's translation"
        );
        // The daemon's reassembly makes one record of them, at the FIN.
        let mut a = Assembler::new();
        let done: Vec<_> = segs.into_iter().flat_map(|s| a.segment(s)).collect();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!((done[0].server, done[0].target), (service, Some(target)));
        assert!(matches!(
            done[0].exchange.response,
            Some(Summary::HttpResponse { status: 200, .. })
        ));
        assert!(!done[0].exchange.partial);
    }
}
