//! Operating-system access that is not BPF: clocks, network interfaces
//! (names and indexes, sysfs and ethtool, netlink link events), the bpffs
//! and tracefs mounts, /proc socket scans, cgroups (the v2 hierarchy and the
//! containers runtimes make in it), network namespaces (what is inside one)
//! and path checks. The layers above use these instead of calling libc or
//! reading /proc and /sys themselves.

pub mod cgroups;
pub mod iface;
pub mod links;
pub mod mounts;
pub mod netns;
pub mod paths;
pub mod procfs;
pub mod time;
/// Lifts RLIMIT_MEMLOCK for BPF maps where the kernel still charges it
/// (kernels with memcg accounting do not: a failure is only logged).
pub fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels with memcg accounting",
            std::io::Error::last_os_error()
        );
    }
}
