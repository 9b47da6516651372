//! What the container sources need of the host, behind [`Host`] so the
//! registry can be tested without containers: a process's network side
//! (its namespace, the host-side interfaces leading into it, its
//! addresses), its container cgroup, and a scan of every container cgroup.
//! [`SysHost`] is the real one, on `sys::netns` and `sys::cgroups`.

use std::{net::IpAddr, path::PathBuf};

use super::HostIface;
use crate::sys::{cgroups, iface::ifname, netns};

/// The network side of a container, read from inside its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSide {
    /// The namespace's inode.
    pub netns: u64,
    /// The container shares the host's namespace.
    pub host_network: bool,
    /// Host-side interfaces whose peers are in the namespace.
    pub ifaces: Vec<HostIface>,
    /// Its addresses (loopback and link-local left out), sorted.
    pub addrs: Vec<IpAddr>,
}

/// A container found from its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// `containerd`, `cri-o`, `podman`, `cri` or `docker`.
    pub runtime: String,
    pub id: String,
    pub cgroup: String,
    pub cgroup_id: Option<u64>,
    pub pids: Vec<u32>,
    pub pod_uid: Option<String>,
}

pub trait Host: Send + Sync {
    /// The network side of `pid`'s namespace.
    fn net_of(&self, pid: u32) -> Result<NetSide, String>;
    /// The container cgroup (v2 path) `pid` runs in, or its plain cgroup.
    fn cgroup_of(&self, pid: u32) -> Option<String>;
    /// The cgroup id of a v2 path.
    fn cgroup_id(&self, path: &str) -> Option<u64>;
    /// The inode of `pid`'s network namespace.
    fn netns_of(&self, pid: u32) -> Option<u64>;
    /// Every container cgroup with processes in it.
    fn scan(&self) -> Vec<Found>;
}

/// The real host.
pub struct SysHost;

impl Host for SysHost {
    fn net_of(&self, pid: u32) -> Result<NetSide, String> {
        let ns = netns::netns_inode(pid).ok_or_else(|| format!("process {pid} is gone"))?;
        if Some(ns) == netns::self_netns_inode() {
            return Ok(NetSide {
                netns: ns,
                host_network: true,
                ..Default::default()
            });
        }
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let links = netns::links_in(&path).map_err(|e| e.to_string())?;
        let mut side = NetSide {
            netns: ns,
            ..Default::default()
        };
        for l in &links {
            if let Some(host) = l.host_ifindex() {
                side.ifaces.push(HostIface {
                    ifindex: host,
                    name: ifname(host).unwrap_or_default(),
                });
            }
            side.addrs.extend(l.addrs.iter().map(|n| n.addr()).filter(|a| match a {
                IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
            }));
        }
        side.ifaces.sort_by_key(|i| i.ifindex);
        side.addrs.sort();
        side.addrs.dedup();
        Ok(side)
    }

    fn cgroup_of(&self, pid: u32) -> Option<String> {
        let path = cgroups::cgroup_of_pid(pid)?;
        Some(cgroups::runtime_of(&path).map_or(path, |r| r.path))
    }

    fn cgroup_id(&self, path: &str) -> Option<u64> {
        let root = cgroups::v2_root()?;
        cgroups::cgroup_id(&cgroups::cgroup_dir(&root, path)?)
    }

    fn netns_of(&self, pid: u32) -> Option<u64> {
        netns::netns_inode(pid)
    }

    fn scan(&self) -> Vec<Found> {
        cgroups::scan()
            .into_iter()
            .map(|c| Found {
                runtime: c.runtime.as_str().to_string(),
                id: c.id,
                cgroup: c.cgroup_path,
                cgroup_id: c.cgroup_id,
                pids: c.pids,
                pod_uid: c.pod.map(|p| p.uid),
            })
            .collect()
    }
}

/// A host with no containers and no namespaces (tests).
pub struct NoHost;

impl Host for NoHost {
    fn net_of(&self, pid: u32) -> Result<NetSide, String> {
        Err(format!("no process {pid}"))
    }
    fn cgroup_of(&self, _: u32) -> Option<String> {
        None
    }
    fn cgroup_id(&self, _: &str) -> Option<u64> {
        None
    }
    fn netns_of(&self, _: u32) -> Option<u64> {
        None
    }
    fn scan(&self) -> Vec<Found> {
        Vec::new()
    }
}
