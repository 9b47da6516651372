//! The forward controller's seam to the kernel: [`ForwardTables`],
//! implemented by the dataplane's [`ForwardMaps`] and, for tests, by the
//! in-memory [`MemForwardTables`].

#[cfg(any(test, feature = "test-support"))]
use std::collections::HashMap;

use sluice_abi::{Counter, CtKey, CtVal, FwdKey, FwdRule, RedirVal};

use crate::dataplane::{DataplaneError, ForwardMaps, LpmKey};

/// What the forward controller needs of the kernel: the forward table, the
/// redirect tables, their counters, the translation state and the rule
/// counts the programs read to skip empty stages.
pub trait ForwardTables: Send {
    fn set_forward(&mut self, key: FwdKey, rule: FwdRule) -> Result<(), DataplaneError>;
    /// A missing key is not an error.
    fn remove_forward(&mut self, key: &FwdKey) -> Result<(), DataplaneError>;
    fn forwards(&self) -> Result<Vec<(FwdKey, FwdRule)>, DataplaneError>;
    /// A forward's counter, summed over CPUs.
    fn forward_counter(&self, slot: u32) -> Result<Counter, DataplaneError>;
    fn reset_forward_counter(&mut self, slot: u32) -> Result<(), DataplaneError>;
    fn set_redirect(&mut self, key: LpmKey, val: RedirVal) -> Result<(), DataplaneError>;
    /// A missing key is not an error.
    fn remove_redirect(&mut self, key: LpmKey) -> Result<(), DataplaneError>;
    fn redirects(&self) -> Result<Vec<(LpmKey, RedirVal)>, DataplaneError>;
    fn redirect_counter(&self, slot: u32) -> Result<Counter, DataplaneError>;
    fn reset_redirect_counter(&mut self, slot: u32) -> Result<(), DataplaneError>;
    /// Publishes the rule counts (zero skips the stage in the kernel).
    fn set_counts(&mut self, nforwards: u32, nredirects: u32) -> Result<(), DataplaneError>;
    /// The TC statistics, indexed by `sluice_abi::tc::STAT_*`.
    fn stats(&self) -> Result<Vec<Counter>, DataplaneError>;
    /// Every translation-state entry (entries may come and go meanwhile).
    fn flows(&self) -> Vec<(CtKey, CtVal)>;
    /// A missing key is not an error.
    fn remove_flow(&mut self, key: &CtKey) -> Result<(), DataplaneError>;
}

impl ForwardTables for ForwardMaps {
    fn set_forward(&mut self, key: FwdKey, rule: FwdRule) -> Result<(), DataplaneError> {
        ForwardMaps::set_forward(self, key, rule)
    }
    fn remove_forward(&mut self, key: &FwdKey) -> Result<(), DataplaneError> {
        ForwardMaps::remove_forward(self, key)
    }
    fn forwards(&self) -> Result<Vec<(FwdKey, FwdRule)>, DataplaneError> {
        ForwardMaps::forwards(self)
    }
    fn forward_counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        ForwardMaps::forward_counter(self, slot)
    }
    fn reset_forward_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        ForwardMaps::reset_forward_counter(self, slot)
    }
    fn set_redirect(&mut self, key: LpmKey, val: RedirVal) -> Result<(), DataplaneError> {
        ForwardMaps::set_redirect(self, key, val)
    }
    fn remove_redirect(&mut self, key: LpmKey) -> Result<(), DataplaneError> {
        ForwardMaps::remove_redirect(self, key)
    }
    fn redirects(&self) -> Result<Vec<(LpmKey, RedirVal)>, DataplaneError> {
        ForwardMaps::redirects(self)
    }
    fn redirect_counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        ForwardMaps::redirect_counter(self, slot)
    }
    fn reset_redirect_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        ForwardMaps::reset_redirect_counter(self, slot)
    }
    fn set_counts(&mut self, nforwards: u32, nredirects: u32) -> Result<(), DataplaneError> {
        ForwardMaps::set_counts(self, nforwards, nredirects)
    }
    fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        ForwardMaps::stats(self)
    }
    fn flows(&self) -> Vec<(CtKey, CtVal)> {
        ForwardMaps::flows(self)
    }
    fn remove_flow(&mut self, key: &CtKey) -> Result<(), DataplaneError> {
        ForwardMaps::remove_flow(self, key)
    }
}

/// In-memory forward tables for tests: what the kernel would hold, with
/// counters and flows a test can set.
#[cfg(any(test, feature = "test-support"))]
#[derive(Default)]
pub struct MemForwardTables {
    pub forwards: HashMap<FwdKey, FwdRule>,
    pub redirects: Vec<(LpmKey, RedirVal)>,
    pub forward_counters: HashMap<u32, Counter>,
    pub redirect_counters: HashMap<u32, Counter>,
    pub counts: (u32, u32),
    pub flows: HashMap<CtKey, CtVal>,
}

#[cfg(any(test, feature = "test-support"))]
impl ForwardTables for MemForwardTables {
    fn set_forward(&mut self, key: FwdKey, rule: FwdRule) -> Result<(), DataplaneError> {
        self.forwards.insert(key, rule);
        Ok(())
    }
    fn remove_forward(&mut self, key: &FwdKey) -> Result<(), DataplaneError> {
        self.forwards.remove(key);
        Ok(())
    }
    fn forwards(&self) -> Result<Vec<(FwdKey, FwdRule)>, DataplaneError> {
        Ok(self.forwards.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn forward_counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        Ok(self.forward_counters.get(&slot).copied().unwrap_or_default())
    }
    fn reset_forward_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.forward_counters.remove(&slot);
        Ok(())
    }
    fn set_redirect(&mut self, key: LpmKey, val: RedirVal) -> Result<(), DataplaneError> {
        self.redirects.retain(|(k, _)| *k != key);
        self.redirects.push((key, val));
        Ok(())
    }
    fn remove_redirect(&mut self, key: LpmKey) -> Result<(), DataplaneError> {
        self.redirects.retain(|(k, _)| *k != key);
        Ok(())
    }
    fn redirects(&self) -> Result<Vec<(LpmKey, RedirVal)>, DataplaneError> {
        Ok(self.redirects.clone())
    }
    fn redirect_counter(&self, slot: u32) -> Result<Counter, DataplaneError> {
        Ok(self.redirect_counters.get(&slot).copied().unwrap_or_default())
    }
    fn reset_redirect_counter(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.redirect_counters.remove(&slot);
        Ok(())
    }
    fn set_counts(&mut self, nforwards: u32, nredirects: u32) -> Result<(), DataplaneError> {
        self.counts = (nforwards, nredirects);
        Ok(())
    }
    fn stats(&self) -> Result<Vec<Counter>, DataplaneError> {
        Ok(vec![Counter::default(); sluice_abi::tc::STAT_COUNT as usize])
    }
    fn flows(&self) -> Vec<(CtKey, CtVal)> {
        self.flows.iter().map(|(k, v)| (*k, *v)).collect()
    }
    fn remove_flow(&mut self, key: &CtKey) -> Result<(), DataplaneError> {
        self.flows.remove(key);
        Ok(())
    }
}
