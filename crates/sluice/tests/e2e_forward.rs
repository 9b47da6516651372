//! Tier 3: forward and redirect rules end to end. Real daemons, real veths
//! in lab namespaces, real servers (started here inside the namespaces) and
//! real clients (curl, and Rust sockets in the client's namespace).
//! Needs root.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use common::{ping, require_root, tcp_connects, Daemon, LabGuard};
use serde_json::Value;
use sluice::lab::{Lab, LabHost};

/// Runs `f` on a detached thread inside `host`'s namespace (servers).
fn spawn_in(host: &LabHost, f: impl FnOnce() + Send + 'static) {
    let path = host.netns_path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) },
            0
        );
        f();
    });
}

fn bind_in(host: &LabHost, addr: SocketAddr) -> TcpListener {
    host.in_netns(move || TcpListener::bind(addr)).unwrap().unwrap()
}

/// A minimal HTTP/1.1 server: answers every request with `body`.
fn http_server(host: &LabHost, addr: SocketAddr, body: &'static str) {
    let l = bind_in(host, addr);
    spawn_in(host, move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                // Read the request head up to the blank line.
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

/// Answers every line with `name`: shows which backend a flow reached.
fn identity_server(host: &LabHost, addr: SocketAddr, name: &'static str) {
    let l = bind_in(host, addr);
    spawn_in(host, move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    if line.is_err() || writeln!(w, "{name}").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Reads everything, then replies with the length and a hash of it.
fn digest_server(host: &LabHost, addr: SocketAddr) {
    let l = bind_in(host, addr);
    spawn_in(host, move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut h = Digest::default();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => h.update(&buf[..n]),
                    }
                }
                let _ = writeln!(s, "{} {:016x}", h.len, h.hash);
            });
        }
    });
}

/// FNV-1a over the whole stream plus its length.
#[derive(Default)]
struct Digest {
    len: u64,
    hash: u64,
}

impl Digest {
    fn update(&mut self, b: &[u8]) {
        if self.len == 0 {
            self.hash = 0xcbf29ce484222325;
        }
        for x in b {
            self.hash = (self.hash ^ *x as u64).wrapping_mul(0x100000001b3);
        }
        self.len += b.len() as u64;
    }
}

/// Deterministic test data: a xorshift stream.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn udp_echo(host: &LabHost, addr: SocketAddr, name: &'static str) {
    let s = host.in_netns(move || UdpSocket::bind(addr)).unwrap().unwrap();
    spawn_in(host, move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from);
        }
    });
}

fn curl(host: &LabHost, url: &str) -> (bool, String) {
    let out = host.exec(&["curl", "-sS", "-m", "5", url]).unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn forwards(d: &Daemon) -> Vec<Value> {
    d.json(&["forward", "list"]).as_array().unwrap().clone()
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A lab with `hosts` hosts, torn down on drop.
fn lab(name: &str, number: u8, hosts: usize) -> LabGuard {
    let lab = Lab::new(name, "", number, hosts).unwrap();
    let _ = lab.down();
    lab.up().expect("lab up");
    LabGuard(lab)
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn the_seed_case_port_8080_to_80_with_a_real_http_server_and_curl() {
    require_root();
    let lab = lab("sf1", 41, 2);
    let d = Daemon::start("f1", &["sf1-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    http_server(b, sa(b.ns_v4, 80), "hello from b:80\n");
    let url = format!("http://{}:8080/", b.ns_v4);
    assert!(!curl(a, &url).0, "nothing listens on 8080 before the rule");

    let out = d.ok(&[
        "forward",
        "add",
        &format!("{}:8080", b.ns_v4),
        &format!("{}:80", b.ns_v4),
    ]);
    assert!(out.contains("added forward 1"), "{out}");
    let (ok, body) = curl(a, &url);
    assert!(ok, "curl through the forward failed");
    assert_eq!(body, "hello from b:80\n");
    let f = &forwards(&d)[0];
    assert_eq!(f["match"], format!("{}:8080", b.ns_v4));
    assert_eq!(f["proto"], "tcp");
    assert!(f["packets"].as_u64().unwrap() >= 8, "both directions are counted: {f}");

    // A 50 MB upload through the forward arrives byte-identical.
    digest_server(b, sa(b.ns_v4, 9000));
    d.ok(&[
        "forward",
        "add",
        &format!("{}:9001", b.ns_v4),
        &format!("{}:9000", b.ns_v4),
    ]);
    let payload = data(50 << 20);
    let mut want = Digest::default();
    want.update(&payload);
    let to = sa(b.ns_v4, 9001);
    let t0 = std::time::Instant::now();
    let got = a
        .in_netns(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(&payload).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            line
        })
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("50 MiB through the forward in {secs:.2} s ({:.0} MB/s)", 52.4288 / secs);
    assert_eq!(got.trim(), format!("{} {:016x}", want.len, want.hash));
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_virtual_service_spreads_flows_over_two_backends_and_each_flow_stays_put() {
    require_root();
    // Labs have at most two hosts: the second backend lives in a second one.
    let lab1 = lab("sf2", 43, 2);
    let lab2 = lab("sg2", 44, 1);
    let d = Daemon::start("f2", &["sf2-*", "sg2-*"]);
    let (a, b, c) = (lab1.host('a'), lab1.host('b'), lab2.host('a'));
    identity_server(b, sa(b.ns_v4, 80), "b");
    identity_server(c, sa(c.ns_v4, 80), "c");
    let vip = "198.18.250.1:80";
    d.ok(&[
        "forward",
        "add",
        vip,
        &format!("{}:80", b.ns_v4),
        "--to",
        &format!("{}:80", c.ns_v4),
        "--comment",
        "two backends",
    ]);
    let vip: SocketAddr = vip.parse().unwrap();
    let per_flow = a
        .in_netns(move || {
            // 16 concurrent flows, each asking 5 times over 0.5 s.
            let mut conns: Vec<_> = (0..16)
                .map(|_| {
                    let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    // The client only ever sees the service address.
                    assert_eq!(s.peer_addr().unwrap(), vip);
                    (s.try_clone().unwrap(), BufReader::new(s), Vec::new())
                })
                .collect();
            for _ in 0..5 {
                for (w, r, seen) in conns.iter_mut() {
                    writeln!(w, "who").unwrap();
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    seen.push(line.trim().to_string());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            conns.into_iter().map(|(_, _, s)| s).collect::<Vec<_>>()
        })
        .unwrap();
    for seen in &per_flow {
        assert!(
            seen.iter().all(|s| s == &seen[0]),
            "a flow moved between backends: {seen:?}"
        );
    }
    let to_b = per_flow.iter().filter(|s| s[0] == "b").count();
    let to_c = per_flow.iter().filter(|s| s[0] == "c").count();
    eprintln!("16 flows: {to_b} to b, {to_c} to c");
    assert_eq!(to_b + to_c, 16);
    assert!(to_b > 0 && to_c > 0, "both backends get flows ({to_b}/{to_c})");
    let f = &forwards(&d)[0];
    assert_eq!(f["to"].as_array().unwrap().len(), 2);
    assert!(f["flows"].as_u64().unwrap() >= 16, "live flows are listed: {f}");
    assert_eq!(f["comment"], "two backends");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn udp_request_response_and_ipv6_through_forwards() {
    require_root();
    let lab = lab("sf3", 45, 2);
    let d = Daemon::start("f3", &["sf3-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    // UDP, IPv4 and IPv6: the reply must come from the service address.
    udp_echo(b, sa(b.ns_v4, 5353), "b4");
    udp_echo(b, sa(b.ns_v6, 5353), "b6");
    let svc4: SocketAddr = "198.18.250.3:53".parse().unwrap();
    let svc6: SocketAddr = "[2001:2:0:250::3]:53".parse().unwrap();
    d.ok(&["forward", "add", &format!("{svc4}/udp"), &format!("{}:5353", b.ns_v4)]);
    d.ok(&["forward", "add", &format!("{svc6}/udp"), &sa(b.ns_v6, 5353).to_string()]);
    for (svc, name) in [(svc4, "b4"), (svc6, "b6")] {
        let (from, reply) = a
            .in_netns(move || {
                let bind: SocketAddr = if svc.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
                let s = UdpSocket::bind(bind).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 256];
                // A few tries: the first may wait for neighbour resolution.
                for _ in 0..3 {
                    s.send_to(b"query", svc).unwrap();
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        return (from, String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
                panic!("no UDP reply from {svc}");
            })
            .unwrap();
        assert_eq!(from, svc, "the reply is translated back to the service");
        assert_eq!(reply, format!("{name}:query"));
    }

    // TCP over IPv6: a virtual service address and a real server.
    http_server(b, sa(b.ns_v6, 80), "hello over IPv6\n");
    d.ok(&["forward", "add", "[2001:2:0:250::3]:80", &sa(b.ns_v6, 80).to_string()]);
    let (ok, body) = curl(a, "http://[2001:2:0:250::3]/");
    assert!(ok, "curl over IPv6 through the forward failed");
    assert_eq!(body, "hello over IPv6\n");
    assert_eq!(forwards(&d).len(), 3);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_redirect_reaches_b_with_forwarding_off() {
    require_root();
    let lab = lab("sf4", 47, 2);
    let d = Daemon::start("f4", &["sf4-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let set_fwd = |on: &str| {
        for h in [a, b] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/forwarding", h.host_if), on).unwrap();
        }
    };
    set_fwd("0");
    assert!(
        !ping(a, &b.ns_v4.to_string()),
        "the host does not route a -> b with forwarding off"
    );
    let ra = d.json(&["redirect", "add", &format!("{}/32", a.ns_v4), &a.host_if]);
    let rb = d.json(&["redirect", "add", &format!("{}/32", b.ns_v4), &b.host_if]);
    assert_eq!(rb["mode"], "peer", "a host-side veth gets bpf_redirect_peer: {rb}");
    assert!(ping(a, &b.ns_v4.to_string()), "a reaches b through the redirects");
    identity_server(b, sa(b.ns_v4, 7000), "b");
    assert!(tcp_connects(a, sa(b.ns_v4, 7000)), "TCP too");
    let list = d.json(&["redirect", "list"]);
    for r in list.as_array().unwrap() {
        assert!(r["packets"].as_u64().unwrap() >= 2, "{r}");
    }
    // The routing table was bypassed, not re-enabled.
    let fwd = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{}/forwarding", a.host_if)).unwrap();
    assert_eq!(fwd.trim(), "0");
    d.ok(&["redirect", "del", &rb["id"].to_string()]);
    d.ok(&["redirect", "del", &ra["id"].to_string()]);
    assert!(
        !ping(a, &b.ns_v4.to_string()),
        "without the redirects a cannot reach b again"
    );
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn forwards_and_their_flows_survive_a_daemon_restart_and_bad_input_changes_nothing() {
    require_root();
    let lab = lab("sf5", 49, 2);
    let mut d = Daemon::start("f5", &["sf5-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    identity_server(b, sa(b.ns_v4, 80), "b");
    let vip: SocketAddr = "198.18.250.5:80".parse().unwrap();
    d.ok(&["forward", "add", &vip.to_string(), &format!("{}:80", b.ns_v4)]);

    // Bad input: clear errors, nothing changed.
    let bad: &[&[&str]] = &[
        &["forward", "add", "198.18.250.5:0", "198.18.1.1:80"],
        &["forward", "add", "198.18.250.6:65536", "198.18.1.1:80"],
        &["forward", "add", "198.18.250.6:80", "198.18.1.1:99999"],
        &["forward", "add", "198.18.250.6:80", "[2001:2::1]:80"],
        &["forward", "add", "198.18.250.6:80/sctp", "198.18.1.1:80"],
        &["forward", "add", &format!("{}:80", b.ns_v4), &vip.to_string()], // loop
        &["forward", "add", &vip.to_string(), "198.18.1.1:80"],            // duplicate
        &["redirect", "add", "198.18.250.0/24", "no-such-if"],
        &["redirect", "add", "198.18.250.1/24", "lo"],
        &["forward", "del", "99"],
    ];
    for args in bad {
        let out = d.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
    let loop_err = String::from_utf8_lossy(&d.cli(bad[5]).stderr).into_owned();
    assert!(loop_err.contains("forward loop"), "{loop_err}");
    assert_eq!(forwards(&d).len(), 1, "bad input changed nothing");
    assert!(d.json(&["redirect", "list"]).as_array().unwrap().is_empty());

    // An established flow, then kill -9 and a new daemon.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<String>>();
    spawn_in(a, move || {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut seen = Vec::new();
        for _ in 0..2 {
            writeln!(w, "who").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            seen.push(line.trim().to_string());
            if seen.len() == 1 {
                first_tx.send(()).unwrap(); // established and answered
                rx.recv().unwrap(); // wait for the restart
            }
        }
        done_tx.send(seen).unwrap();
    });
    first_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the first exchange");
    d.kill9();
    // While no daemon runs, new connections are still forwarded.
    assert!(tcp_connects(a, vip), "the forward keeps working with the daemon down");
    d.spawn();
    tx.send(()).unwrap();
    let seen = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(seen, vec!["b", "b"], "the established flow survived the restart");
    let f = forwards(&d);
    assert_eq!(f.len(), 1, "rules are restored from the store");
    assert_eq!(f[0]["match"], vip.to_string());
    let log = d.log_text();
    assert!(log.contains("forward and redirect tables reconciled"), "{log}");
}
