//! The API's unix socket: bound private (mode 0600) from the first instant,
//! replacing only a stale socket nobody listens on, never a file.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;

/// The bound API socket's path, unlinked on drop.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Refuses a socket path that names anything but a socket (the daemon
/// removes a stale socket before binding; it must never remove a file).
pub fn not_a_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => bail!(
            "{} exists and is not a socket; refusing to replace it (choose another --socket)",
            path.display()
        ),
        _ => Ok(()),
    }
}

pub async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if fs::symlink_metadata(path).is_ok() {
        not_a_socket(path)?;
        // Only a socket nobody listens on is stale (ECONNREFUSED); another
        // kind of socket, or one we may not reach, is left alone.
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => bail!("something is already serving {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => bail!(
                "{} exists and is not a stale sluice socket ({e}); not replacing it",
                path.display()
            ),
        }
        fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Create it private from the first instant: umask 077 during bind.
    // SAFETY: umask is process-wide but we are single-purpose here, at startup.
    let old = unsafe { libc::umask(0o077) };
    let l = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
