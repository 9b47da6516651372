//! What else sits on an interface's XDP and legacy tc hooks, as netlink
//! reports it, so other owners' programs can be listed next to sluice's
//! own (tcx programs are queried through BPF in [`super::Dataplane::probes`]).

use std::collections::BTreeMap;

/// Programs on one interface's XDP and legacy tc hooks, as netlink reports
/// them (tcx programs are queried through BPF instead).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetlinkHooks {
    /// XDP program ids (at most one per mode).
    pub xdp: Vec<u32>,
    /// cls_bpf filters on the clsact ingress / egress hooks: (prog id, name).
    pub tc_ingress: Vec<(u32, String)>,
    pub tc_egress: Vec<(u32, String)>,
}

/// Asks the kernel which XDP and cls_bpf programs sit on `ifindexes`.
/// Interfaces that vanish meanwhile are skipped.
pub async fn netlink_hooks(ifindexes: &[u32]) -> std::io::Result<BTreeMap<u32, NetlinkHooks>> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::{
        link::{LinkAttribute, LinkXdp},
        tc::{TcAttribute, TcFilterBpfOption, TcOption},
    };
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut out = BTreeMap::new();
    for &ifindex in ifindexes {
        let mut h = NetlinkHooks::default();
        let mut links = handle.link().get().match_index(ifindex).execute();
        let link = match links.try_next().await {
            Ok(Some(l)) => l,
            _ => continue,
        };
        for a in &link.attributes {
            if let LinkAttribute::Xdp(xs) = a {
                for x in xs.iter().cloned() {
                    if let LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id) | LinkXdp::HwProgId(id) = x {
                        h.xdp.push(id);
                    }
                }
                if h.xdp.is_empty() {
                    // Older kernels report only the one program.
                    h.xdp.extend(xs.iter().filter_map(|x| match x {
                        LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                        _ => None,
                    }));
                }
            }
        }
        for egress in [false, true] {
            let req = handle.traffic_filter(ifindex as i32).get();
            let req = if egress { req.egress() } else { req.ingress() };
            let mut filters = req.execute();
            // No clsact qdisc: the dump fails or is empty; nothing to list.
            while let Ok(Some(msg)) = filters.try_next().await {
                for a in &msg.attributes {
                    let TcAttribute::Options(opts) = a else { continue };
                    let mut id = None;
                    let mut name = String::new();
                    for o in opts.iter().cloned() {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(i),
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = n,
                            _ => {}
                        }
                    }
                    if let Some(id) = id {
                        let v = if egress { &mut h.tc_egress } else { &mut h.tc_ingress };
                        if !v.iter().any(|(i, _)| *i == id) {
                            v.push((id, name));
                        }
                    }
                }
            }
        }
        out.insert(ifindex, h);
    }
    task.abort();
    Ok(out)
}
