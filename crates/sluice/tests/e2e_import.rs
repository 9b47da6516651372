//! Tier 3: an import is one all-or-nothing operation end to end, whatever
//! is killed when. `sluice deny import` of 100,000 rules runs against a
//! real daemon that is `kill -9`ed at points spread over the import's
//! duration. The import's first line denies lab host b and its last line
//! lab host a, so real pings tell what the kernel enforces:
//!
//! - while the daemon is dead, a and b are both denied or both pass (the
//!   kernel holds all of the import or none of it);
//! - after a restart, the store holds all of it or none of it, and the
//!   kernel agrees with the store;
//! - the CLI never claims more than it knows: it either reports every rule
//!   in force, or says the import is all or nothing and how to see which.
//!
//! Needs root.

mod common;

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use common::{require_root, Daemon, LabGuard, BIN};

const RULES: usize = 100_000;
const CONFIG: &str = "max_rules = 131072\nl7_capture_bytes = 0\n";

/// The import: b's address, then distinct /32s in 10/8, then a's address.
fn import_file(dir: &std::path::Path, a: &str, b: &str) -> std::path::PathBuf {
    let mut text = format!("# first: lab host b\n{b}\n");
    for i in 0..RULES - 2 {
        // Distinct hosts, not in address order (a bijection of i).
        let x = (i as u32).wrapping_mul(2_654_435_761) & 0x00ff_ffff;
        text.push_str(&format!("10.{}.{}.{}\n", x >> 16, (x >> 8) & 255, x & 255));
    }
    text.push_str(&format!("{a} # last: lab host a\n"));
    let p = dir.join("import.txt");
    std::fs::write(&p, text).unwrap();
    p
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    After(std::time::Duration),
    InKernel([u8; 4]),
}

/// True if the pinned deny table holds this /32 (pending or in force).
fn in_kernel(map: &std::path::Path, key: [u8; 4]) -> bool {
    use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
    let Ok(data) = MapData::from_pin(map) else { return false };
    let Ok(trie) = LpmTrie::<_, [u8; 4], sluice_abi::FwRule>::try_from(Map::LpmTrie(data)) else {
        return false;
    };
    // The import holds no prefix covering another: a hit is the /32 itself.
    trie.get(&Key::new(32, key), 0).is_ok()
}

fn deny_count(d: &Daemon) -> u64 {
    d.json(&["status"])["rules"]["deny"].as_u64().unwrap()
}

/// True if any of three pings from `host` to its host side is answered (a
/// veth may drop the first frames right after an XDP attach).
fn pings(host: &sluice::lab::LabHost) -> bool {
    let dst = host.host_v4.to_string();
    host.exec(&["ping", "-c3", "-i0.2", "-W1", "-q", &dst])
        .unwrap()
        .status
        .success()
}

/// (a can reach the host, b can reach the host).
fn reach(lab: &LabGuard) -> (bool, bool) {
    (pings(lab.host('a')), pings(lab.host('b')))
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn an_import_killed_at_any_moment_is_all_or_nothing() {
    require_root();
    let lab = LabGuard::new("imp", 91);
    let glob = "imp-*";
    let dir = tempfile::tempdir().unwrap();
    let file = import_file(
        dir.path(),
        &lab.host('a').ns_v4.to_string(),
        &lab.host('b').ns_v4.to_string(),
    );
    let file = file.to_str().unwrap().to_string();

    // Uninterrupted, to time it: every rule in force, both hosts denied.
    let d = Daemon::start_with_config("imp0", &[glob], CONFIG);
    assert_eq!(reach(&lab), (true, true));
    let t0 = Instant::now();
    let out = d.ok(&["deny", "import", &file]);
    let full = t0.elapsed();
    assert!(out.contains(&format!("imported {RULES} deny rules")), "{out}");
    assert_eq!(deny_count(&d), RULES as u64);
    assert_eq!(reach(&lab), (false, false));
    drop(d);
    eprintln!("a whole import of {RULES} rules takes {full:?}");

    // Kill points: early; the moment the first line's entry is in the
    // kernel (mid-write); the moment the last line's is (around the
    // commit); and after the import.
    let (a_key, b_key) = (lab.host('a').ns_v4.octets(), lab.host('b').ns_v4.octets());
    let points = [
        Kill::After(full.mul_f64(0.1)),
        Kill::InKernel(b_key),
        Kill::InKernel(a_key),
        Kill::After(full.mul_f64(1.3)),
    ];
    let mut outcomes = Vec::new();
    for (i, point) in points.into_iter().enumerate() {
        let frac = format!("{point:?}");
        let mut d = Daemon::start_with_config(&format!("imp{}", i + 1), &[glob], CONFIG);
        // The table is in use already: no empty-table shortcut helps.
        d.ok(&["deny", "add", "203.0.113.0/24"]);
        let mut client = Command::new(BIN)
            .args(["deny", "import", &file])
            .env("SLUICE_SOCKET", &d.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        match point {
            Kill::After(t) => std::thread::sleep(t),
            Kill::InKernel(key) => {
                let map = d.pins.0.join("sl_deny_src4");
                let deadline = Instant::now() + full * 10;
                while !in_kernel(&map, key) {
                    assert!(Instant::now() < deadline, "{key:?} never reached the kernel");
                    assert!(client.try_wait().unwrap().is_none(), "the import ended first");
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        }
        d.kill9();
        let out = client.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        // The daemon is dead: the kernel alone enforces, all or nothing.
        let dead = reach(&lab);
        assert_eq!(
            dead.0, dead.1,
            "kill at {frac}: a and b disagree while the daemon is down: {dead:?}"
        );
        d.spawn();
        let n = deny_count(&d) - 1;
        let live = reach(&lab);
        assert!(n == 0 || n == RULES as u64, "kill at {frac}: {n} rules stored");
        assert_eq!(
            live,
            (n == 0, n == 0),
            "kill at {frac}: the kernel disagrees with the store ({n} rules)"
        );
        if out.status.success() {
            assert!(stdout.contains("all in force") && n == RULES as u64, "{stdout}");
        } else {
            assert!(
                stderr.contains("all or nothing") && stderr.contains("deny list"),
                "kill at {frac}: the CLI must say what it knows: {stderr}"
            );
        }
        outcomes.push((frac, n, dead.0));
    }
    eprintln!("(kill point, rules after restart, reachable while down): {outcomes:?}");
    // The kill points spread over the import: some before, some after.
    assert!(
        outcomes.iter().any(|o| o.1 == 0),
        "no kill landed before the commit: {outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o.1 == RULES as u64),
        "no kill landed after the commit: {outcomes:?}"
    );
}
