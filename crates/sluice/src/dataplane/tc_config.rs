//! The TC object's config word (`sl_tc_cfg[0]`), which two capabilities
//! write: forwarding (its rule counts) and the L7 capture (its settings).

use std::sync::{Arc, Mutex};

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use sluice_abi::{tc as names, TcConfig, ABI_VERSION};

use super::DataplaneError;

/// The TC config word (`sl_tc_cfg[0]`), written by two capabilities: the
/// forward rule counts and the L7 capture settings. Each change rewrites
/// the whole word from this cache, under one lock.
#[derive(Clone)]
pub struct SharedTcConfig(Arc<Mutex<(Array<MapData, TcConfig>, TcConfig)>>);

impl SharedTcConfig {
    pub(super) fn new(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let map = ebpf
            .take_map(names::CONFIG)
            .ok_or(DataplaneError::Missing(names::CONFIG))?;
        let cfg = TcConfig {
            abi_version: ABI_VERSION,
            ..Default::default()
        };
        Ok(SharedTcConfig(Arc::new(Mutex::new((Array::try_from(map)?, cfg)))))
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut TcConfig)) -> Result<(), DataplaneError> {
        let mut g = self.0.lock().unwrap();
        let (map, cfg) = &mut *g;
        let mut next = *cfg;
        f(&mut next);
        map.set(0, next, 0)?;
        *cfg = next;
        Ok(())
    }
}
