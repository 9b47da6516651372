//! Tier 3: the OS-level discovery the containers capability builds on,
//! against real namespaces and cgroups (`sys::netns`, `sys::cgroups`).
//! Needs root. Lab 95 ("ssd"); the cgroups live under
//! `<v2 root>/sluice-test.slice`. Everything made here (lab, cgroups,
//! processes) is removed on drop, also when an assertion fails.

mod common;

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use common::{require_root, LabGuard};
use ipnet::IpNet;
use sluice::sys::{cgroups, iface, netns};

/// Both tests build lab 95: one at a time.
static LAB: Mutex<()> = Mutex::new(());

fn lab_95() -> (MutexGuard<'static, ()>, LabGuard) {
    let lock = LAB.lock().unwrap_or_else(|e| e.into_inner());
    (lock, LabGuard::new("ssd", 95))
}

/// A child process, killed and reaped on drop.
struct Proc(Child);

impl Proc {
    /// `sleep 60`, in the network namespace at `netns` when given (nsenter
    /// enters it, then execs sleep: same pid).
    fn sleep(netns: Option<&str>) -> Proc {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg("--").arg("sleep");
                c
            }
            None => Command::new("sleep"),
        };
        cmd.arg("60").stdin(Stdio::null()).stdout(Stdio::null());
        Proc(cmd.spawn().expect("spawn sleep"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `f` holds (a child's exec through nsenter takes a moment).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn net(s: String) -> IpNet {
    s.parse().unwrap()
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn links_in_a_lab_namespace_find_the_veth_its_host_side_and_the_addresses() {
    require_root();
    let (_lock, lab) = lab_95();
    let own = netns::self_netns_inode().expect("own namespace");
    let own_thread = netns::netns_inode_at(Path::new("/proc/thread-self/ns/net"));
    let host_links = netns::links_in(Path::new("/proc/self/ns/net")).expect("host links");
    for h in &lab.hosts {
        let path = h.netns_path();
        let host_ifindex = iface::ifindex(&h.host_if).expect("host side exists");
        let links = netns::links_in(Path::new(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        // The namespace side: only eth0 (lo is skipped), a veth whose peer
        // is the host side, in the caller's (the host's) namespace.
        assert_eq!(links.len(), 1, "{links:?}");
        let eth0 = &links[0];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(eth0.kind.as_deref(), Some("veth"));
        assert!(eth0.up);
        assert_eq!(eth0.peer_ifindex, Some(host_ifindex), "{eth0:?}");
        assert!(eth0.peer_netnsid.is_some(), "{eth0:?}");
        assert!(eth0.peer_in_caller_ns, "{eth0:?}");
        assert_eq!(eth0.host_ifindex(), Some(host_ifindex));
        // Its lab addresses, v4 then v6; its fe80:: address is left out.
        assert_eq!(
            eth0.addrs,
            vec![net(format!("{}/24", h.ns_v4)), net(format!("{}/64", h.ns_v6))],
            "{eth0:?}"
        );
        // The host side, seen from the host: its peer is eth0 over there,
        // not an interface of the host.
        let hs = host_links
            .iter()
            .find(|l| l.ifindex == host_ifindex)
            .expect("host side listed");
        assert_eq!(
            (hs.name.as_str(), hs.kind.as_deref()),
            (h.host_if.as_str(), Some("veth"))
        );
        assert_eq!(hs.peer_ifindex, Some(eth0.ifindex));
        assert!(hs.peer_netnsid.is_some() && !hs.peer_in_caller_ns, "{hs:?}");
        assert_eq!(
            hs.addrs,
            vec![net(format!("{}/24", h.host_v4)), net(format!("{}/64", h.host_v6))]
        );

        // A process in the namespace: same inode, same links through /proc.
        let ns_inode = netns::netns_inode_at(Path::new(&path)).expect("namespace inode");
        assert_ne!(ns_inode, own);
        let p = Proc::sleep(Some(&path));
        eventually("nsenter to enter the lab namespace", || {
            netns::netns_inode(p.pid()) == Some(ns_inode)
        });
        let via_pid = netns::links_in(Path::new(&format!("/proc/{}/ns/net", p.pid()))).expect("links via pid");
        assert_eq!(via_pid, links);
    }
    // Neither the process nor this thread moved.
    assert_eq!(netns::self_netns_inode(), Some(own));
    assert_eq!(netns::netns_inode_at(Path::new("/proc/thread-self/ns/net")), own_thread);

    // A namespace that is gone, and a process that is gone.
    let gone = netns::links_in(Path::new("/run/netns/ssd-gone")).unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound, "{gone}");
    let pid = {
        let p = Proc::sleep(None);
        p.pid()
    };
    let exited = netns::links_in(Path::new(&format!("/proc/{pid}/ns/net"))).unwrap_err();
    assert_eq!(exited.kind(), std::io::ErrorKind::NotFound, "{exited}");
}

/// Cgroups made for a test and the processes put in them: on drop the
/// processes are killed and reaped, then the cgroups removed, deepest
/// first.
struct Cgroups {
    procs: Vec<Proc>,
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    fn mkdir(&mut self, dir: PathBuf) -> PathBuf {
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // The slice may be shared with a concurrent run: not ours to keep.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("mkdir {}: {e}", dir.display()),
        }
        self.dirs.push(dir.clone());
        dir
    }

    /// Starts `sleep` (in `netns` if given) and moves it into `cgroup`.
    fn run_in(&mut self, cgroup: &Path, netns: Option<&str>) -> u32 {
        let p = Proc::sleep(netns);
        let pid = p.pid();
        self.procs.push(p);
        fs::write(cgroup.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", cgroup.display()));
        pid
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.procs.clear();
        for dir in self.dirs.iter().rev() {
            // A reaped process leaves its cgroup at once; retry briefly anyway.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // Another run's cgroups still in the shared slice.
                    Err(_) if dir.ends_with("sluice-test.slice") && has_subdirs(dir) => break,
                    Err(e) if Instant::now() > deadline => {
                        eprintln!("rmdir {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

fn has_subdirs(dir: &Path) -> bool {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().is_dir())
}

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn scan_finds_a_crio_container_in_a_real_cgroup_and_its_way_out() {
    require_root();
    let (_lock, lab) = lab_95();
    let a = lab.host('a');
    let root = cgroups::v2_root().expect("cgroup v2 is mounted");
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!("{:08x}{:056x}", std::process::id(), nanos);
    assert_eq!(id.len(), 64);

    let mut cg = Cgroups {
        procs: Vec::new(),
        dirs: Vec::new(),
    };
    let slice = cg.mkdir(root.join("sluice-test.slice"));
    let scope = cg.mkdir(slice.join(format!("crio-{id}.scope")));
    let sub = cg.mkdir(scope.join("sub"));
    let conmon = cg.mkdir(slice.join(format!("crio-conmon-{id}.scope")));
    // The container's process lives in lab namespace a, like a container's.
    let main_pid = cg.run_in(&scope, Some(&a.netns_path()));
    let sub_pid = cg.run_in(&sub, None);
    let conmon_pid = cg.run_in(&conmon, None);

    let path = format!("/sluice-test.slice/crio-{id}.scope");
    assert_eq!(cgroups::cgroup_of_pid(main_pid).as_deref(), Some(path.as_str()));
    assert_eq!(cgroups::cgroup_of_pid(sub_pid), Some(format!("{path}/sub")));
    let want_id = fs::metadata(&scope).unwrap().ino();
    assert_eq!(cgroups::cgroup_id(&scope), Some(want_id));

    let found = cgroups::scan();
    let mine: Vec<_> = found.iter().filter(|c| c.id == id).collect();
    assert_eq!(mine.len(), 1, "{found:?}");
    let c = mine[0];
    assert_eq!(c.runtime, cgroups::Runtime::CriO);
    assert_eq!(c.cgroup_path, path);
    assert_eq!(c.cgroup_id, Some(want_id));
    assert_eq!(c.pod, None);
    // The sub-cgroup's process belongs to the container; conmon's does not.
    let mut want_pids = vec![main_pid, sub_pid];
    want_pids.sort_unstable();
    assert_eq!(c.pids, want_pids);
    assert!(found.iter().all(|c| !c.pids.contains(&conmon_pid)), "{found:?}");

    // From the container's cgroup to its way out: the host side of its veth.
    eventually("nsenter to enter the lab namespace", || {
        netns::netns_inode(main_pid) == netns::netns_inode_at(Path::new(&a.netns_path()))
    });
    let links = netns::links_in(Path::new(&format!("/proc/{main_pid}/ns/net"))).expect("container links");
    let ways_out: Vec<u32> = links.iter().filter_map(|l| l.host_ifindex()).collect();
    assert_eq!(ways_out, vec![iface::ifindex(&a.host_if).unwrap()], "{links:?}");

    // The test slice is not where runtimes make containers.
    assert!(cgroups::runtime_subtrees().iter().all(|p| !p.starts_with(&slice)));
}
