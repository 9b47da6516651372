//! Flow control rules, in the spirit of Alibaba Sentinel but enforced in the
//! kernel: packets/s, bytes/s or new TCP connections/s per rule, with a burst
//! depth, optional per-source buckets and a cold-start warm-up.
//!
//! [`spec`] is the model and the validation of user input; [`kernel`] the
//! math that turns a rule into the kernel's GCRA parameters; [`Limiter`]
//! keeps the store and the kernel rule set equal, like the firewall does for
//! deny/allow, through the [`tables::LimitTables`] seam.

pub mod kernel;
pub mod policy;
pub mod spec;
pub mod tables;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_abi::{LimitCnt, LimitRule, MAX_LIMITS};

pub use kernel::Gcra;
pub use spec::{LimitError, LimitKind, LimitMatch, LimitRequest, LimitSpec};
use tables::LimitTables;

use crate::{
    dataplane::DataplaneError,
    store::{JsonTable, Store, StoreError},
    sys::time::{monotonic_ns, unix_secs},
};

/// A stored limit rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub id: i64,
    /// Index of its bucket and counters in the kernel.
    pub slot: u16,
    pub spec: LimitSpec,
    pub created: i64,
}

/// A rule's counters as shown by `limit list`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStats {
    pub passed: u64,
    pub passed_bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// Per-source rules: buckets currently tracked.
    pub sources: u64,
    /// Per-source rules: buckets evicted from the LRU to make room.
    pub evictions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error(transparent)]
    Invalid(#[from] LimitError),
    #[error("conflicts with limit rule {id} ({what}): same match and kind; delete it first")]
    Conflict { id: i64, what: String },
    #[error("no limit rule with id {0}")]
    NotFound(i64),
    #[error("all {MAX_LIMITS} limit rules are in use")]
    Full,
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Keeps the limit rules in the store and in the kernel equal.
pub struct Limiter {
    store: Store,
    tables: Box<dyn LimitTables>,
    rules: BTreeMap<i64, Limit>,
}

fn publish(tables: &mut dyn LimitTables, rules: &BTreeMap<i64, Limit>) -> Result<(), LimiterError> {
    let list: Vec<LimitRule> = rules.values().map(Limit::to_kernel).collect();
    Ok(tables.publish(&list)?)
}

impl Limiter {
    /// Loads the rules and publishes them to the kernel. Buckets and
    /// counters are left as they are, so a restart neither refills bursts
    /// nor forgets warm-up.
    pub fn open(store: Store, tables: Box<dyn LimitTables>) -> Result<Self, LimiterError> {
        let mut rules = BTreeMap::new();
        for row in store.json_rows(JsonTable::Limits)? {
            let bad = |why: String| StoreError::BadRow { id: row.id, why };
            let spec: LimitSpec = serde_json::from_str(&row.spec).map_err(|e| bad(e.to_string()))?;
            let slot = u16::try_from(row.slot)
                .ok()
                .filter(|s| (*s as u32) < MAX_LIMITS)
                .ok_or_else(|| bad(format!("slot {} out of range", row.slot)))?;
            rules.insert(
                row.id,
                Limit {
                    id: row.id,
                    slot,
                    spec,
                    created: row.created,
                },
            );
        }
        let mut l = Limiter { store, tables, rules };
        l.publish()?;
        Ok(l)
    }

    fn publish(&mut self) -> Result<(), LimiterError> {
        publish(self.tables.as_mut(), &self.rules)
    }

    pub fn add(&mut self, spec: LimitSpec) -> Result<Limit, LimiterError> {
        if let Some(other) = self
            .rules
            .values()
            .find(|r| r.spec.m == spec.m && r.spec.kind == spec.kind)
        {
            return Err(LimiterError::Conflict {
                id: other.id,
                what: format!("{} {}", other.spec.kind.as_str(), other.spec.m),
            });
        }
        let slot = (0..MAX_LIMITS as u16)
            .find(|s| !self.rules.values().any(|r| r.slot == *s))
            .ok_or(LimiterError::Full)?;
        let created = unix_secs();
        let json = serde_json::to_string(&spec).expect("a limit spec serialises");
        let tx = self.store.begin()?;
        let id = tx.insert_json(JsonTable::Limits, slot as u32, &json, created)?;
        let limit = Limit {
            id,
            slot,
            spec,
            created,
        };
        self.tables.reset_slot(slot, monotonic_ns())?;
        self.rules.insert(id, limit.clone());
        let published =
            publish(self.tables.as_mut(), &self.rules).and_then(|_| tx.commit().map_err(LimiterError::from));
        if let Err(e) = published {
            self.rules.remove(&id);
            let _ = self.publish();
            return Err(e);
        }
        Ok(limit)
    }

    pub fn delete(&mut self, id: i64) -> Result<Limit, LimiterError> {
        let limit = self.rules.get(&id).cloned().ok_or(LimiterError::NotFound(id))?;
        let tx = self.store.begin()?;
        tx.delete_json(JsonTable::Limits, id)?;
        self.rules.remove(&id);
        let done = publish(self.tables.as_mut(), &self.rules).and_then(|_| tx.commit().map_err(LimiterError::from));
        if let Err(e) = done {
            self.rules.insert(id, limit);
            let _ = self.publish();
            return Err(e);
        }
        Ok(limit)
    }

    /// Every rule with its counters.
    pub fn list(&self) -> Result<Vec<(Limit, LimitStats)>, LimiterError> {
        let sources = self.tables.sources()?;
        self.rules
            .values()
            .map(|l| {
                let c: LimitCnt = self.tables.counters(l.slot)?;
                let tracked = sources.get(&(l.slot, l.id as u32)).copied().unwrap_or(0);
                Ok((
                    l.clone(),
                    LimitStats {
                        passed: c.passed,
                        passed_bytes: c.passed_bytes,
                        dropped: c.dropped,
                        dropped_bytes: c.dropped_bytes,
                        sources: tracked,
                        evictions: c.new_sources.saturating_sub(tracked),
                    },
                ))
            })
            .collect()
    }

    /// The rules, by id.
    pub fn rules(&self) -> impl Iterator<Item = &Limit> {
        self.rules.values()
    }

    pub fn count(&self) -> usize {
        self.rules.len()
    }

    /// The rule in kernel slot `slot` (for drop events).
    pub fn by_slot(&self, slot: u16) -> Option<&Limit> {
        self.rules.values().find(|l| l.slot == slot)
    }

    pub fn source_capacity(&self) -> u32 {
        self.tables.source_capacity()
    }
}
