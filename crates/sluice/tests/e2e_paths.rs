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
