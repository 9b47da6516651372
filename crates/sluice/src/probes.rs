//! Probe ids and probe states: `xdp/IFACE`, `tc-ingress/IFACE`,
//! `tc-egress/IFACE` and `trace/inet_sock_set_state` name one program at one
//! attach point. An operator can disable any of them; the set of disabled
//! ids lives in the state database (so it survives restarts) and in the
//! dataplane (which detaches the probe at once and skips it when the
//! interface comes back). This module also asks the kernel, over netlink,
//! which XDP and legacy tc programs sit on an interface, so other owners'
//! programs can be listed next to sluice's own.

use std::{collections::BTreeMap, collections::BTreeSet, fmt, str::FromStr};

use crate::store::{Store, StoreError};

/// The hook a probe runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    Xdp,
    TcIngress,
    TcEgress,
    Trace,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 4] = [
        ProbeKind::Xdp,
        ProbeKind::TcIngress,
        ProbeKind::TcEgress,
        ProbeKind::Trace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Xdp => "xdp",
            ProbeKind::TcIngress => "tc-ingress",
            ProbeKind::TcEgress => "tc-egress",
            ProbeKind::Trace => "trace",
        }
    }
}

/// One program at one attach point.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId {
    pub kind: ProbeKind,
    /// Interface name, or the tracepoint for `trace`.
    pub attach: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("probe id {id:?}: {why}")]
pub struct ProbeIdError {
    pub id: String,
    pub why: String,
}

impl FromStr for ProbeId {
    type Err = ProbeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| ProbeIdError { id: s.into(), why };
        let (kind, attach) = s
            .split_once('/')
            .ok_or_else(|| bad("expected KIND/ATTACH, e.g. xdp/veth1a2b or trace/inet_sock_set_state".into()))?;
        let kind = ProbeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| bad(format!("unknown kind {kind:?}: xdp, tc-ingress, tc-egress or trace")))?;
        if kind == ProbeKind::Trace {
            if attach != sluice_abi::trace::TRACEPOINT {
                return Err(bad(format!(
                    "the only trace probe is trace/{}",
                    sluice_abi::trace::TRACEPOINT
                )));
            }
        } else if attach.contains('/') && attach.split_once('/').is_some_and(|(_, f)| f.starts_with("foreign-")) {
            return Err(bad(
                "other owners' programs cannot be enabled or disabled by sluice".into()
            ));
        } else {
            crate::nat::check_ifname(attach).map_err(|e| bad(e.to_string()))?;
        }
        Ok(ProbeId {
            kind,
            attach: attach.into(),
        })
    }
}

impl fmt::Display for ProbeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.attach)
    }
}

impl ProbeId {
    pub fn new(kind: ProbeKind, attach: &str) -> Self {
        ProbeId {
            kind,
            attach: attach.into(),
        }
    }

    pub fn trace() -> Self {
        Self::new(ProbeKind::Trace, sluice_abi::trace::TRACEPOINT)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetProbeError {
    /// The kernel refused (e.g. another owner's program holds the hook).
    #[error("{0}")]
    Kernel(String),
    /// The store failed and putting the kernel back failed too: the two
    /// disagree until the next change or restart.
    #[error("{0}")]
    Partial(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The persisted set of disabled probes.
pub struct ProbeStates {
    store: Store,
    disabled: BTreeSet<ProbeId>,
}

impl ProbeStates {
    /// Loads the disabled set; a row that is not a valid id is an error (the
    /// database was edited by hand or by a newer sluice).
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let mut disabled = BTreeSet::new();
        for id in store.disabled_probes()? {
            let p = id
                .parse::<ProbeId>()
                .map_err(|e| StoreError::Foreign(format!("the probes table holds an invalid {e}")))?;
            disabled.insert(p);
        }
        Ok(ProbeStates { store, disabled })
    }

    pub fn disabled(&self) -> &BTreeSet<ProbeId> {
        &self.disabled
    }

    pub fn is_enabled(&self, id: &ProbeId) -> bool {
        !self.disabled.contains(id)
    }

    /// Changes a probe's state in the kernel (if there is one), then in the
    /// store; a store failure puts the kernel back, so the two never
    /// disagree. Returns whether the attach point exists now.
    pub fn apply(
        &mut self,
        dp: Option<&std::sync::Mutex<crate::dataplane::Dataplane>>,
        id: &ProbeId,
        enabled: bool,
    ) -> Result<bool, SetProbeError> {
        let present = match dp {
            Some(dp) => dp
                .lock()
                .unwrap()
                .set_probe(id, enabled)
                .map_err(|e| SetProbeError::Kernel(format!("{id}: {}", crate::dataplane::chain(&e))))?,
            None => false,
        };
        if let Err(e) = self.set(id, enabled) {
            if let Some(dp) = dp {
                if let Err(back) = dp.lock().unwrap().set_probe(id, !enabled) {
                    return Err(SetProbeError::Partial(format!(
                        "{id}: storing the state failed ({e}) and so did putting the kernel back ({}); \
                         the kernel now has it {}",
                        crate::dataplane::chain(&back),
                        if enabled { "enabled" } else { "disabled" }
                    )));
                }
            }
            return Err(SetProbeError::Store(e));
        }
        tracing::info!(probe = %id, enabled, present, "probe state changed");
        Ok(present)
    }

    /// Puts a probe state back (a policy's undo), in the kernel and the
    /// store. Unlike [`ProbeStates::apply`] a hook that cannot attach is not
    /// an error: it is left failed, as it would be after a restart.
    pub fn restore(
        &mut self,
        dp: Option<&std::sync::Mutex<crate::dataplane::Dataplane>>,
        id: &ProbeId,
        enabled: bool,
    ) -> Result<(), StoreError> {
        if let Some(dp) = dp {
            dp.lock().unwrap().restore_probe(id, enabled);
        }
        self.set(id, enabled).map(drop)
    }

    /// Records a state; returns false if it already was so.
    pub fn set(&mut self, id: &ProbeId, enabled: bool) -> Result<bool, StoreError> {
        if self.is_enabled(id) == enabled {
            return Ok(false);
        }
        self.store.set_probe_enabled(&id.to_string(), enabled)?;
        if enabled {
            self.disabled.remove(id);
        } else {
            self.disabled.insert(id.clone());
        }
        Ok(true)
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

    #[test]
    fn ids_round_trip_and_bad_ids_say_why() {
        for s in [
            "xdp/veth1a2b",
            "tc-ingress/eth0",
            "tc-egress/v",
            "trace/inet_sock_set_state",
        ] {
            assert_eq!(s.parse::<ProbeId>().unwrap().to_string(), s);
        }
        for (s, why) in [
            ("xdp", "expected KIND/ATTACH"),
            ("kprobe/x", "unknown kind"),
            ("xdp/", "not a valid interface name"),
            ("xdp/..", "not a valid interface name"),
            ("xdp/a/b", "not a valid interface name"),
            ("xdp/a b", "not a valid interface name"),
            ("xdp/a\0", "not a valid interface name"),
            ("xdp/abcdefghijklmnop", "not a valid interface name"),
            ("trace/sys_enter", "the only trace probe"),
            ("tc-ingress/veth1/foreign-12", "other owners"),
        ] {
            let e = s.parse::<ProbeId>().unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn states_persist_and_report_changes() {
        let dir = tempfile::tempdir().unwrap();
        let id: ProbeId = "xdp/veth9".parse().unwrap();
        {
            let mut st = ProbeStates::open(Store::open(dir.path()).unwrap()).unwrap();
            assert!(st.is_enabled(&id));
            assert!(st.set(&id, false).unwrap());
            assert!(!st.set(&id, false).unwrap(), "already disabled");
        }
        let mut st = ProbeStates::open(Store::open(dir.path()).unwrap()).unwrap();
        assert!(!st.is_enabled(&id), "disabled state survives reopening");
        assert!(st.set(&id, true).unwrap());
        let st = ProbeStates::open(Store::open(dir.path()).unwrap()).unwrap();
        assert!(st.disabled().is_empty());
    }
}
