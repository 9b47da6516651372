//! `sluice probes list`: every program x attach point sluice manages, with
//! its state, next to other owners' programs on the same hooks.

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{SchedClassifier, TcAttachType};
use sluice_abi::xdp as names;

use super::{
    foreign::{is_sluice_program, NetlinkHooks},
    probe::{ProbeId, ProbeKind},
    AttachMode, Dataplane,
};

/// One program at one attach point, as `sluice probes list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// Stable id: `xdp/IFACE`, `tc-ingress/IFACE`, `tc-egress/IFACE`,
    /// `trace/inet_sock_set_state`; other owners' programs get a
    /// `/foreign-PROGID` suffix.
    pub id: String,
    pub kind: String,
    /// Interface name or tracepoint.
    pub attach: String,
    pub program: String,
    pub prog_id: Option<u32>,
    /// "sluice" for this daemon's, "other-sluice" for another sluice
    /// daemon's (named `sluice_*`), "foreign" for another tool's.
    pub owner: String,
    /// XDP only: native or generic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AttachMode>,
    /// "enabled", "disabled" (by the operator), or "failed" (see `error`).
    pub state: String,
    /// Why sluice could not attach here (e.g. another owner's program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Kernel BPF stats (zero unless stats are enabled).
    pub run_count: u64,
    pub run_time_ns: u64,
    /// The container the interface leads into (filled in by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The interface's ifindex (none for the tracepoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
}

impl Dataplane {
    /// Every program x attach point sluice manages (enabled, disabled or
    /// failed), plus other owners' programs on the same XDP, tc and tcx
    /// hooks, with kernel run statistics. `hooks` is what netlink reports
    /// per interface ([`super::foreign::netlink_hooks`]).
    pub fn probes(&self, hooks: &BTreeMap<u32, NetlinkHooks>) -> Vec<Probe> {
        let stats: BTreeMap<u32, (u64, u64)> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|i| (i.id(), (i.run_count(), i.run_time().as_nanos() as u64)))
            .collect();
        let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|i| (i.id(), i.name_as_str().unwrap_or("?").to_string()))
            .collect();
        let probe = |kind: ProbeKind, attach: &str, program: &str, prog_id: Option<u32>, state: &str| {
            let (run_count, run_time_ns) = prog_id.and_then(|i| stats.get(&i).copied()).unwrap_or((0, 0));
            Probe {
                id: ProbeId::new(kind, attach).to_string(),
                kind: kind.as_str().into(),
                attach: attach.into(),
                program: program.into(),
                prog_id,
                owner: "sluice".into(),
                mode: None,
                state: state.into(),
                error: None,
                run_count,
                run_time_ns,
                container: None,
                ifindex: crate::sys::iface::ifindex(attach),
            }
        };
        let foreign = |kind: ProbeKind, attach: &str, id: u32, name: Option<&str>| {
            let mut p = probe(
                kind,
                attach,
                name.filter(|n| !n.is_empty())
                    .or(names.get(&id).map(String::as_str))
                    .unwrap_or("?"),
                Some(id),
                "enabled",
            );
            p.id = format!("{}/foreign-{id}", p.id);
            p.owner = if is_sluice_program(&p.program) {
                "other-sluice".into()
            } else {
                "foreign".into()
            };
            p
        };
        let tc_ids: BTreeMap<&str, Option<u32>> = self.tc_program_ids().into_iter().collect();
        let xdp_id = self.program_id();
        let no_hooks = NetlinkHooks::default();
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for a in self.attachments() {
            let nl = hooks.get(&a.ifindex).unwrap_or(&no_hooks);
            let state = |k| {
                if a.has(k) {
                    "enabled"
                } else if !self.wants(k, &a.name) {
                    "disabled"
                } else {
                    "failed"
                }
            };
            let mut x = probe(
                ProbeKind::Xdp,
                &a.name,
                names::PROGRAM,
                a.has(ProbeKind::Xdp).then_some(xdp_id).flatten(),
                state(ProbeKind::Xdp),
            );
            x.mode = a.mode();
            x.error = a.error(ProbeKind::Xdp).map(String::from);
            out.push(x);
            for id in nl.xdp.iter().filter(|i| Some(**i) != xdp_id) {
                out.push(foreign(ProbeKind::Xdp, &a.name, *id, None));
            }
            for (kind, ty, prog, legacy) in [
                (
                    ProbeKind::TcIngress,
                    TcAttachType::Ingress,
                    sluice_abi::tc::INGRESS,
                    &nl.tc_ingress,
                ),
                (
                    ProbeKind::TcEgress,
                    TcAttachType::Egress,
                    sluice_abi::tc::EGRESS,
                    &nl.tc_egress,
                ),
            ] {
                let mine = tc_ids.get(prog).copied().flatten();
                let mut p = probe(kind, &a.name, prog, a.has(kind).then_some(mine).flatten(), state(kind));
                p.error = a.error(kind).map(String::from);
                out.push(p);
                let tcx = SchedClassifier::query_tcx(&a.name, ty).map(|r| r.1).unwrap_or_default();
                for info in tcx.iter().filter(|i| Some(i.id()) != mine) {
                    out.push(foreign(kind, &a.name, info.id(), info.name_as_str()));
                }
                for (id, name) in legacy {
                    out.push(foreign(kind, &a.name, *id, Some(name)));
                }
            }
            for k in [ProbeKind::Xdp, ProbeKind::TcIngress, ProbeKind::TcEgress] {
                seen.insert(ProbeId::new(k, &a.name));
            }
        }
        for (ifindex, f) in &self.failed {
            let name = &f.name;
            let mut p = probe(ProbeKind::Xdp, name, names::PROGRAM, None, "failed");
            p.error = Some(match &f.owner {
                Some(o) if !f.why.contains(&o.to_string()) => format!("{}: {o}", f.why),
                _ => f.why.clone(),
            });
            out.push(p);
            seen.insert(ProbeId::new(ProbeKind::Xdp, name));
            for id in hooks.get(ifindex).map(|h| h.xdp.as_slice()).unwrap_or_default() {
                out.push(foreign(ProbeKind::Xdp, name, *id, None));
            }
        }
        let trace = self.trace_program_id();
        out.push(probe(
            ProbeKind::Trace,
            sluice_abi::trace::TRACEPOINT,
            sluice_abi::trace::PROGRAM,
            trace,
            if trace.is_some() {
                "enabled"
            } else if self.disabled.contains(&ProbeId::trace()) {
                "disabled"
            } else {
                "failed"
            },
        ));
        seen.insert(ProbeId::trace());
        // Disabled probes of interfaces that are not here now.
        for id in self.disabled.iter().filter(|id| !seen.contains(*id)) {
            let program = match id.kind {
                ProbeKind::Xdp => names::PROGRAM,
                ProbeKind::TcIngress => sluice_abi::tc::INGRESS,
                ProbeKind::TcEgress => sluice_abi::tc::EGRESS,
                ProbeKind::Trace => sluice_abi::trace::PROGRAM,
            };
            out.push(probe(id.kind, &id.attach, program, None, "disabled"));
        }
        out
    }
}
