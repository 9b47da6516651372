//! The daemon's state and the operations that span capabilities.
//!
//! [`Ctl`] holds every capability's controller behind its own lock, the
//! [`hooks`] of the dataplane, the event hub and the L7 log. [`policy`]
//! applies a whole rule set by composing each capability's part;
//! [`probes`] keeps probe states; [`watch`] follows interfaces as they come
//! and go; [`resolve`] makes selector rules follow their containers. The
//! API is a thin HTTP layer over this.

pub mod hooks;
pub mod policy;
pub mod probes;
pub mod resolve;
pub mod watch;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use hooks::SharedHooks;
use probes::{ProbeChange, ProbeStates, SetProbeError};

use crate::{
    containers::Registry,
    dataplane::ProbeId,
    firewall::Firewall,
    forward::Forwarder,
    limits::Limiter,
    sys::time::{monotonic_ns, rfc3339_now},
    visibility::{
        l7::{L7Log, L7Metrics},
        tables::EventTables,
        Hub, RuleNames,
    },
};

/// What the API handlers share: the daemon's state.
pub struct Ctl {
    pub fw: Mutex<Firewall>,
    pub limits: Mutex<Limiter>,
    /// Forward and redirect rules.
    pub forward: Mutex<Forwarder>,
    /// Disabled probes, persisted.
    pub probes: Mutex<ProbeStates>,
    /// The attach side of the dataplane.
    pub hooks: SharedHooks,
    /// Lost-event and per-interface counters in the kernel.
    pub events: Mutex<Box<dyn EventTables>>,
    pub hub: Arc<Hub>,
    /// The L7 audit log (None: L7 capture is off).
    pub l7: Option<Arc<L7Log>>,
    pub l7_metrics: L7Metrics,
    /// API requests by (route, status), for /metrics.
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Set to true when the daemon stops: ends every event stream, so a
    /// graceful shutdown never waits on a following client.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub started: Instant,
    /// Held while kernel BPF run statistics are on (`sluice probes stats on`).
    pub probe_stats: Mutex<Option<std::os::fd::OwnedFd>>,
    pub interface_globs: Vec<String>,
    pub pin_dir: String,
    pub state_dir: String,
    /// The containers on this host.
    pub containers: Arc<Registry>,
}

impl Ctl {
    /// Brings the connection table in line with the tracer after it was
    /// attached or detached: seeded from the /proc scan its attach made, or
    /// emptied of open connections nobody follows any more.
    pub fn sync_conn_table(&self) {
        // The table is changed under the hooks' lock, so a concurrent
        // enable and disable cannot apply their changes out of order.
        let mut hooks = self.hooks.lock().unwrap();
        let (seed, attached) = (hooks.take_trace_seed(), hooks.trace_attached());
        let mut table = self.hub.conns.lock().unwrap();
        if !attached {
            table.forget_open(monotonic_ns());
        } else if let Some((found, since)) = seed {
            table.seed(&found, &rfc3339_now(), since);
        }
    }

    /// Enables or disables one probe, persisted, taking effect at once.
    pub fn set_probe(&self, id: &ProbeId, enabled: bool) -> Result<ProbeChange, SetProbeError> {
        let r = {
            let mut states = self.probes.lock().unwrap();
            let mut hooks = self.hooks.lock().unwrap();
            states.set_state(&mut *hooks, id, enabled)
        };
        if probes::is_trace(id) {
            self.sync_conn_table();
        }
        r
    }

    /// A control block with in-memory doubles for every kernel seam and
    /// store (tests).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_doubles(fw: Firewall, limits: Limiter, hub: Arc<Hub>) -> Self {
        use crate::{forward::tables::MemForwardTables, store::Store, visibility::tables::MemEventTables};
        let store = || Store::in_memory().expect("an in-memory store");
        let forward = Forwarder::open(store(), Box::<MemForwardTables>::default())
            .expect("an empty rule set")
            .0;
        Ctl {
            fw: Mutex::new(fw),
            limits: Mutex::new(limits),
            forward: Mutex::new(forward),
            probes: Mutex::new(ProbeStates::open(store()).expect("no probe states")),
            hooks: Arc::new(Mutex::new(hooks::MemHooks::default())),
            events: Mutex::new(Box::<MemEventTables>::default()),
            hub,
            l7: None,
            l7_metrics: L7Metrics::default(),
            requests: Mutex::new(Default::default()),
            shutdown: tokio::sync::watch::channel(false).0,
            started: Instant::now(),
            probe_stats: Mutex::new(None),
            interface_globs: Vec::new(),
            pin_dir: String::new(),
            state_dir: String::new(),
            containers: Registry::new(Arc::new(crate::containers::host::NoHost)),
        }
    }
}

/// Drop events name their rule through the controllers.
impl RuleNames for Ctl {
    fn name(&self, rule_kind: u8, slot: u32) -> Option<(i64, String)> {
        // try_lock: the ring reader must never wait behind a long rule
        // change; an event decoded meanwhile names the rule kind, not its id.
        if rule_kind == sluice_abi::ev::RULE_LIMIT {
            let l = self.limits.try_lock().ok()?;
            let r = l.by_slot(slot as u16)?;
            Some((
                r.id,
                format!("limit {} {} {}", r.spec.m, r.spec.rate, r.spec.kind.as_str()),
            ))
        } else {
            let f = self.fw.try_lock().ok()?;
            let r = f.rule_by_slot(slot)?;
            Some((r.id, r.spec.key().describe()))
        }
    }
}
