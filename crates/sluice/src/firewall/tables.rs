//! The firewall's seam to the kernel: [`FirewallTables`], implemented by the
//! dataplane's [`FirewallMaps`] and, for tests, by the in-memory
//! [`MemFirewallTables`], so the rule logic and the API run without root.

#[cfg(any(test, feature = "test-support"))]
use std::collections::BTreeMap;

use sluice_abi::{Counter, FwRule, FwTable};

use crate::dataplane::{DataplaneError, FirewallMaps, LpmKey};

/// What the firewall needs of the kernel: its tables, counters and mask.
pub trait FirewallTables: Send {
    /// Inserts or overwrites `key` in `table`: its counter slot and the
    /// import generation that adds it (0: in force at once).
    fn insert(&mut self, table: FwTable, key: LpmKey, rule: FwRule) -> Result<(), DataplaneError>;
    /// Removes `key` from `table`; a missing key is not an error.
    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError>;
    /// Every (key, value) in `table`.
    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, FwRule)>, DataplaneError>;
    /// Zeroes a rule's counter on every CPU.
    fn reset_counter(&mut self, slot: u32) -> Result<(), DataplaneError>;
    /// A rule's counter, summed over CPUs.
    fn counter(&self, slot: u32) -> Result<Counter, DataplaneError>;
    /// Publishes which tables are non-empty.
    fn set_mask(&mut self, mask: u32) -> Result<(), DataplaneError>;
    /// The verdict counters, summed over CPUs, indexed by `sluice_abi::stat`.
    fn stats(&self) -> Result<Vec<Counter>, DataplaneError>;
    /// Sets the import in flight: entries of that generation are pending
    /// (answered by their parent) until it is set to 0.
    fn set_pending(&mut self, gen: u32) -> Result<(), DataplaneError>;
    /// Sets who decides for a pending entry in `slot`: parent slot + 1, or 0.
    fn set_parent(&mut self, slot: u32, parent: u32) -> Result<(), DataplaneError>;
    /// Capacity of each table and of the counter array.
    fn capacity(&self) -> u32;
}

impl FirewallTables for FirewallMaps {
    fn insert(&mut self, table: FwTable, key: LpmKey, rule: FwRule) -> Result<(), DataplaneError> {
        FirewallMaps::insert(self, table, key, rule)
    }
    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError> {
        FirewallMaps::remove(self, table, key)
    }
    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, FwRule)>, DataplaneError> {
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
    fn set_pending(&mut self, gen: u32) -> Result<(), DataplaneError> {
        FirewallMaps::set_pending(self, gen)
    }
    fn set_parent(&mut self, slot: u32, parent: u32) -> Result<(), DataplaneError> {
        FirewallMaps::set_parent(self, slot, parent)
    }
    fn capacity(&self) -> u32 {
        FirewallMaps::capacity(self)
    }
}

/// In-memory tables for tests: the kernel's semantics, including "full",
/// pending imports and their parents, and a [`MemFirewallTables::decide`]
/// that looks an address up as the XDP program does.
#[cfg(any(test, feature = "test-support"))]
#[derive(Default)]
pub struct MemFirewallTables {
    pub tables: BTreeMap<FwTable, Vec<(LpmKey, FwRule)>>,
    pub counters: BTreeMap<u32, Counter>,
    pub parents: BTreeMap<u32, u32>,
    pub pending: u32,
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

    /// The slot of the rule that decides for `addr` in `table`, as the XDP
    /// program finds it: the longest prefix, or its parent while pending.
    pub fn decide(&self, table: FwTable, addr: std::net::IpAddr) -> Option<u32> {
        let host = LpmKey::from(ipnet::IpNet::from(addr));
        let contains = |k: &LpmKey| match (k, &host) {
            (LpmKey::V4(k), LpmKey::V4(h)) => {
                let n = ipnet::Ipv4Net::new(k.addr.into(), k.prefixlen as u8).expect("valid key");
                n.contains(&std::net::Ipv4Addr::from(h.addr))
            }
            (LpmKey::V6(k), LpmKey::V6(h)) => {
                let n = ipnet::Ipv6Net::new(k.addr.into(), k.prefixlen as u8).expect("valid key");
                n.contains(&std::net::Ipv6Addr::from(h.addr))
            }
            _ => false,
        };
        let len = |k: &LpmKey| match k {
            LpmKey::V4(k) => k.prefixlen,
            LpmKey::V6(k) => k.prefixlen,
        };
        let (_, r) = self
            .tables
            .get(&table)?
            .iter()
            .filter(|(k, _)| contains(k))
            .max_by_key(|(k, _)| len(k))?;
        if r.gen != 0 && r.gen == self.pending {
            return self.parents.get(&r.slot).copied().filter(|p| *p != 0).map(|p| p - 1);
        }
        Some(r.slot)
    }
}

#[cfg(any(test, feature = "test-support"))]
impl FirewallTables for MemFirewallTables {
    fn insert(&mut self, table: FwTable, key: LpmKey, rule: FwRule) -> Result<(), DataplaneError> {
        if std::mem::take(&mut self.fail_next_insert) {
            return Err(DataplaneError::Missing("injected failure"));
        }
        let t = self.tables.entry(table).or_default();
        if let Some(e) = t.iter_mut().find(|(k, _)| *k == key) {
            e.1 = rule;
            return Ok(());
        }
        if t.len() as u32 >= self.capacity {
            return Err(DataplaneError::Full {
                table: table.map_name(),
                capacity: self.capacity,
            });
        }
        t.push((key, rule));
        Ok(())
    }

    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError> {
        if let Some(t) = self.tables.get_mut(&table) {
            t.retain(|(k, _)| *k != key);
        }
        Ok(())
    }

    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, FwRule)>, DataplaneError> {
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

    fn set_pending(&mut self, gen: u32) -> Result<(), DataplaneError> {
        self.pending = gen;
        Ok(())
    }

    fn set_parent(&mut self, slot: u32, parent: u32) -> Result<(), DataplaneError> {
        self.parents.insert(slot, parent);
        Ok(())
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// A shared double, so a test can look into the tables while the firewall
/// owns them.
#[cfg(any(test, feature = "test-support"))]
impl FirewallTables for std::sync::Arc<std::sync::Mutex<MemFirewallTables>> {
    fn insert(&mut self, table: FwTable, key: LpmKey, rule: FwRule) -> Result<(), DataplaneError> {
        self.lock().unwrap().insert(table, key, rule)
    }
    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError> {
        self.lock().unwrap().remove(table, key)
    }
    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, FwRule)>, DataplaneError> {
        self.lock().unwrap().entries(table)
    }
    fn reset_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.lock().unwrap().reset_counter(slot)
    }
    fn counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        self.lock().unwrap().counter(slot)
    }
    fn set_mask(&mut self, mask: u32) -> Result<(), DataplaneError> {
        self.lock().unwrap().set_mask(mask)
    }
    fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        self.lock().unwrap().stats()
    }
    fn set_pending(&mut self, gen: u32) -> Result<(), DataplaneError> {
        self.lock().unwrap().set_pending(gen)
    }
    fn set_parent(&mut self, slot: u32, parent: u32) -> Result<(), DataplaneError> {
        self.lock().unwrap().set_parent(slot, parent)
    }
    fn capacity(&self) -> u32 {
        self.lock().unwrap().capacity()
    }
}
