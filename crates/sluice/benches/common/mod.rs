//! Scaffolding shared by the benchmark binaries: a private pin directory, the
//! bench lab, and a `sluice run` child with its own config, socket, state
//! dir and pins, which is always stopped and unpinned, on success, error or
//! panic. Each bench adds its own readiness check and CLI helpers in an
//! `impl BenchDaemon` block of its own.

#![allow(dead_code)]

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use sluice::{dataplane, lab::Lab};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `/sys/fs/bpf/{prefix}-{pid}{suffix}`, torn down on drop.
pub struct PinGuard(pub PathBuf);

impl PinGuard {
    pub fn new(prefix: &str, suffix: &str) -> Result<Self> {
        let p = PathBuf::from(format!("/sys/fs/bpf/{prefix}-{}{suffix}", std::process::id()));
        ensure!(!p.exists(), "{} already exists", p.display());
        Ok(PinGuard(p))
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = dataplane::teardown(&self.0) {
                eprintln!("warning: removing {}: {e}", self.0.display());
            }
        }
    }
}

/// A bench lab, cleared of leftovers on creation and removed on drop.
pub struct LabGuard(pub Lab);

impl LabGuard {
    pub fn new(name: &str, number: u8) -> Result<Self> {
        let lab = Lab::new(name, "", number, 2)?;
        lab.down()?;
        let guard = LabGuard(lab);
        guard.0.up()?;
        Ok(guard)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        match self.0.down() {
            Ok(()) => eprintln!("  lab {} removed", self.0.hosts[0].netns),
            Err(e) => eprintln!("warning: lab down: {e}"),
        }
    }
}

/// A TOML string literal for a path.
fn toml_str(p: &Path) -> Result<String> {
    Ok(serde_json::to_string(p.to_str().context("non-UTF-8 temp path")?)?)
}

/// A `sluice run --config CFG` child. Dropping it kills the daemon, runs
/// `sluice down` on its dirs, and the pin guard removes whatever is left.
pub struct BenchDaemon {
    child: Option<Child>,
    pub pins: PinGuard,
    dir: tempfile::TempDir,
}

impl BenchDaemon {
    /// Starts the daemon with a config setting its socket, state dir and
    /// pins, followed by `extra` TOML; `args` go to `sluice run`. Returns at
    /// once: see [`BenchDaemon::wait_ready`].
    pub fn spawn(pins: PinGuard, extra: &str, args: &[&str]) -> Result<Self> {
        let mut d = BenchDaemon {
            child: None,
            pins,
            dir: tempfile::Builder::new().prefix("sluice-bench-").tempdir()?,
        };
        let cfg = d.dir.path().join("sluice.toml");
        std::fs::write(
            &cfg,
            format!(
                "socket = {}\nstate_dir = {}\npin_dir = {}\n{extra}",
                toml_str(&d.socket())?,
                toml_str(&d.state_dir())?,
                toml_str(&d.pins.0)?
            ),
        )?;
        let log = std::fs::File::create(d.log())?;
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning sluice run")?;
        d.child = Some(child);
        Ok(d)
    }

    /// Polls `ready` once the socket accepts, until it returns true. Fails
    /// if the daemon exits or `what` does not happen within 60 s.
    pub fn wait_ready(&mut self, what: &str, mut ready: impl FnMut(&Self) -> Result<bool>) -> Result<Duration> {
        let t = Instant::now();
        loop {
            if UnixStream::connect(self.socket()).is_ok() && ready(self)? {
                return Ok(t.elapsed());
            }
            if let Some(st) = self.child.as_mut().expect("spawned").try_wait()? {
                bail!("daemon exited with {st}; log:\n{}", self.log_text());
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("daemon did not {what} in 60 s; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// The daemon's private temp dir (config, socket, state, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sluice.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// A client command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("SLUICE_SOCKET", self.socket()).stdin(Stdio::null());
        c
    }

    /// Runs a client command with `--json`; fails if it fails.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.cli(args).arg("--json").output()?;
        ensure!(
            out.status.success(),
            "sluice {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        serde_json::from_slice(&out.stdout).with_context(|| format!("parsing the output of sluice {}", args.join(" ")))
    }

    fn down_command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("down")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--pin-dir")
            .arg(&self.pins.0)
            .stdin(Stdio::null());
        c
    }

    /// `sluice down`: stops the daemon, detaches and unpins; reaps the child.
    pub fn down(&mut self) -> Result<()> {
        let out = self.down_command().output()?;
        ensure!(
            out.status.success(),
            "sluice down: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(mut c) = self.child.take() {
            let st = c.wait()?;
            ensure!(st.success(), "daemon exited with {st}; log:\n{}", self.log_text());
        }
        ensure!(!self.pins.0.exists(), "sluice down left {}", self.pins.0.display());
        Ok(())
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            eprintln!("  killing bench daemon pid {}", c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.pins.0.exists() {
            let _ = self.down_command().stdout(Stdio::null()).status();
        }
        // self.pins (dropped next) unpins whatever is left; self.dir removes
        // the socket, state, config and log.
    }
}
