//! The daemon's locks: `state_dir/sluice.lock` (flock, holding the pid for
//! `sluice down`) and a flock on the pin directory itself, so one daemon
//! owns one set of state and one set of pins.

use std::{
    fs,
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::sys::{mounts::ensure_bpffs, paths::private_dir};

/// Holds `state_dir/sluice.lock` (flock) for the daemon's lifetime; the file
/// holds the daemon's pid for `sluice down`.
pub struct PidLock {
    _file: fs::File,
}

pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sluice.lock")
}

pub fn take_lock(state_dir: &Path) -> Result<PidLock> {
    let path = lock_path(state_dir);
    // Never through a symlink (a link planted here would make us truncate
    // its target), and private from its creation.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        bail!(
            "another sluice daemon is running (pid {}) with state dir {}",
            pid.trim(),
            state_dir.display()
        );
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(PidLock { _file: f })
}

/// flock on the pin directory itself (bpffs directories accept it): one
/// daemon per set of pins, whatever its state dir.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<fs::File> {
    ensure_bpffs(pin_dir)?;
    // Whoever can write the pin directory can unpin the links, and so
    // detach the firewall: it must be root's alone.
    private_dir("pin_dir", pin_dir).map_err(anyhow::Error::msg)?;
    let f = fs::File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another sluice daemon is using the pins in {}", pin_dir.display());
    }
    Ok(f)
}
