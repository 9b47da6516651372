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
