//! Tier 3: the real daemon, real kernel and real traffic in lab namespaces.
//! Each test builds its own lab (distinct names and subnets, so tests run in
//! parallel), runs `sluice run` managing only that lab's veths, drives it
//! with the CLI, and checks with ping and TCP connects. Guards remove the
//! lab, the daemon and its pins even when a test fails. Needs root.

mod common;

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    process::Command,
    time::{Duration, Instant},
};

use common::*;

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < deadline, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn deny_drops_one_host_and_not_the_other_then_delete_restores() {
    require_root();
    let lab = LabGuard::new("se1", 11);
    let d = Daemon::start("e1", &["se1-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let (_l, port) = listener();
    let tcp_a = SocketAddr::new(IpAddr::V4(a.host_v4), port);
    let tcp_b = SocketAddr::new(IpAddr::V4(b.host_v4), port);

    let st = d.json(&["status"]);
    let ifs = st["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{st}");
    assert!(ifs.iter().all(|i| i["mode"] == "native"), "{st}");

    assert!(ping(a, &a.host_v4.to_string()) && ping(b, &b.host_v4.to_string()));
    assert!(tcp_connects(a, tcp_a) && tcp_connects(b, tcp_b));

    let added = d.ok(&["deny", "add", &a.ns_v4.to_string(), "--comment", "lab a"]);
    assert!(added.starts_with("added deny rule 1: src 198.18.23.2/32"), "{added}");
    assert!(!ping(a, &a.host_v4.to_string()), "a's ping must be dropped");
    assert!(!tcp_connects(a, tcp_a), "a's TCP connect must fail");
    assert!(ping(b, &b.host_v4.to_string()), "b is untouched");
    assert!(tcp_connects(b, tcp_b), "b's TCP is untouched");

    let rules = d.json(&["deny", "list"]);
    assert!(rules[0]["packets"].as_u64().unwrap() >= 2, "counters move: {rules}");
    assert!(rules[0]["bytes"].as_u64().unwrap() >= 2 * 60, "{rules}");
    let st = d.json(&["status"]);
    assert!(st["verdicts"]["deny"]["packets"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["verdicts"]["pass"]["packets"].as_u64().unwrap() >= 2, "{st}");

    // IPv6, by source.
    assert!(ping(a, &a.host_v6.to_string()));
    d.ok(&["deny", "add", &a.ns_v6.to_string()]);
    assert!(!ping(a, &a.host_v6.to_string()), "a's IPv6 ping must be dropped");
    assert!(ping(b, &b.host_v6.to_string()));

    // Delete restores traffic.
    d.ok(&["deny", "del", &a.ns_v4.to_string()]);
    d.ok(&["deny", "del", "2"]);
    assert!(ping(a, &a.host_v4.to_string()) && ping(a, &a.host_v6.to_string()));
    assert!(tcp_connects(a, tcp_a));
    assert_eq!(d.json(&["deny", "list"]).as_array().unwrap().len(), 0);

    // --dst: traffic from a routed to b is dropped as it enters a's veth.
    assert!(ping(a, &b.ns_v4.to_string()), "a reaches b through the host");
    d.ok(&["deny", "add", &b.ns_v4.to_string(), "--dst"]);
    assert!(!ping(a, &b.ns_v4.to_string()), "a -> b must be dropped");
    assert!(ping(a, &a.host_v4.to_string()), "a -> host still fine");
    d.ok(&["deny", "del", &b.ns_v4.to_string(), "--dst"]);

    // Allow wins over deny: deny the whole lab range, allow only a.
    d.ok(&["deny", "add", "198.18.0.0/15"]);
    d.ok(&["allow", "add", &a.ns_v4.to_string()]);
    assert!(ping(a, &a.host_v4.to_string()), "allowed host passes");
    assert!(!ping(b, &b.host_v4.to_string()), "b hits the broad deny");
    let allow = d.json(&["allow", "list"]);
    assert!(allow[0]["packets"].as_u64().unwrap() >= 1, "{allow}");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn kill9_keeps_enforcing_and_a_restart_adopts_without_duplicates() {
    require_root();
    let lab = LabGuard::new("se2", 12);
    let mut d = Daemon::start("e2", &["se2-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    d.ok(&["deny", "add", &a.ns_v4.to_string()]);
    assert!(!ping(a, &a.host_v4.to_string()));

    d.kill9();
    assert!(
        !ping(a, &a.host_v4.to_string()),
        "enforcement continues with the daemon dead"
    );
    assert!(ping(b, &b.host_v4.to_string()));
    assert_eq!(link_pins(&d.pins.0), (2, 4));

    d.spawn();
    let rules = d.json(&["deny", "list"]);
    assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
    assert_eq!(rules[0]["id"], 1);
    assert!(rules[0]["packets"].as_u64().unwrap() >= 2, "counters survive: {rules}");
    let st = d.json(&["status"]);
    let ifs = st["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "{st}");
    assert!(
        ifs.iter().all(|i| i["adopted"] == true),
        "links adopted, not re-created: {st}"
    );
    assert_eq!(link_pins(&d.pins.0), (2, 4), "no duplicate attachment");
    for h in [a, b] {
        for ty in [
            aya::programs::TcAttachType::Ingress,
            aya::programs::TcAttachType::Egress,
        ] {
            assert_eq!(tcx_progs(&h.host_if, ty), 1, "one TC program per hook on {}", h.host_if);
        }
    }
    assert!(!ping(a, &a.host_v4.to_string()), "still enforced after restart");

    // A second daemon on the same state is refused; so is one with another
    // state dir on the same pins (it would reconcile our tables against its
    // own empty store). Both fail before touching the kernel.
    let other = tempfile::tempdir().unwrap();
    for (state, needle) in [
        (d.state_dir(), "another sluice daemon is running"),
        (other.path(), "using the pins"),
    ] {
        let o = Command::new(BIN)
            .args([
                "run",
                "--socket",
                "/tmp/sluice-e2e-second.sock",
                "--iface",
                "se2-*",
                "--state-dir",
            ])
            .arg(state)
            .arg("--pin-dir")
            .arg(&d.pins.0)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    assert!(
        !ping(a, &a.host_v4.to_string()),
        "the running daemon's rule is untouched"
    );

    // A graceful stop leaves enforcement in place too.
    assert!(d.terminate().success());
    assert!(!d.socket.exists(), "socket removed on graceful stop");
    assert!(!ping(a, &a.host_v4.to_string()), "enforcement continues after SIGTERM");
    d.spawn();
    d.ok(&["deny", "del", "1"]);
    assert!(ping(a, &a.host_v4.to_string()));
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn drivers_without_native_xdp_fall_back_to_generic_mode() {
    require_root();
    struct Iface(&'static str);
    impl Drop for Iface {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", self.0]).status();
        }
    }
    let _ = Command::new("ip").args(["link", "del", "se6-br"]).status();
    assert!(Command::new("ip")
        .args(["link", "add", "se6-br", "type", "bridge"])
        .status()
        .unwrap()
        .success());
    let _iface = Iface("se6-br");
    let d = Daemon::start("e6", &["se6-*"]);
    let st = d.json(&["status"]);
    assert_eq!(st["interfaces"][0]["name"], "se6-br", "{st}");
    assert_eq!(st["interfaces"][0]["mode"], "generic", "{st}");
    let human = d.ok(&["status"]);
    assert!(human.contains("se6-br") && human.contains("xdp generic"), "{human}");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn interfaces_created_later_are_covered_within_a_second_and_forgotten_when_gone() {
    require_root();
    let d = Daemon::start("e3", &["se3-*"]);
    let lab = sluice::lab::Lab::new("se3", "", 13, 2).unwrap();
    let _ = lab.down();
    d.ok(&["deny", "add", &lab.host('a').ns_v4.to_string()]);
    assert_eq!(d.json(&["status"])["interfaces"].as_array().unwrap().len(), 0);

    let lab = {
        lab.up().unwrap();
        LabGuard(lab)
    };
    let took = wait_for("new veths attached", Duration::from_secs(1), || {
        d.json(&["status"])["interfaces"].as_array().unwrap().len() == 2
    });
    eprintln!("new veths covered {took:?} after `lab up` returned");
    let (a, b) = (lab.host('a'), lab.host('b'));
    assert!(!ping(a, &a.host_v4.to_string()), "rule applies on the new veth");
    assert!(ping(b, &b.host_v4.to_string()));

    lab.down().unwrap();
    wait_for("vanished veths forgotten", Duration::from_secs(1), || {
        d.json(&["status"])["interfaces"].as_array().unwrap().is_empty()
    });
    assert_eq!(link_pins(&d.pins.0), (0, 0), "pins of vanished interfaces removed");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn down_detaches_and_unpins_and_run_reapplies_lost_maps() {
    require_root();
    let lab = LabGuard::new("se4", 14);
    let mut d = Daemon::start("e4", &["se4-*"]);
    let a = lab.host('a');
    d.ok(&["deny", "add", &a.ns_v4.to_string()]);
    assert!(!ping(a, &a.host_v4.to_string()));

    // A client following the event stream must not hold up the shutdown.
    let mut follower = Command::new(BIN)
        .args(["events", "--follow"])
        .env("SLUICE_SOCKET", &d.socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = Command::new(BIN)
        .arg("down")
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--pin-dir")
        .arg(&d.pins.0)
        .env("SLUICE_SOCKET", &d.socket)
        .output()
        .unwrap();
    let t0 = Instant::now();
    while follower.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        follower.try_wait().unwrap().is_some(),
        "the follower's stream ended with the daemon"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("stopped the sluice daemon"), "{out}");
    assert_eq!(out.matches("detached XDP firewall").count(), 2, "{out}");
    assert!(out.contains("unpinned map sl_deny_src4"), "{out}");
    assert!(!d.pins.0.exists());
    let exited = d.child.as_mut().unwrap().wait().unwrap();
    assert!(exited.success(), "graceful exit on SIGTERM: {exited}");
    assert!(ping(a, &a.host_v4.to_string()), "nothing enforced after down");

    // Rules survive in SQLite and are applied to the fresh maps.
    d.spawn();
    assert!(!ping(a, &a.host_v4.to_string()), "rule re-applied from the store");
    assert!(d.log_text().contains("added=1"), "{}", d.log_text());

    // After kill -9 the socket is left behind; `down --json` removes it
    // with everything else and says so.
    d.kill9();
    assert!(d.socket.exists());
    let o = Command::new(BIN)
        .args(["down", "--json", "--state-dir"])
        .arg(d.state_dir())
        .arg("--pin-dir")
        .arg(&d.pins.0)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stopped_pid"], serde_json::Value::Null, "{v}");
    assert_eq!(v["stale_socket_removed"], d.socket.to_str().unwrap(), "{v}");
    let removed: Vec<&str> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(
        removed.iter().filter(|l| l.contains("detached XDP firewall")).count(),
        2,
        "{v}"
    );
    assert!(!d.socket.exists() && !d.pins.0.exists());
    assert!(ping(a, &a.host_v4.to_string()), "nothing enforced after down");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn the_lab_command_is_idempotent_and_says_what_it_made() {
    require_root();
    let lab = |args: &[&str]| {
        let o = Command::new(BIN).arg("lab").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "lab {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    // A tour lab someone already has up is checked but left alone;
    // otherwise the lab is removed even if an assertion fails.
    let theirs = std::path::Path::new("/run/netns/sluice-a").exists();
    struct Down(bool);
    impl Drop for Down {
        fn drop(&mut self) {
            if !self.0 {
                let _ = Command::new(BIN).args(["lab", "down"]).output();
            }
        }
    }
    let _down = Down(theirs);
    let first = lab(&["up"]);
    assert!(
        first.contains("namespace sluice-a") && first.contains("veth-sluice-b"),
        "{first}"
    );
    assert!(first.contains("nsenter --net=/run/netns/sluice-a ping"), "{first}");
    let again: serde_json::Value = serde_json::from_str(&lab(&["up", "--json"])).unwrap();
    let hosts = again["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{again}");
    assert_eq!(hosts[0]["netns"], "sluice-a");
    let a = sluice::lab::Lab::standard().host('a').clone();
    assert!(ping(&a, &a.host_v4.to_string()), "the lab works after a second `up`");
    let b_v4 = hosts[1]["ns_v4"].as_str().unwrap();
    assert!(ping(&a, b_v4), "a reaches b through the host, as `lab up` says");
    if theirs {
        return;
    }
    assert!(lab(&["down"]).contains("lab removed"));
    assert!(!std::path::Path::new("/run/netns/sluice-a").exists());
    let v: serde_json::Value = serde_json::from_str(&lab(&["down", "--json"])).unwrap();
    assert_eq!(v["removed"][1], "sluice-b", "a second down is fine too");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn cli_exit_codes_and_one_line_errors() {
    require_root();
    let o = Command::new(BIN)
        .args(["status", "--socket", "/nonexistent/sluice.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not running") && err.contains("sluice run"), "{err}");

    let o = Command::new(BIN).args(["deny", "add"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "usage error");
    let o = Command::new(BIN).args(["deny", "frobnicate"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "usage error");
    let o = Command::new(BIN)
        .args(["events", "--kind", "conn,bogus"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "an unknown event kind is a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown event kind"));

    let d = Daemon::start("e5", &["se5-nothing-*"]);
    for (bad, needle) in [
        ("10.0.0.0/33", "prefix length 33"),
        ("abc", "invalid CIDR"),
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
    ] {
        let o = d.cli(&["deny", "add", bad]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    d.ok(&["deny", "add", "10.0.0.0/8"]);
    let o = d.cli(&["deny", "add", "10.0.0.0/8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let o = d.cli(&["deny", "del", "99"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no deny rule with id 99"));

    // import: one bad line means nothing is added.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("list.txt");
    std::fs::write(
        &f,
        "# lab\n198.18.0.0/16\n198.19.0.0/16 # trailing comment\nnot-a-cidr\n",
    )
    .unwrap();
    let o = d.cli(&["deny", "import", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line 4"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(d.json(&["deny", "list"]).as_array().unwrap().len(), 1);
    std::fs::write(&f, "# lab\n198.18.0.0/16\n198.19.0.0/16 # trailing comment\n").unwrap();
    let out = d.ok(&["deny", "import", f.to_str().unwrap()]);
    assert!(out.contains("imported 2 deny rules"), "{out}");
    assert_eq!(d.json(&["deny", "list"]).as_array().unwrap().len(), 3);

    // A full table, in the real kernel map: one line, exit 1, nothing added.
    let small = Daemon::start_with_config("e5s", &["se5-nothing-*"], "max_rules = 2\n");
    small.ok(&["deny", "add", "198.18.0.0/16"]);
    small.ok(&["allow", "add", "198.19.0.0/16"]);
    let o = small.cli(&["deny", "add", "198.20.0.0/16"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("full") && err.contains("max_rules"), "{err}");
    assert_eq!(small.json(&["deny", "list"]).as_array().unwrap().len(), 1);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_corrupt_or_newer_state_database_stops_the_daemon_and_leaves_enforcement_running() {
    require_root();
    let lab = LabGuard::new("se7", 17);
    let mut d = Daemon::start("e7", &["se7-*"]);
    let a = lab.host('a');
    d.ok(&["deny", "add", &a.ns_v4.to_string()]);
    assert!(!ping(a, &a.host_v4.to_string()));
    d.kill9();
    let db = d.state_dir().join("sluice.db");
    // Fold the write-ahead log into the file, so the file alone is the state.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let good = std::fs::read(&db).unwrap();
    for (bytes, needle) in [
        (
            b"this is not a database at all, just garbage bytes".repeat(100),
            "not a sluice database",
        ),
        (Vec::new(), ""), // replaced below by a database from the future
    ] {
        if bytes.is_empty() {
            std::fs::write(&db, &good).unwrap();
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", [])
                .unwrap();
        } else {
            std::fs::write(&db, &bytes).unwrap();
        }
        let _ = std::fs::remove_file(d.state_dir().join("sluice.db-wal"));
        let _ = std::fs::remove_file(d.state_dir().join("sluice.db-shm"));
        let out = std::process::Command::new(common::BIN)
            .arg("run")
            .arg("--socket")
            .arg(&d.socket)
            .arg("--state-dir")
            .arg(d.state_dir())
            .arg("--pin-dir")
            .arg(&d.pins.0)
            .args(["--iface", "se7-*"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let needle = if needle.is_empty() { "schema version 99" } else { needle };
        assert!(err.contains(needle), "{err}");
        // The pinned dataplane was not touched: the deny still drops.
        assert!(!ping(a, &a.host_v4.to_string()), "enforcement continues");
        assert_eq!(link_pins(&d.pins.0), (2, 4));
    }
    // With the good database back, a new daemon adopts everything.
    std::fs::write(&db, &good).unwrap();
    d.spawn();
    assert_eq!(d.json(&["deny", "list"]).as_array().unwrap().len(), 1);
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn concurrent_conflicting_updates_leave_store_and_kernel_equal() {
    require_root();
    let d = std::sync::Arc::new(Daemon::start("e8", &["sluice-e8-none*"]));
    // Eight clients add and delete overlapping rules from a pool of 12
    // CIDRs, so most requests race with one on the same rule.
    let pool: Vec<String> = (0..12).map(|i| format!("198.18.{}.0/24", 200 + i)).collect();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let d = d.clone();
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut x: u32 = 0x9e37_79b9 ^ t;
                for _ in 0..40 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let cidr = &pool[(x % 12) as usize];
                    let op = if x & 0x100 == 0 { "add" } else { "del" };
                    // Conflicts (duplicate add, delete of a missing rule) are
                    // refused cleanly; anything else must succeed.
                    let out = d.cli(&["deny", op, cidr]);
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        out.status.success() || err.contains("already exists") || err.contains("no deny rule"),
                        "{op} {cidr}: {err}"
                    );
                }
            })
        })
        .collect();
    // Two more apply whole policies (random subsets of the pool) meanwhile:
    // each apply is atomic, so it never fails on a rule that changed under it.
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let appliers: Vec<_> = (0..2u32)
        .map(|t| {
            let (d, pool, dir) = (d.clone(), pool.clone(), dir.clone());
            std::thread::spawn(move || {
                let mut x: u32 = 0x85eb_ca6b ^ t;
                for i in 0..10 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let mut text = String::from("version = 1\n");
                    for (j, cidr) in pool.iter().enumerate() {
                        if x & (1 << j) != 0 {
                            text.push_str(&format!("[[deny]]\ncidr = \"{cidr}\"\n"));
                        }
                    }
                    let f = dir.path().join(format!("p{t}-{i}.toml"));
                    std::fs::write(&f, text).unwrap();
                    d.ok(&["apply", "--allow-empty", "-f", f.to_str().unwrap()]);
                }
            })
        })
        .collect();
    for t in threads.into_iter().chain(appliers) {
        t.join().unwrap();
    }
    let listed: std::collections::BTreeSet<String> = d
        .json(&["deny", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cidr"].as_str().unwrap().to_string())
        .collect();
    // The store, read directly.
    let c = rusqlite::Connection::open(d.state_dir().join("sluice.db")).unwrap();
    let stored: std::collections::BTreeSet<String> = c
        .prepare("SELECT cidr FROM fw_rules WHERE action = 'deny'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // The kernel, read from the pinned LPM trie.
    let map = aya::maps::MapData::from_pin(d.pins.0.join("sl_deny_src4")).unwrap();
    let trie: aya::maps::LpmTrie<_, [u8; 4], sluice_abi::FwRule> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(map)).unwrap();
    let kernel: std::collections::BTreeSet<String> = trie
        .iter()
        .map(|kv| {
            let (k, _) = kv.unwrap();
            let a = k.data();
            format!("{}.{}.{}.{}/{}", a[0], a[1], a[2], a[3], k.prefix_len())
        })
        .collect();
    eprintln!("after 320 racing requests and 20 applies: {} rules", listed.len());
    assert_eq!(listed, stored, "the API shows what the store holds");
    assert_eq!(stored, kernel, "the store equals the kernel");
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn probes_list_every_attach_point_foreign_programs_and_run_stats() {
    require_root();
    let lab = LabGuard::new("se9", 19);
    let d = Daemon::start("e9", &["se9-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    // Another tool's program on one of the same hooks.
    let mut ebpf = aya::Ebpf::load(sluice::dataplane::objects::OTHER_OBJ).unwrap();
    let prog: &mut aya::programs::SchedClassifier = ebpf.program_mut("other_tc").unwrap().try_into().unwrap();
    prog.load().unwrap();
    prog.attach(&a.host_if, aya::programs::TcAttachType::Ingress).unwrap();
    let foreign_id = prog.info().unwrap().id();

    let list = d.json(&["probes", "list"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    for h in [a, b] {
        for kind in ["xdp", "tc-ingress", "tc-egress"] {
            let id = format!("{kind}/{}", h.host_if);
            assert!(ids.contains(&id.as_str()), "{id} missing from {ids:?}");
        }
    }
    assert!(ids.contains(&"trace/inet_sock_set_state"), "{ids:?}");
    let foreign = format!("tc-ingress/{}/foreign-{foreign_id}", a.host_if);
    let f = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == foreign.as_str())
        .unwrap_or_else(|| panic!("{foreign} missing from {ids:?}"));
    assert_eq!(f["owner"], "foreign");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["owner"] == "sluice")
            .count()
            >= 7
    );

    // Run statistics on demand: traffic makes the XDP probe's count move.
    assert!(d.ok(&["probes", "stats", "on"]).contains("on"));
    for _ in 0..3 {
        ping(a, &a.host_v4.to_string());
    }
    let list = d.json(&["probes", "list"]);
    let xdp = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == format!("xdp/{}", a.host_if).as_str())
        .unwrap();
    assert!(xdp["run_count"].as_u64().unwrap() >= 3, "{xdp}");
    assert!(xdp["run_time_ns"].as_u64().unwrap() > 0, "{xdp}");
    assert!(d.ok(&["probes", "stats", "off"]).contains("off"));
    drop(ebpf);
}
