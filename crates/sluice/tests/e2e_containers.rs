//! Tier 3 (Docker): containers are first-class. With a private dockerd
//! (`common::docker`) and the real daemon, every view names the container:
//! discovery from the Engine API (start, restart with a new address,
//! rename, destroy), `status` and `probes list` per interface, `conns` for
//! both local ends, drops. Needs root; the Docker tests of a binary take
//! turns through the harness's host lock.

mod common;

use std::time::{Duration, Instant};

use common::{docker::Docker, *};
use serde_json::Value;

/// Docker's host-side veths (`veth` + 7 hex), and nothing of the labs.
const DOCKER_VETHS: &str = "veth???????";

fn sluice_for(dk: &Docker, tag: &str) -> Daemon {
    Daemon::start_with_config(
        tag,
        &[DOCKER_VETHS],
        &format!("docker_socket = {:?}\n", dk.socket().to_str().unwrap()),
    )
}

/// Waits (up to `secs`) until `f` holds; returns the last value looked at.
fn until(d: &Daemon, what: &str, secs: u64, args: &[&str], f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = d.json(args);
        if f(&v) {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}: {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn container<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["containers"].as_array()?.iter().find(|c| c["name"] == name)
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn containers_are_discovered_and_named_in_every_view() {
    require_root();
    let dk = Docker::start();
    let d = sluice_for(&dk, "ctr1");
    let web_id = dk.run_container("web", &["httpd", "-f", "-p", "80", "-h", "/www"]);
    dk.run_container("client", &["sleep", "3600"]);
    let web_ip = dk.ip("web");

    // Within a second of the start, with interface and address.
    let t0 = Instant::now();
    let v = until(&d, "web and client listed", 5, &["containers"], |v| {
        container(v, "web").is_some_and(|c| !c["interfaces"].as_array().unwrap().is_empty())
            && container(v, "client").is_some()
    });
    eprintln!("discovered in {:?}", t0.elapsed());
    assert_eq!(v["sources"]["docker"]["state"], "connected", "{v:#}");
    let web = container(&v, "web").unwrap();
    assert_eq!(web["id"], web_id.as_str());
    assert_eq!(web["image"], "local/busybox:1");
    assert_eq!(web["runtime"], "docker");
    assert_eq!(web["addrs"][0], web_ip.to_string());
    let veth = web["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(veth.starts_with("veth"), "{web}");
    assert!(web["cgroup_id"].as_u64().is_some(), "{web}");

    // status and probes name the container of each interface.
    let st = until(&d, "web's veth managed", 5, &["status"], |st| {
        st["interfaces"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["name"] == veth.as_str() && i["container"] == "web"))
    });
    assert_eq!(st["containers"]["running"], 2, "{st:#}");
    let text = d.ok(&["status"]);
    assert!(text.contains("container web,"), "{text}");
    let probes = d.json(&["probes", "list"]);
    let xdp = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == format!("xdp/{veth}"))
        .unwrap();
    assert_eq!(xdp["container"], "web", "{xdp}");
    assert!(d.ok(&["probes", "list"]).contains(" web "));

    // conns names both local ends: wget in client, httpd in web.
    let page = dk.exec("client", &["wget", "-qO-", &format!("http://{web_ip}/")]);
    assert!(page.contains(common::docker::INDEX), "{page}");
    let conns = until(&d, "both ends of the fetch", 5, &["conns"], |v| {
        let a = v.as_array().unwrap();
        a.iter()
            .any(|c| c["comm"] == "wget" && c["container"] == "client" && c["peer_container"] == "web")
            && a.iter()
                .any(|c| c["comm"] == "httpd" && c["container"] == "web" && c["peer_container"] == "client")
    });
    for c in conns.as_array().unwrap() {
        let (s, dst) = (c["src"].as_str().unwrap(), c["dst"].as_str().unwrap());
        assert!(
            !s.starts_with("::ffff:") && !dst.starts_with("::ffff:"),
            "one address form: {c}"
        );
    }

    // A restart may bring a new address; the registry follows within a second.
    dk.run_container("filler", &["sleep", "3600"]);
    dk.restart("web");
    let new_ip = dk.ip("web");
    let v = until(&d, "web's new address", 3, &["containers"], |v| {
        container(v, "web").is_some_and(|c| c["addrs"][0] == new_ip.to_string() && c["running"] == true)
    });
    assert_ne!(
        container(&v, "web").unwrap()["interfaces"][0]["name"],
        veth.as_str(),
        "a new veth"
    );
    // Rename and destroy.
    dk.run(&["rename", "client", "client2"]);
    until(&d, "the rename", 3, &["containers"], |v| {
        container(v, "client2").is_some()
    });
    dk.rm("filler");
    until(&d, "the destroy", 3, &["containers"], |v| {
        container(v, "filler").is_none()
    });
    // By name or id prefix; an unknown one names the closest.
    let one = d.json(&["containers", "web"]);
    assert_eq!(one["name"], "web");
    let one = d.json(&["containers", &web_id[..8]]);
    assert_eq!(one["name"], "web");
    let o = d.cli(&["containers", "wbe"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no container \"wbe\"") && err.contains("closest: web"),
        "{err}"
    );
}

/// True if `from` fetches the page at `ip` (within 2 s).
fn fetches(dk: &Docker, from: &str, ip: std::net::Ipv4Addr) -> bool {
    let o = dk.try_exec(from, &["timeout", "3", "wget", "-qO-", &format!("http://{ip}/")]);
    if !o.status.success() {
        eprintln!("{from} -> {ip}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    o.status.success()
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn rules_follow_containers_through_restarts_and_refuse_typos() {
    require_root();
    let dk = Docker::start();
    let d = sluice_for(&dk, "ctr2");
    dk.run_container("web", &["httpd", "-f", "-p", "80", "-h", "/www"]);
    dk.run_container("client", &["sleep", "3600"]);
    dk.run_container("other", &["sleep", "3600"]);
    let web_ip = dk.ip("web");
    until(&d, "three containers attached", 5, &["status"], |st| {
        st["interfaces"].as_array().is_some_and(|a| a.iter().filter(|i| i["container"].is_string()).count() == 3)
    });
    assert!(fetches(&dk, "client", web_ip) && fetches(&dk, "other", web_ip));

    // A typo protects nothing: refused with the closest names, nothing added.
    let o = d.cli(&["deny", "add", "container:clinet"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no container \"clinet\"") && err.contains("closest: client"), "{err}");
    assert_eq!(d.json(&["deny", "list"]).as_array().unwrap().len(), 0);
    // A malformed selector: exit 1, one line.
    let o = d.cli(&["deny", "add", "container:../x"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    // deny container:client (what it sends): client is cut off, other is not.
    let out = d.ok(&["deny", "add", "container:client"]);
    assert!(out.contains(&format!("-> client ({})", dk.ip("client"))), "{out}");
    assert!(!fetches(&dk, "client", web_ip), "client still reaches web");
    assert!(fetches(&dk, "other", web_ip));
    let list = d.json(&["deny", "list"]);
    assert_eq!(list[0]["containers"], serde_json::json!(["client"]), "{list}");

    // The rule follows client through a restart with a new address.
    let old_ip = dk.ip("client");
    dk.run_container("squatter", &["sleep", "3600"]); // takes nothing; bumps the pool
    dk.run(&["stop", "-t", "1", "client"]);
    let taker = dk.run_container("taker", &["sleep", "3600"]); // may take client's old address
    dk.run(&["start", "client"]);
    let new_ip = dk.ip("client");
    let list = until(&d, "the rule's new address", 3, &["deny", "list"], |v| {
        v[0]["addrs"] == serde_json::json!([new_ip.to_string()])
    });
    assert!(!fetches(&dk, "client", web_ip), "client reaches web after its restart: {list}");
    if dk.ip("taker") == old_ip {
        assert!(fetches(&dk, "taker", web_ip), "the old address's new owner is not denied");
    }
    let _ = taker;

    // A label selector: both client and other (given the label).
    dk.rm("other");
    dk.run_container_with("other", &["--label", "tier=back"], &["sleep", "3600"]);
    dk.run_container_with("other2", &["--label", "tier=back"], &["sleep", "3600"]);
    let out = d.ok(&["deny", "add", "label:tier=back", "--dst"]);
    assert!(out.contains("other, other2"), "{out}");
    // --dst container: nothing other containers send reaches them.
    let o_ip = dk.ip("other");
    assert!(!dk
        .try_exec("web", &["wget", "-T", "1", "-qO-", &format!("http://{o_ip}/")])
        .status
        .success());

    // A rule for a container that does not exist yet: --inactive.
    let o = d.cli(&["allow", "add", "container:later"]);
    assert_eq!(o.status.code(), Some(1));
    let out = d.ok(&["allow", "add", "container:later", "--inactive"]);
    assert!(out.contains("inactive"), "{out}");
    let allow = d.json(&["allow", "list"]);
    assert_eq!(allow[0]["inactive"], true, "{allow}");

    // Gone: the rule stays, inactive, and holds no address.
    dk.rm("client");
    let v = until(&d, "client's rule inactive", 3, &["deny", "list"], |v| {
        v.as_array().unwrap().iter().any(|r| r["cidr"] == "container:client" && r["inactive"] == true)
    });
    let r = v.as_array().unwrap().iter().find(|r| r["cidr"] == "container:client").unwrap();
    assert_eq!(r["addrs"], serde_json::json!([]), "{r}");

    // Export and apply round-trip selectors.
    let p = d.ok(&["export"]);
    assert!(p.contains("cidr = \"container:client\"") && p.contains("label:tier=back"), "{p}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, &p).unwrap();
    let out = d.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.starts_with("nothing to change"), "{out}");
}
