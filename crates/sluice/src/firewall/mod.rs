//! The firewall: allow and deny rules by CIDR, in both directions, with
//! counters. [`rule`] is the model, [`tables`] the seam to the kernel, and
//! [`Firewall`] the controller that keeps the rule store and the kernel
//! tables equal; [`policy`] is its part in a whole-rule-set apply.
//!
//! Every change is all-or-nothing: a batch is validated in full, then written
//! to SQLite inside a transaction and to the kernel maps; if either step fails
//! the kernel entries already written are removed and the transaction is
//! dropped, so nothing is half-applied.
//!
//! No packet sees half a batch either. A batch of more than one rule is an
//! import with its own generation: its entries go into the tables pending
//! (each answered, until the import is in force, by its parent: the longest
//! rule that decided its addresses before), the store commits, and one
//! 4-byte store of the generation puts every entry in force at once. A daemon
//! killed at any point leaves the kernel as before the import (entries
//! pending, or none) with the store either without the batch or with all of
//! it; on start, [`Firewall::open`] reconciles the (possibly pinned,
//! possibly fresh) maps with the store, only adding or removing entries that
//! differ, so adopting the maps of a running dataplane opens no gap, and puts
//! what the store holds in force.

pub mod policy;
pub mod rule;
pub mod tables;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use rule::{Action, Direction, Rule, RuleError, RuleKey, RuleRequest, RuleSpec};
use sluice_abi::{Counter, FwRule, FwTable};
pub use tables::FirewallTables;

use crate::{
    dataplane::{DataplaneError, LpmKey},
    model::{validate_comment, Cidr},
    store::{FwRow, Store, StoreError},
    sys::time::unix_secs,
};

#[derive(Debug, thiserror::Error)]
pub enum FwError {
    #[error(transparent)]
    Invalid(#[from] RuleError),
    #[error("rule already exists: {what} (id {id})")]
    Duplicate { what: String, id: i64 },
    #[error("the request lists {0} twice")]
    DuplicateInRequest(String),
    #[error("no {action} rule {what}")]
    NotFound { action: &'static str, what: String },
    #[error("rule table is full: {used} of max_rules {capacity} in use, {wanted} more requested; raise max_rules in the config")]
    Full { used: usize, capacity: u32, wanted: usize },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a rule to delete is named.
#[derive(Clone, Debug)]
pub enum Selector {
    Id(i64),
    Cidr { cidr: Cidr, dir: Direction },
}

/// What [`Firewall::open`] changed in the kernel to match the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub kept: usize,
    pub added: usize,
    pub removed: usize,
}

pub struct Firewall {
    store: Store,
    tables: Box<dyn FirewallTables>,
    rules: BTreeMap<i64, Rule>,
    by_key: HashMap<RuleKey, i64>,
    by_slot: HashMap<u32, i64>,
    per_table: [usize; 8],
    /// Rules per table and prefix length: where to look for a parent.
    lens: [[u32; 129]; 8],
    next_slot: u32,
    free_slots: Vec<u32>,
    /// The next import's generation (never 0, never one a kernel entry has).
    next_gen: u32,
}

impl Firewall {
    /// Loads the rules and makes the kernel tables equal to them.
    pub fn open(store: Store, tables: Box<dyn FirewallTables>) -> Result<(Self, Reconciled), FwError> {
        let list = store
            .fw_rows()?
            .into_iter()
            .map(rule_of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut fw = Firewall {
            store,
            tables,
            rules: BTreeMap::new(),
            by_key: HashMap::new(),
            by_slot: HashMap::new(),
            per_table: [0; 8],
            lens: [[0; 129]; 8],
            next_slot: 0,
            free_slots: Vec::new(),
            next_gen: 1,
        };
        let mut used = HashSet::new();
        for r in list {
            used.insert(r.slot);
            fw.index(r);
        }
        fw.next_slot = used.iter().max().map_or(0, |m| m + 1);
        fw.free_slots = (0..fw.next_slot).rev().filter(|s| !used.contains(s)).collect();
        let rec = fw.reconcile()?;
        Ok((fw, rec))
    }

    fn index(&mut self, r: Rule) {
        self.per_table[r.spec.table() as usize] += 1;
        self.lens[r.spec.table() as usize][r.spec.cidr.net().prefix_len() as usize] += 1;
        self.by_key.insert(r.spec.key(), r.id);
        self.by_slot.insert(r.slot, r.id);
        self.rules.insert(r.id, r);
    }

    fn unindex(&mut self, id: i64) -> Option<Rule> {
        let r = self.rules.remove(&id)?;
        self.per_table[r.spec.table() as usize] -= 1;
        self.lens[r.spec.table() as usize][r.spec.cidr.net().prefix_len() as usize] -= 1;
        self.by_key.remove(&r.spec.key());
        self.by_slot.remove(&r.slot);
        self.free_slots.push(r.slot);
        Some(r)
    }

    fn mask(&self) -> u32 {
        FwTable::ALL
            .iter()
            .filter(|t| self.per_table[**t as usize] > 0)
            .fold(0, |m, t| m | t.bit())
    }

    fn reconcile(&mut self) -> Result<Reconciled, FwError> {
        let mut rec = Reconciled::default();
        for table in FwTable::ALL {
            let desired: HashMap<LpmKey, u32> = self
                .rules
                .values()
                .filter(|r| r.spec.table() == table)
                .map(|r| (r.spec.lpm_key(), r.slot))
                .collect();
            let existing = self.tables.entries(table)?;
            let mut present = HashSet::new();
            for (k, v) in existing {
                self.next_gen = self.next_gen.max(v.gen.saturating_add(1));
                if desired.get(&k) == Some(&v.slot) {
                    present.insert(k);
                    rec.kept += 1;
                } else if !desired.contains_key(&k) {
                    self.tables.remove(table, k)?;
                    rec.removed += 1;
                }
            }
            for (k, slot) in desired {
                if !present.contains(&k) {
                    self.tables.insert(table, k, FwRule { slot, gen: 0 })?;
                    rec.added += 1;
                }
            }
        }
        let mask = self.mask();
        self.tables.set_mask(mask)?;
        // An import a killed daemon left pending: what the store holds of it
        // (all or none) is in the tables now; put it in force.
        self.tables.set_pending(0)?;
        Ok(rec)
    }

    /// The slot + 1 of the rule that decides for `spec`'s addresses now: the
    /// longest shorter prefix of its table (0: none).
    fn parent_of(&self, spec: &RuleSpec) -> u32 {
        let t = spec.table() as usize;
        let len = spec.cidr.net().prefix_len();
        for l in (0..len).rev() {
            if self.lens[t][l as usize] == 0 {
                continue;
            }
            let key = RuleKey {
                action: spec.action,
                dir: spec.dir,
                cidr: spec.cidr.truncate(l),
            };
            if let Some(id) = self.by_key.get(&key) {
                return self.rules[id].slot + 1;
            }
        }
        0
    }

    fn alloc_slots(&mut self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| {
                self.free_slots.pop().unwrap_or_else(|| {
                    self.next_slot += 1;
                    self.next_slot - 1
                })
            })
            .collect()
    }

    /// Adds a batch of rules, all or nothing, in force at once.
    pub fn add(&mut self, specs: Vec<RuleSpec>) -> Result<Vec<Rule>, FwError> {
        self.add_with(specs, &mut || {})
    }

    /// [`Firewall::add`], calling `between` once the kernel holds the whole
    /// batch pending and before it is put in force (tests: nothing of it
    /// may show yet).
    #[cfg(any(test, feature = "test-support"))]
    pub fn add_paused(&mut self, specs: Vec<RuleSpec>, mut between: impl FnMut()) -> Result<Vec<Rule>, FwError> {
        self.add_with(specs, &mut between)
    }

    fn add_with(&mut self, specs: Vec<RuleSpec>, between: &mut dyn FnMut()) -> Result<Vec<Rule>, FwError> {
        let mut seen = HashSet::new();
        for s in &specs {
            if let Some(id) = self.by_key.get(&s.key()) {
                return Err(FwError::Duplicate {
                    what: s.key().describe(),
                    id: *id,
                });
            }
            if !seen.insert(s.key()) {
                return Err(FwError::DuplicateInRequest(s.key().describe()));
            }
        }
        let capacity = self.tables.capacity();
        if self.rules.len() + specs.len() > capacity as usize {
            return Err(FwError::Full {
                used: self.rules.len(),
                capacity,
                wanted: specs.len(),
            });
        }
        let created = unix_secs();
        let slots = self.alloc_slots(specs.len());
        let result = self.write_batch(&specs, &slots, created, between);
        match result {
            Ok((ids, activated)) => {
                let mut out = Vec::with_capacity(ids.len());
                for ((spec, slot), id) in specs.into_iter().zip(slots).zip(ids) {
                    let r = Rule {
                        id,
                        slot,
                        spec,
                        created,
                    };
                    out.push(r.clone());
                    self.index(r);
                }
                // Committed; only the last 4-byte store failed: the kernel
                // keeps the import pending until the daemon starts again.
                activated?;
                Ok(out)
            }
            Err(e) => {
                self.free_slots.extend(slots);
                Err(e)
            }
        }
    }

    /// Writes the store rows and the kernel entries; returns the new ids
    /// and whether the batch is in force.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        specs: &[RuleSpec],
        slots: &[u32],
        created: i64,
        between: &mut dyn FnMut(),
    ) -> Result<(Vec<i64>, Result<(), FwError>), FwError> {
        // One rule is in force with its single kernel write; more are an
        // import, pending until all of it is written and committed.
        let gen = if specs.len() > 1 { self.next_gen } else { 0 };
        let parents: Vec<u32> = match gen {
            0 => vec![0; specs.len()],
            _ => specs.iter().map(|s| self.parent_of(s)).collect(),
        };
        let mut mask = self.mask();
        let tx = self.store.begin()?;
        let mut ids = Vec::with_capacity(specs.len());
        for (s, slot) in specs.iter().zip(slots) {
            ids.push(tx.insert_fw(
                s.action.as_str(),
                s.dir.as_str(),
                &s.cidr.to_string(),
                *slot,
                s.comment.as_deref(),
                created,
            )?);
        }
        let mut written: Vec<(FwTable, LpmKey)> = Vec::with_capacity(specs.len());
        let tables = &mut self.tables;
        let kernel = (|| -> Result<(), DataplaneError> {
            if gen != 0 {
                tables.set_pending(gen)?;
            }
            for ((s, slot), parent) in specs.iter().zip(slots).zip(&parents) {
                let (t, k) = (s.table(), s.lpm_key());
                tables.reset_counter(*slot)?;
                if gen != 0 {
                    tables.set_parent(*slot, *parent)?;
                }
                tables.insert(t, k, FwRule { slot: *slot, gen })?;
                written.push((t, k));
                mask |= t.bit();
            }
            tables.set_mask(mask)
        })();
        if kernel.is_ok() {
            between();
        }
        let committed = kernel
            .map_err(FwError::from)
            .and_then(|_| tx.commit().map_err(FwError::from));
        if let Err(e) = committed {
            for (t, k) in written {
                if let Err(re) = self.tables.remove(t, k) {
                    tracing::error!(error = %re, "rollback: removing kernel entry failed");
                }
            }
            let _ = self.tables.set_mask(self.mask());
            if gen != 0 {
                let _ = self.tables.set_pending(0);
            }
            return Err(e);
        }
        if gen == 0 {
            return Ok((ids, Ok(())));
        }
        // The generation is spent (entries carry it) whatever comes next.
        self.next_gen = gen.checked_add(1).unwrap_or_else(|| {
            tracing::error!("import generations exhausted; restart the daemon to renumber");
            u32::MAX
        });
        let activated = self.tables.set_pending(0).map_err(|e| {
            tracing::error!(error = %e, gen, "an import is committed but not in force until the daemon restarts");
            FwError::from(e)
        });
        Ok((ids, activated))
    }

    /// Deletes one rule of `action`.
    pub fn delete(&mut self, action: Action, sel: &Selector) -> Result<Rule, FwError> {
        let id = match sel {
            Selector::Id(id) => self.rules.get(id).filter(|r| r.spec.action == action).map(|r| r.id),
            Selector::Cidr { cidr, dir } => self
                .by_key
                .get(&RuleKey {
                    action,
                    dir: *dir,
                    cidr: *cidr,
                })
                .copied(),
        }
        .ok_or_else(|| FwError::NotFound {
            action: action.as_str(),
            what: match sel {
                Selector::Id(id) => format!("with id {id}"),
                Selector::Cidr { cidr, dir } => format!("for {} {cidr}", dir.as_str()),
            },
        })?;
        let rule = self.rules[&id].clone();
        let (t, k) = (rule.spec.table(), rule.spec.lpm_key());
        let tx = self.store.begin()?;
        tx.delete_fw(id)?;
        self.tables.remove(t, k)?;
        if let Err(e) = tx.commit() {
            let _ = self.tables.insert(
                t,
                k,
                FwRule {
                    slot: rule.slot,
                    gen: 0,
                },
            );
            return Err(e.into());
        }
        self.unindex(id);
        self.tables.set_mask(self.mask())?;
        Ok(rule)
    }

    /// Changes a rule's comment (the store only: the kernel never sees
    /// comments).
    pub fn set_comment(&mut self, key: &RuleKey, comment: Option<String>) -> Result<(), FwError> {
        let comment = comment.filter(|c| !c.is_empty());
        if let Some(c) = &comment {
            validate_comment(c).map_err(RuleError::from)?;
        }
        let id = *self.by_key.get(key).ok_or_else(|| FwError::NotFound {
            action: key.action.as_str(),
            what: format!("for {} {}", key.dir.as_str(), key.cidr),
        })?;
        let tx = self.store.begin()?;
        tx.set_fw_comment(id, comment.as_deref())?;
        tx.commit()?;
        if let Some(r) = self.rules.get_mut(&id) {
            r.spec.comment = comment;
        }
        Ok(())
    }

    /// Rules of `action` with their hit counters.
    pub fn list(&self, action: Action) -> Result<Vec<(Rule, Counter)>, FwError> {
        self.rules
            .values()
            .filter(|r| r.spec.action == action)
            .map(|r| Ok((r.clone(), self.tables.counter(r.slot)?)))
            .collect()
    }

    /// The rule with this key, if any.
    pub fn find(&self, key: &RuleKey) -> Option<&Rule> {
        self.by_key.get(key).and_then(|id| self.rules.get(id))
    }

    /// Every rule, by id.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    /// The rule using counter slot `slot` (for drop events).
    pub fn rule_by_slot(&self, slot: u32) -> Option<&Rule> {
        self.by_slot.get(&slot).and_then(|id| self.rules.get(id))
    }

    pub fn count(&self, action: Action) -> usize {
        self.rules.values().filter(|r| r.spec.action == action).count()
    }

    pub fn capacity(&self) -> u32 {
        self.tables.capacity()
    }

    /// Verdict counters, indexed by `sluice_abi::stat`.
    pub fn stats(&self) -> Result<Vec<Counter>, FwError> {
        Ok(self.tables.stats()?)
    }
}

/// A stored row as a rule; a row this build cannot read is an error (the
/// database was edited by hand or by a newer sluice).
fn rule_of(row: FwRow) -> Result<Rule, StoreError> {
    let bad = |why: String| StoreError::BadRow { id: row.id, why };
    let spec = RuleSpec {
        action: row.action.parse::<Action>().map_err(bad)?,
        dir: row.dir.parse::<Direction>().map_err(bad)?,
        cidr: row
            .cidr
            .parse()
            .map_err(|e: crate::model::CidrError| bad(e.to_string()))?,
        comment: row.comment,
    };
    let slot = u32::try_from(row.slot).map_err(|_| bad(format!("slot {} out of range", row.slot)))?;
    Ok(Rule {
        id: row.id,
        slot,
        spec,
        created: row.created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::tables::MemFirewallTables;

    fn spec(a: Action, c: &str, dst: bool) -> RuleSpec {
        RuleSpec::new(a, c, dst, None).unwrap()
    }

    fn fw(cap: u32) -> Firewall {
        Firewall::open(Store::in_memory().unwrap(), Box::new(MemFirewallTables::new(cap)))
            .unwrap()
            .0
    }

    #[test]
    fn add_list_delete_keeps_mask_and_slots() {
        let mut f = fw(10);
        let r = f
            .add(vec![
                spec(Action::Deny, "198.18.1.0/24", false),
                spec(Action::Allow, "2001:2::/48", true),
            ])
            .unwrap();
        assert_eq!(r.len(), 2);
        assert_ne!(r[0].slot, r[1].slot);
        assert_eq!(f.mask(), FwTable::DenySrc4.bit() | FwTable::AllowDst6.bit());
        assert_eq!(f.list(Action::Deny).unwrap().len(), 1);
        f.delete(Action::Deny, &Selector::Id(r[0].id)).unwrap();
        assert_eq!(f.mask(), FwTable::AllowDst6.bit());
        // The freed slot is reused.
        let again = f.add(vec![spec(Action::Deny, "10.0.0.0/8", false)]).unwrap();
        assert_eq!(again[0].slot, r[0].slot);
        assert!(again[0].id > r[1].id, "ids are never reused");
    }

    #[test]
    fn duplicates_are_refused_and_nothing_changes() {
        let mut f = fw(10);
        f.add(vec![spec(Action::Deny, "10.0.0.0/8", false)]).unwrap();
        let e = f
            .add(vec![
                spec(Action::Deny, "11.0.0.0/8", false),
                spec(Action::Deny, "10.0.0.0/8", false),
            ])
            .unwrap_err();
        assert!(matches!(e, FwError::Duplicate { .. }), "{e}");
        let e = f
            .add(vec![
                spec(Action::Deny, "12.0.0.0/8", false),
                spec(Action::Deny, "12.0.0.0/8", false),
            ])
            .unwrap_err();
        assert!(matches!(e, FwError::DuplicateInRequest(_)), "{e}");
        assert_eq!(f.count(Action::Deny), 1);
        // Same CIDR as allow, or as --dst, is a different rule.
        f.add(vec![
            spec(Action::Allow, "10.0.0.0/8", false),
            spec(Action::Deny, "10.0.0.0/8", true),
        ])
        .unwrap();
    }

    #[test]
    fn full_table_is_refused_up_front() {
        let mut f = fw(2);
        f.add(vec![spec(Action::Deny, "10.0.0.0/8", false)]).unwrap();
        let e = f
            .add(vec![
                spec(Action::Deny, "11.0.0.0/8", false),
                spec(Action::Deny, "12.0.0.0/8", false),
            ])
            .unwrap_err();
        assert!(
            matches!(
                e,
                FwError::Full {
                    used: 1,
                    capacity: 2,
                    wanted: 2
                }
            ),
            "{e}"
        );
        assert_eq!(f.count(Action::Deny), 1);
    }

    #[test]
    fn kernel_failure_rolls_back_store_and_maps() {
        // Fail the second insert of a batch of two: the first must be undone.
        struct Flaky(MemFirewallTables, usize);
        impl FirewallTables for Flaky {
            fn insert(&mut self, t: FwTable, k: LpmKey, r: FwRule) -> Result<(), DataplaneError> {
                self.1 += 1;
                if self.1 == 2 {
                    return Err(DataplaneError::Missing("injected"));
                }
                self.0.insert(t, k, r)
            }
            fn remove(&mut self, t: FwTable, k: LpmKey) -> Result<(), DataplaneError> {
                self.0.remove(t, k)
            }
            fn entries(&self, t: FwTable) -> Result<Vec<(LpmKey, FwRule)>, DataplaneError> {
                self.0.entries(t)
            }
            fn reset_counter(&mut self, s: u32) -> Result<(), DataplaneError> {
                self.0.reset_counter(s)
            }
            fn counter(&self, s: u32) -> Result<Counter, DataplaneError> {
                self.0.counter(s)
            }
            fn set_mask(&mut self, m: u32) -> Result<(), DataplaneError> {
                self.0.set_mask(m)
            }
            fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
                self.0.stats()
            }
            fn set_pending(&mut self, g: u32) -> Result<(), DataplaneError> {
                self.0.set_pending(g)
            }
            fn set_parent(&mut self, s: u32, p: u32) -> Result<(), DataplaneError> {
                self.0.set_parent(s, p)
            }
            fn capacity(&self) -> u32 {
                10
            }
        }
        let (mut f, _) = Firewall::open(
            Store::in_memory().unwrap(),
            Box::new(Flaky(MemFirewallTables::new(10), 0)),
        )
        .unwrap();
        assert!(f
            .add(vec![
                spec(Action::Deny, "10.0.0.0/8", false),
                spec(Action::Deny, "11.0.0.0/8", false)
            ])
            .is_err());
        assert_eq!(f.count(Action::Deny), 0);
        assert!(f.store.fw_rows().unwrap().is_empty());
        assert!(f.tables.entries(FwTable::DenySrc4).unwrap().is_empty());
        assert_eq!(f.mask(), 0);
    }

    #[test]
    fn open_reconciles_stale_and_missing_entries() {
        let mut store = Store::in_memory().unwrap();
        let tx = store.begin().unwrap();
        tx.insert_fw("deny", "src", "10.0.0.0/8", 3, None, 0).unwrap();
        tx.insert_fw("allow", "src", "10.1.0.0/16", 4, None, 0).unwrap();
        tx.commit().unwrap();
        let mut t = MemFirewallTables::new(10);
        // Kept: matching entry. Stale: a key the store does not know.
        let key = |c: &str| LpmKey::from(c.parse::<Cidr>().unwrap().net());
        let rule = |slot| FwRule { slot, gen: 0 };
        t.insert(FwTable::DenySrc4, key("10.0.0.0/8"), rule(3)).unwrap();
        t.insert(FwTable::DenySrc4, key("99.0.0.0/8"), rule(9)).unwrap();
        let (f, rec) = Firewall::open(store, Box::new(t)).unwrap();
        assert_eq!(
            rec,
            Reconciled {
                kept: 1,
                added: 1,
                removed: 1
            }
        );
        assert_eq!(f.mask(), FwTable::DenySrc4.bit() | FwTable::AllowSrc4.bit());
        assert_eq!(f.next_slot, 5);
        assert_eq!(f.free_slots, vec![2, 1, 0]);
    }

    #[test]
    fn delete_by_cidr_and_wrong_action() {
        let mut f = fw(10);
        let r = f.add(vec![spec(Action::Deny, "198.18.1.2/32", false)]).unwrap();
        let e = f.delete(Action::Allow, &Selector::Id(r[0].id)).unwrap_err();
        assert!(matches!(e, FwError::NotFound { .. }));
        let sel = Selector::Cidr {
            cidr: "198.18.1.2".parse().unwrap(),
            dir: Direction::Dst,
        };
        assert!(f.delete(Action::Deny, &sel).is_err());
        let sel = Selector::Cidr {
            cidr: "198.18.1.2".parse().unwrap(),
            dir: Direction::Src,
        };
        assert_eq!(f.delete(Action::Deny, &sel).unwrap().id, r[0].id);
        assert_eq!(f.count(Action::Deny), 0);
    }

    #[test]
    fn an_import_is_pending_until_committed_and_answered_by_parents() {
        use std::{
            net::IpAddr,
            sync::{Arc, Mutex},
        };
        let mem = Arc::new(Mutex::new(MemFirewallTables::new(100)));
        let (mut f, _) = Firewall::open(Store::in_memory().unwrap(), Box::new(mem.clone())).unwrap();
        f.add(vec![
            spec(Action::Deny, "10.0.0.0/8", false),
            spec(Action::Deny, "10.1.0.0/16", false),
        ])
        .unwrap();
        let slot = |f: &Firewall, c: &str| f.rules[&f.by_key[&spec(Action::Deny, c, false).key()]].slot;
        let (s8, s16) = (slot(&f, "10.0.0.0/8"), slot(&f, "10.1.0.0/16"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let probes = ["10.1.2.3", "10.1.2.9", "10.9.1.1", "192.0.2.1", "10.200.0.1"];
        // The import: nested prefixes, inside and outside existing rules.
        let import = vec![
            spec(Action::Deny, "10.1.2.0/24", false),
            spec(Action::Deny, "10.1.2.3", false),
            spec(Action::Deny, "10.9.0.0/16", false),
            spec(Action::Deny, "192.0.2.0/24", false),
        ];
        let mut seen = Vec::new();
        f.add_paused(import, || {
            let t = mem.lock().unwrap();
            assert_ne!(t.pending, 0, "the batch is pending");
            for a in probes {
                seen.push(t.decide(FwTable::DenySrc4, ip(a)));
            }
        })
        .unwrap();
        // While pending, every address got the verdict of before.
        assert_eq!(seen, vec![Some(s16), Some(s16), Some(s8), None, Some(s8)]);
        let t = mem.lock().unwrap();
        assert_eq!(t.pending, 0, "in force");
        let now: Vec<Option<u32>> = probes.iter().map(|a| t.decide(FwTable::DenySrc4, ip(a))).collect();
        let want = ["10.1.2.3", "10.1.2.0/24", "10.9.0.0/16", "192.0.2.0/24", "10.0.0.0/8"].map(|c| Some(slot(&f, c)));
        assert_eq!(now, want);
        // A new firewall on the same tables never reuses a generation.
        let max = t.tables[&FwTable::DenySrc4].iter().map(|(_, r)| r.gen).max().unwrap();
        assert!(max > 1, "both batches were imports");
        drop(t);
        let (again, _) = Firewall::open(Store::in_memory().unwrap(), Box::new(mem.clone())).unwrap();
        assert!(again.next_gen > max);
    }
}
