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
        shape::<u32, u32>(names::PENDING, MapType::Array, 1),
        shape::<u32, u32>(names::RULE_PARENT, MapType::Array, cap.max_rules),
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
            let key = if FwTable::ALL.iter().any(|t| t.map_name() == shape.name)
                || shape.name == names::RULE_COUNTERS
                || shape.name == names::RULE_PARENT
            {
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

/// A pinned object: bpffs shows pins as regular files (a symlink is not
/// one, and is never followed).
fn is_pin(e: &fs::DirEntry) -> bool {
    e.file_type().is_ok_and(|t| t.is_file())
}

/// Pinned tcx links: (ifindex, path), ingress and egress.
pub(super) fn tc_pins(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten().filter(is_pin) {
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
    for e in rd.flatten().filter(is_pin) {
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
    let meta = match fs::symlink_metadata(pin_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        r => r.map_err(io_err(pin_dir))?,
    };
    // Everything in pin_dir is removed: make sure it is a pin directory of
    // its own (a real directory on bpffs, not the mount's root where
    // others pin too), and follow no symlink in it.
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if !meta.is_dir() || !is_bpffs(pin_dir) || !is_bpffs(parent) {
        return Err(DataplaneError::NotPinDir(pin_dir.to_path_buf()));
    }
    let links = pin_dir.join("links");
    let links_is_dir = fs::symlink_metadata(&links).is_ok_and(|m| m.is_dir());
    if links_is_dir {
        for (ifindex, mode, pin) in pinned_links(&links) {
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
        for (ifindex, pin) in tc_pins(&links) {
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
        remove_entries(&links, &mut removed, "unpinned ")?;
        let _ = fs::remove_dir(&links);
    }
    remove_entries(pin_dir, &mut removed, "unpinned map ")?;
    fs::remove_dir(pin_dir).map_err(io_err(pin_dir))?;
    removed.push(format!("removed {}", pin_dir.display()));
    Ok(removed)
}

/// Removes every non-directory entry of `dir` in name order. A symlink is
/// removed itself, never followed, and said so.
fn remove_entries(dir: &Path, removed: &mut Vec<String>, what: &str) -> Result<(), DataplaneError> {
    let mut entries: Vec<_> = fs::read_dir(dir).map_err(io_err(dir))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            continue;
        }
        let p = e.path();
        fs::remove_file(&p).map_err(io_err(&p))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if t.is_symlink() {
            removed.push(format!("removed the symlink {} (not followed)", p.display()));
        } else if what == "unpinned map " {
            removed.push(format!("{what}{name}"));
        } else {
            removed.push(format!("{what}{}", p.display()));
        }
    }
    Ok(())
}
