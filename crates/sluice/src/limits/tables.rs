//! The limiter's seam to the kernel: [`LimitTables`], implemented by the
//! dataplane's [`LimitMaps`] and, for tests, by [`MemLimitTables`].

use std::collections::HashMap;

use sluice_abi::{LimitCnt, LimitRule};

use crate::dataplane::{DataplaneError, LimitMaps};

/// What the limiter needs of the kernel.
pub trait LimitTables: Send {
    /// Makes `rules` the active rule set.
    fn publish(&mut self, rules: &[LimitRule]) -> Result<(), DataplaneError>;
    /// Fresh bucket and zero counters for a new rule in `slot`; `now` is
    /// CLOCK_MONOTONIC, the start of its warm-up.
    fn reset_slot(&mut self, slot: u16, now: u64) -> Result<(), DataplaneError>;
    /// A rule's counters, summed over CPUs.
    fn counters(&self, slot: u16) -> Result<LimitCnt, DataplaneError>;
    /// Per-source buckets currently tracked, by (slot, generation).
    fn sources(&self) -> Result<HashMap<(u16, u32), u64>, DataplaneError>;
    /// Capacity of the per-source LRU.
    fn source_capacity(&self) -> u32;
}

impl LimitTables for LimitMaps {
    fn publish(&mut self, rules: &[LimitRule]) -> Result<(), DataplaneError> {
        LimitMaps::publish(self, rules)
    }
    fn reset_slot(&mut self, slot: u16, now: u64) -> Result<(), DataplaneError> {
        LimitMaps::reset_slot(self, slot, now)
    }
    fn counters(&self, slot: u16) -> Result<LimitCnt, DataplaneError> {
        LimitMaps::counters(self, slot)
    }
    fn sources(&self) -> Result<HashMap<(u16, u32), u64>, DataplaneError> {
        LimitMaps::sources(self)
    }
    fn source_capacity(&self) -> u32 {
        LimitMaps::source_capacity(self)
    }
}

/// In-memory stand-in for tests.
#[cfg(any(test, feature = "test-support"))]
#[derive(Default)]
pub struct MemLimitTables {
    pub active: Vec<LimitRule>,
    pub counters: HashMap<u16, LimitCnt>,
    pub resets: Vec<u16>,
}

#[cfg(any(test, feature = "test-support"))]
impl LimitTables for MemLimitTables {
    fn publish(&mut self, rules: &[LimitRule]) -> Result<(), DataplaneError> {
        self.active = rules.to_vec();
        Ok(())
    }

    fn reset_slot(&mut self, slot: u16, _now: u64) -> Result<(), DataplaneError> {
        self.resets.push(slot);
        self.counters.remove(&slot);
        Ok(())
    }

    fn counters(&self, slot: u16) -> Result<LimitCnt, DataplaneError> {
        Ok(self.counters.get(&slot).copied().unwrap_or_default())
    }

    fn sources(&self) -> Result<HashMap<(u16, u32), u64>, DataplaneError> {
        Ok(HashMap::new())
    }

    fn source_capacity(&self) -> u32 {
        1024
    }
}
