//! The L7 capture's maps in the TC object (`bpf/include/l7_capture.h`).
//! Visibility reaches them through its `CaptureTables` seam.

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use super::{ignore_missing, tc_config::SharedTcConfig, DataplaneError};

/// The L7 capture's maps in the TC object (`bpf/include/l7_capture.h`): the
/// ports of each protocol and the capture settings in the TC config word.
pub struct L7CaptureMaps {
    ports: HashMap<MapData, u16, u8>,
    config: SharedTcConfig,
}

impl L7CaptureMaps {
    pub(super) fn new(ebpf: &mut Ebpf, config: SharedTcConfig) -> Result<Self, DataplaneError> {
        let map = ebpf
            .take_map(sluice_abi::l7::PORTS_MAP)
            .ok_or(DataplaneError::Missing(sluice_abi::l7::PORTS_MAP))?;
        Ok(L7CaptureMaps {
            ports: HashMap::try_from(map)?,
            config,
        })
    }

    /// Sets the L7 capture: bytes per packet (0 = off), protocol detection
    /// on other ports, and the ports of each protocol (exactly these).
    pub fn configure(&mut self, cap: u32, detect: bool, ports: &[(u16, u8)]) -> Result<(), DataplaneError> {
        let want: std::collections::HashMap<u16, u8> = ports.iter().copied().collect();
        let have: Vec<(u16, u8)> = self.ports.iter().filter_map(Result::ok).collect();
        for (p, v) in have {
            if want.get(&p) != Some(&v) {
                ignore_missing(self.ports.remove(&p))?;
            }
        }
        for (p, v) in &want {
            self.ports.insert(p, v, 0)?;
        }
        self.config.update(|c| {
            c.l7_cap = cap;
            c.l7_detect = detect as u32;
        })
    }
}
