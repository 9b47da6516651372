//! Visibility's seams to the kernel: [`EventTables`] (the event counters
//! and sampling settings of the XDP object; [`MemEventTables`] stands in for
//! tests) and [`CaptureTables`] (the L7 capture settings of the TC object,
//! written once at start), implemented by the dataplane's maps.

use std::collections::BTreeMap;

use sluice_abi::{ev, Counter};

use crate::dataplane::{DataplaneError, EventMaps, L7CaptureMaps};

/// Events the kernel could not deliver, by `ev::LOST_*` index.
pub type Lost = [u64; ev::LOST_COUNT as usize];

/// The event counters and settings in the kernel.
pub trait EventTables: Send {
    /// Sets packet sampling (1 in `sample_every` per CPU, 0 = off) and the
    /// per-CPU cap on drop events per second.
    fn configure(&mut self, sample_every: u32, drop_events_per_sec: u32) -> Result<(), DataplaneError>;
    /// Events the kernel could not deliver, summed over CPUs.
    fn lost(&self) -> Result<Lost, DataplaneError>;
    /// Packets and bytes by (ifindex, verdict), summed over CPUs.
    fn if_stats(&self) -> Result<BTreeMap<(u32, u32), Counter>, DataplaneError>;
}

impl EventTables for EventMaps {
    fn configure(&mut self, sample_every: u32, drop_events_per_sec: u32) -> Result<(), DataplaneError> {
        EventMaps::configure(self, sample_every, drop_events_per_sec)
    }
    fn lost(&self) -> Result<Lost, DataplaneError> {
        EventMaps::lost(self)
    }
    fn if_stats(&self) -> Result<BTreeMap<(u32, u32), Counter>, DataplaneError> {
        EventMaps::if_stats(self)
    }
}

/// The L7 capture settings in the kernel.
pub trait CaptureTables: Send {
    /// Bytes captured per packet (0 = off), protocol detection on other
    /// ports, and the ports of each protocol (exactly these).
    fn configure(&mut self, cap: u32, detect: bool, ports: &[(u16, u8)]) -> Result<(), DataplaneError>;
}

impl CaptureTables for L7CaptureMaps {
    fn configure(&mut self, cap: u32, detect: bool, ports: &[(u16, u8)]) -> Result<(), DataplaneError> {
        L7CaptureMaps::configure(self, cap, detect, ports)
    }
}

/// In-memory event counters for tests: set what the kernel would report.
#[cfg(any(test, feature = "test-support"))]
#[derive(Default)]
pub struct MemEventTables {
    pub sample_every: u32,
    pub drop_events_per_sec: u32,
    pub lost: Lost,
    pub if_stats: BTreeMap<(u32, u32), Counter>,
}

#[cfg(any(test, feature = "test-support"))]
impl EventTables for MemEventTables {
    fn configure(&mut self, sample_every: u32, drop_events_per_sec: u32) -> Result<(), DataplaneError> {
        self.sample_every = sample_every;
        self.drop_events_per_sec = drop_events_per_sec;
        Ok(())
    }
    fn lost(&self) -> Result<Lost, DataplaneError> {
        Ok(self.lost)
    }
    fn if_stats(&self) -> Result<BTreeMap<(u32, u32), Counter>, DataplaneError> {
        Ok(self.if_stats.clone())
    }
}
