//! The pin directory: what a pinned map must look like for this build to
//! reuse it ([`check_pins`]), the pinned links by interface, and
//! [`teardown`] for `sluice down`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use std::mem::size_of;

use aya::maps::{Map, MapData, MapType};
use sluice_abi::{xdp as names, FwTable, ABI_VERSION};

use super::{io_err, probe::AttachMode, Capacity, DataplaneError};
use crate::sys::{iface::ifname, mounts::is_bpffs};

/// What a pinned map must look like for this build to reuse it.
struct MapShape {
    name: &'static str,
    ty: MapType,
    key: u32,
    value: u32,
    max_entries: u32,
}

fn expected_maps(cap: Capacity) -> Vec<MapShape> {
    use sluice_abi::{ev, l7, tc, *};
    fn shape<K, V>(name: &'static str, ty: MapType, max_entries: u32) -> MapShape {
        MapShape {
            name,
            ty,
            key: size_of::<K>() as u32,
            value: size_of::<V>() as u32,
            max_entries,
        }
    }
    let lim = MAX_LIMITS;
    let mut v: Vec<MapShape> = FwTable::ALL
        .iter()
        .map(|t| {
            if t.is_v6() {
                shape::<LpmV6Key, FwRule>(t.map_name(), MapType::LpmTrie, cap.max_rules)
            } else {
                shape::<LpmV4Key, FwRule>(t.map_name(), MapType::LpmTrie, cap.max_rules)
            }
        })
        .collect();
    v.extend([
        shape::<u32, Counter>(names::RULE_COUNTERS, MapType::PerCpuArray, cap.max_rules),
        shape::<u32, Counter>(names::STATS, MapType::PerCpuArray, stat::COUNT),
        shape::<u32, Counter>(names::STATS_EXT, MapType::PerCpuArray, stat::ALL - stat::COUNT),
        shape::<u32, FwConfig>(names::CONFIG, MapType::Array, 1),
        shape::<u32, LimitRule>(names::LIMITS, MapType::Array, 2 * lim),
        shape::<u32, u32>(names::LIMIT_SELECT, MapType::Array, 1),
        shape::<u32, LimitShared>(names::LIMIT_STATE, MapType::Array, lim),
        shape::<LimitSrcKey, LimitBucket>(names::LIMIT_SOURCES, MapType::LruHash, cap.limit_sources),
        shape::<u32, LimitCnt>(names::LIMIT_COUNTERS, MapType::PerCpuArray, lim),
        shape::<(), ()>(ev::RING, MapType::RingBuf, cap.ring_bytes),
        shape::<u32, u64>(ev::LOST, MapType::PerCpuArray, ev::LOST_COUNT),
        shape::<u32, EvConfig>(ev::CONFIG, MapType::Array, 1),
        shape::<IfStatKey, Counter>(ev::IF_STATS, MapType::LruPerCpuHash, ev::IF_STATS_ENTRIES),
        shape::<FwdKey, FwdRule>(tc::FORWARDS, MapType::Hash, tc::MAX_FORWARDS),
        shape::<u32, Counter>(tc::FORWARD_COUNTERS, MapType::PerCpuArray, tc::MAX_FORWARDS),
        shape::<CtKey, CtVal>(tc::CT, MapType::LruHash, cap.max_flows),
        shape::<LpmV4Key, RedirVal>(tc::REDIRECT4, MapType::LpmTrie, tc::MAX_REDIRECTS),
        shape::<LpmV6Key, RedirVal>(tc::REDIRECT6, MapType::LpmTrie, tc::MAX_REDIRECTS),
        shape::<u32, Counter>(tc::REDIRECT_COUNTERS, MapType::PerCpuArray, tc::MAX_REDIRECTS),
        shape::<u32, Mac>(tc::PEER_MAC, MapType::Hash, tc::PEER_MAC_ENTRIES),
        shape::<u32, TcConfig>(tc::CONFIG, MapType::Array, 1),
        shape::<u16, u8>(l7::PORTS_MAP, MapType::Hash, l7::PORTS),
        shape::<CtKey, L7Flow>(l7::FLOWS_MAP, MapType::LruHash, l7::FLOWS),
        shape::<u32, Counter>(tc::STATS, MapType::PerCpuArray, tc::STAT_COUNT),
    ]);
    v
}

/// Refuses pinned maps whose type, key/value size, capacity or ABI version
/// differ from this build: aya would otherwise reuse them silently.
pub fn check_pins(pin_dir: &Path, cap: Capacity) -> Result<(), DataplaneError> {
    for shape in expected_maps(cap) {
        let path = pin_dir.join(shape.name);
        if !path.exists() {
            continue;
        }
        let bad = |why: String| DataplaneError::IncompatiblePin {
            name: shape.name.into(),
            dir: pin_dir.into(),
            why,
        };
        let data = MapData::from_pin(&path)?;
        let info = data.info()?;
        let ty = info.map_type().map_err(|e| bad(e.to_string()))?;
        if ty != shape.ty {
            return Err(bad(format!("type {ty:?}, expected {:?}", shape.ty)));
        }
        if info.key_size() != shape.key || info.value_size() != shape.value {
            return Err(bad(format!(
                "key/value size {}/{}, expected {}/{}",
                info.key_size(),
                info.value_size(),
                shape.key,
                shape.value
            )));
        }
        // The C objects set one flag: BPF_F_NO_PREALLOC on every LPM trie
        // (the kernel requires it there). Any other flag (a read-only or
        // per-CPU LRU variant, a zero hash seed) is another layout.
        const BPF_F_NO_PREALLOC: u32 = 1;
        let flags = if shape.ty == MapType::LpmTrie {
            BPF_F_NO_PREALLOC
        } else {
            0
        };
        if info.map_flags() != flags {
            return Err(bad(format!("map flags {:#x}, expected {flags:#x}", info.map_flags())));
        }
        if info.max_entries() != shape.max_entries {
            // Capacities the config sets: name the key.
            let key = if FwTable::ALL.iter().any(|t| t.map_name() == shape.name) || shape.name == names::RULE_COUNTERS {
                " (config key max_rules)"
            } else if shape.name == names::LIMIT_SOURCES {
                " (config key limit_sources)"
            } else if shape.name == sluice_abi::tc::CT {
                " (config key max_flows)"
            } else if shape.name == sluice_abi::ev::RING {
                " (config key events_ring_bytes)"
            } else {
                ""
            };
            return Err(bad(format!(
                "capacity {}, this configuration wants {}{key}",
                info.max_entries(),
                shape.max_entries
            )));
        }
        if shape.name == names::CONFIG {
            let arr: aya::maps::Array<MapData, sluice_abi::FwConfig> = aya::maps::Array::try_from(Map::Array(data))?;
            let cfg = arr.get(&0, 0)?;
            if cfg.abi_version != 0 && cfg.abi_version != ABI_VERSION {
                return Err(bad(format!(
                    "ABI version {}, this build uses {ABI_VERSION}",
                    cfg.abi_version
                )));
            }
        }
    }
    Ok(())
}

/// Removes a link pin (detaching the link unless someone else holds it).
pub(super) fn unpin(pin: &Path) {
    match fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "unpinning link"),
    }
}

/// Pinned tcx links: (ifindex, path), ingress and egress.
pub(super) fn tc_pins(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let idx = name
            .strip_prefix("tcx_in_")
            .or_else(|| name.strip_prefix("tcx_out_"))
            .and_then(|i| i.parse().ok());
        if let Some(idx) = idx {
            out.push((idx, e.path()));
        }
    }
    out.sort();
    out
}

pub(super) fn pinned_links(dir: &Path) -> Vec<(u32, AttachMode, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '_');
        if let (Some("xdp"), Some(idx), Some(mode)) = (parts.next(), parts.next(), parts.next()) {
            let mode = match mode {
                "drv" => AttachMode::Native,
                "skb" => AttachMode::Generic,
                _ => continue,
            };
            if let Ok(idx) = idx.parse() {
                out.push((idx, mode, e.path()));
            }
        }
    }
    out.sort();
    out
}

/// `sluice down`: unpins every link (detaching it) and every map under
/// `pin_dir`, then removes the directory. Returns one line per removed object.
pub fn teardown(pin_dir: &Path) -> Result<Vec<String>, DataplaneError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    // Everything in pin_dir is removed: make sure it is a pin directory of
    // its own (on bpffs, and not the mount's root, where others pin too).
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(pin_dir) || !is_bpffs(parent) {
        return Err(DataplaneError::NotPinDir(pin_dir.to_path_buf()));
    }
    for (ifindex, mode, pin) in pinned_links(&pin_dir.join("links")) {
        fs::remove_file(&pin).map_err(io_err(&pin))?;
        let name = ifname(ifindex).unwrap_or_else(|| "(gone)".into());
        let mode = match mode {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        };
        removed.push(format!(
            "detached XDP firewall ({mode}) from {name} (ifindex {ifindex})"
        ));
    }
    let mut tc: Vec<u32> = Vec::new();
    for (ifindex, pin) in tc_pins(&pin_dir.join("links")) {
        fs::remove_file(&pin).map_err(io_err(&pin))?;
        if !tc.contains(&ifindex) {
            tc.push(ifindex);
        }
    }
    for ifindex in tc {
        let name = ifname(ifindex).unwrap_or_else(|| "(gone)".into());
        removed.push(format!(
            "detached TC forward/redirect (tcx ingress+egress) from {name} (ifindex {ifindex})"
        ));
    }
    let links = pin_dir.join("links");
    for e in fs::read_dir(&links).into_iter().flatten().flatten() {
        let p = e.path();
        fs::remove_file(&p).map_err(io_err(&p))?;
        removed.push(format!("unpinned {}", p.display()));
    }
    let _ = fs::remove_dir(&links);
    let mut entries: Vec<_> = fs::read_dir(pin_dir)
        .map_err(io_err(pin_dir))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            continue;
        }
        fs::remove_file(&p).map_err(io_err(&p))?;
        removed.push(format!(
            "unpinned map {}",
            p.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    fs::remove_dir(pin_dir).map_err(io_err(pin_dir))?;
    removed.push(format!("removed {}", pin_dir.display()));
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya_obj::maps::PinningType;

    use super::*;
    use crate::dataplane::objects;

    /// `check_pins` compares pinned maps with `expected_maps`, whose sizes
    /// come from the ABI mirror: this checks the mirror against what clang
    /// really compiled, map by map, so a layout change that forgets the
    /// mirror (or the ABI version) fails here and not on a user's host.
    #[test]
    fn expected_maps_match_the_compiled_objects() {
        let shapes = expected_maps(Capacity::default());
        let mut seen = BTreeSet::new();
        for obj in [objects::XDP_OBJ, objects::TC_OBJ, objects::TRACE_OBJ] {
            let o = aya_obj::Object::parse(obj).expect("parse an embedded object");
            for (name, m) in &o.maps {
                if m.pinning() != PinningType::ByName {
                    continue;
                }
                let s = shapes
                    .iter()
                    .find(|s| s.name == name)
                    .unwrap_or_else(|| panic!("pinned map {name} is not checked by check_pins"));
                assert_eq!(m.map_type(), s.ty as u32, "{name}: type {:?}", s.ty);
                assert_eq!(
                    (m.key_size(), m.value_size()),
                    (s.key, s.value),
                    "{name}: key/value size"
                );
                assert_eq!(m.max_entries(), s.max_entries, "{name}: capacity");
                let flags = if s.ty == MapType::LpmTrie { 1 } else { 0 };
                assert_eq!(m.map_flags(), flags, "{name}: flags");
                seen.insert(name.clone());
            }
        }
        let unseen: Vec<&str> = shapes.iter().map(|s| s.name).filter(|n| !seen.contains(*n)).collect();
        assert!(unseen.is_empty(), "check_pins expects maps no object pins: {unseen:?}");
    }
}
