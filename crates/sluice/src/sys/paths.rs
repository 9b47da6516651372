//! Checks on the paths the daemon creates, chmods or removes files in,
//! made before anything touches the filesystem.

use std::path::{Component, Path};

/// A path the daemon creates, chmods or removes files in: absolute, with no
/// `.` or `..` components (so it cannot climb out of what it names), and
/// not the root directory.
pub fn check_path(what: &str, p: &Path) -> Result<(), String> {
    if !p.is_absolute() || p.parent().is_none() {
        return Err(format!("{what} {} must be an absolute path (and not /)", p.display()));
    }
    if p.components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
    {
        return Err(format!(
            "{what} {} must not contain '.' or '..' components",
            p.display()
        ));
    }
    Ok(())
}

/// The pin directory: `sluice down` removes every file in it, so it must be
/// a directory of its own below a bpffs mount (checked again against the
/// filesystem before anything is removed), never the mount itself.
pub fn check_pin_dir(p: &Path) -> Result<(), String> {
    check_path("pin_dir", p)?;
    // bpffs refuses names with dots; catch it here with a clear message.
    if p.components().any(|c| c.as_os_str().to_string_lossy().contains('.')) {
        return Err(format!(
            "pin_dir {} must not contain '.' (bpffs refuses such names)",
            p.display()
        ));
    }
    if p == Path::new("/sys/fs/bpf") {
        return Err(
            "pin_dir must be a directory below /sys/fs/bpf, not the mount itself (other programs pin there too)".into(),
        );
    }
    Ok(())
}

/// Why a directory or file the daemon keeps private is refused.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// A directory the daemon keeps its secrets or pins in: created `0700` if
/// missing; if it exists, it must be a real directory (not a symlink) owned
/// by this user and not writable by group or others, or someone else could
/// swap what is in it.
pub fn private_dir(what: &str, p: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(|e| format!("creating {what} {}: {e}", p.display())),
        Err(e) => Err(format!("{what} {}: {e}", p.display())),
        Ok(m) if m.file_type().is_symlink() => Err(format!(
            "{what} {} is a symbolic link; give the real directory",
            p.display()
        )),
        Ok(m) if !m.is_dir() => Err(format!("{what} {} is not a directory", p.display())),
        Ok(m) if m.uid() != euid() => Err(format!(
            "{what} {} belongs to uid {}, not to the user running sluice ({}); someone else could change what is in it",
            p.display(),
            m.uid(),
            euid()
        )),
        Ok(m) if m.mode() & 0o022 != 0 => Err(format!(
            "{what} {} is writable by group or others (mode {:o}); chmod go-w it first",
            p.display(),
            m.mode() & 0o777
        )),
        Ok(_) => Ok(()),
    }
}

/// A file the daemon keeps private in its state directory (databases,
/// lock, event log): if it exists it must be a regular file owned by this
/// user, not a symlink; a mode looser than `0600` (older builds) is
/// tightened. New files are created `0600` by the daemon's umask.
pub fn private_file(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", p.display())),
        Ok(m) if m.file_type().is_symlink() => {
            Err(format!("{} is a symbolic link; refusing to follow it", p.display()))
        }
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", p.display())),
        Ok(m) if m.uid() != euid() => Err(format!(
            "{} belongs to uid {}, not to the user running sluice",
            p.display(),
            m.uid()
        )),
        Ok(m) if m.mode() & 0o077 != 0 => std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("making {} private: {e}", p.display())),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_plain() {
        assert!(check_path("x", Path::new("/var/lib/sluice")).is_ok());
        for bad in ["relative", "/", "/a/../b", "./a"] {
            assert!(check_path("x", Path::new(bad)).is_err(), "{bad}");
        }
        assert!(check_pin_dir(Path::new("/sys/fs/bpf/sluice")).is_ok());
        assert!(check_pin_dir(Path::new("/sys/fs/bpf")).is_err());
        assert!(check_pin_dir(Path::new("/sys/fs/bpf/a.b")).is_err());
    }

    #[test]
    fn private_dirs_and_files() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("state");
        private_dir("state_dir", &d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir("state_dir", &d).unwrap_err().contains("chmod go-w"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir("state_dir", &d).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(private_dir("state_dir", &link).unwrap_err().contains("symbolic link"));
        let f = d.join("sluice.db");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        let fl = d.join("sluice.lock");
        std::os::unix::fs::symlink(t.path().join("elsewhere"), &fl).unwrap();
        assert!(private_file(&fl).unwrap_err().contains("symbolic link"));
        private_file(&d.join("absent")).unwrap();
    }
}
