//! Probe states: an operator can disable any probe (`xdp/IFACE`,
//! `tc-ingress/IFACE`, `tc-egress/IFACE`, `trace/inet_sock_set_state`). The
//! set of disabled ids lives in the state database, so it survives
//! restarts, and in the dataplane, which detaches the probe at once and
//! skips it when the interface comes back. Every change goes to the kernel
//! first, then to the store; a store failure puts the kernel back, so the
//! two never disagree. Also the probes' part in a policy.

use std::{collections::BTreeSet, sync::MutexGuard};

use super::hooks::Hooks;
use crate::{
    dataplane::{ProbeId, ProbeKind},
    model::plan::{Part, PolicyDiff, StepError},
    store::{Store, StoreError},
};

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

/// What a probe state change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeChange {
    /// False if the state was already so.
    pub changed: bool,
    /// False if the attach point does not exist now: the state applies
    /// when it appears.
    pub present: bool,
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

    /// Sets one probe's state, at once and persisted. Setting the state it
    /// already has changes nothing, except that enabling a probe that
    /// failed to attach tries again.
    pub fn set_state(
        &mut self,
        hooks: &mut dyn Hooks,
        id: &ProbeId,
        enabled: bool,
    ) -> Result<ProbeChange, SetProbeError> {
        if self.is_enabled(id) == enabled {
            let present = if enabled {
                hooks
                    .set_probe(id, true)
                    .map_err(|e| SetProbeError::Kernel(format!("{id}: {e}")))?
            } else {
                hooks.present(id)
            };
            return Ok(ProbeChange {
                changed: false,
                present,
            });
        }
        let present = self.apply(hooks, id, enabled)?;
        Ok(ProbeChange { changed: true, present })
    }

    /// Changes a probe's state in the kernel, then in the store; a store
    /// failure puts the kernel back, so the two never disagree. Returns
    /// whether the attach point exists now.
    fn apply(&mut self, hooks: &mut dyn Hooks, id: &ProbeId, enabled: bool) -> Result<bool, SetProbeError> {
        let present = hooks
            .set_probe(id, enabled)
            .map_err(|e| SetProbeError::Kernel(format!("{id}: {e}")))?;
        if let Err(e) = self.set(id, enabled) {
            if let Err(back) = hooks.set_probe(id, !enabled) {
                return Err(SetProbeError::Partial(format!(
                    "{id}: storing the state failed ({e}) and so did putting the kernel back ({back}); \
                     the kernel now has it {}",
                    if enabled { "enabled" } else { "disabled" }
                )));
            }
            return Err(SetProbeError::Store(e));
        }
        tracing::info!(probe = %id, enabled, present, "probe state changed");
        Ok(present)
    }

    /// Puts a probe state back (a policy's undo), in the kernel and the
    /// store. Unlike [`ProbeStates::set_state`] a hook that cannot attach is
    /// not an error: it is left failed, as it would be after a restart.
    fn restore(&mut self, hooks: &mut dyn Hooks, id: &ProbeId, enabled: bool) -> Result<(), StoreError> {
        hooks.restore_probe(id, enabled);
        self.set(id, enabled).map(drop)
    }

    /// Records a state; returns false if it already was so.
    fn set(&mut self, id: &ProbeId, enabled: bool) -> Result<bool, StoreError> {
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

/// What the probes' part of a policy needs: the states and the hooks.
pub trait ProbeCx {
    /// The states, and the hooks locked for one change.
    fn parts(&mut self) -> (&mut ProbeStates, MutexGuard<'_, dyn Hooks + 'static>);
}

/// The probes' share of a policy: the listed probes disabled, every other
/// one enabled. Disables run first: disabling an XDP probe can let an
/// interface attach that an enable of its tc probes then finds.
pub struct ProbePlan {
    changes: Vec<(ProbeId, bool)>,
    unchanged: usize,
    done: Vec<(ProbeId, bool)>,
}

/// Validates `disabled` (`probes.disabled[N]: why`). Runs before any lock
/// is taken.
pub fn validate(disabled: &[String]) -> Result<BTreeSet<ProbeId>, String> {
    let mut want = BTreeSet::new();
    for (i, id) in disabled.iter().enumerate() {
        let at = |e: &dyn std::fmt::Display| format!("probes.disabled[{}]: {e}", i + 1);
        let id: ProbeId = id.parse().map_err(|e| at(&e))?;
        if !want.insert(id.clone()) {
            return Err(at(&format!("{id} is listed twice")));
        }
    }
    Ok(want)
}

/// Plans making the disabled probes equal to `want` (validated).
pub fn plan(states: &ProbeStates, want: BTreeSet<ProbeId>) -> ProbePlan {
    let mut changes: Vec<(ProbeId, bool)> = want
        .difference(states.disabled())
        .map(|id| (id.clone(), false))
        .collect();
    changes.extend(states.disabled().difference(&want).map(|id| (id.clone(), true)));
    ProbePlan {
        changes,
        unchanged: want.intersection(states.disabled()).count(),
        done: Vec::new(),
    }
}

/// The disabled probes as the `probes.disabled` section.
pub fn export(states: &ProbeStates) -> Vec<String> {
    states.disabled().iter().map(ProbeId::to_string).collect()
}

impl<Cx: ProbeCx> Part<Cx> for ProbePlan {
    fn diff(&self, d: &mut PolicyDiff) {
        for (id, enabled) in &self.changes {
            d.changed
                .push(format!("probe {id} {}", if *enabled { "enabled" } else { "disabled" }));
        }
        d.unchanged += self.unchanged;
    }

    fn grow(&mut self, cx: &mut Cx) -> Result<(), StepError> {
        for (id, enabled) in std::mem::take(&mut self.changes) {
            let (states, mut hooks) = cx.parts();
            match states.apply(&mut *hooks, &id, enabled) {
                Ok(_) => self.done.push((id, !enabled)),
                Err(SetProbeError::Partial(m)) => return Err(StepError::Partial(m)),
                Err(e) => return Err(StepError::Failed(e.to_string())),
            }
        }
        Ok(())
    }

    fn prune(&mut self, _: &mut Cx) -> Result<(), StepError> {
        Ok(())
    }

    fn steps(&self) -> usize {
        self.done.len()
    }

    fn undo_last(&mut self, cx: &mut Cx) -> Result<(), String> {
        let Some((id, enabled)) = self.done.pop() else {
            return Ok(());
        };
        let (states, mut hooks) = cx.parts();
        states.restore(&mut *hooks, &id, enabled).map_err(|e| e.to_string())
    }
}

/// True if changing `id` may attach or detach the connection tracer.
pub fn is_trace(id: &ProbeId) -> bool {
    id.kind == ProbeKind::Trace
}

#[cfg(test)]
mod tests {
    use super::*;

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

#[cfg(test)]
mod set_state {
    use super::*;
    use crate::control::hooks::MemHooks;

    #[test]
    fn kernel_first_and_a_refusal_changes_nothing() {
        let mut st = ProbeStates::open(Store::in_memory().unwrap()).unwrap();
        let mut hooks = MemHooks::default();
        hooks.attach(3, "veth3").unwrap();
        let id: ProbeId = "xdp/veth3".parse().unwrap();
        let c = st.set_state(&mut hooks, &id, false).unwrap();
        assert_eq!(
            c,
            ProbeChange {
                changed: true,
                present: true
            }
        );
        assert!(hooks.disabled.contains(&id));
        assert!(!st.set_state(&mut hooks, &id, false).unwrap().changed);
        hooks.fail_attach = Some("another program holds the hook".into());
        let e = st.set_state(&mut hooks, &id, true).unwrap_err();
        assert!(e.to_string().contains("another program"), "{e}");
        assert!(!st.is_enabled(&id), "the store still says disabled");
    }
}
