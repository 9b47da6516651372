//! As root: two sluice daemons on one host whose interface globs overlap
//! never fight over an interface. The second leaves the first's interfaces
//! alone and says who holds them; it does not grab them while the first is
//! only stopped (its pinned links keep enforcing), and takes them over once
//! the first is taken down for good. Another tool's XDP program is shown
//! with its name and retried the same way. Lab 93 (`stw`).

mod common;

use std::time::{Duration, Instant};

use aya::programs::TcAttachType::{Egress, Ingress};
use common::*;
use serde_json::Value;
use sluice::{control::watch::RETRY_EVERY, sys::iface::xdp_prog_ids};

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|i| i["name"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Waits (up to three retry intervals) until `f(status)` holds.
fn wait_status(d: &Daemon, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let st = d.json(&["status"]);
        if f(&st) {
            return st;
        }
        assert!(t0.elapsed() < 3 * RETRY_EVERY, "{what}: {st:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ifindex(name: &str) -> u32 {
    sluice::sys::iface::ifindex(name).unwrap()
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn a_second_daemon_leaves_the_first_ones_interfaces_alone_and_takes_over_when_it_goes() {
    require_root();
    let lab = LabGuard::new("stw", 93);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let a_host = a.host_v4.to_string();
    let b_host = b.host_v4.to_string();

    // The first daemon manages a, and denies it.
    let mut first = Daemon::start("tw1", &["stw-a"]);
    first.ok(&["deny", "add", &format!("{}/32", a.ns_v4)]);
    assert!(!ping(a, &a_host));
    let first_pid = first.child.as_ref().unwrap().id();
    let first_xdp = xdp_prog_ids(ifindex(&a.host_if)).unwrap();
    assert_eq!(first_xdp.len(), 1);

    // Another tool's XDP program on b.
    let mut other = aya::Ebpf::load(sluice::dataplane::objects::OTHER_OBJ).unwrap();
    let prog: &mut aya::programs::Xdp = other.program_mut("other_xdp").unwrap().try_into().unwrap();
    prog.load().unwrap();
    prog.attach(&b.host_if, aya::programs::XdpMode::Skb).unwrap();
    let other_id = prog.info().unwrap().id();

    // The second daemon's globs cover both: it takes neither, and says who
    // holds each.
    let second = Daemon::start("tw2", &["stw-*"]);
    let st = second.json(&["status"]);
    assert!(names(&st["interfaces"]).is_empty(), "{st:#}");
    assert_eq!(
        names(&st["not_attached"]),
        [a.host_if.as_str(), b.host_if.as_str()],
        "{st:#}"
    );
    let owner_a = &st["not_attached"][0]["owner"];
    assert_eq!(owner_a["sluice"], true, "{st:#}");
    assert_eq!(owner_a["program"], "sluice_xdp", "{st:#}");
    assert_eq!(owner_a["prog_id"], first_xdp[0], "{st:#}");
    assert_eq!(owner_a["holders"][0]["pid"], first_pid, "{st:#}");
    let owner_b = &st["not_attached"][1]["owner"];
    assert_eq!(
        (&owner_b["sluice"], &owner_b["program"], &owner_b["prog_id"]),
        (&Value::Bool(false), &Value::from("other_xdp"), &Value::from(other_id)),
        "{st:#}"
    );
    let text = second.ok(&["status"]);
    assert!(text.contains("interfaces: 0 managed, 2 not attached"), "{text}");
    assert!(
        text.contains(&format!(
            "another sluice daemon (pid {first_pid} sluice) holds the xdp hook"
        )),
        "{text}"
    );
    assert!(text.contains("another tool's program other_xdp"), "{text}");
    let log = second.log_text();
    assert!(log.contains("leaving the interface to it"), "{log}");
    // The first daemon's programs are alone on a's hooks, and it still
    // enforces; the second's allow does not reach a.
    assert_eq!(xdp_prog_ids(ifindex(&a.host_if)).unwrap(), first_xdp);
    assert_eq!((tcx_progs(&a.host_if, Ingress), tcx_progs(&a.host_if, Egress)), (1, 1));
    assert_eq!((tcx_progs(&b.host_if, Ingress), tcx_progs(&b.host_if, Egress)), (0, 0));
    second.ok(&["allow", "add", &format!("{}/32", a.ns_v4)]);
    assert!(!ping(a, &a_host));
    let list = second.json(&["probes", "list"]);
    let probe = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing from {list:#}"))
            .clone()
    };
    let p = probe(&format!("xdp/{}", a.host_if));
    assert_eq!(p["state"], "failed");
    assert!(p["error"].as_str().unwrap().contains("another sluice daemon"), "{p}");
    assert_eq!(
        probe(&format!("xdp/{}/foreign-{}", a.host_if, first_xdp[0]))["owner"],
        "other-sluice"
    );
    assert_eq!(
        probe(&format!("xdp/{}/foreign-{other_id}", b.host_if))["owner"],
        "foreign"
    );
    // And the first daemon is untouched.
    let st1 = first.json(&["status"]);
    assert_eq!(names(&st1["interfaces"]), [a.host_if.as_str()], "{st1:#}");

    // With the first's XDP probe off on a, its XDP hook is free, but the
    // first still manages a (its tcx programs): the second leaves it alone.
    let xdp_a = format!("xdp/{}", a.host_if);
    first.ok(&["probes", "disable", &xdp_a]);
    assert!(xdp_prog_ids(ifindex(&a.host_if)).unwrap().is_empty());
    std::thread::sleep(RETRY_EVERY + Duration::from_secs(1));
    let st = second.json(&["status"]);
    assert_eq!(names(&st["not_attached"])[0], a.host_if, "{st:#}");
    assert_eq!(st["not_attached"][0]["owner"]["hook"], "tc-ingress", "{st:#}");
    assert!(
        xdp_prog_ids(ifindex(&a.host_if)).unwrap().is_empty(),
        "the second took no hook"
    );
    first.ok(&["probes", "enable", &xdp_a]);
    assert!(!ping(a, &a_host));

    // The other tool lets go of b: the second daemon attaches it.
    drop(other);
    let st = wait_status(&second, "b attached once the other tool let go", |st| {
        names(&st["interfaces"]) == [b.host_if.as_str()]
    });
    assert_eq!(names(&st["not_attached"]), [a.host_if.as_str()]);

    // The first daemon stops (an upgrade, say): its pinned links keep
    // enforcing, and the second daemon does not grab a meanwhile.
    assert!(first.terminate().success());
    std::thread::sleep(RETRY_EVERY + Duration::from_secs(1));
    let st = second.json(&["status"]);
    assert_eq!(names(&st["not_attached"]), [a.host_if.as_str()], "{st:#}");
    let owner_a = &st["not_attached"][0]["owner"];
    assert_eq!(owner_a["holders"], serde_json::json!([]), "{st:#}");
    assert!(
        second
            .ok(&["status"])
            .contains("a stopped sluice daemon's pinned link holds the xdp hook"),
        "{st:#}"
    );
    assert_eq!(xdp_prog_ids(ifindex(&a.host_if)).unwrap(), first_xdp);
    assert!(!ping(a, &a_host), "the stopped daemon's rules still hold");
    // It comes back and adopts its links.
    first.spawn();
    let st1 = first.json(&["status"]);
    assert_eq!(st1["interfaces"][0]["adopted"], true, "{st1:#}");

    // Taken down for good: the second daemon takes a over, with its own
    // rules (the allow), within a few retries.
    let o = std::process::Command::new(BIN)
        .args(["down", "--socket"])
        .arg(&first.socket)
        .arg("--pin-dir")
        .arg(&first.pins.0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    first.child.take().unwrap().wait().unwrap();
    let st = wait_status(&second, "a taken over", |st| {
        names(&st["interfaces"]).len() == 2 && names(&st["not_attached"]).is_empty()
    });
    assert!(
        second.ok(&["status"]).contains("interfaces: 2 managed, 0 not attached"),
        "{st:#}"
    );
    assert!(ping(a, &a_host) && ping(b, &b_host));
    second.ok(&["deny", "add", &format!("{}/32", b.ns_v4)]);
    assert!(!ping(b, &b_host), "the second daemon enforces on b");
    assert!(second.log_text().contains("the hook's other owner let go"));
}
