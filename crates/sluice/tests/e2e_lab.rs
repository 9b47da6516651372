//! Tier 3: the lab stays inside the machine. A lab namespace routes the lab
//! ranges through the host and nothing else, so from a lab host a
//! connection to any other address fails at once ("network unreachable"),
//! even while the host forwards (`net.ipv4.ip_forward=1`), and lab hosts
//! still reach each other. Needs root. Lab 101. In a test binary of its
//! own: it flips the host's `ip_forward` for a moment, which no other test
//! of this run should see.

mod common;

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{ping, require_root, tcp_connects, LabGuard};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns IPv4 forwarding on for the host and puts everything back on drop,
/// even on panic. Writing `ip_forward` also rewrites every interface's
/// `forwarding` (and `all/accept_redirects`), so those are saved and
/// restored too: the lab's per-interface forwarding must survive.
struct ForwardingOn {
    saved: Vec<(PathBuf, String)>,
}

impl ForwardingOn {
    fn new() -> Self {
        let mut saved = vec![(PathBuf::from(IP_FORWARD), read(Path::new(IP_FORWARD)))];
        let all = Path::new("/proc/sys/net/ipv4/conf/all/accept_redirects");
        saved.push((all.to_path_buf(), read(all)));
        for e in std::fs::read_dir("/proc/sys/net/ipv4/conf").unwrap().flatten() {
            let p = e.path().join("forwarding");
            if e.file_name() != "all" {
                saved.push((p.clone(), read(&p)));
            }
        }
        std::fs::write(IP_FORWARD, "1").unwrap();
        assert_eq!(read(Path::new(IP_FORWARD)), "1");
        ForwardingOn { saved }
    }
}

impl Drop for ForwardingOn {
    fn drop(&mut self) {
        // ip_forward first: it resets the others, which then get their own
        // values back (an interface gone since is skipped).
        for (p, v) in &self.saved {
            if let Err(e) = std::fs::write(p, v) {
                if p.exists() {
                    eprintln!("restoring {}: {e}", p.display());
                }
            }
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

/// `ip route get DST` inside the lab namespace: the route lookup alone, no
/// packet sent. Ok(route) or Err(the error text).
fn route_get(host: &sluice::lab::LabHost, dst: &str) -> Result<String, String> {
    let o = host.exec(&["ip", "route", "get", dst]).unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn lab_hosts_reach_only_the_lab_ranges_even_when_the_host_forwards() {
    require_root();
    let lab = LabGuard::new("sn1", 101);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let _fwd = ForwardingOn::new();

    for dst in [
        "192.0.2.1",
        "8.8.8.8",
        "198.20.0.1",
        "2001:db8::1",
        "2001:4860:4860::8888",
        "2001:3::1",
    ] {
        // The route lookup first: if the namespace had a way out, the
        // connect below would send a packet towards the uplink.
        let r = route_get(a, dst);
        assert!(
            r.as_ref().is_err_and(|e| e.contains("unreachable")),
            "{dst} must have no route from a lab namespace: {r:?}"
        );
        let to = SocketAddr::new(dst.parse().unwrap(), 80);
        let (took, res) = a
            .in_netns(move || {
                let t0 = Instant::now();
                let r = TcpStream::connect_timeout(&to, Duration::from_secs(3));
                (t0.elapsed(), r)
            })
            .unwrap();
        let err = res.expect_err("a connection out of the lab must fail");
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{to}: {err}");
        assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{to}");
        assert!(took < Duration::from_millis(100), "{to} failed only after {took:?}");
    }

    // A lab made by an older version had default routes: `lab up` again
    // (idempotent, it repairs) removes them.
    let (gw4, gw6) = (a.host_v4.to_string(), a.host_v6.to_string());
    assert!(a
        .exec(&["ip", "route", "add", "default", "via", &gw4])
        .unwrap()
        .status
        .success());
    assert!(a
        .exec(&["ip", "-6", "route", "add", "default", "via", &gw6])
        .unwrap()
        .status
        .success());
    assert!(route_get(a, "192.0.2.1").is_ok());
    lab.up().unwrap();
    for dst in ["192.0.2.1", "2001:db8::1"] {
        let r = route_get(a, dst);
        assert!(
            r.as_ref().is_err_and(|e| e.contains("unreachable")),
            "{dst} after a repair: {r:?}"
        );
    }

    // Both lab ranges still route through the host, and lab hosts reach
    // each other (v4 and v6, ping and TCP).
    for dst in ["198.19.255.1", "2001:2:0:ffff::1"] {
        let r = route_get(a, dst).unwrap();
        assert!(r.contains("via"), "{dst}: {r}");
    }
    // (The first IPv6 packet between two fresh namespaces waits about 2 s
    // for neighbour discovery, with or without a default route: retry.)
    let eventually = |what: &str, f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        }
    };
    assert!(ping(a, &b.ns_v4.to_string()));
    assert!(ping(b, &a.ns_v4.to_string()));
    eventually("ping a -> b over IPv6", &|| ping(a, &b.ns_v6.to_string()));
    for ip in [b.ns_v4.into(), b.ns_v6.into()] {
        let l = b
            .in_netns(move || TcpListener::bind(SocketAddr::new(ip, 0)))
            .unwrap()
            .unwrap();
        let to = l.local_addr().unwrap();
        eventually(&format!("TCP a -> {to}"), &|| tcp_connects(a, to));
    }
}
