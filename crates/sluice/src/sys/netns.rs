//! Network namespaces: their identity (the nsfs inode of `/proc/PID/ns/net`
//! or of a `/run/netns/NAME` bind mount) and what is inside one: its
//! interfaces, what kind each is, where each veth's other end lives and the
//! addresses it carries. That answers, for a container's namespace, which
//! interfaces of the host lead into it (the peers of its veths) and which
//! addresses the container has.
//!
//! [`links_in`] never moves the caller's thread or the process: it enters
//! the namespace on a dedicated short-lived thread (`setns(CLONE_NEWNET)`
//! affects only the calling thread), opens its netlink socket there, so the
//! socket belongs to that namespace, dumps links and addresses with
//! blocking requests, and lets the thread end.

use std::{
    fs::{self, File},
    io,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    time::Duration,
};

use ipnet::IpNet;
use rtnetlink::{
    packet_core::{
        NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    },
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope},
        link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        nsid::{NsidAttribute, NsidMessage},
        RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};

/// `NSFS_MAGIC` from linux/magic.h.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// How long one netlink reply may take before the dump is given up.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// The inode of a process's network namespace (`/proc/PID/ns/net`), which
/// names the namespace host-wide (what `ip netns identify`, `lsns` and the
/// BPF helpers' `netns` fields compare). None if the process is gone or
/// its namespace cannot be read.
pub fn netns_inode(pid: u32) -> Option<u64> {
    netns_inode_at(Path::new(&format!("/proc/{pid}/ns/net")))
}

/// The inode of this process's network namespace (its main thread's: a
/// thread that entered another one is not followed).
pub fn self_netns_inode() -> Option<u64> {
    netns_inode_at(Path::new("/proc/self/ns/net"))
}

/// The inode of the namespace at `path` (`/proc/PID/ns/net`,
/// `/run/netns/NAME`); None unless `path` is a namespace file.
pub fn netns_inode_at(path: &Path) -> Option<u64> {
    let md = fs::metadata(path).ok()?;
    (statfs_type(path) == Some(NSFS_MAGIC)).then(|| md.ino())
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

/// One interface of a network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsLink {
    /// Its ifindex inside that namespace.
    pub ifindex: u32,
    pub name: String,
    /// The link kind (`veth`, `bridge`, `macvlan`, ...); None for physical
    /// interfaces.
    pub kind: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// `IFLA_LINK`: for a veth, its peer's ifindex; for a vlan or macvlan,
    /// its lower device's. That ifindex is in the namespace
    /// [`peer_netnsid`](Self::peer_netnsid) names, else in this one.
    pub peer_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id this namespace gives the namespace the
    /// peer lives in, when that is another one.
    pub peer_netnsid: Option<i32>,
    /// The peer is in the namespace of the thread that called [`links_in`]
    /// (the host's, when the daemon asks about a container): then
    /// [`host_ifindex`](Self::host_ifindex) is the interface there that
    /// leads into this namespace.
    pub peer_in_caller_ns: bool,
    /// Its addresses with their prefix lengths (host bits kept), IPv4
    /// first: global (and site) scope ones, or the link-local ones when it
    /// has nothing else. Addresses whose duplicate detection failed are left
    /// out.
    pub addrs: Vec<IpNet>,
}

impl NsLink {
    /// The ifindex, in the caller's namespace, of the interface joined to
    /// this one (the host side of a container's veth).
    pub fn host_ifindex(&self) -> Option<u32> {
        self.peer_ifindex.filter(|_| self.peer_in_caller_ns)
    }
}

/// The interfaces of the network namespace at `ns` (`/proc/PID/ns/net` or
/// `/run/netns/NAME`) other than loopback, sorted by ifindex, from netlink
/// dumps made inside it on a dedicated thread (see the module comment).
///
/// Errors keep their kind and say which namespace and what went wrong:
/// `NotFound` (the process exited or the namespace was deleted),
/// `PermissionDenied` (opening another user's process's namespace, or
/// entering one without `CAP_SYS_ADMIN`), `InvalidInput` (not a network
/// namespace), `TimedOut` (netlink did not answer).
pub fn links_in(ns: &Path) -> io::Result<Vec<NsLink>> {
    let target = open_netns(ns)?;
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| io::Error::new(e.kind(), format!("opening this thread's network namespace: {e}")))?;
    let (t, h) = (target.metadata()?, home.metadata()?);
    let same = (t.dev(), t.ino()) == (h.dev(), h.ino());
    let shown = ns.display().to_string();
    std::thread::Builder::new()
        .name("sluice-netns".into())
        .spawn(move || -> io::Result<Vec<NsLink>> {
            if !same {
                // SAFETY: setns on this thread only, with an open namespace fd.
                if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = io::Error::last_os_error();
                    let why = match e.raw_os_error() {
                        Some(libc::EPERM) => "permission denied (entering a namespace needs CAP_SYS_ADMIN)".to_string(),
                        _ => e.to_string(),
                    };
                    return Err(io::Error::new(
                        e.kind(),
                        format!("entering network namespace {shown}: {why}"),
                    ));
                }
            }
            let nl = Netlink::open().map_err(|e| io::Error::new(e.kind(), format!("in {shown}: {e}")))?;
            let links = nl
                .dump_links()
                .map_err(|e| io::Error::new(e.kind(), format!("listing the links of {shown}: {e}")))?;
            let addrs = nl
                .dump_addrs()
                .map_err(|e| io::Error::new(e.kind(), format!("listing the addresses of {shown}: {e}")))?;
            // The id this namespace gives the caller's: links whose peer
            // carries that id have their peer there. Asked after the link
            // dump, which assigns ids to the peers' namespaces.
            let home_nsid = if same || !links.iter().any(|l| netnsid_of(l).is_some()) {
                None
            } else {
                nl.nsid_of(&home).ok().filter(|id| *id >= 0)
            };
            Ok(assemble(&links, &addrs, same, home_nsid))
        })
        .map_err(|e| io::Error::new(e.kind(), format!("starting a thread for {}: {e}", ns.display())))?
        .join()
        .map_err(|_| io::Error::other(format!("the thread listing {} panicked", ns.display())))?
}

/// Opens a namespace file, checking that it is a network namespace.
fn open_netns(ns: &Path) -> io::Result<File> {
    let file = File::open(ns).map_err(|e| {
        let why = match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::NotFound, _) | (_, Some(libc::ESRCH)) => {
                return io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "network namespace {} is gone (no such file: its process exited or it was deleted)",
                        ns.display()
                    ),
                )
            }
            (io::ErrorKind::PermissionDenied, _) => {
                "permission denied (another user's process: needs root or CAP_SYS_PTRACE)".to_string()
            }
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("opening network namespace {}: {why}", ns.display()))
    })?;
    // SAFETY: an ioctl without argument on an open fd.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if nstype < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a network namespace (not a namespace file)", ns.display()),
        ));
    }
    if nstype != libc::CLONE_NEWNET {
        let what = match nstype {
            libc::CLONE_NEWNS => "mount",
            libc::CLONE_NEWUTS => "uts",
            libc::CLONE_NEWIPC => "ipc",
            libc::CLONE_NEWUSER => "user",
            libc::CLONE_NEWPID => "pid",
            libc::CLONE_NEWCGROUP => "cgroup",
            _ => "another kind of",
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a {what} namespace, not a network namespace", ns.display()),
        ));
    }
    Ok(file)
}

fn netnsid_of(l: &LinkMessage) -> Option<i32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    })
}

/// The links of one dump with their addresses (see [`NsLink`]); `same`
/// when the namespace dumped is the caller's, `home_nsid` the id it gives
/// the caller's otherwise.
fn assemble(links: &[LinkMessage], addrs: &[AddressMessage], same: bool, home_nsid: Option<i32>) -> Vec<NsLink> {
    let mut out: Vec<NsLink> = links
        .iter()
        .filter_map(|l| {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            if name == "lo" || l.header.flags.contains(LinkFlags::Loopback) {
                return None;
            }
            let kind = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                }),
                _ => None,
            });
            let peer_ifindex = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Link(i) => Some(*i),
                    _ => None,
                })
                .filter(|i| *i != 0);
            let peer_netnsid = netnsid_of(l);
            let peer_in_caller_ns = peer_ifindex.is_some()
                && match peer_netnsid {
                    None => same,
                    Some(id) => !same && home_nsid == Some(id),
                };
            Some(NsLink {
                ifindex: l.header.index,
                name,
                kind,
                up: l.header.flags.contains(LinkFlags::Up),
                peer_ifindex,
                peer_netnsid,
                peer_in_caller_ns,
                addrs: Vec::new(),
            })
        })
        .collect();
    out.sort_by_key(|l| l.ifindex);
    for link in &mut out {
        // (address, link-local fallback only)
        let mut found: Vec<(IpNet, bool)> = addrs
            .iter()
            .filter(|a| a.header.index == link.ifindex)
            .filter_map(address_of)
            .collect();
        found.sort_by_key(|(net, _)| net.addr().is_ipv6());
        let primary = found.iter().any(|(_, fallback)| !fallback);
        link.addrs = found
            .into_iter()
            .filter(|(_, fallback)| !primary || !fallback)
            .map(|(net, _)| net)
            .collect();
    }
    out
}

/// The address of one RTM_NEWADDR message and whether it is only a
/// fallback (link scope); None for host-scope addresses and failed ones.
fn address_of(a: &AddressMessage) -> Option<(IpNet, bool)> {
    let failed = a.header.flags.contains(AddressHeaderFlags::Dadfailed)
        || a.attributes
            .iter()
            .any(|x| matches!(x, AddressAttribute::Flags(f) if f.contains(AddressFlags::Dadfailed)));
    if failed {
        return None;
    }
    let fallback = match a.header.scope {
        AddressScope::Universe | AddressScope::Site => false,
        AddressScope::Link => true,
        _ => return None,
    };
    // IFA_LOCAL is an IPv4 interface's own address (IFA_ADDRESS is the far
    // end on point-to-point links); IPv6 has only IFA_ADDRESS.
    let pick = |want_local: bool| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    let ip: IpAddr = pick(true).or_else(|| pick(false))?;
    let net = IpNet::new(ip, a.header.prefix_len).ok()?;
    Some((net, fallback))
}

/// A blocking rtnetlink socket of the namespace of the thread that opened it.
struct Netlink {
    socket: Socket,
    seq: std::cell::Cell<u32>,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: NETLINK_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a timeval of the right size for SO_RCVTIMEO on an open fd.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            socket,
            seq: std::cell::Cell::new(0),
        })
    }

    fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        req.header.flags = flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(seq)
    }

    /// The replies to request `seq` until it is done (`NLMSG_DONE`, an
    /// error or, with `one`, the first reply); whether the kernel flagged
    /// the dump as interrupted by a change.
    fn replies(&self, seq: u32, one: bool) -> io::Result<(Vec<RouteNetlinkMessage>, bool)> {
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("netlink did not answer within {NETLINK_TIMEOUT:?}"),
                ),
                _ => e,
            })?;
            let mut off = 0;
            while off < data.len() {
                let len = NetlinkBuffer::new_checked(&data[off..])
                    .map_err(|e| io::Error::other(format!("malformed netlink reply: {e}")))?
                    .length() as usize;
                if len == 0 {
                    break;
                }
                let msg: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&data[off..off + len])
                    .map_err(|e| io::Error::other(format!("malformed netlink reply: {e}")))?;
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok((out, interrupted)),
                    NetlinkPayload::Error(e) => match e.code {
                        Some(_) => return Err(e.to_io()),
                        None => return Ok((out, interrupted)),
                    },
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if one {
                            return Ok((out, interrupted));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A dump, made again (up to three times) when a change interrupted it.
    fn dump(&self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut tries = 0;
        loop {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let (got, interrupted) = self.replies(seq, false)?;
            tries += 1;
            if !interrupted || tries == 3 {
                return Ok(got);
            }
        }
    }

    fn dump_links(&self) -> io::Result<Vec<LinkMessage>> {
        Ok(self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    fn dump_addrs(&self) -> io::Result<Vec<AddressMessage>> {
        Ok(self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect())
    }

    /// The id this socket's namespace gives the namespace open at `ns`
    /// (RTM_GETNSID with NETNSA_FD); -1 when it has none.
    fn nsid_of(&self, ns: &File) -> io::Result<i32> {
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
        let seq = self.send(RouteNetlinkMessage::GetNsId(msg), NLM_F_REQUEST)?;
        let (got, _) = self.replies(seq, true)?;
        got.into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewNsId(n) => n.attributes.into_iter().find_map(|a| match a {
                    NsidAttribute::Id(id) => Some(id),
                    _ => None,
                }),
                _ => None,
            })
            .ok_or_else(|| io::Error::other("RTM_GETNSID answered without an id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::{link::InfoKind, AddressFamily};

    fn link(index: u32, name: &str, kind: Option<InfoKind>, peer: Option<u32>, nsid: Option<i32>) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.flags = LinkFlags::Up;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(k) = kind {
            l.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
        }
        if let Some(p) = peer {
            l.attributes.push(LinkAttribute::Link(p));
        }
        if let Some(id) = nsid {
            l.attributes.push(LinkAttribute::LinkNetNsId(id));
        }
        l
    }

    fn addr(index: u32, ip: &str, prefix: u8, scope: AddressScope) -> AddressMessage {
        let ip: IpAddr = ip.parse().unwrap();
        let mut a = AddressMessage::default();
        a.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        a.header.index = index;
        a.header.prefix_len = prefix;
        a.header.scope = scope;
        a.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv4() {
            a.attributes.push(AddressAttribute::Local(ip));
        }
        a
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_container_namespace_is_assembled_from_its_dumps() {
        let mut lo = link(1, "lo", None, None, None);
        lo.header.flags = LinkFlags::Up | LinkFlags::Loopback;
        let links = vec![
            link(7, "eth1", Some(InfoKind::MacVlan), Some(3), Some(0)),
            lo,
            link(2, "eth0", Some(InfoKind::Veth), Some(41), Some(0)),
            link(5, "tap0", Some(InfoKind::Veth), Some(6), None),
            link(9, "wg0", Some(InfoKind::Veth), Some(12), Some(4)),
        ];
        let mut failed = addr(2, "10.0.0.9", 24, AddressScope::Universe);
        failed.attributes.push(AddressAttribute::Flags(AddressFlags::Dadfailed));
        let mut ptp = addr(9, "10.9.9.1", 32, AddressScope::Universe);
        ptp.attributes = vec![
            AddressAttribute::Address("10.9.9.2".parse().unwrap()),
            AddressAttribute::Local("10.9.9.1".parse().unwrap()),
        ];
        let addrs = vec![
            addr(1, "127.0.0.1", 8, AddressScope::Host),
            addr(2, "fe80::1", 64, AddressScope::Link),
            addr(2, "2001:db8::2", 64, AddressScope::Universe),
            addr(2, "172.17.0.2", 16, AddressScope::Universe),
            failed,
            addr(5, "fe80::5", 64, AddressScope::Link),
            ptp,
        ];
        // As the daemon sees a container: the host is nsid 0 there.
        let got = assemble(&links, &addrs, false, Some(0));
        let names: Vec<&str> = got.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["eth0", "tap0", "eth1", "wg0"], "sorted by ifindex, no lo");
        let eth0 = &got[0];
        assert_eq!(
            eth0,
            &NsLink {
                ifindex: 2,
                name: "eth0".into(),
                kind: Some("veth".into()),
                up: true,
                peer_ifindex: Some(41),
                peer_netnsid: Some(0),
                peer_in_caller_ns: true,
                // IPv4 first; the link-local one dropped; the failed one too.
                addrs: vec![net("172.17.0.2/16"), net("2001:db8::2/64")],
            }
        );
        assert_eq!(eth0.host_ifindex(), Some(41));
        // A veth pair inside the namespace: its peer is not the host's.
        assert_eq!((got[1].peer_ifindex, got[1].host_ifindex()), (Some(6), None));
        // Only link-local: kept.
        assert_eq!(got[1].addrs, vec![net("fe80::5/64")]);
        // A macvlan on a host interface: the lower device leads into it.
        assert_eq!(
            (got[2].kind.as_deref(), got[2].host_ifindex()),
            (Some("macvlan"), Some(3))
        );
        // A peer in a third namespace.
        assert_eq!(got[3].host_ifindex(), None);
        // Point-to-point: the local end, not the far one.
        assert_eq!(got[3].addrs, vec![net("10.9.9.1/32")]);

        // Nothing leads into a namespace whose id for the caller is unknown.
        assert!(assemble(&links, &addrs, false, None)
            .iter()
            .all(|l| l.host_ifindex().is_none()));
        // The caller's own namespace: same-namespace peers are the caller's.
        let own = assemble(&links, &addrs, true, None);
        assert_eq!(own[1].host_ifindex(), Some(6));
        assert_eq!(own[0].host_ifindex(), None);
    }

    #[test]
    fn namespace_inodes() {
        let me = netns_inode(std::process::id()).expect("own namespace");
        assert_eq!(self_netns_inode(), Some(me));
        assert_eq!(netns_inode_at(Path::new("/proc/thread-self/ns/net")), Some(me));
        assert_eq!(netns_inode(u32::MAX), None);
        // Only namespace files have a namespace inode.
        assert_eq!(netns_inode_at(Path::new("/proc/self/cgroup")), None);
        assert_eq!(netns_inode_at(Path::new("/no/such/ns")), None);
    }

    #[test]
    fn links_of_our_own_namespace_without_entering_it() {
        // The caller's own namespace needs no setns (so no root either).
        let before = netns_inode_at(Path::new("/proc/thread-self/ns/net"));
        let links = links_in(Path::new("/proc/self/ns/net")).expect("own namespace");
        assert_eq!(netns_inode_at(Path::new("/proc/thread-self/ns/net")), before);
        assert!(links.iter().all(|l| l.name != "lo"), "{links:?}");
        for l in &links {
            assert_eq!(
                super::super::iface::ifname(l.ifindex).as_deref(),
                Some(l.name.as_str()),
                "{l:?}"
            );
        }
        assert!(links.windows(2).all(|w| w[0].ifindex < w[1].ifindex));
    }

    #[test]
    fn errors_name_the_namespace_and_the_reason() {
        let gone = links_in(Path::new("/run/netns/sluice-no-such-ns")).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(
            gone.to_string().contains("/run/netns/sluice-no-such-ns is gone"),
            "{gone}"
        );
        let exited = links_in(Path::new(&format!("/proc/{}/ns/net", u32::MAX))).unwrap_err();
        assert_eq!(exited.kind(), io::ErrorKind::NotFound, "{exited}");
        let not_ns = links_in(Path::new("/proc/self/cgroup")).unwrap_err();
        assert_eq!(not_ns.kind(), io::ErrorKind::InvalidInput);
        assert!(not_ns.to_string().contains("not a network namespace"), "{not_ns}");
        let uts = links_in(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert_eq!(uts.kind(), io::ErrorKind::InvalidInput);
        assert!(uts.to_string().contains("is a uts namespace"), "{uts}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Another user's process (init runs as root).
            let denied = links_in(Path::new("/proc/1/ns/net")).unwrap_err();
            assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied, "{denied}");
            assert!(
                denied.to_string().contains("/proc/1/ns/net: permission denied"),
                "{denied}"
            );
        }
    }
}
