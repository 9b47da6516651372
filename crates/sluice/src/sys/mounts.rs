//! The pseudo-filesystems sluice needs, mounted idempotently: bpffs (pins)
//! at /sys/fs/bpf and tracefs (tracepoints) at /sys/kernel/tracing.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0} is not on a BPF filesystem and could not be mounted: {1}")]
    NoBpffs(PathBuf, io::Error),
    #[error("mounting tracefs at /sys/kernel/tracing: {0}")]
    Tracefs(io::Error),
}

fn mount(src: &str, dst: &str, ty: &str, data: &str) -> io::Result<()> {
    let (src, dst, ty, data) = (
        CString::new(src).expect("no NUL"),
        CString::new(dst).expect("no NUL"),
        CString::new(ty).expect("no NUL"),
        CString::new(data).expect("no NUL"),
    );
    // SAFETY: valid NUL-terminated strings that outlive the call.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, data.as_ptr().cast()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True if `p` is on a bpffs mount.
pub fn is_bpffs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a valid out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `pin_dir` lives on bpffs, mounting bpffs at /sys/fs/bpf if
/// nothing is mounted there yet (idempotent).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), MountError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) {
        return Ok(());
    }
    let target = Path::new("/sys/fs/bpf");
    if parent.starts_with(target) && !is_bpffs(target) {
        fs::create_dir_all(target).map_err(|e| MountError::NoBpffs(target.into(), e))?;
        // Root's alone: whoever can write a bpffs directory can unpin what
        // is in it (the links that keep the firewall attached).
        mount("bpf", "/sys/fs/bpf", "bpf", "mode=0700").map_err(|e| MountError::NoBpffs(parent.into(), e))?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    if is_bpffs(parent) || (fs::create_dir_all(parent).is_ok() && is_bpffs(parent)) {
        Ok(())
    } else {
        Err(MountError::NoBpffs(
            parent.to_path_buf(),
            io::Error::other("not a bpf filesystem"),
        ))
    }
}

/// Mounts tracefs at /sys/kernel/tracing unless it is there (idempotent).
pub fn ensure_tracefs() -> Result<(), MountError> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    mount("nodev", "/sys/kernel/tracing", "tracefs", "").map_err(MountError::Tracefs)?;
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}
