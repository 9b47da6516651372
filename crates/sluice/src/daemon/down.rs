//! `sluice down`: stops the daemon that serves the given socket (and only
//! that one), then detaches every program and removes every pin in the
//! given pin directory. Rules stay in the state database.
//!
//! Which daemon to stop is asked of the socket (`GET /v1/status` names its
//! pid and pin directory), never guessed from a lock file: with two
//! daemons on one host, `down --socket A --pin-dir B` must neither stop
//! the wrong one nor pull pins from under a running one. Nothing in the
//! pin directory is followed through a symlink.

use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    dataplane::teardown,
    sys::paths::{check_path, check_pin_dir},
};

/// The daemon that answered on the socket, as its status names it.
#[derive(Debug, Clone)]
pub struct Serving {
    pub pid: u32,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// What `sluice down` was asked to take down.
pub struct Down<'a> {
    pub state_dir: &'a Path,
    pub pin_dir: &'a Path,
    pub socket: &'a Path,
    /// The daemon serving `socket`, if one answered.
    pub serving: Option<Serving>,
    pub json: bool,
}

/// How long a daemon gets to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `sluice down`: stop the daemon on the socket if one runs, then detach
/// and unpin.
pub fn down(req: Down) -> Result<()> {
    let Down {
        state_dir,
        pin_dir,
        socket,
        serving,
        json,
    } = req;
    check_pin_dir(pin_dir).map_err(anyhow::Error::msg)?;
    check_path("state_dir", state_dir).map_err(anyhow::Error::msg)?;
    check_path("socket", socket).map_err(anyhow::Error::msg)?;
    if fs::symlink_metadata(pin_dir).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "pin_dir {} is a symbolic link; give the real directory (nothing was stopped or removed)",
            pin_dir.display()
        );
    }
    let mut stopped = None;
    let mut state_dir = state_dir.to_path_buf();
    if let Some(s) = serving {
        if s.pin_dir != pin_dir {
            bail!(
                "the daemon on {} (pid {}) keeps its pins in {}, not {}; nothing was stopped or removed \
                 (run `sluice down --socket {} --pin-dir {}` to take that one down)",
                socket.display(),
                s.pid,
                s.pin_dir.display(),
                pin_dir.display(),
                socket.display(),
                s.pin_dir.display()
            );
        }
        stop(s.pid)?;
        stopped = Some(s.pid);
        state_dir = s.state_dir;
    }
    // Held while the pins are removed: no daemon may be using them (one
    // serving another socket) or start on them meanwhile.
    let _held = hold_pin_dir(pin_dir, socket)?;
    let removed = teardown(pin_dir)?;
    // A daemon killed with -9 leaves its socket: remove it if it is a socket
    // nobody answers on (never anything else).
    let stale_socket = {
        use std::os::unix::fs::FileTypeExt;
        let is_socket = fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
        // Only a socket nobody listens on (ECONNREFUSED): never another
        // kind of socket (a datagram one gives EPROTOTYPE), nor a live one.
        is_socket
            && std::os::unix::net::UnixStream::connect(socket)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            && fs::remove_file(socket).is_ok()
    };
    let db = state_dir.join("sluice.db");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "stopped_pid": stopped,
                "removed": removed,
                "stale_socket_removed": stale_socket.then(|| socket.display().to_string()),
                "rules_kept_in": db.display().to_string(),
            })
        );
        return Ok(());
    }
    if let Some(pid) = stopped {
        println!("stopped the sluice daemon (pid {pid}) serving {}", socket.display());
    }
    if removed.is_empty() {
        println!(
            "nothing pinned in {}: the dataplane was already down",
            pin_dir.display()
        );
    }
    for line in removed {
        println!("{line}");
    }
    if stale_socket {
        println!("removed the stale socket {}", socket.display());
    }
    println!("rules are kept in {}; `sluice run` restores them", db.display());
    Ok(())
}

/// SIGTERM to `pid` through a pidfd (so a recycled pid is never signalled
/// after we looked), then waits for it to exit.
fn stop(pid: u32) -> Result<()> {
    // SAFETY: pidfd_open(2) with a pid and no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        // It exited between its answer and now: nothing to stop.
        return Ok(());
    }
    // SAFETY: fd is a fresh pidfd we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGTERM,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e).with_context(|| format!("signalling the daemon (pid {pid})"));
    }
    // A pidfd becomes readable when the process exits.
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "the daemon (pid {pid}) did not stop within {} s; not removing its pins",
                STOP_TIMEOUT.as_secs()
            );
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) } > 0 {
            return Ok(());
        }
    }
}

/// Takes the pin directory's flock (the one every daemon holds on its
/// pins), refusing if another daemon holds it.
fn hold_pin_dir(pin_dir: &Path, socket: &Path) -> Result<Option<fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(pin_dir)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", pin_dir.display())),
    };
    // The daemon we stopped may take a moment to close its descriptors.
    let deadline = Instant::now() + Duration::from_secs(2);
    // SAFETY: flock on an fd we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if Instant::now() > deadline {
            bail!(
                "the pins in {} are in use by a sluice daemon that does not serve {}; nothing was removed \
                 (take that daemon down with `sluice down --socket ITS_SOCKET --pin-dir {}`)",
                pin_dir.display(),
                socket.display(),
                pin_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(f))
}
