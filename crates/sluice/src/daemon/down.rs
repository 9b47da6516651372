//! `sluice down`: stops the daemon that holds the state directory's lock,
//! then detaches every program and removes every pin. Rules stay in the
//! state database.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::lock::running_pid;
use crate::{
    dataplane::teardown,
    sys::paths::{check_path, check_pin_dir},
};

/// `sluice down`: stop the daemon if one runs, then detach and unpin.
pub fn down(state_dir: &Path, pin_dir: &Path, socket: &Path, json: bool) -> Result<()> {
    check_pin_dir(pin_dir).map_err(anyhow::Error::msg)?;
    check_path("state_dir", state_dir).map_err(anyhow::Error::msg)?;
    check_path("socket", socket).map_err(anyhow::Error::msg)?;
    let mut stopped = None;
    if let Some(pid) = running_pid(state_dir) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while running_pid(state_dir).is_some() {
            if Instant::now() > deadline {
                bail!("daemon (pid {pid}) did not stop within 10 s; not removing its pins");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stopped = Some(pid);
    }
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
        println!("stopped the sluice daemon (pid {pid})");
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
