//! Listening TCP sockets and their owners, read from /proc the way `ss -p`
//! does: every process's `net/tcp{,6}` (its network namespace's sockets) and
//! its `fd/` links (`socket:[inode]`). The daemon seeds the connection
//! tracer with these at start, so listeners older than the daemon still get
//! their inbound connections attributed.

use std::{collections::HashMap, fs, path::Path};

/// A listening socket with its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub netns: u32,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub port: u16,
    pub pid: u32,
    pub comm: String,
}

/// (local port, socket inode) of every LISTEN line of a /proc/net/tcp file.
pub fn parse_listening(text: &str) -> Vec<(u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit_once(':')?.1, 16).ok()?;
            Some((port, f[9].parse().ok()?))
        })
        .collect()
}

fn ns_inode(link: &Path) -> Option<u32> {
    let t = fs::read_link(link).ok()?;
    let s = t.to_str()?;
    s.strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse::<u64>()
        .ok()
        .map(|i| i as u32)
}

/// Every listening TCP socket on the host, in every namespace that has at
/// least one task, with the process holding it. Tasks (threads) are walked
/// one by one because a thread can live in another network namespace than
/// its process; the comm reported is that of the owner's task in the
/// listener's namespace (what the tracepoint would have recorded).
pub fn listeners() -> Vec<Listener> {
    let mut owner: HashMap<u64, u32> = HashMap::new(); // socket inode -> pid
    let mut ns_task: HashMap<u32, String> = HashMap::new(); // netns -> a task dir in it
    let mut task_comm: HashMap<(u32, u32), String> = HashMap::new(); // (pid, netns) -> comm
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = p.path();
        for t in fs::read_dir(dir.join("task")).into_iter().flatten().flatten() {
            let tdir = t.path();
            let Some(ns) = ns_inode(&tdir.join("ns/net")) else {
                continue;
            };
            ns_task.entry(ns).or_insert_with(|| tdir.display().to_string());
            task_comm.entry((pid, ns)).or_insert_with(|| {
                fs::read_to_string(tdir.join("comm"))
                    .map(|c| c.trim_end().to_string())
                    .unwrap_or_default()
            });
        }
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(t) = fs::read_link(fd.path()) {
                if let Some(inode) = t
                    .to_str()
                    .and_then(|s| s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                {
                    owner.entry(inode).or_insert(pid);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (ns, task) in ns_task {
        for (file, family) in [("tcp", 2u16), ("tcp6", 10)] {
            let Ok(text) = fs::read_to_string(format!("{task}/net/{file}")) else {
                continue;
            };
            for (port, inode) in parse_listening(&text) {
                if let Some(pid) = owner.get(&inode) {
                    let comm = task_comm.get(&(*pid, ns)).cloned().unwrap_or_default();
                    out.push(Listener {
                        netns: ns,
                        family,
                        port,
                        pid: *pid,
                        comm,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_lines_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A3C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 67890 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse_listening(text), vec![(8080, 12345)]);
        let v6 = "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(parse_listening(v6), vec![(80, 222)]);
        assert!(parse_listening("header only\ngarbage line\n").is_empty());
    }

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listeners();
        let me = found
            .iter()
            .find(|x| x.port == port && x.family == 2)
            .expect("own listener found");
        assert_eq!(me.pid, std::process::id());
    }
}
