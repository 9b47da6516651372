//! Helpers shared by the root-only integration tests: a guard that fails
//! loudly without root, unique names, a dataplane in a private pin directory,
//! and a daemon process that is always killed and unpinned, even when the
//! test panics; `docker` holds the real Docker tier's harness.

#![allow(dead_code)]

pub mod docker;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use sluice::{dataplane, lab::Lab};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads BPF programs and builds network namespaces: run it as root (make test)"
    );
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique, bpffs-safe pin directory, removed (with everything in it) on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/sluice-test-{tag}-{}-{n}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = dataplane::teardown(&self.0);
    }
}

/// A lab that is torn down on drop (and cleared of leftovers on creation).
pub struct LabGuard(pub Lab);

impl LabGuard {
    pub fn new(name: &str, number: u8) -> Self {
        let lab = Lab::new(name, "", number, 2).unwrap();
        let _ = lab.down();
        lab.up().expect("lab up");
        LabGuard(lab)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.down() {
            eprintln!("lab down: {e}");
        }
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Pinned links in a pin directory: (XDP, tcx ingress + egress).
pub fn link_pins(pin_dir: &Path) -> (usize, usize) {
    let names: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (
        names.iter().filter(|n| n.starts_with("xdp_")).count(),
        names.iter().filter(|n| n.starts_with("tcx_")).count(),
    )
}

/// Programs attached to an interface's tcx hook (ours and anyone's).
pub fn tcx_progs(iface: &str, ty: aya::programs::TcAttachType) -> usize {
    aya::programs::SchedClassifier::query_tcx(iface, ty).map_or(0, |r| r.1.len())
}

/// A `sluice run` child process with private socket, state and pins.
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub state: tempfile::TempDir,
    pub pins: PinDir,
    pub globs: Vec<String>,
    pub log: PathBuf,
    pub config: Option<PathBuf>,
}

impl Daemon {
    pub fn start(tag: &str, globs: &[&str]) -> Self {
        Self::start_with_config(tag, globs, "")
    }

    /// Starts with extra TOML config (e.g. `limit_sources = 256`).
    pub fn start_with_config(tag: &str, globs: &[&str], toml: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let config = (!toml.is_empty()).then(|| {
            let p = state.path().join("sluice.toml");
            std::fs::write(&p, toml).unwrap();
            p
        });
        let mut d = Daemon {
            child: None,
            socket: state.path().join("sluice.sock"),
            log: state.path().join("daemon.log"),
            state,
            pins: PinDir::new(tag),
            globs: globs.iter().map(|s| s.to_string()).collect(),
            config,
        };
        d.spawn();
        d
    }

    /// `sluice run` (from `bin`) on this daemon's socket, state, pins and
    /// globs, with `config` (the daemon's own if None).
    pub fn run_command(&self, bin: &Path, config: Option<&Path>) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--pin-dir")
            .arg(&self.pins.0);
        for g in &self.globs {
            cmd.arg("--iface").arg(g);
        }
        if let Some(c) = config.or(self.config.as_deref()) {
            cmd.arg("--config").arg(c);
        }
        cmd
    }

    /// (Re)starts the daemon process with the same state and pins.
    pub fn spawn(&mut self) {
        self.spawn_bin(Path::new(BIN));
    }

    /// [`Daemon::spawn`] of another binary (an upgrade's next version).
    pub fn spawn_bin(&mut self, bin: &Path) {
        let mut cmd = self.run_command(bin, None);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn sluice run"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // The socket is bound before the dataplane loads; the daemon is
            // ready once it answers (requests wait in the backlog until then).
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() && self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {st}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not open its socket; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop (SIGTERM); returns once the process has exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    /// Runs a client command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("SLUICE_SOCKET", &self.socket)
            .output()
            .unwrap()
    }

    /// Runs a client command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "sluice {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("daemon log:\n{}", self.log_text());
        }
    }
}

/// `ping -c1` from a namespace; true if a reply came back.
pub fn ping(host: &sluice::lab::LabHost, dst: &str) -> bool {
    let v6 = dst.contains(':');
    let mut args = vec!["ping", "-c1", "-W1", "-q"];
    if v6 {
        args.push("-6");
    }
    args.push(dst);
    host.exec(&args).unwrap().status.success()
}

/// A TCP connect from a namespace with a 1 s timeout.
pub fn tcp_connects(host: &sluice::lab::LabHost, dst: std::net::SocketAddr) -> bool {
    host.in_netns(move || std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(1)).is_ok())
        .unwrap()
}

/// A plain HTTP/1.0 GET over the daemon's unix socket; returns the body.
pub fn raw_get(socket: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: sluice\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
