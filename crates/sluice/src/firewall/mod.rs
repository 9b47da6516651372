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
//!
//! A rule may match a selector of containers instead of a CIDR. The store
//! keeps the selector; the kernel holds one host entry (`/32`, `/128`) per
//! address it resolves to now, all counted on the rule's slot, recomputed
//! by [`Firewall::resolve_all`] on every change of the containers. A CIDR
//! rule with exactly such a host entry keeps it, and of two selector rules
//! wanting one entry the older does. A selector that matches nothing
//! leaves its rule inactive (no entry). The kernel entries are the memory
//! of the last resolution: a restarted daemon adopts them as they are, so
//! enforcement never waits for the runtime to answer.

pub mod policy;
pub mod rule;
pub mod tables;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

pub use rule::{host_key, table_of, Action, Direction, Rule, RuleError, RuleKey, RuleRequest, RuleSpec};
use sluice_abi::{Counter, FwRule, FwTable};
pub use tables::FirewallTables;

use crate::{
    dataplane::{DataplaneError, LpmKey},
    model::{selector::NoContainers, validate_comment, Cidr, Resolution, Resolve, Target},
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

/// How a rule to delete is named: its id, or what it matches.
#[derive(Clone, Debug)]
pub enum Which {
    Id(i64),
    Target { target: Target, dir: Direction },
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
    /// Resolves selector rules (the container registry).
    resolver: Arc<dyn Resolve>,
    /// What each selector rule resolves to now.
    resolved: HashMap<i64, Resolution>,
    /// The host entries selector rules hold in the kernel, and whose.
    sel_entries: HashMap<(FwTable, LpmKey), i64>,
}

impl Firewall {
    /// Loads the rules and makes the kernel tables equal to them, with no
    /// containers to resolve selectors against.
    pub fn open(store: Store, tables: Box<dyn FirewallTables>) -> Result<(Self, Reconciled), FwError> {
        Self::open_with(store, tables, Arc::new(NoContainers))
    }

    /// [`Firewall::open`] with selectors resolved by `resolver`. Selector
    /// rules keep the entries the kernel holds for them until the first
    /// [`Firewall::resolve_all`].
    pub fn open_with(
        store: Store,
        tables: Box<dyn FirewallTables>,
        resolver: Arc<dyn Resolve>,
    ) -> Result<(Self, Reconciled), FwError> {
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
            resolver,
            resolved: HashMap::new(),
            sel_entries: HashMap::new(),
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
        if let (Some((t, _)), Some(c)) = (r.spec.entry(), r.spec.net()) {
            self.per_table[t as usize] += 1;
            self.lens[t as usize][c.net().prefix_len() as usize] += 1;
        }
        self.by_key.insert(r.spec.key(), r.id);
        self.by_slot.insert(r.slot, r.id);
        self.rules.insert(r.id, r);
    }

    fn unindex(&mut self, id: i64) -> Option<Rule> {
        let r = self.rules.remove(&id)?;
        if let (Some((t, _)), Some(c)) = (r.spec.entry(), r.spec.net()) {
            self.per_table[t as usize] -= 1;
            self.lens[t as usize][c.net().prefix_len() as usize] -= 1;
        }
        self.resolved.remove(&id);
        self.by_key.remove(&r.spec.key());
        self.by_slot.remove(&r.slot);
        self.free_slots.push(r.slot);
        Some(r)
    }

    fn mask(&self) -> u32 {
        let sel = self.sel_entries.keys().fold(0, |m, (t, _)| m | t.bit());
        FwTable::ALL
            .iter()
            .filter(|t| self.per_table[**t as usize] > 0)
            .fold(sel, |m, t| m | t.bit())
    }

    fn reconcile(&mut self) -> Result<Reconciled, FwError> {
        let mut rec = Reconciled::default();
        for table in FwTable::ALL {
            let desired: HashMap<LpmKey, u32> = self
                .rules
                .values()
                .filter_map(|r| Some((r.spec.entry()?, r.slot)))
                .filter(|((t, _), _)| *t == table)
                .map(|((_, k), slot)| (k, slot))
                .collect();
            let existing = self.tables.entries(table)?;
            let mut present = HashSet::new();
            for (k, v) in existing {
                self.next_gen = self.next_gen.max(v.gen.saturating_add(1));
                if desired.get(&k) == Some(&v.slot) {
                    present.insert(k);
                    rec.kept += 1;
                } else if desired.contains_key(&k) {
                    // Rewritten below with the right slot.
                } else if let Some(id) = self.selector_entry(table, k, v.slot) {
                    // A selector rule's last resolution: kept until the
                    // containers are known again.
                    self.sel_entries.insert((table, k), id);
                    rec.kept += 1;
                } else {
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

    /// The selector rule a kernel entry belongs to, if it is one of its
    /// host entries: its slot, its table (action and direction) and a
    /// host-length key.
    fn selector_entry(&self, table: FwTable, k: LpmKey, slot: u32) -> Option<i64> {
        let r = self.rule_by_slot(slot)?;
        let host = match k {
            LpmKey::V4(k) => k.prefixlen == 32,
            LpmKey::V6(k) => k.prefixlen == 128,
        };
        let v6 = matches!(k, LpmKey::V6(_));
        (r.spec.target.is_selector() && host && table_of(r.spec.action, r.spec.dir, v6) == table).then_some(r.id)
    }

    /// The CIDR rule whose entry is exactly this host entry, if any.
    fn cidr_owner(&self, action: Action, dir: Direction, a: std::net::IpAddr) -> Option<i64> {
        let key = RuleKey {
            action,
            dir,
            target: Target::Cidr(Cidr::host(a)),
        };
        self.by_key.get(&key).copied()
    }

    /// Resolves every selector rule again and makes the kernel's host
    /// entries equal to the result. Returns how many entries changed.
    pub fn resolve_all(&mut self) -> Result<usize, FwError> {
        let sel: Vec<(i64, crate::model::Selector)> = self
            .rules
            .values()
            .filter_map(|r| Some((r.id, r.spec.target.selector()?.clone())))
            .collect();
        for (id, s) in sel {
            let res = self.resolver.resolve(&s);
            self.resolved.insert(id, res);
        }
        self.sync_selectors()
    }

    /// The entries selector rules want now: for each of their addresses,
    /// in rule order, unless a CIDR rule (other than `except`, being
    /// deleted) or an older selector has it.
    fn wanted_selector_entries(&self, except: Option<i64>) -> HashMap<(FwTable, LpmKey), i64> {
        let mut want = HashMap::new();
        for r in self.rules.values().filter(|r| r.spec.target.is_selector()) {
            let Some(res) = self.resolved.get(&r.id) else { continue };
            for a in &res.addrs {
                if self
                    .cidr_owner(r.spec.action, r.spec.dir, *a)
                    .is_some_and(|o| Some(o) != except)
                {
                    continue;
                }
                let t = table_of(r.spec.action, r.spec.dir, a.is_ipv6());
                want.entry((t, host_key(*a))).or_insert(r.id);
            }
        }
        want
    }

    /// Makes the kernel's selector entries equal to what the rules want:
    /// new and changed entries first, stale ones after (a rule that keeps
    /// an address never loses it in between).
    fn sync_selectors(&mut self) -> Result<usize, FwError> {
        let want = self.wanted_selector_entries(None);
        let capacity = self.tables.capacity() as usize;
        let mut used = self.per_table;
        for (t, _) in self.sel_entries.keys() {
            used[*t as usize] += 1;
        }
        let mut changed = 0;
        let mut first_err = None;
        let mut now = std::mem::take(&mut self.sel_entries);
        for (&(t, k), &id) in &want {
            if now.get(&(t, k)) == Some(&id) {
                continue;
            }
            if !now.contains_key(&(t, k)) && used[t as usize] >= capacity {
                tracing::warn!(table = ?t, "firewall table full: a container address of a selector rule is not in force (raise max_rules)");
                continue;
            }
            let slot = self.rules[&id].slot;
            match self.tables.insert(t, k, FwRule { slot, gen: 0 }) {
                Ok(()) => {
                    if now.insert((t, k), id).is_none() {
                        used[t as usize] += 1;
                    }
                    changed += 1;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let stale: Vec<(FwTable, LpmKey)> = now.keys().filter(|tk| !want.contains_key(tk)).copied().collect();
        for (t, k) in stale {
            now.remove(&(t, k));
            // A CIDR rule took this entry over: it stays, as that rule's.
            let owned_by_cidr = self.rules.values().any(|r| r.spec.entry() == Some((t, k)));
            if owned_by_cidr {
                continue;
            }
            match self.tables.remove(t, k) {
                Ok(()) => changed += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.sel_entries = now;
        self.tables.set_mask(self.mask())?;
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(changed),
        }
    }

    /// What a selector rule resolves to now (None: not a selector rule, or
    /// not resolved yet).
    pub fn resolution(&self, id: i64) -> Option<&Resolution> {
        self.resolved.get(&id)
    }

    /// The addresses a selector rule holds in the kernel now.
    pub fn entries_of(&self, id: i64) -> usize {
        self.sel_entries.values().filter(|r| **r == id).count()
    }

    /// The slot + 1 of the rule that decides for `spec`'s addresses now: the
    /// longest shorter prefix of its table (0: none).
    fn parent_of(&self, spec: &RuleSpec) -> u32 {
        let (Some((t, _)), Some(cidr)) = (spec.entry(), spec.net()) else {
            return 0;
        };
        let t = t as usize;
        let len = cidr.net().prefix_len();
        for l in (0..len).rev() {
            if self.lens[t][l as usize] == 0 {
                continue;
            }
            let key = RuleKey {
                action: spec.action,
                dir: spec.dir,
                target: Target::Cidr(cidr.truncate(l)),
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
                // Selector rules are in the store: put their containers'
                // addresses in the kernel now.
                let mut resolve_err = Ok(());
                if out.iter().any(|r| r.spec.target.is_selector()) {
                    for r in out.iter().filter(|r| r.spec.target.is_selector()) {
                        let s = r.spec.target.selector().expect("a selector rule");
                        let res = self.resolver.resolve(s);
                        self.resolved.insert(r.id, res);
                    }
                    resolve_err = self.sync_selectors().map(drop);
                }
                // Committed; only the last 4-byte store failed: the kernel
                // keeps the import pending until the daemon starts again.
                activated?;
                resolve_err?;
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
        let cidrs = specs.iter().filter(|s| s.entry().is_some()).count();
        let gen = if cidrs > 1 { self.next_gen } else { 0 };
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
                &s.target.to_string(),
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
                tables.reset_counter(*slot)?;
                let Some((t, k)) = s.entry() else { continue };
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
    pub fn delete(&mut self, action: Action, which: &Which) -> Result<Rule, FwError> {
        let id = match which {
            Which::Id(id) => self.rules.get(id).filter(|r| r.spec.action == action).map(|r| r.id),
            Which::Target { target, dir } => self
                .by_key
                .get(&RuleKey {
                    action,
                    dir: *dir,
                    target: target.clone(),
                })
                .copied(),
        }
        .ok_or_else(|| FwError::NotFound {
            action: action.as_str(),
            what: match which {
                Which::Id(id) => format!("with id {id}"),
                Which::Target { target, dir } => format!("for {} {target}", dir.as_str()),
            },
        })?;
        let rule = self.rules[&id].clone();
        // A selector rule that wants this very host entry takes it over
        // at once instead (same table: same verdict, no gap).
        let heir = rule.spec.entry().and_then(|tk| {
            self.wanted_selector_entries(Some(id))
                .get(&tk)
                .map(|h| self.rules[h].slot)
        });
        let tx = self.store.begin()?;
        tx.delete_fw(id)?;
        let Some((t, k)) = rule.spec.entry() else {
            // A selector rule: its host entries go with it.
            tx.commit()?;
            self.unindex(id);
            self.sync_selectors()?;
            return Ok(rule);
        };
        match heir {
            Some(slot) => self.tables.insert(t, k, FwRule { slot, gen: 0 })?,
            None => self.tables.remove(t, k)?,
        }
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
        self.sync_selectors()?;
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
            what: format!("for {} {}", key.dir.as_str(), key.target),
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
        target: row
            .cidr
            .parse()
            .map_err(|e: crate::model::SelectorError| bad(e.to_string()))?,
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
        f.delete(Action::Deny, &Which::Id(r[0].id)).unwrap();
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
        let e = f.delete(Action::Allow, &Which::Id(r[0].id)).unwrap_err();
        assert!(matches!(e, FwError::NotFound { .. }));
        let sel = Which::Target {
            target: "198.18.1.2".parse().unwrap(),
            dir: Direction::Dst,
        };
        assert!(f.delete(Action::Deny, &sel).is_err());
        let sel = Which::Target {
            target: "198.18.1.2".parse().unwrap(),
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

    /// Resolves selectors from a table the test changes.
    #[derive(Default)]
    struct Table(std::sync::Mutex<HashMap<String, Vec<std::net::IpAddr>>>);

    impl Resolve for Table {
        fn resolve(&self, sel: &crate::model::Selector) -> Resolution {
            let addrs = self.0.lock().unwrap().get(&sel.to_string()).cloned().unwrap_or_default();
            Resolution {
                containers: if addrs.is_empty() { vec![] } else { vec![sel.to_string()] },
                addrs,
                ifaces: vec![],
            }
        }
        fn check(&self, _: &crate::model::Selector) -> Result<(), crate::model::LookupError> {
            Ok(())
        }
    }

    #[test]
    fn selector_rules_follow_their_containers_and_yield_to_cidr_rules() {
        use std::{net::IpAddr, sync::Mutex};
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = Arc::new(Table::default());
        let set = |sel: &str, addrs: &[&str]| {
            table.0.lock().unwrap().insert(sel.into(), addrs.iter().map(|a| ip(a)).collect());
        };
        set("container:web", &["172.17.0.2", "fd00::2"]);
        let mem = Arc::new(Mutex::new(MemFirewallTables::new(100)));
        let store = Store::in_memory().unwrap();
        let (mut f, _) = Firewall::open_with(store, Box::new(mem.clone()), table.clone()).unwrap();
        let web = f.add(vec![spec(Action::Deny, "container:web", false)]).unwrap()[0].clone();
        let decide = |t: FwTable, a: &str| mem.lock().unwrap().decide(t, ip(a));
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.2"), Some(web.slot));
        assert_eq!(decide(FwTable::DenySrc6, "fd00::2"), Some(web.slot));
        assert_eq!(f.mask(), FwTable::DenySrc4.bit() | FwTable::DenySrc6.bit());
        // web moves: the old address is free at once, the new one denied.
        set("container:web", &["172.17.0.5"]);
        f.resolve_all().unwrap();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.2"), None);
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.5"), Some(web.slot));
        assert_eq!(f.mask(), FwTable::DenySrc4.bit(), "no IPv6 entry left");
        // A CIDR rule of exactly that host takes the entry; deleting it hands
        // the entry back to the selector rule, with no moment unmatched.
        let host = f.add(vec![spec(Action::Deny, "172.17.0.5", false)]).unwrap()[0].clone();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.5"), Some(host.slot));
        f.resolve_all().unwrap();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.5"), Some(host.slot), "the CIDR rule keeps it");
        f.delete(Action::Deny, &Which::Id(host.id)).unwrap();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.5"), Some(web.slot));
        // Two selectors want one address: the older rule has it; it passes
        // to the newer one when the older goes.
        set("label:app=web", &["172.17.0.5"]);
        let label = f.add(vec![spec(Action::Deny, "label:app=web", false)]).unwrap()[0].clone();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.5"), Some(web.slot));
        f.delete(Action::Deny, &Which::Id(web.id)).unwrap();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.5"), Some(label.slot));
        // Nothing matches: inactive, no entry.
        set("label:app=web", &[]);
        f.resolve_all().unwrap();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.5"), None);
        assert_eq!(f.resolution(label.id).unwrap().addrs.len(), 0);
        assert_eq!(f.mask(), 0);
        // A new firewall on the same tables keeps a selector's entries as
        // they are until it resolves (a restart opens no gap).
        set("label:app=web", &["172.17.0.9"]);
        f.resolve_all().unwrap();
        let rows = f.store.fw_rows().unwrap();
        let mut store2 = Store::in_memory().unwrap();
        let tx = store2.begin().unwrap();
        for r in &rows {
            tx.insert_fw(&r.action, &r.dir, &r.cidr, r.slot as u32, None, 0).unwrap();
        }
        tx.commit().unwrap();
        let empty = Arc::new(Table::default());
        let (mut g, rec) = Firewall::open_with(store2, Box::new(mem.clone()), empty).unwrap();
        assert_eq!((rec.kept, rec.removed), (1, 0), "{rec:?}");
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.9"), Some(label.slot));
        // ... and follows the containers from its first resolve on.
        g.resolve_all().unwrap();
        assert_eq!(decide(FwTable::DenySrc4, "172.17.0.9"), None);
    }
}
