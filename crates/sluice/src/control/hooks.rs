//! The control layer's seam to the attach side of the dataplane: which
//! interfaces are managed, probe states, the connection tracer. [`Hooks`]
//! is implemented by the real [`Dataplane`] and, for tests, by the
//! in-memory [`MemHooks`], so the API, the watcher and policy apply run
//! without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::OwnedFd,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{foreign::NetlinkHooks, AttachMode, Dataplane, HookOwner, Probe, ProbeId, ProbeKind},
    model::chain,
    sys::procfs::ExistingConn,
};

/// The hooks, shared by the API, the watcher and policy apply.
pub type SharedHooks = Arc<Mutex<dyn Hooks>>;

/// One managed interface, as `sluice status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IfaceState {
    pub name: String,
    pub ifindex: u32,
    /// How the XDP firewall runs here; null while `xdp/NAME` is disabled
    /// (then this interface is not filtered at all).
    pub mode: Option<AttachMode>,
    /// Adopted from a previous daemon's pinned link.
    pub adopted: bool,
    /// The TC forward/redirect programs are attached too (tcx).
    #[serde(default)]
    pub tc: bool,
    /// Probes the operator disabled here: xdp, tc-ingress, tc-egress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled: Vec<String>,
    /// Enabled probes that failed to attach here, with the reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
    /// The container this interface leads into, when it is one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// An interface that matched the globs but could not be attached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailedIface {
    pub name: String,
    pub ifindex: u32,
    pub error: String,
    /// Who holds the hook, when someone does: another sluice daemon (with
    /// the processes holding its links) or another tool. The daemon tries
    /// the interface again every few seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<HookOwner>,
    /// The container this interface leads into, when it is one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A loaded program.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Program {
    pub name: String,
    pub kind: String,
    /// Kernel program id.
    pub id: Option<u32>,
}

/// The connections found in /proc when the tracer attached, and the
/// kernel time just before it did.
pub type TraceSeed = (Vec<ExistingConn>, u64);

/// What the control layer needs of the attach side of the kernel.
pub trait Hooks: Send {
    /// True if `ifindex` is managed (its XDP hook attached or disabled).
    fn is_attached(&self, ifindex: u32) -> bool;
    /// Manages `ifindex`: attaches its enabled probes.
    fn attach(&mut self, ifindex: u32, name: &str) -> Result<(), String>;
    /// Stops managing `ifindex` (unpins its links).
    fn detach(&mut self, ifindex: u32);
    /// Follows an interface rename; probe states follow the new name.
    fn rename(&mut self, ifindex: u32, name: &str);
    /// Forgets an interface that failed to attach.
    fn forget_failed(&mut self, ifindex: u32);
    /// Tries the interfaces that failed again; returns those attached now.
    fn retry_failed(&mut self) -> Vec<(u32, String)>;
    /// Removes pinned links of interfaces nobody manages; their ifindexes.
    fn prune_unowned(&mut self) -> Vec<u32>;
    /// Managed interfaces.
    fn interfaces(&self) -> Vec<IfaceState>;
    /// Interfaces that matched but could not be attached.
    fn failed(&self) -> Vec<FailedIface>;
    /// The loaded programs.
    fn programs(&self) -> Vec<Program>;
    /// Interfaces whose hooks `probes` lists (managed and failed).
    fn probe_ifindexes(&self) -> Vec<u32>;
    /// What else sits on those interfaces' XDP and tc hooks (netlink;
    /// called from a blocking thread of the async runtime).
    fn foreign(&self, ifindexes: &[u32]) -> BTreeMap<u32, NetlinkHooks>;
    /// Every probe, with other owners' programs on the same hooks
    /// (`foreign` is what netlink reports per interface).
    fn probes(&self, foreign: &BTreeMap<u32, NetlinkHooks>) -> Vec<Probe>;
    /// Each sluice probe of a managed (or failed) interface and the tracer,
    /// with its state: enabled, disabled, or failed (for `/metrics`).
    fn probe_states(&self) -> Vec<(ProbeKind, &'static str)>;
    /// Turns on kernel BPF run statistics for as long as the fd is open.
    fn enable_stats(&self) -> Result<OwnedFd, String>;
    /// Sets the disabled probes before anything is attached (start).
    fn set_disabled(&mut self, disabled: BTreeSet<ProbeId>);
    /// Enables or disables one probe at once; returns whether its attach
    /// point exists now. On failure the previous state is restored.
    fn set_probe(&mut self, id: &ProbeId, enabled: bool) -> Result<bool, String>;
    /// Puts a probe state back without failing (a policy's undo): a hook
    /// that cannot attach is left failed, as after a restart.
    fn restore_probe(&mut self, id: &ProbeId, enabled: bool);
    /// True if the probe's attach point exists now.
    fn present(&self, id: &ProbeId) -> bool;
    /// True while the connection tracer is attached.
    fn trace_attached(&self) -> bool;
    /// Attaches the connection tracer.
    fn attach_trace(&mut self) -> Result<(), String>;
    /// What /proc held when the tracer last attached, once.
    fn take_trace_seed(&mut self) -> Option<TraceSeed>;
}

const IFACE_KINDS: [ProbeKind; 3] = [ProbeKind::Xdp, ProbeKind::TcIngress, ProbeKind::TcEgress];

impl Hooks for Dataplane {
    fn is_attached(&self, ifindex: u32) -> bool {
        self.attachments().any(|a| a.ifindex == ifindex)
    }
    fn attach(&mut self, ifindex: u32, name: &str) -> Result<(), String> {
        Dataplane::attach(self, ifindex, name).map(drop).map_err(|e| chain(&e))
    }
    fn detach(&mut self, ifindex: u32) {
        Dataplane::detach(self, ifindex);
    }
    fn rename(&mut self, ifindex: u32, name: &str) {
        Dataplane::rename(self, ifindex, name)
    }
    fn forget_failed(&mut self, ifindex: u32) {
        Dataplane::forget_failed(self, ifindex)
    }
    fn retry_failed(&mut self) -> Vec<(u32, String)> {
        Dataplane::retry_failed(self)
    }
    fn prune_unowned(&mut self) -> Vec<u32> {
        Dataplane::prune_unowned(self)
    }
    fn interfaces(&self) -> Vec<IfaceState> {
        self.attachments()
            .map(|a| IfaceState {
                name: a.name.clone(),
                ifindex: a.ifindex,
                mode: a.mode(),
                adopted: a.adopted,
                tc: a.tc(),
                disabled: IFACE_KINDS
                    .into_iter()
                    .filter(|k| !self.wants(*k, &a.name))
                    .map(|k| k.as_str().to_string())
                    .collect(),
                errors: IFACE_KINDS
                    .into_iter()
                    .filter_map(|k| Some((k.as_str().to_string(), a.error(k)?.to_string())))
                    .collect(),
                container: None,
            })
            .collect()
    }
    fn failed(&self) -> Vec<FailedIface> {
        Dataplane::failed(self)
            .map(|(ifindex, f)| FailedIface {
                name: f.name.clone(),
                ifindex,
                error: f.why.clone(),
                owner: f.owner.clone(),
                container: None,
            })
            .collect()
    }
    fn programs(&self) -> Vec<Program> {
        let mut progs = vec![Program {
            name: sluice_abi::xdp::PROGRAM.into(),
            kind: "xdp".into(),
            id: self.program_id(),
        }];
        for (name, id) in self.tc_program_ids() {
            progs.push(Program {
                name: name.into(),
                kind: "tc".into(),
                id,
            });
        }
        progs
    }
    fn probe_ifindexes(&self) -> Vec<u32> {
        self.attachments()
            .map(|a| a.ifindex)
            .chain(Dataplane::failed(self).map(|f| f.0))
            .collect()
    }
    fn foreign(&self, ifindexes: &[u32]) -> BTreeMap<u32, NetlinkHooks> {
        let query = crate::dataplane::foreign::netlink_hooks(ifindexes);
        // Called from a blocking thread of the daemon's runtime.
        let found = match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(query),
            Err(_) => Err(std::io::Error::other("no async runtime")),
        };
        found.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "netlink query of XDP/tc hooks failed; foreign XDP and tc programs are not listed");
            BTreeMap::new()
        })
    }
    fn probes(&self, foreign: &BTreeMap<u32, NetlinkHooks>) -> Vec<Probe> {
        Dataplane::probes(self, foreign)
    }
    fn probe_states(&self) -> Vec<(ProbeKind, &'static str)> {
        let mut out = Vec::new();
        for a in self.attachments() {
            for k in IFACE_KINDS {
                let state = if a.has(k) {
                    "enabled"
                } else if !self.wants(k, &a.name) {
                    "disabled"
                } else {
                    "failed"
                };
                out.push((k, state));
            }
        }
        out.extend(Dataplane::failed(self).map(|_| (ProbeKind::Xdp, "failed")));
        let trace = if self.trace_program_id().is_some() {
            "enabled"
        } else if self.wants(ProbeKind::Trace, sluice_abi::trace::TRACEPOINT) {
            "failed"
        } else {
            "disabled"
        };
        out.push((ProbeKind::Trace, trace));
        out
    }
    fn enable_stats(&self) -> Result<OwnedFd, String> {
        crate::dataplane::enable_stats().map_err(|e| chain(&e))
    }
    fn set_disabled(&mut self, disabled: BTreeSet<ProbeId>) {
        Dataplane::set_disabled(self, disabled)
    }
    fn set_probe(&mut self, id: &ProbeId, enabled: bool) -> Result<bool, String> {
        Dataplane::set_probe(self, id, enabled).map_err(|e| chain(&e))
    }
    fn restore_probe(&mut self, id: &ProbeId, enabled: bool) {
        Dataplane::restore_probe(self, id, enabled)
    }
    fn present(&self, id: &ProbeId) -> bool {
        id.kind == ProbeKind::Trace || self.attachments().any(|a| a.name == id.attach)
    }
    fn trace_attached(&self) -> bool {
        self.trace_program_id().is_some()
    }
    fn attach_trace(&mut self) -> Result<(), String> {
        Dataplane::attach_trace(self).map_err(|e| chain(&e))
    }
    fn take_trace_seed(&mut self) -> Option<TraceSeed> {
        Dataplane::take_trace_seed(self)
    }
}

/// In-memory hooks for tests: interfaces "attach" by name, probes toggle,
/// and the tracer attaches, all without a kernel. `fail_attach` makes the
/// next XDP attach or enable fail, as another owner's program would.
#[cfg(any(test, feature = "test-support"))]
#[derive(Default)]
pub struct MemHooks {
    pub attached: BTreeMap<u32, String>,
    pub failed: BTreeMap<u32, (String, String)>,
    pub disabled: BTreeSet<ProbeId>,
    pub trace: bool,
    pub fail_attach: Option<String>,
}

#[cfg(any(test, feature = "test-support"))]
impl MemHooks {
    fn wants(&self, kind: ProbeKind, attach: &str) -> bool {
        !self.disabled.contains(&ProbeId::new(kind, attach))
    }

    fn probe(id: &ProbeId, state: &str) -> Probe {
        Probe {
            id: id.to_string(),
            kind: id.kind.as_str().into(),
            attach: id.attach.clone(),
            program: String::new(),
            prog_id: None,
            owner: "sluice".into(),
            mode: None,
            state: state.into(),
            error: None,
            run_count: 0,
            run_time_ns: 0,
            container: None,
            ifindex: None,
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
fn state_str(s: &str) -> &'static str {
    match s {
        "enabled" => "enabled",
        "disabled" => "disabled",
        _ => "failed",
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Hooks for MemHooks {
    fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }
    fn attach(&mut self, ifindex: u32, name: &str) -> Result<(), String> {
        if let Some(why) = self.fail_attach.take() {
            self.failed.insert(ifindex, (name.into(), why.clone()));
            return Err(why);
        }
        self.failed.remove(&ifindex);
        self.attached.insert(ifindex, name.into());
        Ok(())
    }
    fn detach(&mut self, ifindex: u32) {
        self.attached.remove(&ifindex);
        self.failed.remove(&ifindex);
    }
    fn rename(&mut self, ifindex: u32, name: &str) {
        if let Some(n) = self.attached.get_mut(&ifindex) {
            *n = name.into();
        }
    }
    fn forget_failed(&mut self, ifindex: u32) {
        self.failed.remove(&ifindex);
    }
    fn retry_failed(&mut self) -> Vec<(u32, String)> {
        let failed: Vec<(u32, String)> = self.failed.iter().map(|(i, (n, _))| (*i, n.clone())).collect();
        failed
            .into_iter()
            .filter(|(i, n)| Hooks::attach(self, *i, n).is_ok())
            .collect()
    }
    fn prune_unowned(&mut self) -> Vec<u32> {
        Vec::new()
    }
    fn interfaces(&self) -> Vec<IfaceState> {
        self.attached
            .iter()
            .map(|(ifindex, name)| IfaceState {
                name: name.clone(),
                ifindex: *ifindex,
                mode: self.wants(ProbeKind::Xdp, name).then_some(AttachMode::Native),
                adopted: false,
                tc: self.wants(ProbeKind::TcIngress, name) && self.wants(ProbeKind::TcEgress, name),
                disabled: IFACE_KINDS
                    .into_iter()
                    .filter(|k| !self.wants(*k, name))
                    .map(|k| k.as_str().to_string())
                    .collect(),
                errors: BTreeMap::new(),
                container: None,
            })
            .collect()
    }
    fn failed(&self) -> Vec<FailedIface> {
        self.failed
            .iter()
            .map(|(ifindex, (name, why))| FailedIface {
                name: name.clone(),
                ifindex: *ifindex,
                error: why.clone(),
                owner: None,
                container: None,
            })
            .collect()
    }
    fn programs(&self) -> Vec<Program> {
        Vec::new()
    }
    fn probe_ifindexes(&self) -> Vec<u32> {
        self.attached.keys().chain(self.failed.keys()).copied().collect()
    }
    fn foreign(&self, _: &[u32]) -> BTreeMap<u32, NetlinkHooks> {
        BTreeMap::new()
    }
    fn probe_states(&self) -> Vec<(ProbeKind, &'static str)> {
        self.probes(&BTreeMap::new())
            .iter()
            .filter(|p| p.state != "disabled" || self.present(&p.id.parse().expect("own ids parse")))
            .map(|p| {
                (
                    p.id.parse::<ProbeId>().expect("own ids parse").kind,
                    state_str(&p.state),
                )
            })
            .collect()
    }
    fn enable_stats(&self) -> Result<OwnedFd, String> {
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| e.to_string())
    }
    fn probes(&self, _: &BTreeMap<u32, NetlinkHooks>) -> Vec<Probe> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for name in self.attached.values() {
            for k in IFACE_KINDS {
                let id = ProbeId::new(k, name);
                out.push(Self::probe(
                    &id,
                    if self.wants(k, name) { "enabled" } else { "disabled" },
                ));
                seen.insert(id);
            }
        }
        for (name, why) in self.failed.values() {
            let id = ProbeId::new(ProbeKind::Xdp, name);
            let mut p = Self::probe(&id, "failed");
            p.error = Some(why.clone());
            out.push(p);
            seen.insert(id);
        }
        let trace = ProbeId::trace();
        let state = match (self.trace, self.disabled.contains(&trace)) {
            (true, _) => "enabled",
            (false, true) => "disabled",
            (false, false) => "failed",
        };
        out.push(Self::probe(&trace, state));
        seen.insert(trace);
        for id in self.disabled.iter().filter(|id| !seen.contains(*id)) {
            out.push(Self::probe(id, "disabled"));
        }
        out
    }
    fn set_disabled(&mut self, disabled: BTreeSet<ProbeId>) {
        self.disabled = disabled;
    }
    fn set_probe(&mut self, id: &ProbeId, enabled: bool) -> Result<bool, String> {
        if enabled && id.kind == ProbeKind::Xdp {
            if let Some(why) = self.fail_attach.take() {
                return Err(why);
            }
        }
        if enabled {
            self.disabled.remove(id);
        } else {
            self.disabled.insert(id.clone());
        }
        if id.kind == ProbeKind::Trace {
            self.trace = enabled;
        }
        Ok(self.present(id))
    }
    fn restore_probe(&mut self, id: &ProbeId, enabled: bool) {
        let _ = self.set_probe(id, enabled);
    }
    fn present(&self, id: &ProbeId) -> bool {
        id.kind == ProbeKind::Trace || self.attached.values().any(|n| *n == id.attach)
    }
    fn trace_attached(&self) -> bool {
        self.trace
    }
    fn attach_trace(&mut self) -> Result<(), String> {
        self.trace = true;
        Ok(())
    }
    fn take_trace_seed(&mut self) -> Option<TraceSeed> {
        None
    }
}
