//! The dataplane: the only code that loads, attaches, pins, reads and writes
//! BPF objects. It loads the embedded C programs ([`objects`]) with aya, pins
//! their maps and links under the pin directory (default
//! `/sys/fs/bpf/sluice`), attaches the probes to interfaces ([`attach`]),
//! adopts what a previous daemon left pinned, and hands each capability the
//! typed maps it writes: [`FirewallMaps`], [`LimitMaps`], [`ForwardMaps`],
//! [`L7CaptureMaps`] and [`EventMaps`].
//!
//! Enforcement outlives the daemon because every map and every link is
//! pinned: a new daemon reopens the same maps by pin path and swaps its
//! freshly loaded program into each pinned link with one atomic
//! `BPF_LINK_UPDATE`, so there is never a moment with no program, nor two.

mod attach;
mod event_maps;
mod firewall_maps;
pub mod foreign;
pub use foreign::{Holder, HookOwner};
mod forward_maps;
#[cfg(any(test, feature = "test-support"))]
pub mod gen;
mod l7_maps;
mod limit_maps;
mod listing;
mod lpm;
pub mod objects;
mod pins;
pub mod probe;
mod tc_config;
mod trace;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
};

pub use attach::{Attachment, Failed};
use aya::{
    maps::{MapError, PerCpuValues},
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
pub use event_maps::{EventMaps, EventRing};
pub use firewall_maps::FirewallMaps;
pub use forward_maps::ForwardMaps;
pub use l7_maps::L7CaptureMaps;
pub use limit_maps::LimitMaps;
pub use listing::Probe;
pub use lpm::LpmKey;
pub use pins::{check_pins, teardown};
pub use probe::{AttachMode, ProbeId, ProbeIdError, ProbeKind};
use sluice_abi::{xdp as names, Counter, FwTable};

use crate::sys::{
    mounts::{ensure_bpffs, MountError},
    paths::private_dir,
};

/// Sizes of the maps the daemon configures at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Each firewall table and the rule counter array.
    pub max_rules: u32,
    /// The per-source bucket LRU of the rate limiter.
    pub limit_sources: u32,
    /// Size of the event ring buffer in bytes (a power of 2, >= 4096).
    pub ring_bytes: u32,
    /// The forwarding translation-state LRU (one entry per flow direction).
    pub max_flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_rules: sluice_abi::DEFAULT_MAX_RULES,
            limit_sources: sluice_abi::DEFAULT_LIMIT_SOURCES,
            ring_bytes: sluice_abi::ev::DEFAULT_RING_BYTES,
            max_flows: sluice_abi::tc::DEFAULT_MAX_FLOWS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{0} is not a directory below a bpffs mount; refusing to remove anything in it")]
    NotPinDir(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pinned map {name} in {dir} does not match this sluice ({why}); run `sluice down` to remove the old pins (rules are kept in the state database; enforcement stops until the next start), or start the sluice version and configuration that created them")]
    IncompatiblePin { name: String, dir: PathBuf, why: String },
    #[error("loading BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("BPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("BPF link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("{table} is full ({capacity} entries); raise max_rules in the config (needs `sluice down` first)")]
    Full { table: &'static str, capacity: u32 },
    #[error("interface {name}: XDP attach failed in native ({native}) and generic ({generic}) mode")]
    Attach {
        name: String,
        native: String,
        generic: String,
    },
    /// Another sluice daemon manages the interface: this one leaves it
    /// alone instead of fighting it for the hooks.
    #[error("interface {name}: {owner}; leaving the interface to it")]
    OtherDaemon { name: String, owner: String },
    #[error("missing {0} in the BPF object")]
    Missing(&'static str),
    /// The pin directory (or its `links`) could be changed by someone
    /// else, who could then unpin the links and detach the firewall.
    #[error("{0}")]
    Unsafe(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The loaded programs and the interfaces they are attached to.
pub struct Dataplane {
    ebpf: Ebpf,
    /// The TC object (forward, redirect, L7 capture).
    tc: Ebpf,
    /// The connection tracer, once loaded and attached.
    trace: Option<Ebpf>,
    /// Connections found in /proc when the tracer attached, for the
    /// connection table ([`Dataplane::take_trace_seed`]).
    trace_seed: Option<Vec<crate::sys::procfs::ExistingConn>>,
    /// Kernel time (CLOCK_MONOTONIC ns) just before the tracer attached:
    /// conn events older than this come from an earlier tracer.
    trace_since: u64,
    cap: Capacity,
    pin_dir: PathBuf,
    attached: BTreeMap<u32, Attachment>,
    /// Probes the operator disabled (persisted by the control layer).
    disabled: BTreeSet<ProbeId>,
    /// Interfaces that matched but could not be attached: (name, why).
    failed: BTreeMap<u32, attach::Failed>,
}

/// Every map the capabilities write, taken out of the loaded objects once.
pub struct Maps {
    pub firewall: FirewallMaps,
    pub limits: LimitMaps,
    pub forward: ForwardMaps,
    pub l7: L7CaptureMaps,
    pub events: EventMaps,
}

impl Dataplane {
    /// Loads the XDP and TC objects, reusing (or creating) the maps pinned
    /// in `pin_dir`, and returns the dataplane plus every capability's maps.
    pub fn load(pin_dir: &Path, cap: Capacity) -> Result<(Self, Maps), DataplaneError> {
        Self::load_with(objects::XDP_OBJ, pin_dir, cap)
    }

    /// [`Dataplane::load`] of a given build of the XDP object (the
    /// benchmark compares the spin-lock build).
    #[cfg(any(test, feature = "test-support"))]
    pub fn load_object(obj: &[u8], pin_dir: &Path, cap: Capacity) -> Result<(Self, Maps), DataplaneError> {
        Self::load_with(obj, pin_dir, cap)
    }

    fn load_with(obj: &[u8], pin_dir: &Path, cap: Capacity) -> Result<(Self, Maps), DataplaneError> {
        ensure_bpffs(pin_dir)?;
        private_dir("pin_dir", pin_dir).map_err(DataplaneError::Unsafe)?;
        private_dir("pin_dir/links", &pin_dir.join("links")).map_err(DataplaneError::Unsafe)?;
        check_pins(pin_dir, cap)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for t in FwTable::ALL {
            loader.map_max_entries(t.map_name(), cap.max_rules);
        }
        loader.map_max_entries(names::RULE_COUNTERS, cap.max_rules);
        loader.map_max_entries(names::RULE_PARENT, cap.max_rules);
        loader.map_max_entries(names::LIMIT_SOURCES, cap.limit_sources);
        loader.map_max_entries(sluice_abi::ev::RING, cap.ring_bytes);
        let mut ebpf = loader.load(obj)?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(DataplaneError::Missing(names::PROGRAM))?
            .try_into()?;
        prog.load()?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        let firewall = FirewallMaps::new(&mut ebpf, cap.max_rules, ncpus)?;
        let limits = LimitMaps::new(&mut ebpf, cap.limit_sources, ncpus)?;
        let events = EventMaps::new(&mut ebpf)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        loader.map_max_entries(sluice_abi::tc::CT, cap.max_flows);
        loader.map_max_entries(sluice_abi::ev::RING, cap.ring_bytes);
        let mut tc = loader.load(objects::TC_OBJ)?;
        for name in [sluice_abi::tc::INGRESS, sluice_abi::tc::EGRESS] {
            let prog: &mut SchedClassifier = tc.program_mut(name).ok_or(DataplaneError::Missing(name))?.try_into()?;
            prog.load()?;
        }
        let tc_config = tc_config::SharedTcConfig::new(&mut tc)?;
        let forward = ForwardMaps::new(&mut tc, tc_config.clone(), cap.max_flows, ncpus)?;
        let l7 = L7CaptureMaps::new(&mut tc, tc_config)?;
        let dp = Dataplane {
            ebpf,
            tc,
            trace: None,
            trace_seed: None,
            trace_since: 0,
            cap,
            pin_dir: pin_dir.to_path_buf(),
            attached: BTreeMap::new(),
            disabled: BTreeSet::new(),
            failed: BTreeMap::new(),
        };
        let maps = Maps {
            firewall,
            limits,
            forward,
            l7,
            events,
        };
        Ok((dp, maps))
    }

    /// A TC program (ingress or egress), for test_run.
    #[cfg(any(test, feature = "test-support"))]
    pub fn tc_program(&mut self, name: &str) -> Option<&mut SchedClassifier> {
        self.tc.program_mut(name)?.try_into().ok()
    }

    /// The XDP program, for test_run (tests and benchmarks).
    #[cfg(any(test, feature = "test-support"))]
    pub fn xdp_program(&mut self) -> &mut Xdp {
        self.xdp()
    }

    /// The XDP program, to attach.
    fn xdp(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROGRAM)
            .expect("checked in load")
            .try_into()
            .expect("an XDP program")
    }

    /// Kernel ids of the loaded TC programs (ingress, egress).
    pub fn tc_program_ids(&self) -> Vec<(&'static str, Option<u32>)> {
        [sluice_abi::tc::INGRESS, sluice_abi::tc::EGRESS]
            .into_iter()
            .map(|name| {
                let id = self
                    .tc
                    .program(name)
                    .and_then(|p| <&SchedClassifier>::try_from(p).ok())
                    .and_then(|p| p.info().ok())
                    .map(|i| i.id());
                (name, id)
            })
            .collect()
    }
}

/// A per-CPU counter summed over CPUs.
fn sum(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

/// A delete of a key that is not there is not an error.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), DataplaneError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => Ok(other?),
    }
}

/// Turns on kernel BPF run statistics (a clock read per program run) for as
/// long as the returned fd is open.
pub fn enable_stats() -> Result<std::os::fd::OwnedFd, DataplaneError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| DataplaneError::Io {
        path: "BPF_ENABLE_STATS".into(),
        source: io::Error::other(e.to_string()),
    })
}
