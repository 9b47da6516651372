//! The firewall's seam to the kernel: [`FirewallTables`], implemented by the
//! dataplane's [`FirewallMaps`] and, for tests, by the in-memory
//! [`MemFirewallTables`], so the rule logic and the API run without root.

#[cfg(any(test, feature = "test-support"))]
use std::collections::BTreeMap;

use sluice_abi::{Counter, FwTable};

use crate::dataplane::{DataplaneError, FirewallMaps, LpmKey};

/// What the firewall needs of the kernel: its tables, counters and mask.
pub trait FirewallTables: Send {
    /// Inserts or overwrites `key` in `table`, pointing at counter `slot`.
    fn insert(&mut self, table: FwTable, key: LpmKey, slot: u32) -> Result<(), DataplaneError>;
    /// Removes `key` from `table`; a missing key is not an error.
    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError>;
    /// Every (key, slot) in `table`.
    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, u32)>, DataplaneError>;
    /// Zeroes a rule's counter on every CPU.
    fn reset_counter(&mut self, slot: u32) -> Result<(), DataplaneError>;
    /// A rule's counter, summed over CPUs.
    fn counter(&self, slot: u32) -> Result<Counter, DataplaneError>;
    /// Publishes which tables are non-empty.
    fn set_mask(&mut self, mask: u32) -> Result<(), DataplaneError>;
    /// The verdict counters, summed over CPUs, indexed by `sluice_abi::stat`.
    fn stats(&self) -> Result<Vec<Counter>, DataplaneError>;
    /// Capacity of each table and of the counter array.
    fn capacity(&self) -> u32;
}

impl FirewallTables for FirewallMaps {
    fn insert(&mut self, table: FwTable, key: LpmKey, slot: u32) -> Result<(), DataplaneError> {
        FirewallMaps::insert(self, table, key, slot)
    }
    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError> {
        FirewallMaps::remove(self, table, key)
    }
    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, u32)>, DataplaneError> {
        FirewallMaps::entries(self, table)
    }
    fn reset_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        FirewallMaps::reset_counter(self, slot)
    }
    fn counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        FirewallMaps::counter(self, slot)
    }
    fn set_mask(&mut self, mask: u32) -> Result<(), DataplaneError> {
        FirewallMaps::set_mask(self, mask)
    }
    fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        FirewallMaps::stats(self)
    }
    fn capacity(&self) -> u32 {
        FirewallMaps::capacity(self)
    }
}

/// In-memory tables for tests: same semantics, including "full".
#[cfg(any(test, feature = "test-support"))]
#[derive(Default)]
pub struct MemFirewallTables {
    pub tables: BTreeMap<FwTable, Vec<(LpmKey, u32)>>,
    pub counters: BTreeMap<u32, Counter>,
    pub mask: u32,
    pub capacity: u32,
    /// When set, the next insert fails (to test rollback).
    pub fail_next_insert: bool,
}

#[cfg(any(test, feature = "test-support"))]
impl MemFirewallTables {
    pub fn new(capacity: u32) -> Self {
        MemFirewallTables {
            capacity,
            ..Default::default()
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
impl FirewallTables for MemFirewallTables {
    fn insert(&mut self, table: FwTable, key: LpmKey, slot: u32) -> Result<(), DataplaneError> {
        if std::mem::take(&mut self.fail_next_insert) {
            return Err(DataplaneError::Missing("injected failure"));
        }
        let t = self.tables.entry(table).or_default();
        if let Some(e) = t.iter_mut().find(|(k, _)| *k == key) {
            e.1 = slot;
            return Ok(());
        }
        if t.len() as u32 >= self.capacity {
            return Err(DataplaneError::Full {
                table: table.map_name(),
                capacity: self.capacity,
            });
        }
        t.push((key, slot));
        Ok(())
    }

    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError> {
        if let Some(t) = self.tables.get_mut(&table) {
            t.retain(|(k, _)| *k != key);
        }
        Ok(())
    }

    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, u32)>, DataplaneError> {
        Ok(self.tables.get(&table).cloned().unwrap_or_default())
    }

    fn reset_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.counters.remove(&slot);
        Ok(())
    }

    fn counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        Ok(self.counters.get(&slot).copied().unwrap_or_default())
    }

    fn set_mask(&mut self, mask: u32) -> Result<(), DataplaneError> {
        self.mask = mask;
        Ok(())
    }

    fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        Ok(vec![Counter::default(); sluice_abi::stat::ALL as usize])
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}
