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
}
