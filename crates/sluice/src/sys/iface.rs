//! Network interfaces of the daemon's namespace: names and indexes
//! (`if_nametoindex`), what sysfs and `SIOCETHTOOL` say about one (MAC,
//! driver, veth peer), which XDP programs sit on one (netlink), and the
//! validation of a name before it reaches a sysfs path or an ioctl.

use std::{ffi::CString, path::Path};

/// Checks an interface name before it reaches sysfs paths or ioctls; the
/// error says what is wrong with it.
pub fn check_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < libc::IF_NAMESIZE
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid interface name"))
    }
}

/// Interface name of an ifindex in this network namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Ifindex of an interface name in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// What a redirect needs to know about its target interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// A veth whose peer lives in another namespace: bpf_redirect_peer.
    pub peer: bool,
}

fn sysfs(name: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The driver name of an interface (ETHTOOL_GDRVINFO).
fn driver(name: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DrvInfo {
        cmd: 0x3, // ETHTOOL_GDRVINFO
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: zeroed ifreq is valid; the name fits (checked by
    // check_ifname, and truncated here regardless); the fd is closed below.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes().take(libc::IF_NAMESIZE - 1)) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, 0x8946 /* SIOCETHTOOL */, &mut ifr);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Resolves an interface of this namespace; None if it does not exist.
pub fn iface_info(name: &str) -> Option<IfaceInfo> {
    check_ifname(name).ok()?;
    let ifindex = ifindex(name)?;
    let mut mac = [0u8; 6];
    if let Some(a) = sysfs(name, "address") {
        for (m, part) in mac.iter_mut().zip(a.split(':')) {
            *m = u8::from_str_radix(part, 16).unwrap_or(0);
        }
    }
    // A veth's iflink is its peer's ifindex; if that index names a veth
    // here pointing back at us, the peer is in this namespace.
    let peer = driver(name).as_deref() == Some("veth") && {
        let iflink: u32 = sysfs(name, "iflink").and_then(|s| s.parse().ok()).unwrap_or(0);
        let local_peer = ifname(iflink)
            .and_then(|p| sysfs(&p, "iflink"))
            .and_then(|s| s.parse::<u32>().ok())
            == Some(ifindex);
        iflink != ifindex && !local_peer
    };
    Some(IfaceInfo { ifindex, mac, peer })
}

/// The XDP programs on `ifindex` (at most one per mode), as netlink
/// reports them: one blocking `RTM_GETLINK` request.
pub fn xdp_prog_ids(ifindex: u32) -> std::io::Result<Vec<u32>> {
    use rtnetlink::{
        packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
        packet_route::{
            link::{LinkAttribute, LinkMessage, LinkXdp},
            RouteNetlinkMessage,
        },
        sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
    };
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    req.header.flags = NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (reply, _) = socket.recv_from_full()?;
    let reply: NetlinkMessage<RouteNetlinkMessage> =
        NetlinkMessage::deserialize(&reply).map_err(std::io::Error::other)?;
    let link = match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => l,
        NetlinkPayload::Error(e) => return Err(e.to_io()),
        other => return Err(std::io::Error::other(format!("unexpected netlink reply {other:?}"))),
    };
    let mut ids = Vec::new();
    for a in &link.attributes {
        if let LinkAttribute::Xdp(xs) = a {
            for x in xs {
                if let LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id) | LinkXdp::HwProgId(id) = x {
                    ids.push(*id);
                }
            }
            if ids.is_empty() {
                // Older kernels report only the one program.
                ids.extend(xs.iter().filter_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                }));
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_use() {
        for ok in ["eth0", "veth1179f74", "a", "x-y.z_1"] {
            assert!(check_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "sixteen-chars-xx", "a b", "tab\t"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ifindex("lo"), Some(1));
        assert_eq!(ifname(1).as_deref(), Some("lo"));
        assert!(iface_info("no-such-if0").is_none());
    }
}
