//! TCP sockets and their owners, read from /proc the way `ss -p` does:
//! every network namespace's `net/tcp{,6}` (read through one of its tasks)
//! and every process's `fd/` links (`socket:[inode]`). The daemon reads this
//! once when the connection tracer attaches: listeners older than the daemon
//! are seeded into the tracer, so their inbound connections are attributed,
//! and connections older than the daemon go into the connection table with
//! their owners, since the tracer never saw them start. Also the daemon's
//! own memory and CPU time ([`self_usage`]) for `/metrics`, and the
//! processes that hold a BPF link to a program ([`bpf_link_holders`]), to
//! name the owner of a hook sluice cannot attach to.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

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

/// A TCP connection that existed when the scan ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingConn {
    pub netns: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Kernel TCP state number (1 = ESTABLISHED, ...).
    pub state: u8,
    /// True when the local port is listening in that namespace: accepted.
    pub inbound: bool,
    /// The listener's owner for an inbound connection (as the tracer
    /// attributes them), else the process holding the socket; 0 if none.
    pub pid: u32,
    pub comm: String,
}

/// What one walk of /proc found.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    pub listeners: Vec<Listener>,
    pub conns: Vec<ExistingConn>,
}

/// One line of /proc/net/tcp or tcp6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSocket {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub state: u8,
    pub inode: u64,
}

const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_SYN_RECV: u8 = 3;
const TCP_NEW_SYN_RECV: u8 = 12;

/// An address as /proc prints it: each 32-bit word of the network-order
/// address printed as a host-order hex number (little-endian here).
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok();
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?.to_ne_bytes()))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    Some((parse_addr(a)?, u16::from_str_radix(p, 16).ok()?))
}

/// Every socket line of a /proc/net/tcp{,6} file; malformed lines are
/// skipped.
pub fn parse_sockets(text: &str) -> Vec<ProcSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
            if f.len() < 10 {
                return None;
            }
            Some(ProcSocket {
                local: parse_endpoint(f[1])?,
                remote: parse_endpoint(f[2])?,
                state: u8::from_str_radix(f[3], 16).ok()?,
                inode: f[9].parse().ok()?,
            })
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

/// Every listening socket and every connection on the host, in every
/// network namespace that has at least one task, with their owners. Tasks
/// (threads) are walked one by one because a thread can live in another
/// network namespace than its process; the comm reported is that of the
/// owner's task in the socket's namespace (what the tracer would record).
pub fn scan() -> Scan {
    let mut owner: HashMap<u64, u32> = HashMap::new(); // socket inode -> pid
    let mut ns_task: HashMap<u32, String> = HashMap::new(); // netns -> a task dir in it
    let mut task_comm: HashMap<(u32, u32), String> = HashMap::new(); // (pid, netns) -> comm
    let Ok(procs) = fs::read_dir("/proc") else {
        return Scan::default();
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
    let mut out = Scan::default();
    let named = |pid: u32, ns: u32| (pid, task_comm.get(&(pid, ns)).cloned().unwrap_or_default());
    for (ns, task) in ns_task {
        let mut socks = Vec::new();
        for (file, family) in [("tcp", 2u16), ("tcp6", 10)] {
            if let Ok(text) = fs::read_to_string(format!("{task}/net/{file}")) {
                socks.extend(parse_sockets(&text).into_iter().map(|s| (family, s)));
            }
        }
        // Listening ports of this namespace, with their owners.
        let mut listening: HashMap<u16, (u32, String)> = HashMap::new();
        for (family, s) in socks.iter().filter(|(_, s)| s.state == TCP_LISTEN) {
            let Some(pid) = owner.get(&s.inode) else {
                continue;
            };
            let (pid, comm) = named(*pid, ns);
            listening.entry(s.local.1).or_insert((pid, comm.clone()));
            out.listeners.push(Listener {
                netns: ns,
                family: *family,
                port: s.local.1,
                pid,
                comm,
            });
        }
        for (_, s) in socks {
            // TIME_WAIT sockets belong to nobody and the tracer never sees
            // their end; CLOSE ones are on their way out; SYN_RECV lines
            // are half-open handshakes (request socks, no socket yet).
            if matches!(
                s.state,
                TCP_LISTEN | TCP_TIME_WAIT | TCP_CLOSE | TCP_SYN_RECV | TCP_NEW_SYN_RECV
            ) {
                continue;
            }
            let listener = listening.get(&s.local.1);
            let (pid, comm) = match (listener, owner.get(&s.inode)) {
                (Some(l), _) => l.clone(),
                (None, Some(pid)) => named(*pid, ns),
                (None, None) => (0, String::new()),
            };
            out.conns.push(ExistingConn {
                netns: ns,
                src: s.local.0,
                sport: s.local.1,
                dst: s.remote.0,
                dport: s.remote.1,
                state: s.state,
                inbound: listener.is_some(),
                pid,
                comm,
            });
        }
    }
    out
}

/// Resident memory (bytes) and CPU time (seconds) of this process.
pub fn self_usage() -> Option<(u64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that ends comm: state is field 3; utime 14, stime 15, rss 24.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let cpu = (f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / ticks;
    let rss = f.get(21)?.parse::<u64>().ok()? * page;
    Some((rss, cpu))
}

/// The processes (pid, comm) holding an open BPF link to program
/// `prog_id`, other than this one: their `fd/` links read
/// `anon_inode:bpf_link` and the fd's `fdinfo` names the program. A link
/// only pinned in bpffs has no holder.
pub fn bpf_link_holders(prog_id: u32) -> Vec<(u32, String)> {
    let me = std::process::id();
    let want = format!("prog_id:\t{prog_id}\n");
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf_link")
                && fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).is_ok_and(|t| t.contains(&want))
        });
        if holds {
            let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_lines_in_both_families() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 023912C6:A3C2 033912C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 67890 1 0000000000000000 20 4 30 10 -1
   2: garbage
   3: 0100007F:XYZW 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1 1
";
        let v4 = |a: [u8; 4], p| (IpAddr::from(a), p);
        assert_eq!(
            parse_sockets(text),
            vec![
                ProcSocket {
                    local: v4([0, 0, 0, 0], 8080),
                    remote: v4([0, 0, 0, 0], 0),
                    state: 10,
                    inode: 12345
                },
                ProcSocket {
                    local: v4([198, 18, 57, 2], 41922),
                    remote: v4([198, 18, 57, 3], 8080),
                    state: 1,
                    inode: 67890
                },
            ]
        );
        // 2001:2:57::2 port 80 talking to 2001:2:57::3 port 40000.
        let v6 = "  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 02000120000057000000000002000000:0050 02000120000057000000000003000000:9C40 08 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
";
        let s = &parse_sockets(v6)[0];
        assert_eq!(s.local, ("2001:2:57::2".parse().unwrap(), 80));
        assert_eq!(s.remote, ("2001:2:57::3".parse().unwrap(), 40000));
        assert_eq!((s.state, s.inode), (8, 222));
        assert!(parse_sockets("header only\ngarbage line\n").is_empty());
        assert_eq!(parse_addr("0100007F"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(parse_addr("0100007"), None);
    }

    #[test]
    fn finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = scan().listeners;
        let me = found
            .iter()
            .find(|x| x.port == port && x.family == 2)
            .expect("own listener found");
        assert_eq!(me.pid, std::process::id());
    }

    #[test]
    fn finds_both_ends_of_our_own_connection_with_their_direction() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_accepted, _) = l.accept().unwrap();
        let (lport, cport) = (l.local_addr().unwrap().port(), c.local_addr().unwrap().port());
        let scan = scan();
        let mine: Vec<_> = scan
            .conns
            .iter()
            .filter(|x| (x.sport, x.dport) == (cport, lport) || (x.sport, x.dport) == (lport, cport))
            .collect();
        assert_eq!(mine.len(), 2, "{mine:?}");
        for x in mine {
            assert_eq!((x.state, x.pid), (1, std::process::id()), "{x:?}");
            assert_eq!(x.inbound, x.sport == lport, "{x:?}");
            assert_eq!(x.src, IpAddr::from([127, 0, 0, 1]));
            assert!(!x.comm.is_empty());
        }
    }
}
