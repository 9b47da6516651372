//! End to end, as root, in lab namespaces: `sluice export` and `sluice apply`.
//! Export then apply is a no-op; a dry run changes nothing; apply makes the
//! running rules (kernel included) equal to the file and prints the diff;
//! a failure at the last step undoes every earlier one.

mod common;

use common::*;

/// Writes a policy file, with the `version = 1` line every policy needs
/// unless `text` (an export) has it already.
fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let text = if text.contains("\nversion = ") || text.starts_with("version = ") {
        text.to_string()
    } else {
        format!("version = 1\n{text}")
    };
    write_raw(dir, name, &text)
}

/// Writes `text` as it is.
fn write_raw(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn export_apply_round_trip_dry_run_diff_and_all_or_nothing() {
    require_root();
    let lab = LabGuard::new("sq1", 59);
    let d = Daemon::start("q1", &["sq1-*"]);
    let (a, b) = (lab.host('a'), lab.host('b'));
    let dir = tempfile::tempdir().unwrap();

    // A rule set built by hand, one of each kind.
    d.ok(&["deny", "add", &a.ns_v4.to_string(), "--comment", "host a"]);
    d.ok(&["deny", "add", "2001:2:ff::/48", "--dst"]);
    d.ok(&["allow", "add", "198.18.200.0/24"]);
    d.ok(&[
        "limit",
        "add",
        "--dst-port",
        "8080/tcp",
        "--pps",
        "1000",
        "--per-source",
        "--warmup",
        "2s",
    ]);
    d.ok(&["limit", "add", "--conns", "50", "--burst", "80"]);
    d.ok(&[
        "forward",
        "add",
        &format!("{}:8080", a.host_v4),
        &format!("{}:80", b.ns_v4),
    ]);
    d.ok(&["redirect", "add", "198.18.201.0/24", &b.host_if]);
    d.ok(&["probes", "disable", &format!("tc-egress/{}", b.host_if)]);
    assert!(!ping(a, &a.host_v4.to_string()) && ping(b, &b.host_v4.to_string()));

    // Export -> apply is a no-op, dry run or not.
    let p1 = dir.path().join("p1.toml");
    let p1s = p1.display().to_string();
    d.ok(&["export", "-o", &p1s]);
    let text1 = std::fs::read_to_string(&p1).unwrap();
    for section in [
        "[[deny]]",
        "[[allow]]",
        "[[limit]]",
        "[[forward]]",
        "[[redirect]]",
        "[probes]",
    ] {
        assert!(text1.contains(section), "{section} missing from:\n{text1}");
    }
    let out = d.ok(&["apply", "-f", &p1s]);
    assert!(out.starts_with("nothing to change"), "{out}");
    assert!(out.contains("(8 entries)"), "{out}");
    assert_eq!(d.ok(&["export"]), text1, "stdout export equals the file");

    // A new policy: a is no longer denied, b is; one comment changes; one
    // limit changes rate; the forward goes; xdp on a is disabled, tc-egress
    // on b enabled again.
    let text2 = text1
        .replace(
            &format!("cidr = \"{}/32\"\ncomment = \"host a\"", a.ns_v4),
            &format!("cidr = \"{}/32\"", b.ns_v4),
        )
        .replace(
            "cidr = \"198.18.200.0/24\"",
            "cidr = \"198.18.200.0/24\"\ncomment = \"lab range\"",
        )
        .replace("pps = 1000", "pps = 2000");
    let text2 = {
        let start = text2.find("[[forward]]").unwrap();
        let end = text2[start..].find("[[redirect]]").unwrap() + start;
        format!("{}{}", &text2[..start], &text2[end..])
    };
    let text2 = text2.replace(
        &format!("disabled = [\"tc-egress/{}\"]", b.host_if),
        &format!("disabled = [\"xdp/{}\"]", a.host_if),
    );
    assert_ne!(text1, text2);
    let p2 = write(dir.path(), "p2.toml", &text2);

    let dry = d.ok(&["apply", "-f", &p2, "--dry-run"]);
    assert!(dry.contains(&format!("+ deny src {}/32", b.ns_v4)), "{dry}");
    assert!(dry.contains(&format!("- deny src {}/32", a.ns_v4)), "{dry}");
    assert!(dry.contains("~ allow src 198.18.200.0/24 (\"lab range\")"), "{dry}");
    assert!(dry.contains("+ limit port 8080/tcp pps 2000/s"), "{dry}");
    assert!(dry.contains("- limit port 8080/tcp pps 1000/s"), "{dry}");
    assert!(dry.contains("- forward"), "{dry}");
    assert!(dry.contains(&format!("~ probe xdp/{} disabled", a.host_if)), "{dry}");
    assert!(
        dry.contains(&format!("~ probe tc-egress/{} enabled", b.host_if)),
        "{dry}"
    );
    assert!(
        dry.contains("dry run: would apply 2 added, 3 removed, 3 changed"),
        "{dry}"
    );
    assert_eq!(d.ok(&["export"]), text1, "a dry run changes nothing");
    assert!(!ping(a, &a.host_v4.to_string()), "a is still denied after the dry run");

    let applied = d.ok(&["apply", "-f", &p2]);
    assert!(applied.contains("applied: 2 added, 3 removed, 3 changed"), "{applied}");
    assert!(
        ping(a, &a.host_v4.to_string()),
        "a's deny is gone (and its XDP probe is off)"
    );
    assert!(!ping(b, &b.host_v4.to_string()), "b is denied now");
    let again = d.ok(&["apply", "-f", &p2]);
    assert!(again.starts_with("nothing to change"), "apply is idempotent: {again}");
    assert_eq!(d.json(&["forward", "list"]).as_array().unwrap().len(), 0);
    let st = d.json(&["status"]);
    assert_eq!(
        st["disabled_probes"],
        serde_json::json!([format!("xdp/{}", a.host_if)]),
        "{st}"
    );
    let text2_export = d.ok(&["export"]);

    // All or nothing: the last step (enabling xdp on a) fails because
    // another owner's XDP program took the hook meanwhile; every earlier
    // step of the apply (a deny added, a limit removed) is undone.
    let mut obj = aya::Ebpf::load(sluice::dataplane::objects::OTHER_OBJ).unwrap();
    let xdp: &mut aya::programs::Xdp = obj.program_mut("other_xdp").unwrap().try_into().unwrap();
    xdp.load().unwrap();
    xdp.attach(&a.host_if, aya::programs::XdpMode::Skb).unwrap();
    let text3 = text2_export
        .replace(&format!("disabled = [\"xdp/{}\"]", a.host_if), "disabled = []")
        .replace("[[allow]]", "[[deny]]\ncidr = \"203.0.113.0/24\"\n\n[[allow]]");
    let text3 = {
        // Drop the conns limit.
        let start = text3.find("conns = 50").unwrap();
        let block = text3[..start].rfind("[[limit]]").unwrap();
        let end = text3[start..].find("\n\n").map_or(text3.len(), |e| e + start + 2);
        format!("{}{}", &text3[..block], &text3[end..])
    };
    let p3 = write(dir.path(), "p3.toml", &text3);
    let ids = |d: &Daemon| {
        ["deny", "allow", "limit", "redirect"]
            .iter()
            .map(|l| {
                d.json(&[l, "list"])
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].clone())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let ids_before = ids(&d);
    let out = d.cli(&["apply", "-f", &p3]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("xdp/{}", a.host_if)) && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        d.ok(&["export"]),
        text2_export,
        "the failed apply left everything as it was"
    );
    assert_eq!(
        ids(&d),
        ids_before,
        "not even renumbered: nothing was removed before the failing step"
    );
    let denies = d.json(&["deny", "list"]);
    assert!(!denies.to_string().contains("203.0.113.0/24"), "{denies}");
    drop(obj);

    // Bad files: one clear line naming the place, nothing changed.
    for (text, why) in [
        ("[[deny]]\ncidr = \"10.0.0.0/33\"\n", "deny[1]"),
        ("[[deny]\ncidr = 1\n", "line 2"), // after the version line
        ("[[deny]]\ncidr = \"10.0.0.0/8\"\nports = 3\n", "unknown field `ports`"),
        ("[probes]\ndisabled = [\"xdp/../../x\"]\n", "probes.disabled[1]"),
    ] {
        let p = write(dir.path(), "bad.toml", text);
        let out = d.cli(&["apply", "-f", &p]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{text}: {err}");
    }
    let out = d.cli(&["apply", "-f", "/nonexistent/policy.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(d.ok(&["export"]), text2_export);

    // A file without `version` (here: an empty one) is refused whole.
    let blank = write_raw(dir.path(), "blank.toml", "");
    let out = d.cli(&["apply", "-f", &blank]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the policy has no `version`"), "{err}");
    assert_eq!(d.ok(&["export"]), text2_export);
    // A policy with no rules removes them all only when asked to, and the
    // dry run says the same.
    let empty = write(dir.path(), "empty.toml", "");
    for dry in [true, false] {
        let mut args = vec!["apply", "-f", &empty];
        if dry {
            args.push("--dry-run");
        }
        let out = d.cli(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("would remove all 6 rules in force; nothing was changed (pass --allow-empty"),
            "{err}"
        );
    }
    assert_eq!(d.ok(&["export"]), text2_export);
    // Asked explicitly: it clears everything, and enables every probe.
    let out = d.ok(&["apply", "-f", &empty, "--allow-empty"]);
    assert!(out.contains("applied: 0 added, 6 removed, 1 changed"), "{out}");
    assert!(ping(a, &a.host_v4.to_string()) && ping(b, &b.host_v4.to_string()));
    for list in ["deny", "allow", "limit", "forward", "redirect"] {
        assert_eq!(d.json(&[list, "list"]).as_array().unwrap().len(), 0, "{list}");
    }

    // A whole table at once: 30,000 rules (a policy well over the 1 MiB
    // limit of the other routes), a summarised diff, and export -> apply
    // still a no-op.
    let mut big = String::new();
    let mut json = Vec::new();
    for i in 0..30_000u32 {
        let cidr = format!("10.{}.{}.0/24", i >> 8, i & 255);
        big.push_str(&format!("[[deny]]\ncidr = \"{cidr}\"\ncomment = \"bulk {i}\"\n\n"));
        json.push(serde_json::json!({"cidr": cidr, "comment": format!("bulk {i}")}));
    }
    assert!(
        serde_json::to_vec(&json).unwrap().len() > 1 << 20,
        "the request is over 1 MiB"
    );
    let p = write(dir.path(), "big.toml", &big);
    let out = d.ok(&["apply", "-f", &p]);
    assert!(out.contains("+ ... and 29800 more (--json lists them all)"), "{out}");
    assert!(
        out.ends_with("applied: 30000 added, 0 removed, 0 changed, 0 unchanged\n"),
        "{out}"
    );
    assert_eq!(d.json(&["status"])["rules"]["deny"], 30000);
    let exported = dir.path().join("big-export.toml");
    d.ok(&["export", "-o", exported.to_str().unwrap()]);
    let out = d.ok(&["apply", "-f", exported.to_str().unwrap()]);
    assert!(
        out.starts_with("nothing to change") && out.contains("(30000 entries)"),
        "{out}"
    );
}

/// Applies that only work if stale entries go first, and policies that can
/// never apply (refused whole, by a dry run too).
#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn apply_makes_room_and_refuses_what_cannot_fit() {
    require_root();
    let d = Daemon::start("q2", &["sluice-q2-none*"]);
    let dir = tempfile::tempdir().unwrap();
    let apply = |name: &str, text: &str, dry: bool| {
        let p = write(dir.path(), name, text);
        let mut args = vec!["apply", "-f", p.as_str()];
        if dry {
            args.push("--dry-run");
        }
        d.cli(&args)
    };
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let refused = |out: std::process::Output, why: &str| {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains(why), "{why}: {err}");
    };

    // A full limit table (64) replaced by 64 others: the old ones go first.
    let limits = |base: u32| {
        (0..64)
            .map(|i| format!("[[limit]]\ndst_port = \"{}/tcp\"\npps = 100\n\n", base + i))
            .collect::<String>()
    };
    ok(apply("l1.toml", &limits(1), false));
    let out = ok(apply("l2.toml", &limits(101), false));
    assert!(out.contains("applied: 64 added, 64 removed"), "{out}");
    let ports: Vec<u64> = d
        .json(&["limit", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["dst_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 64);
    assert!(ports.iter().all(|p| (101..165).contains(p)), "{ports:?}");
    // 65 can never fit: refused up front, dry run included, nothing changed.
    let too_many = format!("{}[[limit]]\nconns = 5\n", limits(101));
    refused(
        apply("l3.toml", &too_many, true),
        "65 limit entries; the table holds 64",
    );
    refused(apply("l3.toml", &too_many, false), "65 limit entries");
    assert_eq!(d.json(&["limit", "list"]).as_array().unwrap().len(), 64);

    // A forward reversed: B -> A only loops through A -> B, which goes.
    let out = ok(apply(
        "f1.toml",
        "[[forward]]\nmatch = \"198.18.250.1:80\"\nto = [\"198.18.250.2:80\"]\n",
        false,
    ));
    assert!(
        out.contains("applied: 1 added, 64 removed"),
        "the limits are not in this file: {out}"
    );
    let out = ok(apply(
        "f2.toml",
        "[[forward]]\nmatch = \"198.18.250.2:80\"\nto = [\"198.18.250.1:80\"]\n",
        false,
    ));
    assert!(out.contains("applied: 1 added, 1 removed"), "{out}");
    let f = d.json(&["forward", "list"]);
    assert_eq!(f.as_array().unwrap().len(), 1);
    assert_eq!(f[0]["match"], "198.18.250.2:80", "{f}");
    // A loop inside the file itself is refused by name.
    refused(
        apply(
            "f3.toml",
            "[[forward]]\nmatch = \"198.18.250.1:80\"\nto = [\"198.18.250.2:80\"]\n\n\
             [[forward]]\nmatch = \"198.18.250.2:80\"\nto = [\"198.18.250.1:80\"]\n",
            true,
        ),
        "forward[1]: forward loop",
    );

    // Loops that exist only half way through an apply: a forward replaced
    // while a new one points back at its old target, and a replacement
    // that loops through a forward about to go.
    let fwd = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(m, t)| format!("[[forward]]\nmatch = \"198.18.250.{m}:80\"\nto = [\"198.18.250.{t}:80\"]\n\n"))
            .collect::<String>()
    };
    let out = ok(apply("f4.toml", &fwd(&[("2", "3"), ("1", "2")]), false));
    assert!(out.contains("applied: 2 added, 1 removed"), "{out}");
    ok(apply("f5.toml", &fwd(&[("1", "2"), ("3", "1")]), false));
    let out = ok(apply("f6.toml", &fwd(&[("1", "3")]), false));
    assert!(out.contains("applied: 1 added, 2 removed"), "{out}");
    let f = d.json(&["forward", "list"]);
    assert_eq!(f.as_array().unwrap().len(), 1);
    assert_eq!(f[0]["match"], "198.18.250.1:80", "{f}");

    // A redirect to an interface that does not exist is refused before any
    // step, even when it replaces one whose interface vanished meanwhile
    // (which the undo could not have put back through the API's checks).
    struct Veth(&'static str);
    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["link", "del", self.0]).status();
        }
    }
    let v = Veth("sq2gone");
    assert!(std::process::Command::new("ip")
        .args(["link", "add", v.0, "type", "veth", "peer", "name", "sq2gonep"])
        .status()
        .unwrap()
        .success());
    ok(apply(
        "r1.toml",
        "[[forward]]\nmatch = \"198.18.250.2:80\"\nto = [\"198.18.250.1:80\"]\n\n\
         [[redirect]]\ncidr = \"198.18.202.0/24\"\niface = \"sq2gone\"\n",
        false,
    ));
    drop(v);
    let r2 = "[[forward]]\nmatch = \"198.18.250.2:80\"\nto = [\"198.18.250.1:80\"]\n\n\
              [[redirect]]\ncidr = \"198.18.202.0/24\"\niface = \"sq2nope\"\n";
    refused(apply("r2.toml", r2, true), "interface sq2nope does not exist");
    refused(apply("r2.toml", r2, false), "interface sq2nope does not exist");
    let r = d.json(&["redirect", "list"]);
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["iface"], "sq2gone", "{r}");
}
