//! The firewall's maps in the XDP object: the eight LPM tries (allow/deny x
//! src/dst x IPv4/IPv6), the per-rule counters, the verdict counters (two
//! maps: `sl_stats` and the later `sl_stats_ext`) and the config word that
//! says which tries hold entries. The firewall
//! controller reaches them through its `FirewallTables` seam.

use std::collections::BTreeMap;

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues},
    Ebpf,
};
use sluice_abi::{stat, xdp as names, Counter, FwConfig, FwRule, FwTable, ABI_VERSION};

use super::{ignore_missing, sum, DataplaneError, LpmKey};

/// The pinned BPF maps of the XDP object.
pub struct FirewallMaps {
    v4: BTreeMap<FwTable, LpmTrie<MapData, [u8; 4], FwRule>>,
    v6: BTreeMap<FwTable, LpmTrie<MapData, [u8; 16], FwRule>>,
    rule_cnt: PerCpuArray<MapData, Counter>,
    stats: PerCpuArray<MapData, Counter>,
    stats_ext: PerCpuArray<MapData, Counter>,
    config: Array<MapData, FwConfig>,
    pending: Array<MapData, u32>,
    parent: Array<MapData, u32>,
    capacity: u32,
    ncpus: usize,
}

impl FirewallMaps {
    /// Takes the firewall maps out of a loaded object.
    pub(super) fn new(ebpf: &mut Ebpf, capacity: u32, ncpus: usize) -> Result<Self, DataplaneError> {
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
        Ok(FirewallMaps {
            v4,
            v6,
            rule_cnt: PerCpuArray::try_from(take(names::RULE_COUNTERS)?)?,
            stats: PerCpuArray::try_from(take(names::STATS)?)?,
            stats_ext: PerCpuArray::try_from(take(names::STATS_EXT)?)?,
            config: Array::try_from(take(names::CONFIG)?)?,
            pending: Array::try_from(take(names::PENDING)?)?,
            parent: Array::try_from(take(names::RULE_PARENT)?)?,
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

impl FirewallMaps {
    pub fn insert(&mut self, table: FwTable, key: LpmKey, v: FwRule) -> Result<(), DataplaneError> {
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

    pub fn remove(&mut self, table: FwTable, key: LpmKey) -> Result<(), DataplaneError> {
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

    pub fn entries(&self, table: FwTable) -> Result<Vec<(LpmKey, FwRule)>, DataplaneError> {
        let mut out = Vec::new();
        if table.is_v6() {
            for kv in self.v6[&table].iter() {
                let (k, v) = kv?;
                out.push((
                    LpmKey::V6(sluice_abi::LpmV6Key {
                        prefixlen: k.prefix_len(),
                        addr: k.data(),
                    }),
                    v,
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
                    v,
                ));
            }
        }
        Ok(out)
    }

    pub fn reset_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); self.ncpus]).map_err(|e| DataplaneError::Io {
            path: "per-CPU values".into(),
            source: e,
        })?;
        Ok(self.rule_cnt.set(slot, zeros, 0)?)
    }

    pub fn counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        Ok(sum(&self.rule_cnt.get(&slot, 0)?))
    }

    pub fn set_mask(&mut self, mask: u32) -> Result<(), DataplaneError> {
        Ok(self.config.set(
            0,
            FwConfig {
                abi_version: ABI_VERSION,
                table_mask: mask,
            },
            0,
        )?)
    }

    /// Every verdict and note counter, indexed by `sluice_abi::stat`.
    pub fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        (0..stat::ALL)
            .map(|i| {
                let v = if i < stat::COUNT {
                    self.stats.get(&i, 0)?
                } else {
                    self.stats_ext.get(&(i - stat::COUNT), 0)?
                };
                Ok(sum(&v))
            })
            .collect()
    }

    /// Sets the import in flight (0: none, which puts every entry in force).
    pub fn set_pending(&mut self, gen: u32) -> Result<(), DataplaneError> {
        Ok(self.pending.set(0, gen, 0)?)
    }

    /// The import in flight, as the kernel has it.
    pub fn pending(&self) -> Result<u32, DataplaneError> {
        Ok(self.pending.get(&0, 0)?)
    }

    /// Sets who decides for a pending entry in `slot`: its parent's slot
    /// + 1, or 0 for nobody.
    pub fn set_parent(&mut self, slot: u32, parent: u32) -> Result<(), DataplaneError> {
        Ok(self.parent.set(slot, parent, 0)?)
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}
