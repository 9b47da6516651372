//! The forward capability's maps in the TC object (`bpf/include/forward.h`):
//! the forward table and its counters, the translation state (`sl_ct`), the
//! redirect tries and their counters, the rule counts in the TC config word
//! and the TC statistics. The forward controller reaches them through its
//! `ForwardTables` seam.

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use sluice_abi::{tc as names, Counter, CtKey, CtVal, FwdKey, FwdRule, RedirVal};

use super::{ignore_missing, sum, tc_config::SharedTcConfig, DataplaneError, LpmKey};

pub struct ForwardMaps {
    fwd: HashMap<MapData, FwdKey, FwdRule>,
    fwd_cnt: PerCpuArray<MapData, Counter>,
    ct: HashMap<MapData, CtKey, CtVal>,
    redir4: LpmTrie<MapData, [u8; 4], RedirVal>,
    redir6: LpmTrie<MapData, [u8; 16], RedirVal>,
    redir_cnt: PerCpuArray<MapData, Counter>,
    config: SharedTcConfig,
    stats: PerCpuArray<MapData, Counter>,
    ct_capacity: u32,
    ncpus: usize,
}

impl ForwardMaps {
    pub(super) fn new(
        ebpf: &mut Ebpf,
        config: SharedTcConfig,
        ct_capacity: u32,
        ncpus: usize,
    ) -> Result<Self, DataplaneError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        Ok(ForwardMaps {
            fwd: HashMap::try_from(take(names::FORWARDS)?)?,
            fwd_cnt: PerCpuArray::try_from(take(names::FORWARD_COUNTERS)?)?,
            ct: HashMap::try_from(take(names::CT)?)?,
            redir4: LpmTrie::try_from(take(names::REDIRECT4)?)?,
            redir6: LpmTrie::try_from(take(names::REDIRECT6)?)?,
            redir_cnt: PerCpuArray::try_from(take(names::REDIRECT_COUNTERS)?)?,
            config,
            stats: PerCpuArray::try_from(take(names::STATS)?)?,
            ct_capacity,
            ncpus,
        })
    }

    fn zeros(&self) -> Result<PerCpuValues<Counter>, DataplaneError> {
        PerCpuValues::try_from(vec![Counter::default(); self.ncpus]).map_err(|e| DataplaneError::Io {
            path: "per-CPU values".into(),
            source: e,
        })
    }

    pub fn set_forward(&mut self, key: FwdKey, rule: FwdRule) -> Result<(), DataplaneError> {
        Ok(self.fwd.insert(key, rule, 0)?)
    }

    pub fn remove_forward(&mut self, key: &FwdKey) -> Result<(), DataplaneError> {
        ignore_missing(self.fwd.remove(key))
    }

    pub fn forwards(&self) -> Result<Vec<(FwdKey, FwdRule)>, DataplaneError> {
        Ok(self.fwd.iter().collect::<Result<_, _>>()?)
    }

    pub fn forward_counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        Ok(sum(&self.fwd_cnt.get(&slot, 0)?))
    }

    pub fn reset_forward_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let zero = self.zeros()?;
        Ok(self.fwd_cnt.set(slot, zero, 0)?)
    }

    pub fn set_redirect(&mut self, key: LpmKey, val: RedirVal) -> Result<(), DataplaneError> {
        Ok(match key {
            LpmKey::V4(k) => self.redir4.insert(&Key::new(k.prefixlen, k.addr), val, 0),
            LpmKey::V6(k) => self.redir6.insert(&Key::new(k.prefixlen, k.addr), val, 0),
        }?)
    }

    pub fn remove_redirect(&mut self, key: LpmKey) -> Result<(), DataplaneError> {
        ignore_missing(match key {
            LpmKey::V4(k) => self.redir4.remove(&Key::new(k.prefixlen, k.addr)),
            LpmKey::V6(k) => self.redir6.remove(&Key::new(k.prefixlen, k.addr)),
        })
    }

    /// Every redirect entry: (prefix, value).
    pub fn redirects(&self) -> Result<Vec<(LpmKey, RedirVal)>, DataplaneError> {
        let mut out = Vec::new();
        for kv in self.redir4.iter() {
            let (k, v) = kv?;
            out.push((
                LpmKey::V4(sluice_abi::LpmV4Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                }),
                v,
            ));
        }
        for kv in self.redir6.iter() {
            let (k, v) = kv?;
            out.push((
                LpmKey::V6(sluice_abi::LpmV6Key {
                    prefixlen: k.prefix_len(),
                    addr: k.data(),
                }),
                v,
            ));
        }
        Ok(out)
    }

    pub fn redirect_counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        Ok(sum(&self.redir_cnt.get(&slot, 0)?))
    }

    pub fn reset_redirect_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let zero = self.zeros()?;
        Ok(self.redir_cnt.set(slot, zero, 0)?)
    }

    /// Publishes the rule counts (zero skips the stage in the kernel).
    pub fn set_counts(&mut self, nforwards: u32, nredirects: u32) -> Result<(), DataplaneError> {
        self.config.update(|c| {
            c.nforwards = nforwards;
            c.nredirects = nredirects;
        })
    }

    /// The TC statistics, indexed by `sluice_abi::tc::STAT_*`.
    pub fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        (0..names::STAT_COUNT)
            .map(|i| Ok(sum(&self.stats.get(&i, 0)?)))
            .collect()
    }

    /// Every translation-state entry. Entries may vanish or appear while
    /// this walks the map; that is fine for counting and expiry.
    pub fn flows(&self) -> Vec<(CtKey, CtVal)> {
        // get_next_key restarts from the first key when the cursor was
        // evicted meanwhile: bound the walk so churn cannot make it endless.
        let max = self.ct_capacity as usize;
        let mut seen = std::collections::HashSet::new();
        self.ct
            .iter()
            .take(max.saturating_mul(2))
            .filter_map(Result::ok)
            .filter(|(k, _)| seen.insert(*k))
            .collect()
    }

    pub fn remove_flow(&mut self, key: &CtKey) -> Result<(), DataplaneError> {
        ignore_missing(self.ct.remove(key))
    }
}
