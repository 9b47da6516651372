//! Containers as the cgroup v2 hierarchy shows them: where cgroup v2 is
//! mounted (pure v2 at `/sys/fs/cgroup`, or hybrid at
//! `/sys/fs/cgroup/unified`), the v2 cgroup of a process, the cgroup id
//! BPF sees (`bpf_get_current_cgroup_id()`: the inode number of the cgroup's
//! directory), and which container runtime made a cgroup, recognised from
//! the names Docker, containerd (CRI), CRI-O, Podman and the kubelet give
//! their cgroups. [`scan`] finds every running container by walking
//! `/proc/*/cgroup`; [`runtime_subtrees`] names the directories under which
//! runtimes create containers, for cgroup BPF programs that must also cover
//! containers created later.
//!
//! Paths in `/proc/PID/cgroup` are relative to the reader's cgroup
//! namespace: the daemon must run in the host's for them to match the
//! directories under [`v2_root`].
//!
//! Everything below a container's own cgroup is the container's to shape
//! (a container with a delegated cgroup can create `docker-<other id>.scope`
//! inside itself), so a path is attributed to the **outermost** container
//! component on it: a sub-cgroup cannot impersonate another container, and
//! a container nested in another (Docker in Docker, a kind node) is
//! reported as the outer one, the container this host's runtime manages.

use std::{
    collections::BTreeMap,
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The container runtime a cgroup path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    /// `/docker/<id>` (cgroupfs driver) or `docker-<id>.scope` (systemd).
    Docker,
    /// `cri-containerd-<id>.scope` (containerd's CRI plugin, systemd driver).
    Containerd,
    /// `crio-<id>.scope` (systemd driver) or `crio-<id>` (cgroupfs).
    CriO,
    /// `libpod-<id>.scope` (systemd driver) or `libpod-<id>` (cgroupfs).
    Podman,
    /// `/kubepods/[burstable|besteffort/]pod<uid>/<id>`: a Kubernetes
    /// container under the cgroupfs driver, whose path does not say which
    /// CRI runtime (containerd, or Docker through a shim) made it.
    Cri,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Cri => "cri",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes pod's quality-of-service class, as the kubelet names its
/// cgroups (`kubepods-burstable-pod…`, `/kubepods/besteffort/pod…`; a pod
/// directly under kubepods is guaranteed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// The pod a container's cgroup sits in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// The pod's uid with `-` separators (systemd slice names spell them
    /// `_`), or the 32 hex digits of a static pod's uid.
    pub uid: String,
    pub qos: Qos,
}

/// What a cgroup path says about the container it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuntimeCgroup {
    pub runtime: Runtime,
    /// The container id: 64 lowercase hex digits.
    pub id: String,
    /// The pod, when the container's cgroup sits directly in a pod's.
    pub pod: Option<PodRef>,
    /// The container's own cgroup (v2 path): the given path up to the
    /// container component, without the sub-cgroups a container may make.
    pub path: String,
}

/// A running container found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupContainer {
    pub runtime: Runtime,
    pub id: String,
    /// The container's own cgroup, as a v2 path (`/system.slice/docker-….scope`).
    pub cgroup_path: String,
    /// Its cgroup id; None when cgroup v2 is not mounted or the cgroup
    /// vanished during the scan (the container was stopping).
    pub cgroup_id: Option<u64>,
    /// Its processes (thread-group ids, its sub-cgroups' included), sorted.
    pub pids: Vec<u32>,
    pub pod: Option<PodRef>,
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one, else any other cgroup2 mount
/// of the whole hierarchy, as `/proc/self/mountinfo` lists them. Without a
/// readable mountinfo, the two usual places are tried directly.
pub fn v2_root() -> Option<PathBuf> {
    let from_mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .map(|t| v2_roots_in_mountinfo(&t))
        .unwrap_or_default();
    from_mountinfo
        .into_iter()
        .chain(["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].map(PathBuf::from))
        .find(|p| is_cgroup2(p))
}

/// The cgroup2 mounts of the whole hierarchy in a mountinfo text (the last
/// mount on a mount point hides the earlier ones), best first.
fn v2_roots_in_mountinfo(text: &str) -> Vec<PathBuf> {
    // mount point -> (fstype, root of the mount), the last mount winning.
    let mut on: Vec<(String, String, String)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(root), Some(point), Some(fstype)) = (f.get(3), f.get(4), f.get(sep + 1)) else {
            continue;
        };
        if sep < 6 {
            continue;
        }
        let point = unescape_mountinfo(point);
        on.retain(|(p, _, _)| *p != point);
        on.push((point, fstype.to_string(), unescape_mountinfo(root)));
    }
    let mut v2: Vec<String> = on
        .into_iter()
        .filter(|(_, fstype, root)| fstype == "cgroup2" && root == "/")
        .map(|(p, _, _)| p)
        .collect();
    let rank = |p: &str| match p {
        "/sys/fs/cgroup" => 0,
        "/sys/fs/cgroup/unified" => 1,
        _ => 2,
    };
    v2.sort_by_key(|p| rank(p));
    v2.into_iter().map(PathBuf::from).collect()
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn statfs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statfs is valid; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; st is written by the kernel.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    Some(st.f_type as i64)
}

fn is_cgroup2(path: &Path) -> bool {
    statfs_type(path) == Some(CGROUP2_SUPER_MAGIC)
}

/// The v2 cgroup of a process (the `0::` line of `/proc/PID/cgroup`), e.g.
/// `/system.slice/docker-<id>.scope`. None if the process is gone or
/// unreadable, or its cgroup has been removed.
pub fn cgroup_of_pid(pid: u32) -> Option<String> {
    parse_proc_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The v2 path in a `/proc/PID/cgroup` text: the first `0::` line (a
/// cgroup name may hold a newline; the first line is the kernel's), None
/// when the cgroup was removed (` (deleted)`).
fn parse_proc_cgroup(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return None;
    }
    Some(path.to_string())
}

/// The directory of a v2 cgroup path under `root` (see [`v2_root`]); None
/// for a path that is not absolute or has empty, `.` or `..` components.
pub fn cgroup_dir(root: &Path, cgroup_path: &str) -> Option<PathBuf> {
    let comps = components(cgroup_path)?;
    Some(comps.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// The cgroup id of a cgroup v2 directory (e.g. `<v2 root>/docker/<id>`):
/// its inode number, which is what `bpf_get_current_cgroup_id()` and
/// `bpf_skb_cgroup_id()` return on 64-bit kernels. None if `dir` is not a
/// directory on a cgroup2 file system.
pub fn cgroup_id(dir: &Path) -> Option<u64> {
    let md = fs::metadata(dir).ok()?;
    (md.is_dir() && is_cgroup2(dir)).then(|| md.ino())
}

/// The components of an absolute cgroup path; None if it is relative, too
/// long, or has an empty, `.` or `..` component or a control character.
fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    if path.len() > 4096 || path.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let comps: Vec<&str> = rest.split('/').collect();
    comps
        .iter()
        .all(|c| !c.is_empty() && *c != "." && *c != "..")
        .then_some(comps)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `<prefix><64 hex><suffix>` -> the id.
fn id_between<'a>(comp: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let id = comp.strip_prefix(prefix)?.strip_suffix(suffix)?;
    is_container_id(id).then_some(id)
}

/// A pod uid as the kubelet writes it: a UUID (8-4-4-4-12 lowercase hex)
/// or a static pod's 32 hex digits.
fn is_pod_uid(s: &str) -> bool {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    match s.len() {
        32 => s.bytes().all(hex),
        36 => s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                hex(b)
            }
        }),
        _ => false,
    }
}

/// The container a single path component names, given the component
/// before it (`docker` for the cgroupfs driver) and whether that one was a
/// cgroupfs pod (the kubelet's `pod<uid>/<id>`).
fn container_component<'a>(
    comp: &'a str,
    prev: Option<&str>,
    prev_is_cgroupfs_pod: bool,
) -> Option<(Runtime, &'a str)> {
    let named = [
        ("docker-", ".scope", Runtime::Docker),
        ("cri-containerd-", ".scope", Runtime::Containerd),
        ("crio-", ".scope", Runtime::CriO),
        ("crio-", "", Runtime::CriO),
        ("libpod-", ".scope", Runtime::Podman),
        ("libpod-", "", Runtime::Podman),
    ];
    for (prefix, suffix, rt) in named {
        if let Some(id) = id_between(comp, prefix, suffix) {
            return Some((rt, id));
        }
    }
    if is_container_id(comp) {
        if prev == Some("docker") {
            return Some((Runtime::Docker, comp));
        }
        if prev_is_cgroupfs_pod {
            return Some((Runtime::Cri, comp));
        }
    }
    None
}

/// A runtime's monitor process beside a container (`crio-conmon-<id>`,
/// `libpod-conmon-<id>`): its cgroup is not the container's.
fn is_conmon(comp: &str) -> bool {
    comp.starts_with("crio-conmon-") || comp.starts_with("libpod-conmon-")
}

/// A pod's cgroup: the systemd driver's
/// `kubepods[-burstable|-besteffort]-pod<uid with _>.slice`, or the
/// cgroupfs driver's `pod<uid>` under `kubepods[/burstable|/besteffort]`.
/// Returns the pod and whether it was the cgroupfs form.
fn pod_component(comp: &str, ancestors: &[&str]) -> Option<(PodRef, bool)> {
    if let Some(inner) = comp.strip_prefix("kubepods").and_then(|s| s.strip_suffix(".slice")) {
        let (qos, uid) = if let Some(u) = inner.strip_prefix("-burstable-pod") {
            (Qos::Burstable, u)
        } else if let Some(u) = inner.strip_prefix("-besteffort-pod") {
            (Qos::BestEffort, u)
        } else {
            (Qos::Guaranteed, inner.strip_prefix("-pod")?)
        };
        // In a slice name `-` separates the levels: the uid spells its
        // dashes `_`, and a `-` in it is not a pod of this shape.
        if uid.contains('-') {
            return None;
        }
        let uid = uid.replace('_', "-");
        return is_pod_uid(&uid).then_some((PodRef { uid, qos }, false));
    }
    let uid = comp.strip_prefix("pod")?;
    let qos = match ancestors {
        [.., "kubepods"] => Qos::Guaranteed,
        [.., "kubepods", "burstable"] => Qos::Burstable,
        [.., "kubepods", "besteffort"] => Qos::BestEffort,
        _ => return None,
    };
    is_pod_uid(uid).then(|| {
        (
            PodRef {
                uid: uid.to_string(),
                qos,
            },
            true,
        )
    })
}

/// The container a v2 cgroup path belongs to, recognised from the names
/// runtimes give their cgroups:
///
/// | runtime | path |
/// |---|---|
/// | Docker, cgroupfs driver | `/docker/<id>` |
/// | Docker, systemd driver | `/system.slice/docker-<id>.scope` |
/// | containerd (CRI), systemd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` |
/// | CRI-O | `…/crio-<id>.scope`, cgroupfs `…/pod<uid>/crio-<id>` (not `crio-conmon-<id>`) |
/// | Podman | `/machine.slice/libpod-<id>.scope` (not `libpod-conmon-<id>`) |
/// | kubelet, cgroupfs driver | `/kubepods/burstable/pod<uid>/<id>` |
///
/// `<id>` is exactly 64 lowercase hex digits. The outermost container
/// component wins (see the module comment); the pod is the container's
/// immediate parent when that is a pod's cgroup. None for anything else,
/// including a path with `.`, `..` or empty components and a runtime's
/// monitor (`conmon`) cgroup.
pub fn runtime_of(cgroup_path: &str) -> Option<RuntimeCgroup> {
    let comps = components(cgroup_path)?;
    let mut parent_pod: Option<(PodRef, bool)> = None;
    for (i, comp) in comps.iter().enumerate() {
        if is_conmon(comp) {
            return None;
        }
        let prev = i.checked_sub(1).map(|j| comps[j]);
        let cgroupfs_pod = matches!(parent_pod, Some((_, true)));
        if let Some((runtime, id)) = container_component(comp, prev, cgroupfs_pod) {
            return Some(RuntimeCgroup {
                runtime,
                id: id.to_string(),
                pod: parent_pod.map(|(p, _)| p),
                path: format!("/{}", comps[..=i].join("/")),
            });
        }
        parent_pod = pod_component(comp, &comps[..i]);
    }
    None
}

/// Every running container on this host, found by walking
/// `/proc/*/cgroup` and grouping processes by container id, sorted by id.
/// Kernel threads, processes outside containers and processes that exit or
/// cannot be read during the walk are skipped. A container with no process
/// (created, not started) is not found.
pub fn scan() -> Vec<CgroupContainer> {
    let root = v2_root();
    scan_in(Path::new("/proc"), &|path| {
        cgroup_id(&cgroup_dir(root.as_deref()?, path)?)
    })
}

fn scan_in(proc: &Path, id_of: &dyn Fn(&str) -> Option<u64>) -> Vec<CgroupContainer> {
    let mut found: BTreeMap<String, CgroupContainer> = BTreeMap::new();
    let Ok(dir) = fs::read_dir(proc) else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(rc) = fs::read_to_string(entry.path().join("cgroup"))
            .ok()
            .and_then(|t| parse_proc_cgroup(&t))
            .and_then(|p| runtime_of(&p))
        else {
            continue;
        };
        found
            .entry(rc.id.clone())
            .or_insert_with(|| CgroupContainer {
                runtime: rc.runtime,
                cgroup_id: id_of(&rc.path),
                id: rc.id,
                cgroup_path: rc.path,
                pids: Vec::new(),
                pod: rc.pod,
            })
            .pids
            .push(pid);
    }
    found
        .into_values()
        .map(|mut c| {
            c.pids.sort_unstable();
            c
        })
        .collect()
}

/// The cgroup directories under which this host's container runtimes
/// create containers, that exist now: a cgroup BPF program attached to one
/// (with `BPF_F_ALLOW_MULTI`) also covers the containers created below it
/// later, while the daemon is down included.
///
/// - `docker`: Docker with the cgroupfs driver (`/docker/<id>`);
/// - `kubepods`, `kubepods.slice`: the kubelet, cgroupfs and systemd
///   drivers (every pod, whatever the CRI runtime);
/// - `machine.slice`: Podman as root with systemd (and systemd-nspawn and
///   libvirt guests, which live there too);
/// - `libpod_parent`: Podman with the cgroupfs driver;
/// - `system.slice`, only when a container runtime lives there (a
///   `docker`, `containerd` or `crio` service, or a container scope now):
///   Docker, containerd and CRI-O with the systemd driver outside Kubernetes
///   put each container's scope directly in it, next to every system
///   service, so there is no narrower parent.
///
/// `system.slice` and `machine.slice` also hold cgroups that are not
/// containers: a program attached there must decide by the container's
/// cgroup id (`bpf_skb_ancestor_cgroup_id`, `bpf_get_current_ancestor_cgroup_id`)
/// and let everything else pass. Rootless containers (under `user.slice`)
/// are left out: attaching there would cover every login session.
pub fn runtime_subtrees() -> Vec<PathBuf> {
    v2_root().map(|r| subtrees_in(&r)).unwrap_or_default()
}

fn subtrees_in(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["docker", "kubepods", "kubepods.slice", "machine.slice", "libpod_parent"]
        .iter()
        .map(|d| root.join(d))
        .filter(|p| p.is_dir())
        .collect();
    let system = root.join("system.slice");
    let runtime_lives_there = fs::read_dir(&system).into_iter().flatten().flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        matches!(&*name, "docker.service" | "containerd.service" | "crio.service")
            || runtime_of(&format!("/system.slice/{name}")).is_some()
    });
    if runtime_lives_there {
        out.push(system);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a5c0e1d2b7a8f9e6d5c4b3a29181706f5e4d3c2b1a0f9e8d7c6b5a4938271";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn rc(runtime: Runtime, id: &str, pod: Option<(&str, Qos)>, path: &str) -> Option<RuntimeCgroup> {
        Some(RuntimeCgroup {
            runtime,
            id: id.to_string(),
            pod: pod.map(|(uid, qos)| PodRef {
                uid: uid.to_string(),
                qos,
            }),
            path: path.to_string(),
        })
    }

    #[test]
    fn runtimes_are_recognised_from_real_world_paths() {
        let uid = "8d3c1a2b-4e5f-4a6b-9c7d-0e1f2a3b4c5d";
        let uid_ = uid.replace('-', "_");
        let cases: Vec<(String, Option<RuntimeCgroup>)> = vec![
            // Docker, cgroupfs driver (this machine), and systemd driver.
            (format!("/docker/{ID}"), rc(Runtime::Docker, ID, None, &format!("/docker/{ID}"))),
            (
                format!("/system.slice/docker-{ID}.scope"),
                rc(Runtime::Docker, ID, None, &format!("/system.slice/docker-{ID}.scope")),
            ),
            // containerd CRI, systemd driver, the three QoS classes.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                rc(
                    Runtime::Containerd,
                    ID,
                    Some((uid, Qos::Burstable)),
                    &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                ),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                rc(
                    Runtime::Containerd,
                    ID,
                    Some((uid, Qos::BestEffort)),
                    &format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                ),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                rc(
                    Runtime::Containerd,
                    ID,
                    Some((uid, Qos::Guaranteed)),
                    &format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                ),
            ),
            // A static pod's uid is 32 hex digits.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c4b5a69788796a5b4c3d2e1f0.slice/cri-containerd-{ID}.scope"),
                rc(
                    Runtime::Containerd,
                    ID,
                    Some(("0f1e2d3c4b5a69788796a5b4c3d2e1f0", Qos::Burstable)),
                    &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c4b5a69788796a5b4c3d2e1f0.slice/cri-containerd-{ID}.scope"),
                ),
            ),
            // CRI-O, systemd and cgroupfs drivers; its conmon is not the container.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"),
                rc(
                    Runtime::CriO,
                    ID,
                    Some((uid, Qos::Burstable)),
                    &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"),
                ),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-conmon-{ID}.scope"),
                None,
            ),
            (
                format!("/kubepods/besteffort/pod{uid}/crio-{ID}"),
                rc(
                    Runtime::CriO,
                    ID,
                    Some((uid, Qos::BestEffort)),
                    &format!("/kubepods/besteffort/pod{uid}/crio-{ID}"),
                ),
            ),
            (format!("/kubepods/besteffort/pod{uid}/crio-conmon-{ID}"), None),
            // Podman: rootful systemd, cgroupfs; conmon again.
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                rc(Runtime::Podman, ID, None, &format!("/machine.slice/libpod-{ID}.scope")),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                rc(Runtime::Podman, ID, None, &format!("/machine.slice/libpod-{ID}.scope")),
            ),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            (
                format!("/libpod_parent/libpod-{ID}"),
                rc(Runtime::Podman, ID, None, &format!("/libpod_parent/libpod-{ID}")),
            ),
            // The kubelet's cgroupfs driver: the runtime is not named.
            (
                format!("/kubepods/burstable/pod{uid}/{ID}"),
                rc(
                    Runtime::Cri,
                    ID,
                    Some((uid, Qos::Burstable)),
                    &format!("/kubepods/burstable/pod{uid}/{ID}"),
                ),
            ),
            (
                format!("/kubepods/pod{uid}/{ID}"),
                rc(Runtime::Cri, ID, Some((uid, Qos::Guaranteed)), &format!("/kubepods/pod{uid}/{ID}")),
            ),
            // Docker under the kubelet's systemd driver.
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/docker-{ID}.scope"),
                rc(
                    Runtime::Docker,
                    ID,
                    Some((uid, Qos::Guaranteed)),
                    &format!("/kubepods.slice/kubepods-pod{uid_}.slice/docker-{ID}.scope"),
                ),
            ),
            // Sub-cgroups a container makes (systemd in a container) belong to it.
            (
                format!("/system.slice/docker-{ID}.scope/init.scope"),
                rc(Runtime::Docker, ID, None, &format!("/system.slice/docker-{ID}.scope")),
            ),
            // Not containers.
            ("/".into(), None),
            ("/init.scope".into(), None),
            ("/system.slice/docker.service".into(), None),
            ("/system.slice/containerd.service".into(), None),
            ("/user.slice/user-1000.slice/session-3.scope".into(), None),
            ("/docker/buildkit/lz2x8b1m9q3kv7t0c6n5r4w2y".into(), None),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"), None),
            (format!("/kubepods/burstable/pod{uid}"), None),
        ];
        for (path, want) in cases {
            assert_eq!(runtime_of(&path), want, "{path}");
        }
    }

    #[test]
    fn hostile_paths_are_not_taken_for_containers() {
        let uid = "8d3c1a2b-4e5f-4a6b-9c7d-0e1f2a3b4c5d";
        let uid_ = uid.replace('-', "_");
        let upper = ID.to_uppercase();
        let short = &ID[..63];
        let long = format!("{ID}0");
        let not_hex = format!("{}g", &ID[..63]);
        for path in [
            // Ids that are not 64 lowercase hex digits.
            format!("/docker/{short}"),
            format!("/docker/{long}"),
            format!("/docker/{not_hex}"),
            format!("/docker/{upper}"),
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/docker-{long}.scope"),
            format!("/system.slice/docker-{upper}.scope"),
            // Trailing garbage, wrong suffixes and prefixes.
            format!("/system.slice/docker-{ID}.scope.bak"),
            format!("/system.slice/docker-{ID}.scopex"),
            format!("/system.slice/docker-{ID}.slice"),
            format!("/system.slice/xdocker-{ID}.scope"),
            format!("/system.slice/docker-{ID}"),
            format!("/system.slice/docker--{ID}.scope"),
            format!("/system.slice/cri-containerd-{ID}"),
            format!("/system.slice/crio-{ID}.scope "),
            format!("/system.slice/crio-{ID}.scope\n0::/docker/{ID2}"),
            // A bare id anywhere else than under docker or a pod.
            format!("/{ID}"),
            format!("/system.slice/{ID}"),
            format!("/kubepods/burstable/{ID}"),
            format!("/kubepods/burstable/pod{uid}x/{ID}"),
            format!("/notkubepods/burstable/pod{uid}/{ID}"),
            // Dot components, empty components, relative paths.
            format!("/docker/../docker/{ID}"),
            format!("/docker/./{ID}"),
            format!("/system.slice/../system.slice/docker-{ID}.scope"),
            format!("/docker//{ID}"),
            format!("/docker/{ID}/"),
            format!("docker/{ID}"),
            format!("system.slice/docker-{ID}.scope"),
            String::new(),
            // conmon first on the path: nothing below it is a container.
            format!("/machine.slice/libpod-conmon-{ID}.scope/libpod-{ID2}.scope"),
        ] {
            assert_eq!(runtime_of(&path), None, "{path:?}");
        }
        // A pod uid of the wrong shape is no pod; the container remains.
        for slice in [
            format!("kubepods-burstable-pod{uid}.slice"), // `-` inside a slice name
            "kubepods-burstable-pod1234.slice".to_string(),
            format!("kubepods-burstable-pod{uid_}x.slice"),
            format!("kubepods-silver-pod{uid_}.slice"),
        ] {
            let path = format!("/kubepods.slice/{slice}/cri-containerd-{ID}.scope");
            let got = runtime_of(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(
                (got.runtime, got.id.as_str(), got.pod),
                (Runtime::Containerd, ID, None),
                "{path}"
            );
        }
        // The pod must be the container's parent.
        let got = runtime_of(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/extra.slice/crio-{ID}.scope"
        ))
        .unwrap();
        assert_eq!(got.pod, None);
    }

    #[test]
    fn nested_scopes_belong_to_the_outermost_container() {
        // Inside its cgroup a container may name sub-cgroups as it likes:
        // it cannot pass for another container that way.
        let kind_node = format!(
            "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod8d3c1a2b_4e5f_4a6b_9c7d_0e1f2a3b4c5d.slice/cri-containerd-{ID2}.scope"
        );
        let cases = [
            (
                format!("/system.slice/docker-{ID}.scope/docker-{ID2}.scope"),
                Runtime::Docker,
                format!("/system.slice/docker-{ID}.scope"),
            ),
            (
                format!("/docker/{ID}/docker/{ID2}"),
                Runtime::Docker,
                format!("/docker/{ID}"),
            ),
            (
                format!("/system.slice/crio-{ID}.scope/crio-conmon-{ID2}.scope"),
                Runtime::CriO,
                format!("/system.slice/crio-{ID}.scope"),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/kubepods/pod8d3c1a2b-4e5f-4a6b-9c7d-0e1f2a3b4c5d/{ID2}"),
                Runtime::Podman,
                format!("/machine.slice/libpod-{ID}.scope"),
            ),
            // A kind node: a Docker container holding a kubelet and its pods.
            (kind_node, Runtime::Docker, format!("/system.slice/docker-{ID}.scope")),
        ];
        for (path, runtime, own) in cases {
            let got = runtime_of(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(
                got,
                RuntimeCgroup {
                    runtime,
                    id: ID.into(),
                    pod: None,
                    path: own
                },
                "{path}"
            );
        }
    }

    #[test]
    fn proc_cgroup_texts_give_the_v2_line() {
        let hybrid = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/c7aa\n0::/docker/abc\n";
        assert_eq!(parse_proc_cgroup(hybrid).as_deref(), Some("/docker/abc"));
        assert_eq!(parse_proc_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/a:b.service\n").as_deref(),
            Some("/system.slice/a:b.service")
        );
        // v1 only, a removed cgroup, garbage.
        assert_eq!(parse_proc_cgroup("4:memory:/docker/abc\n"), None);
        assert_eq!(parse_proc_cgroup("0::/docker/abc (deleted)\n"), None);
        assert_eq!(parse_proc_cgroup(""), None);
        assert_eq!(parse_proc_cgroup("0::relative\n"), None);
        // A cgroup name with a newline cannot add a line before the kernel's.
        assert_eq!(
            parse_proc_cgroup(&format!("0::/docker/{ID}/x\n0::/docker/{ID2}\n")).as_deref(),
            Some(format!("/docker/{ID}/x").as_str())
        );
    }

    #[test]
    fn the_v2_mount_is_found_in_mountinfo() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            v2_roots_in_mountinfo(hybrid),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        let pure = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 23 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
90 1 0:22 / /mnt/my\\040cgroups rw shared:4 - cgroup2 cgroup2 rw
91 1 0:22 /system.slice /mnt/sub rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            v2_roots_in_mountinfo(pure),
            vec![PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/mnt/my cgroups")]
        );
        // A later mount on the same point hides the cgroup2 one.
        let hidden = "\
25 23 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
26 25 0:50 / /sys/fs/cgroup rw - tmpfs tmpfs rw
";
        assert!(v2_roots_in_mountinfo(hidden).is_empty());
        assert!(v2_roots_in_mountinfo("garbage\n\n1 2 3\n").is_empty());
        assert_eq!(unescape_mountinfo("a\\040b\\011c\\134d\\777"), "a b\tc\\d\\777");
    }

    #[test]
    fn this_hosts_v2_root_and_own_cgroup() {
        // Every supported host mounts cgroup v2 somewhere.
        let root = v2_root().expect("cgroup v2 is mounted");
        assert!(is_cgroup2(&root));
        let own = cgroup_of_pid(std::process::id()).expect("own v2 cgroup");
        let dir = cgroup_dir(&root, &own).expect("valid path");
        assert_eq!(cgroup_id(&dir), Some(fs::metadata(&dir).unwrap().ino()));
        // Only cgroup2 directories have a cgroup id.
        assert_eq!(cgroup_id(Path::new("/proc")), None);
        assert_eq!(cgroup_id(&root.join("cgroup.procs")), None);
        assert_eq!(cgroup_id(&root.join("no-such-cgroup-here")), None);
        assert_eq!(cgroup_of_pid(u32::MAX), None);
        assert_eq!(cgroup_dir(&root, "/a/../b"), None);
        assert_eq!(cgroup_dir(&root, "/"), Some(root.clone()));
    }

    #[test]
    fn scan_groups_processes_by_container() {
        let proc = tempfile::tempdir().unwrap();
        let write = |pid: &str, text: &str| {
            let d = proc.path().join(pid);
            fs::create_dir_all(&d).unwrap();
            if !text.is_empty() {
                fs::write(d.join("cgroup"), text).unwrap();
            }
        };
        write("1", "0::/init.scope\n");
        write("2", "0::/\n"); // a kernel thread
        write("300", &format!("4:memory:/x\n0::/docker/{ID}\n"));
        write("301", &format!("0::/docker/{ID}/sub\n"));
        write("40", &format!("0::/system.slice/crio-conmon-{ID2}.scope\n"));
        write("41", &format!("0::/system.slice/crio-{ID2}.scope\n"));
        write("42", &format!("0::/docker/{ID} (deleted)\n"));
        write("50", ""); // gone before its cgroup was read
        write("self", &format!("0::/docker/{ID}\n"));
        write("net", "");
        let got = scan_in(proc.path(), &|p| (p == format!("/docker/{ID}")).then_some(77));
        assert_eq!(
            got,
            vec![
                CgroupContainer {
                    runtime: Runtime::CriO,
                    id: ID2.into(),
                    cgroup_path: format!("/system.slice/crio-{ID2}.scope"),
                    cgroup_id: None,
                    pids: vec![41],
                    pod: None,
                },
                CgroupContainer {
                    runtime: Runtime::Docker,
                    id: ID.into(),
                    cgroup_path: format!("/docker/{ID}"),
                    cgroup_id: Some(77),
                    pids: vec![300, 301],
                    pod: None,
                },
            ]
        );
        assert!(scan_in(Path::new("/no/such/proc"), &|_| None).is_empty());
    }

    #[test]
    fn runtime_subtrees_are_the_existing_runtime_parents() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(subtrees_in(r).is_empty());
        for d in [
            "docker",
            "kubepods.slice",
            "machine.slice",
            "system.slice/sshd.service",
            "user.slice",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        // system.slice without a container runtime in it is left out.
        assert_eq!(
            subtrees_in(r),
            vec![r.join("docker"), r.join("kubepods.slice"), r.join("machine.slice")]
        );
        fs::create_dir_all(r.join(format!("system.slice/crio-{ID}.scope"))).unwrap();
        assert_eq!(subtrees_in(r).last(), Some(&r.join("system.slice")));
        fs::remove_dir(r.join(format!("system.slice/crio-{ID}.scope"))).unwrap();
        fs::create_dir_all(r.join("system.slice/docker.service")).unwrap();
        assert_eq!(subtrees_in(r).len(), 4);
        // On this host: every subtree is a directory under the v2 root.
        if let Some(v2) = v2_root() {
            assert!(runtime_subtrees().iter().all(|p| p.starts_with(&v2) && p.is_dir()));
        }
    }
}
