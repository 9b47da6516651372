//! The pinned maps of the TC object (`bpf/sluice_tc.bpf.c`): the forward
//! table and its counters, the translation state (`sl_ct`), the redirect
//! tries and their counters, the TC config word and the TC statistics. The
//! [`crate::nat`] controller is their only writer.

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use sluice_abi::{tc as names, Counter, CtKey, CtVal, FwdKey, FwdRule, RedirVal, TcConfig, ABI_VERSION};

use super::{
    tables::{ignore_missing, sum},
    DataplaneError,
};
use crate::rules::LpmKey;

pub struct NatTables {
    fwd: HashMap<MapData, FwdKey, FwdRule>,
    fwd_cnt: PerCpuArray<MapData, Counter>,
    ct: HashMap<MapData, CtKey, CtVal>,
    redir4: LpmTrie<MapData, [u8; 4], RedirVal>,
    redir6: LpmTrie<MapData, [u8; 16], RedirVal>,
    redir_cnt: PerCpuArray<MapData, Counter>,
    config: Array<MapData, TcConfig>,
    stats: PerCpuArray<MapData, Counter>,
    l7_ports: HashMap<MapData, u16, u8>,
    /// What `sl_tc_cfg` holds: rule counts and the L7 capture settings.
    cfg: TcConfig,
    ct_capacity: u32,
    ncpus: usize,
}

impl NatTables {
    pub(super) fn new(ebpf: &mut Ebpf, ct_capacity: u32) -> Result<Self, DataplaneError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        Ok(NatTables {
            fwd: HashMap::try_from(take(names::FORWARDS)?)?,
            fwd_cnt: PerCpuArray::try_from(take(names::FORWARD_COUNTERS)?)?,
            ct: HashMap::try_from(take(names::CT)?)?,
            redir4: LpmTrie::try_from(take(names::REDIRECT4)?)?,
            redir6: LpmTrie::try_from(take(names::REDIRECT6)?)?,
            redir_cnt: PerCpuArray::try_from(take(names::REDIRECT_COUNTERS)?)?,
            config: Array::try_from(take(names::CONFIG)?)?,
            stats: PerCpuArray::try_from(take(names::STATS)?)?,
            l7_ports: HashMap::try_from(take(sluice_abi::l7::PORTS_MAP)?)?,
            cfg: TcConfig {
                abi_version: ABI_VERSION,
                ..Default::default()
            },
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
    pub fn set_config(&mut self, nforwards: u32, nredirects: u32) -> Result<(), DataplaneError> {
        self.cfg.nforwards = nforwards;
        self.cfg.nredirects = nredirects;
        Ok(self.config.set(0, self.cfg, 0)?)
    }

    /// Sets the L7 capture: bytes per packet (0 = off), protocol detection
    /// on other ports, and the ports of each protocol (exactly these).
    pub fn set_l7(&mut self, cap: u32, detect: bool, ports: &[(u16, u8)]) -> Result<(), DataplaneError> {
        let want: std::collections::HashMap<u16, u8> = ports.iter().copied().collect();
        let have: Vec<(u16, u8)> = self.l7_ports.iter().filter_map(Result::ok).collect();
        for (p, v) in have {
            if want.get(&p) != Some(&v) {
                ignore_missing(self.l7_ports.remove(&p))?;
            }
        }
        for (p, v) in &want {
            self.l7_ports.insert(p, v, 0)?;
        }
        self.cfg.l7_cap = cap;
        self.cfg.l7_detect = detect as u32;
        Ok(self.config.set(0, self.cfg, 0)?)
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
