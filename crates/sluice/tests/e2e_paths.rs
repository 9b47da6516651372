//! As root: names that become file or pin paths are validated before the
//! daemon (or `sluice down`) creates, chmods or removes anything, and bad
//! ones leave the filesystem exactly as it was.

mod common;

use std::{os::unix::fs::PermissionsExt, process::Command};

use common::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn paths_are_validated_before_anything_is_created_chmodded_or_removed() {
    require_root();
    // No dot in the name: pin_dir rejects dots before anything else.
    let dir = tempfile::Builder::new().prefix("sluicepaths").tempdir().unwrap();
    let d = dir.path();
    let precious = d.join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let state = d.join("state");
    let pins = "/sys/fs/bpf/sluice-test-paths";
    let st = state.to_str().unwrap();

    // A socket path naming a regular file is not replaced.
    let (code, err) = run(&[
        "run",
        "--socket",
        precious.to_str().unwrap(),
        "--state-dir",
        st,
        "--pin-dir",
        pins,
        "--iface",
        "sluicenone*",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not a socket; refusing to replace it"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    // Relative paths, '..' components, and the bpffs mount itself.
    let sock = d.join("s.sock");
    let sock = sock.to_str().unwrap();
    for (args, why) in [
        (
            vec!["--state-dir", "relative/state"],
            "state_dir relative/state must be an absolute path",
        ),
        (
            vec!["--state-dir", &format!("{}/../x", d.display())],
            "must not contain '.' or '..'",
        ),
        (vec!["--pin-dir", "/sys/fs/bpf/../../../tmp/p"], "pin_dir"),
        (vec!["--pin-dir", "/sys/fs/bpf"], "not the mount itself"),
        (vec!["--socket", "api.sock"], "socket api.sock must be an absolute path"),
    ] {
        let mut a = vec!["run", "--iface", "sluicenone*"];
        if !args.contains(&"--socket") {
            a.extend(["--socket", sock]);
        }
        if !args.contains(&"--state-dir") {
            a.extend(["--state-dir", st]);
        }
        if !args.contains(&"--pin-dir") {
            a.extend(["--pin-dir", pins]);
        }
        a.extend(args.iter().copied());
        let (code, err) = run(&a);
        assert_eq!(code, 1, "{a:?}: {err}");
        assert!(err.contains(why), "{a:?}: {err}");
        assert!(!state.exists(), "{a:?} created the state dir");
    }
    assert!(!std::path::Path::new("/tmp/p").exists());
    assert!(
        !std::path::Path::new(pins).exists(),
        "no pin dir was created for a refused start"
    );

    // An existing group/world-writable state dir is refused, not chmodded.
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = run(&[
        "run",
        "--socket",
        sock,
        "--state-dir",
        st,
        "--pin-dir",
        pins,
        "--iface",
        "sluicenone*",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("writable by group or others"), "{err}");
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o777);
    assert!(
        std::fs::read_dir(&state).unwrap().next().is_none(),
        "nothing written into it"
    );

    // `sluice down` never empties a directory that is not a pin directory.
    let (code, err) = run(&["down", "--state-dir", st, "--pin-dir", d.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a directory below a bpffs mount"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    let (code, err) = run(&["down", "--state-dir", st, "--pin-dir", "/sys/fs/bpf"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not the mount itself"), "{err}");
    assert!(std::path::Path::new("/sys/fs/bpf").exists());
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// A `sluice run` on these paths that must be refused: exit 1, with `why`.
fn refused_start(sock: &str, state: &std::path::Path, pins: &str, why: &str) {
    let (code, err) = run(&[
        "run",
        "--socket",
        sock,
        "--state-dir",
        state.to_str().unwrap(),
        "--pin-dir",
        pins,
        "--iface",
        "sluicenone*",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(why), "wanted {why:?}: {err}");
}

/// Nobody but root can change what the daemon trusts: the state dir and
/// every file in it, the pin dir and its links. Each refusal touches
/// nothing.
#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn state_and_pins_are_roots_alone() {
    require_root();
    let dir = tempfile::Builder::new().prefix("sluicepriv").tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("s.sock");
    let sock = sock.to_str().unwrap();
    let pins = PinDir::new("priv");
    let pins_s = pins.0.to_str().unwrap().to_string();

    // A symlinked lock file is refused, and what it points at is untouched
    // (an older sluice truncated it).
    let state = d.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("sluice.lock")).unwrap();
    refused_start(
        sock,
        &state,
        &pins_s,
        "sluice.lock is a symbolic link; refusing to follow it",
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!pins.0.exists(), "refused before the pins");
    std::fs::remove_file(state.join("sluice.lock")).unwrap();
    // So is a symlinked database.
    std::os::unix::fs::symlink(&victim, state.join("l7.db")).unwrap();
    refused_start(sock, &state, &pins_s, "l7.db is a symbolic link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(state.join("l7.db")).unwrap();

    // A state dir someone else owns is refused.
    let theirs = d.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    refused_start(sock, &theirs, &pins_s, "belongs to uid 65534");
    assert!(
        std::fs::read_dir(&theirs).unwrap().next().is_none(),
        "nothing written into it"
    );

    // A pin dir an unprivileged user pre-created (it could unpin the links
    // later, detaching the firewall) is refused, and so is a root-owned one
    // others may write; neither gets a pin.
    std::fs::create_dir(&pins.0).unwrap();
    std::os::unix::fs::chown(&pins.0, Some(65534), Some(65534)).unwrap();
    refused_start(sock, &state, &pins_s, "belongs to uid 65534");
    std::os::unix::fs::chown(&pins.0, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&pins.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused_start(sock, &state, &pins_s, "is writable by group or others");
    assert!(std::fs::read_dir(&pins.0).unwrap().next().is_none(), "no pin in it");
    std::fs::remove_dir(&pins.0).unwrap();

    // A state dir an older build left readable (0755, with 0644 databases):
    // the daemon starts, and every file it keeps there is 0600, the event
    // log too; the pin dir and its links are 0700.
    for f in ["sluice.db", "l7.db"] {
        std::fs::write(state.join(f), "").unwrap();
        std::fs::set_permissions(state.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let jsonl = d.join("log").join("events.jsonl");
    let cfg = d.join("sluice.toml");
    std::fs::write(&cfg, format!("events_jsonl = \"{}\"\n", jsonl.display())).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--socket", sock, "--state-dir", state.to_str().unwrap()])
        .args(["--pin-dir", &pins_s, "--iface", "sluicenone*", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = std::time::Instant::now();
    while Command::new(BIN)
        .args(["status", "--socket", sock])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        assert!(up.elapsed().as_secs() < 20, "the daemon did not come up");
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for f in ["sluice.lock", "sluice.db", "l7.db"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
    assert_eq!(mode(&jsonl), 0o600, "the event log");
    assert_eq!(mode(jsonl.parent().unwrap()), 0o700, "the event log's new dir");
    assert_eq!(mode(sock.as_ref()), 0o600, "the socket");
    assert_eq!(mode(&pins.0), 0o700, "the pin dir");
    assert_eq!(mode(&pins.0.join("links")), 0o700, "the links dir");

    // `down` stops only the daemon that serves the socket it is given, and
    // pulls no pins from under a running daemon.
    let other = PinDir::new("privother");
    let (code, err) = run(&["down", "--socket", sock, "--pin-dir", other.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("keeps its pins in {pins_s}, not {}", other.0.display()))
            && err.contains("nothing was stopped or removed"),
        "{err}"
    );
    let nobody = d.join("nobody.sock");
    let (code, err) = run(&["down", "--socket", nobody.to_str().unwrap(), "--pin-dir", &pins_s]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("in use by a sluice daemon that does not serve") && err.contains("nothing was removed"),
        "{err}"
    );
    assert!(child.try_wait().unwrap().is_none(), "the daemon still runs");
    assert!(pins.0.join("sl_deny_src4").exists(), "its pins are in place");

    // Symlinks in the pin dir are removed, never followed: a pinned map of
    // another tool, linked from the pin dir and from `links` under a link's
    // name, survives `down`.
    let victim_dir = PinDir::new("privvictim");
    std::fs::create_dir(&victim_dir.0).unwrap();
    let victim_map = victim_dir.0.join("m");
    let o = Command::new("bpftool")
        .args(["map", "create", victim_map.to_str().unwrap()])
        .args([
            "type", "array", "key", "4", "value", "4", "entries", "1", "name", "victim",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::os::unix::fs::symlink(&victim_dir.0, pins.0.join("zz_dir")).unwrap();
    std::os::unix::fs::symlink(&victim_map, pins.0.join("links").join("xdp_1_drv")).unwrap();
    let o = Command::new(BIN)
        .args(["down", "--socket", sock, "--pin-dir", &pins_s])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("stopped the sluice daemon (pid"), "{out}");
    assert!(!out.contains("detached XDP firewall"), "a symlink is no link: {out}");
    assert!(
        out.contains("zz_dir (not followed)") && out.contains("xdp_1_drv (not followed)"),
        "{out}"
    );
    assert!(child.wait().unwrap().success(), "stopped with SIGTERM");
    assert!(victim_map.exists(), "the other tool's pin survived");
    assert!(!pins.0.exists());
}
