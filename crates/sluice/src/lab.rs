//! The test lab: network namespaces joined to the host by veth pairs, with
//! addresses from the benchmarking ranges 198.18.0.0/15 (RFC 2544) and
//! 2001:2::/48 (RFC 5180). `sluice lab up|down` and every end-to-end test use
//! this same code. It shells out to iproute2's `ip`, idempotently, and never
//! touches any interface it did not create.
//!
//! Lab number `n` gives host `j` (0 = a, 1 = b, ...) the subnets
//! 198.18.(2n+j+1).0/24 and 2001:2:0:(2n+j+1)::/64; the host side is `.1`/`::1`
//! and the namespace side `.2`/`::2`. A namespace routes the lab ranges
//! ([`LAB_V4`], [`LAB_V6`]) through the host and nothing else: it has no
//! default route, so a connection to any other address fails at once with
//! "network unreachable" instead of leaving by the host's uplink when the
//! host forwards.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Command, Output},
};

/// The IPv4 range of every lab (RFC 2544), the only IPv4 route of a lab
/// namespace besides its own subnet.
pub const LAB_V4: &str = "198.18.0.0/15";
/// The IPv6 range of every lab (RFC 5180), likewise.
pub const LAB_V6: &str = "2001:2::/48";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("running `{cmd}`: {source} (is iproute2 installed?)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// One lab host: a namespace and the veth pair joining it to the host.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LabHost {
    pub label: char,
    pub netns: String,
    /// Host-side veth name (the interface sluice manages).
    pub host_if: String,
    pub host_v4: Ipv4Addr,
    pub ns_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub ns_v6: Ipv6Addr,
}

#[derive(Clone, Debug)]
pub struct Lab {
    pub hosts: Vec<LabHost>,
}

fn run(args: &[&str]) -> Result<Output, LabError> {
    let cmd = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

fn exists_if(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

impl Lab {
    /// The lab of `sluice lab up`: namespaces sluice-a and sluice-b behind
    /// veth-sluice-a and veth-sluice-b (matched by the default `veth*`).
    pub fn standard() -> Self {
        Lab::new("sluice", "veth-", 0, 2).expect("valid")
    }

    /// A lab of `hosts` namespaces named `{name}-a`, `{name}-b`, ... with
    /// host interfaces `{if_prefix}{name}-a`, ...; `number` picks the subnets.
    pub fn new(name: &str, if_prefix: &str, number: u8, hosts: usize) -> Result<Self, LabError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(LabError::Invalid(format!(
                "lab name {name:?} must be letters, digits and '-'"
            )));
        }
        if if_prefix.len() + name.len() + 2 > 15 {
            return Err(LabError::Invalid(format!(
                "lab name {name:?} is too long for interface names"
            )));
        }
        if number > 120 || !(1..=2).contains(&hosts) {
            return Err(LabError::Invalid("lab number must be <= 120 and hosts 1 or 2".into()));
        }
        let hosts = (0..hosts)
            .map(|j| {
                let label = (b'a' + j as u8) as char;
                let subnet = 2 * number as u16 + j as u16 + 1;
                let v6 = |h: u16| Ipv6Addr::new(0x2001, 2, 0, subnet, 0, 0, 0, h);
                LabHost {
                    label,
                    netns: format!("{name}-{label}"),
                    host_if: format!("{if_prefix}{name}-{label}"),
                    host_v4: Ipv4Addr::new(198, 18, subnet as u8, 1),
                    ns_v4: Ipv4Addr::new(198, 18, subnet as u8, 2),
                    host_v6: v6(1),
                    ns_v6: v6(2),
                }
            })
            .collect();
        Ok(Lab { hosts })
    }

    /// Creates (or repairs) the lab. Safe to run twice.
    pub fn up(&self) -> Result<(), LabError> {
        for h in &self.hosts {
            h.up()?;
        }
        Ok(())
    }

    /// Removes the lab; missing pieces are not an error.
    pub fn down(&self) -> Result<(), LabError> {
        for h in &self.hosts {
            if exists_if(&h.host_if) {
                run(&["ip", "link", "del", &h.host_if])?;
            }
            if Path::new("/run/netns").join(&h.netns).exists() {
                run(&["ip", "netns", "del", &h.netns])?;
            }
        }
        Ok(())
    }

    pub fn host(&self, label: char) -> &LabHost {
        self.hosts.iter().find(|h| h.label == label).expect("no such lab host")
    }
}

impl LabHost {
    fn up(&self) -> Result<(), LabError> {
        let ns = self.netns.as_str();
        if !Path::new("/run/netns").join(ns).exists() {
            run(&["ip", "netns", "add", ns])?;
        }
        if !exists_if(&self.host_if) {
            run(&[
                "ip",
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ])?;
        }
        let (h4, n4) = (format!("{}/24", self.host_v4), format!("{}/24", self.ns_v4));
        let (h6, n6) = (format!("{}/64", self.host_v6), format!("{}/64", self.ns_v6));
        let (gw4, gw6) = (self.host_v4.to_string(), self.host_v6.to_string());
        let hi = self.host_if.as_str();
        run(&["ip", "addr", "replace", &h4, "dev", hi])?;
        run(&["ip", "-6", "addr", "replace", &h6, "dev", hi, "nodad"])?;
        run(&["ip", "link", "set", hi, "up"])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "addr", "replace", &n4, "dev", "eth0"])?;
        run(&["ip", "-n", ns, "-6", "addr", "replace", &n6, "dev", "eth0", "nodad"])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        // The lab ranges through the host, and no default route (a lab made
        // by an older version had one: repairing removes it).
        run(&["ip", "-n", ns, "route", "replace", LAB_V4, "via", &gw4])?;
        run(&["ip", "-n", ns, "-6", "route", "replace", LAB_V6, "via", &gw6])?;
        for v in ["-4", "-6"] {
            while run(&["ip", "-n", ns, v, "route", "del", "default"]).is_ok() {}
        }
        // Route between lab hosts through the host, on these interfaces
        // only: the host's global ip_forward is left alone.
        let fwd = format!("/proc/sys/net/ipv4/conf/{hi}/forwarding");
        std::fs::write(&fwd, "1").map_err(|e| LabError::Command {
            cmd: format!("write {fwd}"),
            stderr: e.to_string(),
        })?;
        // IPv6 likewise where the kernel has per-interface force_forwarding
        // (6.17+); elsewhere IPv6 between lab hosts needs global forwarding.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{hi}/force_forwarding"), "1");
        Ok(())
    }

    /// Path of the namespace, for `nsenter --net=`.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// Runs a command inside the namespace (with nsenter, which keeps the
    /// host's /sys and bpffs mounts, unlike `ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Result<Output, LabError> {
        let net = format!("--net={}", self.netns_path());
        let mut v = vec!["nsenter", net.as_str(), "--"];
        v.extend_from_slice(args);
        let cmd = v.join(" ");
        Command::new(v[0])
            .args(&v[1..])
            .output()
            .map_err(|source| LabError::Spawn { cmd, source })
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates live in the namespace.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
        let path = self.netns_path();
        std::thread::spawn(move || -> std::io::Result<T> {
            let file = std::fs::File::open(&path)?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_lab_matches_the_default_glob_and_ranges() {
        let lab = Lab::standard();
        let a = lab.host('a');
        assert_eq!(a.netns, "sluice-a");
        assert_eq!(a.host_if, "veth-sluice-a");
        assert_eq!(a.ns_v4, Ipv4Addr::new(198, 18, 1, 2));
        assert_eq!(lab.host('b').host_v6.to_string(), "2001:2:0:2::1");
    }

    #[test]
    fn names_are_checked() {
        assert!(Lab::new("x/y", "", 1, 2).is_err());
        assert!(Lab::new("a-very-long-name", "", 1, 2).is_err());
        let l = Lab::new("t7", "", 7, 2).unwrap();
        assert_eq!(l.host('b').host_v4, Ipv4Addr::new(198, 18, 16, 1));
    }
}
