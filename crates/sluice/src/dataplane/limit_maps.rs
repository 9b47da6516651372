//! The rate limiter's maps in the XDP object: the double-buffered rule set,
//! the shared buckets, the per-source bucket LRU and the per-rule counters.
//! The limits controller reaches them through its `LimitTables` seam.
//! Publishing a rule set writes the idle half of
//! `sl_limits` and then flips `sl_lim_sel` with one 4-byte store, so the XDP
//! program always sees a whole rule set, old or new.

use std::collections::HashMap;

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use sluice_abi::{xdp as names, LimitBucket, LimitCnt, LimitRule, LimitShared, LimitSrcKey, LIM_SEL_SHIFT, MAX_LIMITS};

use super::DataplaneError;

pub struct LimitMaps {
    rules: Array<MapData, LimitRule>,
    select: Array<MapData, u32>,
    state: Array<MapData, LimitShared>,
    sources: BpfHashMap<MapData, LimitSrcKey, LimitBucket>,
    counters: PerCpuArray<MapData, LimitCnt>,
    source_capacity: u32,
    ncpus: usize,
    /// When the active half last changed: a half is rewritten only after
    /// every program run that could still be reading it has finished.
    last_flip: std::time::Instant,
}

/// Longer than any run of the XDP program (microseconds).
const HALF_REUSE_GRACE: std::time::Duration = std::time::Duration::from_millis(2);

impl LimitMaps {
    pub(super) fn new(ebpf: &mut Ebpf, source_capacity: u32, ncpus: usize) -> Result<Self, DataplaneError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        Ok(LimitMaps {
            rules: Array::try_from(take(names::LIMITS)?)?,
            select: Array::try_from(take(names::LIMIT_SELECT)?)?,
            state: Array::try_from(take(names::LIMIT_STATE)?)?,
            sources: BpfHashMap::try_from(take(names::LIMIT_SOURCES)?)?,
            counters: PerCpuArray::try_from(take(names::LIMIT_COUNTERS)?)?,
            source_capacity,
            ncpus,
            last_flip: std::time::Instant::now(),
        })
    }
}

impl LimitMaps {
    pub fn publish(&mut self, rules: &[LimitRule]) -> Result<(), DataplaneError> {
        assert!(
            rules.len() <= MAX_LIMITS as usize,
            "limit rules are bounded by the controller"
        );
        let since = self.last_flip.elapsed();
        if since < HALF_REUSE_GRACE {
            std::thread::sleep(HALF_REUSE_GRACE - since);
        }
        let active = self.select.get(&0, 0)? >> LIM_SEL_SHIFT;
        let idle = 1 - (active & 1);
        for (i, r) in rules.iter().enumerate() {
            self.rules.set(idle * MAX_LIMITS + i as u32, r, 0)?;
        }
        self.select.set(0, (idle << LIM_SEL_SHIFT) | rules.len() as u32, 0)?;
        self.last_flip = std::time::Instant::now();
        Ok(())
    }

    pub fn reset_slot(&mut self, slot: u16, now: u64) -> Result<(), DataplaneError> {
        // A new bucket starts full: TAT = now, in the limiter's 1/256 ns.
        let b = LimitBucket {
            tat: now << sluice_abi::GCRA_TIME_SHIFT,
            warm_start: now,
            last_seen: now,
        };
        self.state.set(slot as u32, LimitShared { b, lock: 0, _pad: 0 }, 0)?;
        let zeros = PerCpuValues::try_from(vec![LimitCnt::default(); self.ncpus]).map_err(|e| DataplaneError::Io {
            path: "per-CPU values".into(),
            source: e,
        })?;
        Ok(self.counters.set(slot as u32, zeros, 0)?)
    }

    pub fn counters(&self, slot: u16) -> Result<LimitCnt, DataplaneError> {
        let v = self.counters.get(&(slot as u32), 0)?;
        Ok(v.iter().fold(LimitCnt::default(), |a, c| LimitCnt {
            passed: a.passed + c.passed,
            passed_bytes: a.passed_bytes + c.passed_bytes,
            dropped: a.dropped + c.dropped,
            dropped_bytes: a.dropped_bytes + c.dropped_bytes,
            new_sources: a.new_sources + c.new_sources,
        }))
    }

    pub fn sources(&self) -> Result<HashMap<(u16, u32), u64>, DataplaneError> {
        let mut out = HashMap::new();
        for k in self.sources.keys() {
            // Entries may vanish during the walk (LRU eviction): skip them.
            let Ok(k) = k else { continue };
            *out.entry((k.slot, k.gen)).or_insert(0) += 1;
        }
        Ok(out)
    }

    pub fn source_capacity(&self) -> u32 {
        self.source_capacity
    }
}
