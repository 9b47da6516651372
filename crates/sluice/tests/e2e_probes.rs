//! End to end, as root, in lab namespaces: probes are switched off and on by
//! id, at once and persistently (a disabled XDP probe really stops filtering,
//! and stays off through a restart), and other owners' XDP and tc programs
//! are listed and never replaced.

mod common;

use std::process::Command;

use common::*;

fn probe<'a>(list: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing from {list}"))
}

fn iface<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {st}"))
}

/// XDP program ids on an interface, from iproute2 (independent of sluice).
fn xdp_prog_ids(ifname: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("prog/xdp id ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn disabled_probes_stop_at_once_stay_off_across_restarts_and_enable_again() {
    require_root();
    let lab = LabGuard::new("sp1", 57);
    let mut d = Daemon::start("p1", &["sp1-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let xdp_a = format!("xdp/{}", a.host_if);
    // Both hosts denied: a's XDP probe is the only thing that drops a.
    d.ok(&["deny", "add", &a.ns_v4.to_string()]);
    d.ok(&["deny", "add", &b.ns_v4.to_string()]);
    assert!(!ping(a, &a.host_v4.to_string()) && !ping(b, &b.host_v4.to_string()));
    assert_eq!(xdp_prog_ids(&a.host_if).len(), 1);

    let out = d.ok(&["probes", "disable", &xdp_a]);
    assert_eq!(out.trim(), format!("disabled {xdp_a} (persisted)"));
    assert!(
        ping(a, &a.host_v4.to_string()),
        "a disabled XDP probe stops filtering a"
    );
    assert!(!ping(b, &b.host_v4.to_string()), "b is still filtered");
    assert!(
        xdp_prog_ids(&a.host_if).is_empty(),
        "no XDP program left on {}",
        a.host_if
    );
    let st = d.json(&["status"]);
    assert!(iface(&st, &a.host_if)["mode"].is_null(), "{st}");
    assert_eq!(iface(&st, &a.host_if)["disabled"], serde_json::json!(["xdp"]), "{st}");
    assert_eq!(iface(&st, &b.host_if)["mode"], "native", "{st}");
    assert_eq!(st["disabled_probes"], serde_json::json!([xdp_a.clone()]), "{st}");
    let text = d.ok(&["status"]);
    assert!(text.contains("xdp DISABLED (not filtered)"), "{text}");
    let list = d.json(&["probes", "list"]);
    assert_eq!(probe(&list, &xdp_a)["state"], "disabled", "{list}");
    assert!(probe(&list, &xdp_a)["prog_id"].is_null(), "{list}");
    assert_eq!(probe(&list, &format!("xdp/{}", b.host_if))["state"], "enabled");
    let metrics = raw_get(&d.socket, "/metrics");
    assert!(
        metrics.contains("sluice_probes{kind=\"xdp\",state=\"disabled\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_probes{kind=\"xdp\",state=\"enabled\"} 1"),
        "{metrics}"
    );
    let again = d.ok(&["probes", "disable", &xdp_a]);
    assert!(again.contains("already disabled"), "{again}");

    // Persisted: a kill -9 and a restart keep a unfiltered and b filtered.
    d.kill9();
    assert!(ping(a, &a.host_v4.to_string()) && !ping(b, &b.host_v4.to_string()));
    d.spawn();
    assert!(ping(a, &a.host_v4.to_string()), "still disabled after the restart");
    assert!(!ping(b, &b.host_v4.to_string()));
    assert!(xdp_prog_ids(&a.host_if).is_empty());
    assert_eq!(
        d.json(&["status"])["disabled_probes"],
        serde_json::json!([xdp_a.clone()])
    );

    // Enable: filtering is back at once, and stays after a graceful restart.
    assert!(d.ok(&["probes", "enable", &xdp_a]).contains("enabled"));
    assert!(!ping(a, &a.host_v4.to_string()), "enabled again: a is dropped");
    assert_eq!(xdp_prog_ids(&a.host_if).len(), 1);
    d.terminate();
    d.spawn();
    assert!(!ping(a, &a.host_v4.to_string()));
    assert_eq!(xdp_prog_ids(&a.host_if).len(), 1, "exactly one XDP program");
    assert!(d.json(&["status"])["disabled_probes"].as_array().unwrap().is_empty());

    // TC hooks one at a time.
    use aya::programs::TcAttachType::{Egress, Ingress};
    let tci = format!("tc-ingress/{}", a.host_if);
    d.ok(&["probes", "disable", &tci]);
    assert_eq!((tcx_progs(&a.host_if, Ingress), tcx_progs(&a.host_if, Egress)), (0, 1));
    let st = d.json(&["status"]);
    assert_eq!(iface(&st, &a.host_if)["tc"], false, "{st}");
    assert_eq!(iface(&st, &a.host_if)["disabled"], serde_json::json!(["tc-ingress"]));
    d.ok(&["probes", "enable", &tci]);
    assert_eq!((tcx_progs(&a.host_if, Ingress), tcx_progs(&a.host_if, Egress)), (1, 1));

    // The connection tracer.
    d.ok(&["probes", "disable", "trace/inet_sock_set_state"]);
    let list = d.json(&["probes", "list"]);
    assert_eq!(probe(&list, "trace/inet_sock_set_state")["state"], "disabled");
    d.ok(&["probes", "enable", "trace/inet_sock_set_state"]);
    let list = d.json(&["probes", "list"]);
    let t = probe(&list, "trace/inet_sock_set_state");
    assert_eq!(t["state"], "enabled");
    assert!(t["prog_id"].as_u64().is_some(), "{t}");

    // An interface that does not exist yet: disabled before it appears.
    let later = "sp1-z".to_string();
    let out = d.ok(&["probes", "disable", &format!("xdp/{later}")]);
    assert!(out.contains("not present now"), "{out}");
    struct Veth(String);
    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let mut v = Veth(later.clone());
    assert!(Command::new("ip")
        .args(["link", "add", &later, "type", "veth", "peer", "name", "spz1peer"])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let st = d.json(&["status"]);
        if let Some(i) = st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == later.as_str())
        {
            assert!(i["mode"].is_null(), "{i}");
            assert_eq!(i["tc"], true, "the TC probes are still on: {i}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{later} never managed: {st}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(xdp_prog_ids(&later).is_empty());

    // Bad ids: one clear line, nothing stored.
    for (id, why) in [
        ("xdp/../../etc", "not a valid interface name"),
        ("kprobe/tcp_connect", "unknown kind"),
        ("xdp/aaaaaaaaaaaaaaaaaaaaaaa", "not a valid interface name"),
        (&format!("tc-ingress/{}/foreign-7", a.host_if), "other owners"),
    ] {
        let out = d.cli(&["probes", "disable", id]);
        assert_eq!(out.status.code(), Some(1), "{id}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why) && err.lines().count() == 1, "{id}: {err}");
    }
    // Straight to the API, bypassing the CLI's own check.
    let raw = raw_put(&d.socket, "/v1/probes/xdp/a%2Fb", r#"{"enabled":false}"#);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(
        d.json(&["status"])["disabled_probes"],
        serde_json::json!([format!("xdp/{later}")])
    );

    // Probe states follow names: another owner's XDP program on the
    // interface, then a rename to a name whose XDP probe is enabled. sluice
    // does not replace the program: its XDP probe there is "failed" (not
    // "disabled": nobody disabled it), and the TC hooks still toggle.
    let mut obj = aya::Ebpf::load(sluice::dataplane::objects::OTHER_OBJ).unwrap();
    let prog: &mut aya::programs::Xdp = obj.program_mut("other_xdp").unwrap().try_into().unwrap();
    prog.load().unwrap();
    prog.attach(&later, aya::programs::XdpMode::Skb).unwrap();
    let renamed = "sp1-y";
    assert!(Command::new("ip")
        .args(["link", "set", "dev", &later, "name", renamed])
        .status()
        .unwrap()
        .success());
    v.0 = renamed.into();
    let xdp_y = format!("xdp/{renamed}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let list = loop {
        let list = d.json(&["probes", "list"]);
        if list.as_array().unwrap().iter().any(|p| p["id"] == xdp_y.as_str()) {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "{renamed} never listed: {list}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let x = probe(&list, &xdp_y);
    assert_eq!(x["state"], "failed", "{x}");
    assert!(x["error"].as_str().is_some_and(|e| !e.is_empty()), "{x}");
    let st = d.json(&["status"]);
    assert!(iface(&st, renamed)["errors"]["xdp"].is_string(), "{st}");
    assert!(d.ok(&["status"]).contains("NOT ATTACHED (not filtered)"));
    let tci = format!("tc-ingress/{renamed}");
    d.ok(&["probes", "disable", &tci]);
    assert_eq!(tcx_progs(renamed, Ingress), 0);
    d.ok(&["probes", "enable", &tci]);
    assert_eq!(tcx_progs(renamed, Ingress), 1);
    drop(obj);
    drop(v);
}

/// PUT over the unix socket, returning the raw response.
fn raw_put(socket: &std::path::Path, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn foreign_xdp_and_tc_programs_are_listed_and_never_replaced() {
    require_root();
    let lab = LabGuard::new("sp2", 58);
    let (a, b) = (lab.host('a'), lab.host('b'));
    // Another owner's XDP program on b (generic mode), and a legacy cls_bpf
    // filter on a's clsact ingress, both before sluice starts.
    let mut xdp_obj = aya::Ebpf::load(sluice::dataplane::objects::OTHER_OBJ).unwrap();
    let xdp: &mut aya::programs::Xdp = xdp_obj.program_mut("other_xdp").unwrap().try_into().unwrap();
    xdp.load().unwrap();
    xdp.attach(&b.host_if, aya::programs::XdpMode::Skb).unwrap();
    let foreign_xdp = xdp.info().unwrap().id();
    let mut tc_obj = aya::Ebpf::load(sluice::dataplane::objects::OTHER_OBJ).unwrap();
    let _ = aya::programs::tc::qdisc_add_clsact(&a.host_if);
    let tc: &mut aya::programs::SchedClassifier = tc_obj.program_mut("other_tc").unwrap().try_into().unwrap();
    tc.load().unwrap();
    tc.attach_with_options(
        &a.host_if,
        aya::programs::TcAttachType::Ingress,
        aya::programs::tc::TcAttachOptions::Netlink(aya::programs::tc::NlOptions::default()),
    )
    .unwrap();
    let foreign_tc = tc.info().unwrap().id();

    let d = Daemon::start("p2", &["sp2-*"]);
    let st = d.json(&["status"]);
    let failed = st["not_attached"].as_array().unwrap_or_else(|| panic!("{st}"));
    assert_eq!(failed.len(), 1, "{st}");
    assert_eq!(failed[0]["name"], b.host_if.as_str());
    assert_eq!(iface(&st, &a.host_if)["mode"], "native", "{st}");
    let text = d.ok(&["status"]);
    assert!(text.contains("NOT ATTACHED"), "{text}");

    let list = d.json(&["probes", "list"]);
    let mine = probe(&list, &format!("xdp/{}", b.host_if));
    assert_eq!(mine["state"], "failed", "{mine}");
    assert!(mine["error"].as_str().unwrap().contains(&b.host_if), "{mine}");
    let f = probe(&list, &format!("xdp/{}/foreign-{foreign_xdp}", b.host_if));
    assert_eq!(f["owner"], "foreign");
    let f = probe(&list, &format!("tc-ingress/{}/foreign-{foreign_tc}", a.host_if));
    assert_eq!(f["owner"], "foreign");
    assert_eq!(probe(&list, &format!("tc-ingress/{}", a.host_if))["owner"], "sluice");

    // Never replaced: the other owner's XDP program is still the one on b.
    assert_eq!(xdp_prog_ids(&b.host_if), vec![foreign_xdp]);
    let listed = d.ok(&["probes", "list"]);
    assert!(
        listed.contains(&format!("xdp/{}: ", b.host_if)),
        "the reason is printed: {listed}"
    );

    // A policy that disables b's XDP probe (b then attaches without it) and
    // enables a's, while another owner holds a's hook too: the enable
    // fails, and the undo puts b back as it was (unmanaged, failed).
    let (xdp_a, xdp_b) = (format!("xdp/{}", a.host_if), format!("xdp/{}", b.host_if));
    d.ok(&["probes", "disable", &xdp_a]);
    let mut obj_a = aya::Ebpf::load(sluice::dataplane::objects::OTHER_OBJ).unwrap();
    let xa: &mut aya::programs::Xdp = obj_a.program_mut("other_xdp").unwrap().try_into().unwrap();
    xa.load().unwrap();
    xa.attach(&a.host_if, aya::programs::XdpMode::Skb).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("p.toml");
    std::fs::write(&pol, format!("version = 1\n[probes]\ndisabled = [\"{xdp_b}\"]\n")).unwrap();
    let out = d.cli(&["apply", "-f", pol.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&xdp_a) && err.contains("nothing was changed"), "{err}");
    let st = d.json(&["status"]);
    assert_eq!(st["disabled_probes"], serde_json::json!([xdp_a.clone()]), "{st}");
    assert_eq!(
        st["not_attached"][0]["name"],
        b.host_if.as_str(),
        "b is unmanaged again: {st}"
    );
    assert!(iface(&st, &a.host_if)["mode"].is_null(), "{st}");
    // With the other owner gone from a, enabling sluice's probe there works.
    drop(obj_a);
    d.ok(&["probes", "enable", &xdp_a]);
    assert_eq!(iface(&d.json(&["status"]), &a.host_if)["mode"], "native");

    // A tc probe of b can change meanwhile: recorded, and applied once b is
    // managed.
    let tce_b = format!("tc-egress/{}", b.host_if);
    assert!(d.ok(&["probes", "disable", &tce_b]).contains("not present now"));
    // Disabling sluice's XDP probe there lets the rest attach (TC: forwards,
    // redirects, L7) without the hook the other owner holds.
    assert!(d.ok(&["probes", "disable", &xdp_b]).contains("(persisted)"));
    use aya::programs::TcAttachType::{Egress, Ingress};
    assert_eq!((tcx_progs(&b.host_if, Ingress), tcx_progs(&b.host_if, Egress)), (1, 0));
    d.ok(&["probes", "enable", &tce_b]);
    let st = d.json(&["status"]);
    assert!(st["not_attached"].as_array().is_none_or(|v| v.is_empty()), "{st}");
    assert_eq!(iface(&st, &b.host_if)["tc"], true, "{st}");
    assert!(iface(&st, &b.host_if)["mode"].is_null(), "{st}");
    assert_eq!(probe(&d.json(&["probes", "list"]), &xdp_b)["state"], "disabled");
    // Enabling it while the other program is there fails, and changes nothing.
    let out = d.cli(&["probes", "enable", &xdp_b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&xdp_b));
    assert_eq!(
        d.json(&["status"])["disabled_probes"],
        serde_json::json!([xdp_b.clone()])
    );
    assert_eq!(xdp_prog_ids(&b.host_if), vec![foreign_xdp]);
    let metrics = raw_get(&d.socket, "/metrics");
    assert!(
        metrics.contains("sluice_probes{kind=\"xdp\",state=\"disabled\"} 1"),
        "{metrics}"
    );

    drop(d);
    // The daemon is gone; the foreign programs stay.
    assert_eq!(xdp_prog_ids(&b.host_if), vec![foreign_xdp]);
}
