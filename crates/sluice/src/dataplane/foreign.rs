//! What else sits on an interface's hooks: other owners' programs on the
//! XDP and legacy tc hooks as netlink reports them, listed next to sluice's
//! own (tcx programs are queried through BPF in [`super::Dataplane::probes`]),
//! and [`HookOwner`], who holds a hook sluice could not attach to: another
//! sluice daemon (its programs are named `sluice_*`), with the processes
//! holding its links, or another tool.

use std::{collections::BTreeMap, fmt};

use aya::programs::{SchedClassifier, TcAttachType};

use super::Dataplane;
use crate::sys::{iface::xdp_prog_ids, procfs::bpf_link_holders};

/// True for a program of some sluice daemon (every sluice program is
/// named `sluice_*`), this one's or another's.
pub fn is_sluice_program(name: &str) -> bool {
    name.starts_with("sluice_")
}

/// A process holding a BPF link.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// Who holds a hook of an interface sluice could not take.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookOwner {
    /// `xdp`, `tc-ingress` or `tc-egress`.
    pub hook: String,
    pub program: String,
    pub prog_id: u32,
    /// Another sluice daemon's program (named `sluice_*`).
    pub sluice: bool,
    /// Processes holding a link to the program; none for a link that is
    /// only pinned, or a program attached through netlink.
    pub holders: Vec<Holder>,
}

impl HookOwner {
    fn new(hook: &str, prog_id: u32, program: &str) -> Self {
        let sluice = is_sluice_program(program);
        HookOwner {
            hook: hook.into(),
            program: program.into(),
            prog_id,
            sluice,
            // Only worth the /proc walk for sluice's programs: it tells a
            // running daemon from one that is stopped (e.g. upgrading).
            holders: if sluice {
                bpf_link_holders(prog_id)
                    .into_iter()
                    .map(|(pid, comm)| Holder { pid, comm })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

impl fmt::Display for HookOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prog = format!("{} (prog id {})", self.program, self.prog_id);
        if !self.sluice {
            return write!(f, "another tool's program {prog} holds the {} hook", self.hook);
        }
        if self.holders.is_empty() {
            return write!(
                f,
                "a stopped sluice daemon's pinned link holds the {} hook with {prog}; it keeps enforcing until that daemon starts again or runs `sluice down`",
                self.hook
            );
        }
        let pids: Vec<String> = self
            .holders
            .iter()
            .map(|h| format!("pid {} {}", h.pid, h.comm))
            .collect();
        write!(
            f,
            "another sluice daemon ({}) holds the {} hook with {prog}",
            pids.join(", "),
            self.hook
        )
    }
}

fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(String::from))
        .unwrap_or_else(|| "?".into())
}

impl Dataplane {
    /// Another owner's program on the XDP hook of `ifindex`, if any.
    pub(super) fn xdp_owner(&self, ifindex: u32) -> Option<HookOwner> {
        let mine = self.program_id();
        let id = xdp_prog_ids(ifindex).ok()?.into_iter().find(|i| Some(*i) != mine)?;
        Some(HookOwner::new("xdp", id, &program_name(id)))
    }

    /// Another sluice daemon's program on any hook of the interface (XDP,
    /// tcx ingress or egress): that daemon manages it, and this one leaves
    /// it alone rather than fight it for the hooks.
    pub(super) fn other_sluice(&self, ifindex: u32, name: &str) -> Option<HookOwner> {
        if let Some(o) = self.xdp_owner(ifindex).filter(|o| o.sluice) {
            return Some(o);
        }
        let mine: Vec<u32> = self.tc_program_ids().into_iter().filter_map(|(_, id)| id).collect();
        for (ty, hook) in [
            (TcAttachType::Ingress, "tc-ingress"),
            (TcAttachType::Egress, "tc-egress"),
        ] {
            let Ok((_, progs)) = SchedClassifier::query_tcx(name, ty) else {
                continue;
            };
            for p in progs {
                let pname = p.name_as_str().unwrap_or("");
                if !mine.contains(&p.id()) && is_sluice_program(pname) {
                    return Some(HookOwner::new(hook, p.id(), pname));
                }
            }
        }
        None
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(program: &str, holders: &[(u32, &str)]) -> HookOwner {
        HookOwner {
            hook: "xdp".into(),
            program: program.into(),
            prog_id: 42,
            sluice: is_sluice_program(program),
            holders: holders
                .iter()
                .map(|(pid, comm)| Holder {
                    pid: *pid,
                    comm: comm.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn an_owner_says_whose_program_holds_the_hook() {
        assert!(is_sluice_program("sluice_xdp") && is_sluice_program("sluice_tc_in"));
        assert!(!is_sluice_program("xdp_dispatcher") && !is_sluice_program("sluicex"));
        assert_eq!(
            owner("sluice_xdp", &[(7, "sluice")]).to_string(),
            "another sluice daemon (pid 7 sluice) holds the xdp hook with sluice_xdp (prog id 42)"
        );
        assert!(owner("sluice_xdp", &[])
            .to_string()
            .starts_with("a stopped sluice daemon's pinned link holds the xdp hook with sluice_xdp (prog id 42)"));
        assert_eq!(
            owner("cilium_xdp", &[]).to_string(),
            "another tool's program cilium_xdp (prog id 42) holds the xdp hook"
        );
    }
}
