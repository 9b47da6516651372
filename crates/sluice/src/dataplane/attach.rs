//! Attaching the probes to an interface: the XDP firewall (native mode where
//! the driver has it, else generic) and the two tcx programs, each link
//! pinned so enforcement outlives the daemon. A new daemon adopts the links
//! an earlier one pinned by swapping its freshly loaded program into them
//! (`BPF_LINK_UPDATE`), so there is never a moment with no program, nor two.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{links::FdLink, links::PinnedLink, SchedClassifier, TcAttachType, Xdp, XdpMode};
use sluice_abi::xdp as names;

use super::{
    pins::{pinned_links, tc_pins, unpin},
    probe::{AttachMode, ProbeId, ProbeKind},
    Dataplane, DataplaneError, HookOwner,
};
use crate::{model::chain, sys::iface::ifname};

/// The XDP link on one interface.
#[derive(Debug)]
struct XdpHook {
    mode: AttachMode,
    pin: PathBuf,
    _link: FdLink,
}

/// One tcx link (ingress or egress) on one interface.
#[derive(Debug)]
struct TcHook {
    kind: ProbeKind,
    pin: PathBuf,
    _link: FdLink,
}

/// A matching interface this daemon could not attach to, and who holds
/// the hook if someone does.
#[derive(Clone, Debug)]
pub struct Failed {
    pub name: String,
    pub why: String,
    pub owner: Option<HookOwner>,
}

/// One managed interface and the probes attached to it. A disabled probe
/// (`sluice probes disable xdp/IFACE`) has no link here.
#[derive(Debug)]
pub struct Attachment {
    pub ifindex: u32,
    pub name: String,
    /// True if this daemon adopted a link pinned by an earlier one.
    pub adopted: bool,
    xdp: Option<XdpHook>,
    tc_links: Vec<TcHook>,
    /// Why an enabled probe is not attached here (e.g. no tcx on this
    /// kernel), by kind.
    errors: BTreeMap<ProbeKind, String>,
}

impl Attachment {
    /// Why the enabled probe `kind` is not attached here, if it failed.
    pub fn error(&self, kind: ProbeKind) -> Option<&str> {
        self.errors.get(&kind).map(String::as_str)
    }

    /// How the XDP firewall runs here; None while `xdp/NAME` is disabled.
    pub fn mode(&self) -> Option<AttachMode> {
        self.xdp.as_ref().map(|x| x.mode)
    }

    /// True if both TC programs (forward, redirect) are attached.
    pub fn tc(&self) -> bool {
        self.tc_links.len() == 2
    }

    /// True if the probe of this kind is attached here.
    pub fn has(&self, kind: ProbeKind) -> bool {
        match kind {
            ProbeKind::Xdp => self.xdp.is_some(),
            k => self.tc_links.iter().any(|h| h.kind == k),
        }
    }

    fn pins(&self) -> impl Iterator<Item = &PathBuf> {
        self.xdp
            .iter()
            .map(|x| &x.pin)
            .chain(self.tc_links.iter().map(|h| &h.pin))
    }
}

impl Dataplane {
    /// Sets the disabled set before anything is attached (daemon start).
    pub fn set_disabled(&mut self, disabled: BTreeSet<ProbeId>) {
        self.disabled = disabled;
    }

    /// True unless the operator disabled this probe.
    pub fn wants(&self, kind: ProbeKind, attach: &str) -> bool {
        !self.disabled.contains(&ProbeId::new(kind, attach))
    }

    /// Enables or disables one probe, at once: the link is detached and
    /// unpinned, or attached (a fresh link); only that probe's hook is
    /// touched. Enabling a probe that is already enabled retries attaching
    /// it if it failed. Returns whether the probe's attach point exists now
    /// (a probe of an absent interface takes effect when the interface
    /// appears). On failure the previous state is restored.
    pub fn set_probe(&mut self, id: &ProbeId, enabled: bool) -> Result<bool, DataplaneError> {
        let before = self.disabled.clone();
        if enabled {
            self.disabled.remove(id);
        } else {
            self.disabled.insert(id.clone());
        }
        let attached = |dp: &Self| dp.attached.values().find(|a| a.name == id.attach).map(|a| a.ifindex);
        let failed = |dp: &Self| dp.failed.iter().find(|(_, f)| f.name == id.attach).map(|(i, _)| *i);
        let r = match id.kind {
            ProbeKind::Trace => {
                if enabled && self.trace.is_none() {
                    self.attach_trace().map(|_| true)
                } else {
                    if !enabled {
                        self.trace = None;
                        self.trace_seed = None;
                    }
                    Ok(true)
                }
            }
            kind => match (attached(self), failed(self)) {
                (Some(ifindex), _) => self.sync_kind(ifindex, kind).map(|_| true),
                // Not managed because its XDP hook failed: an XDP change
                // tries again (a disabled XDP probe no longer needs the
                // hook); a tc change is recorded and applies once it is.
                (None, Some(ifindex)) if kind == ProbeKind::Xdp => {
                    let name = id.attach.clone();
                    self.attach(ifindex, &name).map(|_| true)
                }
                (None, Some(_)) => Ok(false),
                (None, None) => Ok(false),
            },
        };
        if r.is_err() {
            self.disabled = before;
            if let Some(ifindex) = attached(self) {
                let _ = self.sync_kind(ifindex, id.kind);
            }
        }
        r
    }

    /// Puts a probe state back without failing: as [`Dataplane::set_probe`],
    /// but an XDP probe that cannot attach leaves its interface unmanaged
    /// and failed, and a tc or trace probe is left failed, as after a
    /// restart with this state.
    pub fn restore_probe(&mut self, id: &ProbeId, enabled: bool) {
        let Err(e) = self.set_probe(id, enabled) else {
            return;
        };
        if enabled {
            self.disabled.remove(id);
        } else {
            self.disabled.insert(id.clone());
        }
        let Some(ifindex) = self.attached.values().find(|a| a.name == id.attach).map(|a| a.ifindex) else {
            return;
        };
        if id.kind == ProbeKind::Xdp {
            self.detach(ifindex);
            let owner = self.xdp_owner(ifindex);
            self.failed.insert(
                ifindex,
                Failed {
                    name: id.attach.clone(),
                    why: chain(&e),
                    owner,
                },
            );
        } else {
            let _ = self.sync_kind(ifindex, id.kind);
        }
    }

    /// Kernel id of the loaded XDP program.
    pub fn program_id(&self) -> Option<u32> {
        let p: &Xdp = self.ebpf.program(names::PROGRAM)?.try_into().ok()?;
        p.info().ok().map(|i| i.id())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    /// Pinned XDP links left in the pin directory: (ifindex, mode, path).
    pub fn pinned_links(&self) -> Vec<(u32, AttachMode, PathBuf)> {
        pinned_links(&self.links_dir())
    }

    /// Attaches the enabled probes to `ifindex`, adopting the links an
    /// earlier daemon pinned there by atomically swapping this daemon's
    /// programs into them. An interface another sluice daemon manages (its
    /// programs on the XDP or tcx hooks, and no link of ours pinned there)
    /// is left to it. An XDP failure (e.g. another owner's program on the
    /// hook: sluice never replaces one) leaves the interface unmanaged; both
    /// are recorded with the hook's owner ([`Dataplane::failed`]) and tried
    /// again by [`Dataplane::retry_failed`].
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<&Attachment, DataplaneError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(&self.attached[&ifindex]);
        }
        let ours = self.pinned_links().iter().any(|(i, _, _)| *i == ifindex)
            || tc_pins(&self.links_dir()).iter().any(|(i, _)| *i == ifindex);
        if !ours {
            if let Some(owner) = self.other_sluice(ifindex, name) {
                let e = DataplaneError::OtherDaemon {
                    name: name.into(),
                    owner: owner.to_string(),
                };
                let failed = Failed {
                    name: name.into(),
                    why: chain(&e),
                    owner: Some(owner),
                };
                self.failed.insert(ifindex, failed);
                return Err(e);
            }
        }
        let mut att = Attachment {
            ifindex,
            name: name.into(),
            adopted: false,
            xdp: None,
            tc_links: Vec::new(),
            errors: BTreeMap::new(),
        };
        if let Err(e) = self.sync_xdp(&mut att) {
            let owner = self.xdp_owner(ifindex);
            let failed = Failed {
                name: name.into(),
                why: chain(&e),
                owner,
            };
            self.failed.insert(ifindex, failed);
            return Err(e);
        }
        self.failed.remove(&ifindex);
        if let Err(e) = self.sync_tc(&mut att, None) {
            tracing::warn!(ifindex, name, error = %chain(&e), "TC programs not attached: forwards and redirects will not apply here");
        }
        tracing::info!(ifindex, name, mode = ?att.mode(), adopted = att.adopted, tc = att.tc(), "attached");
        Ok(self.attached.entry(ifindex).or_insert(att))
    }

    /// Makes an attachment's links match the enabled probes of its name
    /// (after a rename); failures are recorded per hook, not returned.
    fn sync(&mut self, ifindex: u32) {
        let Some(mut att) = self.attached.remove(&ifindex) else {
            return;
        };
        let _ = self.sync_xdp(&mut att);
        let _ = self.sync_tc(&mut att, None);
        self.attached.insert(ifindex, att);
    }

    /// Makes one hook of an attachment match its probe's state.
    fn sync_kind(&mut self, ifindex: u32, kind: ProbeKind) -> Result<(), DataplaneError> {
        let Some(mut att) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        let r = match kind {
            ProbeKind::Xdp => self.sync_xdp(&mut att),
            k => self.sync_tc(&mut att, Some(k)),
        };
        self.attached.insert(ifindex, att);
        r
    }

    fn sync_xdp(&mut self, att: &mut Attachment) -> Result<(), DataplaneError> {
        let r = self.sync_xdp_inner(att);
        match &r {
            Err(e) => att.errors.insert(ProbeKind::Xdp, chain(e)),
            Ok(()) => att.errors.remove(&ProbeKind::Xdp),
        };
        r
    }

    fn sync_xdp_inner(&mut self, att: &mut Attachment) -> Result<(), DataplaneError> {
        let want = self.wants(ProbeKind::Xdp, &att.name);
        if !want {
            if let Some(h) = att.xdp.take() {
                unpin(&h.pin);
                tracing::info!(ifindex = att.ifindex, name = %att.name, "XDP firewall disabled here");
            }
            // A link an earlier daemon pinned would keep the program running.
            for (_, _, pin) in self.pinned_links().into_iter().filter(|(i, _, _)| *i == att.ifindex) {
                unpin(&pin);
            }
            return Ok(());
        }
        if att.xdp.is_some() {
            return Ok(());
        }
        let pinned = self.pinned_links().into_iter().find(|(i, _, _)| *i == att.ifindex);
        let hook = match pinned {
            Some((_, mode, pin)) => match self.adopt(&pin) {
                Ok(link) => {
                    att.adopted = true;
                    XdpHook { mode, pin, _link: link }
                }
                Err(e) => {
                    // A stale pin (interface recreated with the same index, or
                    // a link the kernel already tore down): replace it.
                    tracing::warn!(ifindex = att.ifindex, name = %att.name, error = %e, "pinned link unusable, attaching afresh");
                    let _ = fs::remove_file(&pin);
                    self.attach_new(att.ifindex, &att.name)?
                }
            },
            None => self.attach_new(att.ifindex, &att.name)?,
        };
        att.xdp = Some(hook);
        Ok(())
    }

    /// Attaches (or adopts the pinned links of) the enabled TC programs,
    /// tcx ingress and egress, each pinned like the XDP link; detaches the
    /// disabled ones. The hooks attached by one call are all or nothing: one
    /// without the other would leave a program running that status reports
    /// as absent.
    fn sync_tc(&mut self, att: &mut Attachment, only: Option<ProbeKind>) -> Result<(), DataplaneError> {
        let r = self.sync_tc_inner(att, only);
        for kind in [ProbeKind::TcIngress, ProbeKind::TcEgress] {
            if only.is_some_and(|o| o != kind) {
                continue;
            }
            match &r {
                Err(e) if self.wants(kind, &att.name) && !att.has(kind) => {
                    att.errors.insert(kind, chain(e));
                }
                _ => {
                    att.errors.remove(&kind);
                }
            }
        }
        r
    }

    fn sync_tc_inner(&mut self, att: &mut Attachment, only: Option<ProbeKind>) -> Result<(), DataplaneError> {
        let mut added = Vec::new();
        for (kind, tag) in [(ProbeKind::TcIngress, "in"), (ProbeKind::TcEgress, "out")] {
            if only.is_some_and(|o| o != kind) {
                continue;
            }
            let want = self.wants(kind, &att.name);
            if !want {
                if let Some(i) = att.tc_links.iter().position(|h| h.kind == kind) {
                    unpin(&att.tc_links.remove(i).pin);
                    tracing::info!(ifindex = att.ifindex, name = %att.name, probe = kind.as_str(), "TC program disabled here");
                }
                unpin(&self.links_dir().join(format!("tcx_{tag}_{}", att.ifindex)));
                continue;
            }
            if att.has(kind) {
                continue;
            }
            match self.attach_tc_hook(att.ifindex, kind, tag) {
                Ok(h) => added.push(h),
                Err(e) => {
                    for h in added {
                        unpin(&h.pin);
                    }
                    return Err(e);
                }
            }
        }
        att.tc_links.extend(added);
        Ok(())
    }

    fn attach_tc_hook(&mut self, ifindex: u32, kind: ProbeKind, tag: &str) -> Result<TcHook, DataplaneError> {
        let (prog_name, ty) = match kind {
            ProbeKind::TcIngress => (sluice_abi::tc::INGRESS, TcAttachType::Ingress),
            _ => (sluice_abi::tc::EGRESS, TcAttachType::Egress),
        };
        let pin = self.links_dir().join(format!("tcx_{tag}_{ifindex}"));
        let prog: &mut SchedClassifier = self
            .tc
            .program_mut(prog_name)
            .ok_or(DataplaneError::Missing(prog_name))?
            .try_into()?;
        let adopted = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = aya::programs::tc::SchedClassifierLink::try_from(FdLink::from(old))?;
                match prog.attach_to_link(link) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!(ifindex, error = %e, "pinned tcx link unusable, attaching afresh");
                        let _ = fs::remove_file(&pin);
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let (id, fresh) = match adopted {
            Some(id) => (id, false),
            None => {
                let name = ifname(ifindex).ok_or(DataplaneError::Missing("interface"))?;
                let id = prog.attach_with_options(
                    &name,
                    ty,
                    aya::programs::tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::default()),
                )?;
                (id, true)
            }
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        let link = if fresh { link.pin(&pin)?.into() } else { link };
        Ok(TcHook { kind, pin, _link: link })
    }

    fn adopt(&mut self, pin: &Path) -> Result<FdLink, DataplaneError> {
        let link: FdLink = PinnedLink::from_pin(pin)?.into();
        let xdp_link = aya::programs::xdp::XdpLink::try_from(link)?;
        let prog = self.xdp();
        let id = prog.attach_to_link(xdp_link)?;
        let link = prog.take_link(id)?;
        Ok(FdLink::try_from(link)?)
    }

    fn attach_new(&mut self, ifindex: u32, name: &str) -> Result<XdpHook, DataplaneError> {
        let prog = self.xdp();
        let (id, mode) = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native) => match prog.attach_to_if_index(ifindex, XdpMode::Skb) {
                Ok(id) => (id, AttachMode::Generic),
                Err(generic) => {
                    return Err(DataplaneError::Attach {
                        name: name.into(),
                        native: chain(&native),
                        generic: chain(&generic),
                    })
                }
            },
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        let pin = self.links_dir().join(format!("xdp_{ifindex}_{}", mode.tag()));
        let link: FdLink = link.pin(&pin)?.into();
        Ok(XdpHook { mode, pin, _link: link })
    }

    /// Detaches from `ifindex` (unpins and closes the links). Returns the
    /// attachment that was removed, if any.
    pub fn detach(&mut self, ifindex: u32) -> Option<Attachment> {
        self.failed.remove(&ifindex);
        let att = self.attached.remove(&ifindex)?;
        for pin in att.pins() {
            unpin(pin);
        }
        tracing::info!(ifindex, name = %att.name, "detached");
        Some(att)
    }

    /// Removes pinned links this daemon did not attach or adopt, e.g. for
    /// interfaces that vanished or no longer match the configured globs.
    pub fn prune_unowned(&mut self) -> Vec<u32> {
        let mut gone = Vec::new();
        for (ifindex, _, pin) in self.pinned_links() {
            if !self.attached.contains_key(&ifindex) && fs::remove_file(&pin).is_ok() {
                gone.push(ifindex);
            }
        }
        for (ifindex, pin) in tc_pins(&self.links_dir()) {
            if !self.attached.contains_key(&ifindex) {
                let _ = fs::remove_file(&pin);
            }
        }
        gone
    }

    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attached.values()
    }

    /// Forgets an interface that failed to attach (it vanished, or no
    /// longer matches the globs).
    pub fn forget_failed(&mut self, ifindex: u32) {
        self.failed.remove(&ifindex);
    }

    /// Interfaces that matched but could not be attached, by ifindex.
    pub fn failed(&self) -> impl Iterator<Item = (u32, &Failed)> {
        self.failed.iter().map(|(i, f)| (*i, f))
    }

    /// Tries every interface that could not be attached again: the hook's
    /// owner may have let go (another daemon's `sluice down`, a tool that
    /// exited). Returns the interfaces attached now. An interface renamed
    /// meanwhile is left to the watcher, which sees the rename.
    pub fn retry_failed(&mut self) -> Vec<(u32, String)> {
        let failed: Vec<(u32, String)> = self.failed.iter().map(|(i, f)| (*i, f.name.clone())).collect();
        let mut attached = Vec::new();
        for (ifindex, name) in failed {
            if ifname(ifindex).as_deref() != Some(name.as_str()) {
                continue;
            }
            let before = self.failed.get(&ifindex).and_then(|f| f.owner.clone());
            match self.attach(ifindex, &name) {
                Ok(_) => attached.push((ifindex, name)),
                Err(e) => {
                    let now = self.failed.get(&ifindex).and_then(|f| f.owner.clone());
                    if now != before {
                        tracing::warn!(ifindex, name, error = %chain(&e), "still not attached; the hook changed hands");
                    }
                }
            }
        }
        attached
    }

    /// Renames an attachment after an interface rename; probe states follow
    /// the new name.
    pub fn rename(&mut self, ifindex: u32, name: &str) {
        if let Some(a) = self.attached.get_mut(&ifindex) {
            if a.name == name {
                return;
            }
            a.name = name.to_string();
            self.sync(ifindex);
        }
    }
}
