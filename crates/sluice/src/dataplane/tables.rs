//! The firewall tables as a narrow interface, [`Tables`], with two
//! implementations: [`KernelTables`] writes the pinned BPF maps, and
//! [`MemTables`] is an in-memory stand-in so the rule logic and the API can
//! be tested without root or a kernel.

use std::collections::BTreeMap;

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues},
    Ebpf,
};
use sluice_abi::{stat, xdp as names, Counter, FwConfig, FwRule, FwTable, ABI_VERSION};

use super::DataplaneError;
use crate::rules::LpmKey;

/// Write access to the firewall's kernel state.
pub trait Tables: Send {
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

/// The pinned BPF maps of the XDP object.
pub struct KernelTables {
    v4: BTreeMap<FwTable, LpmTrie<MapData, [u8; 4], FwRule>>,
    v6: BTreeMap<FwTable, LpmTrie<MapData, [u8; 16], FwRule>>,
    rule_cnt: PerCpuArray<MapData, Counter>,
    stats: PerCpuArray<MapData, Counter>,
    config: Array<MapData, FwConfig>,
    capacity: u32,
    ncpus: usize,
}

impl KernelTables {
    /// Number of possible CPUs (the length of per-CPU values).
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    /// Takes the firewall maps out of a loaded object.
    pub fn new(ebpf: &mut Ebpf, capacity: u32) -> Result<Self, DataplaneError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        let mut v4 = BTreeMap::new();
        let mut v6 = BTreeMap::new();
        for t in FwTable::ALL {
            let m = take(t.map_name())?;
            if t.is_v6() {
                v6.insert(t, LpmTrie::try_from(m)?);
            } else {
                v4.insert(t, LpmTrie::try_from(m)?);
            }
        }
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        Ok(KernelTables {
            v4,
            v6,
            rule_cnt: PerCpuArray::try_from(take(names::RULE_COUNTERS)?)?,
            stats: PerCpuArray::try_from(take(names::STATS)?)?,
            config: Array::try_from(take(names::CONFIG)?)?,
            capacity,
            ncpus,
        })
    }
}

fn full(e: MapError, table: FwTable, capacity: u32) -> DataplaneError {
    if let MapError::SyscallError(s) = &e {
        if matches!(s.io_error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::E2BIG)) {
            return DataplaneError::Full {
                table: table.map_name(),
                capacity,
            };
        }
    }
    e.into()
}

/// A per-CPU counter summed over CPUs.
pub(super) fn sum(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

/// A delete of a key that is not there is not an error.
pub(super) fn ignore_missing(r: Result<(), MapError>) -> Result<(), DataplaneError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => Ok(other?),
    }
}

impl Tables for KernelTables {
    fn insert(&mut self, table: FwTable, key: LpmKey, slot: u32) -> Result<(), DataplaneError> {
        let v = FwRule { slot, flags: 0 };
        let cap = self.capacity;
        match key {
            LpmKey::V4(k) => self
                .v4
                .get_mut(&table)
                .expect("v4 table")
                .insert(&Key::new(k.prefixlen, k.addr), v, 0),
            LpmKey::V6(k) => self
                .v6
                .get_mut(&table)
                .expect("v6 table")
                .insert(&Key::new(k.prefixlen, k.addr), v, 0),
        }
        .map_err(|e| full(e, table, cap))
    }

    fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError> {
        ignore_missing(match key {
            LpmKey::V4(k) => self
                .v4
                .get_mut(&table)
                .expect("v4 table")
                .remove(&Key::new(k.prefixlen, k.addr)),
            LpmKey::V6(k) => self
                .v6
                .get_mut(&table)
                .expect("v6 table")
                .remove(&Key::new(k.prefixlen, k.addr)),
        })
    }

    fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, u32)>, DataplaneError> {
        let mut out = Vec::new();
        if table.is_v6() {
            for kv in self.v6[&table].iter() {
                let (k, v) = kv?;
                out.push((
                    LpmKey::V6(sluice_abi::LpmV6Key {
                        prefixlen: k.prefix_len(),
                        addr: k.data(),
                    }),
                    v.slot,
                ));
            }
        } else {
            for kv in self.v4[&table].iter() {
                let (k, v) = kv?;
                out.push((
                    LpmKey::V4(sluice_abi::LpmV4Key {
                        prefixlen: k.prefix_len(),
                        addr: k.data(),
                    }),
                    v.slot,
                ));
            }
        }
        Ok(out)
    }

    fn reset_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); self.ncpus]).map_err(|e| DataplaneError::Io {
            path: "per-CPU values".into(),
            source: e,
        })?;
        Ok(self.rule_cnt.set(slot, zeros, 0)?)
    }

    fn counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        Ok(sum(&self.rule_cnt.get(&slot, 0)?))
    }

    fn set_mask(&mut self, mask: u32) -> Result<(), DataplaneError> {
        Ok(self.config.set(
            0,
            FwConfig {
                abi_version: ABI_VERSION,
                table_mask: mask,
            },
            0,
        )?)
    }

    fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        (0..stat::COUNT).map(|i| Ok(sum(&self.stats.get(&i, 0)?))).collect()
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// In-memory tables for tests: same semantics, including "full".
#[derive(Default)]
pub struct MemTables {
    pub tables: BTreeMap<FwTable, Vec<(LpmKey, u32)>>,
    pub counters: BTreeMap<u32, Counter>,
    pub mask: u32,
    pub capacity: u32,
    /// When set, the next insert fails (to test rollback).
    pub fail_next_insert: bool,
}

impl MemTables {
    pub fn new(capacity: u32) -> Self {
        MemTables {
            capacity,
            ..Default::default()
        }
    }
}

impl Tables for MemTables {
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
        Ok(vec![Counter::default(); stat::COUNT as usize])
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }
}
