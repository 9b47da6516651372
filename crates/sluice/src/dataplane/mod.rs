//! The dataplane: everything that touches the kernel's BPF objects. It loads
//! the embedded C programs with aya, pins their maps and links under the pin
//! directory (default `/sys/fs/bpf/sluice`), attaches the XDP firewall to
//! interfaces, adopts what a previous daemon left pinned, and writes the
//! firewall tables through [`Tables`].
//!
//! Enforcement outlives the daemon because every map and every link is
//! pinned: a new daemon reopens the same maps by pin path and swaps its freshly
//! loaded program into each pinned link with one atomic `BPF_LINK_UPDATE`, so
//! there is never a moment with no program, nor two.

mod event_maps;
mod limit_tables;
mod nat_tables;
mod tables;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, MapType},
    programs::{links::FdLink, links::PinnedLink, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
pub use event_maps::{decode, EventMaps, RawEvent};
pub use limit_tables::{KernelLimitTables, LimitTables, MemLimitTables};
pub use nat_tables::NatTables;
use sluice_abi::{xdp as names, FwTable, ABI_VERSION};
pub use tables::{KernelTables, MemTables, Tables};

use crate::probes::{NetlinkHooks, ProbeId, ProbeKind};

/// The compiled XDP firewall (built by build.rs from bpf/sluice_xdp.bpf.c).
pub static XDP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp.bpf.o"));
/// The same program with spin-locked shared buckets instead of
/// compare-and-swap: only the benchmark loads it, to compare the two.
pub static XDP_SPIN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp_spin.bpf.o"));
/// The TCP connection tracer (tracepoint sock/inet_sock_set_state).
pub static TRACE_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_trace.bpf.o"));
/// Forwarding (DNAT) and redirect at TC (bpf/sluice_tc.bpf.c).
pub static TC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_tc.bpf.o"));
/// The XDP live-frames traffic generator (tests and benchmarks).
pub static GEN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_gen.bpf.o"));

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

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{0} is not on a BPF filesystem and could not be mounted: {1}")]
    NoBpffs(PathBuf, io::Error),
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
    #[error("missing {0} in the BPF object")]
    Missing(&'static str),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes sure `pin_dir` lives on bpffs, mounting bpffs at /sys/fs/bpf if
/// nothing is mounted there yet (idempotent).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), DataplaneError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) {
        return Ok(());
    }
    let target = Path::new("/sys/fs/bpf");
    if parent.starts_with(target) && !is_bpffs(target) {
        fs::create_dir_all(target).map_err(io_err(target))?;
        let (src, dst, ty) = (
            CString::new("bpf").unwrap(),
            CString::new("/sys/fs/bpf").unwrap(),
            CString::new("bpf").unwrap(),
        );
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(DataplaneError::NoBpffs(
                parent.to_path_buf(),
                io::Error::last_os_error(),
            ));
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    if is_bpffs(parent) || (fs::create_dir_all(parent).is_ok() && is_bpffs(parent)) {
        Ok(())
    } else {
        Err(DataplaneError::NoBpffs(
            parent.to_path_buf(),
            io::Error::other("not a bpf filesystem"),
        ))
    }
}

/// Mounts tracefs at /sys/kernel/tracing unless it is there (idempotent).
pub fn ensure_tracefs() -> Result<(), DataplaneError> {
    let t = Path::new("/sys/kernel/tracing");
    if t.join("events").exists() {
        return Ok(());
    }
    let (src, dst, ty) = (
        CString::new("nodev").unwrap(),
        CString::new("/sys/kernel/tracing").unwrap(),
        CString::new("tracefs").unwrap(),
    );
    // SAFETY: valid NUL-terminated strings; no data argument.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(DataplaneError::Io {
            path: t.into(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a valid out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// What a pinned map must look like for this build to reuse it.
struct MapShape {
    name: &'static str,
    ty: MapType,
    key: u32,
    value: u32,
    max_entries: u32,
}

fn expected_maps(cap: Capacity) -> Vec<MapShape> {
    let lim = sluice_abi::MAX_LIMITS;
    let shape = |name, ty, key, value, max_entries| MapShape {
        name,
        ty,
        key,
        value,
        max_entries,
    };
    let mut v: Vec<MapShape> = FwTable::ALL
        .iter()
        .map(|t| {
            shape(
                t.map_name(),
                MapType::LpmTrie,
                if t.is_v6() { 20 } else { 8 },
                8,
                cap.max_rules,
            )
        })
        .collect();
    v.extend([
        shape(names::RULE_COUNTERS, MapType::PerCpuArray, 4, 16, cap.max_rules),
        shape(names::STATS, MapType::PerCpuArray, 4, 16, sluice_abi::stat::COUNT),
        shape(names::CONFIG, MapType::Array, 4, 8, 1),
        shape(names::LIMITS, MapType::Array, 4, 104, 2 * lim),
        shape(names::LIMIT_SELECT, MapType::Array, 4, 4, 1),
        shape(names::LIMIT_STATE, MapType::Array, 4, 32, lim),
        shape(names::LIMIT_SOURCES, MapType::LruHash, 24, 24, cap.limit_sources),
        shape(names::LIMIT_COUNTERS, MapType::PerCpuArray, 4, 40, lim),
        shape(sluice_abi::ev::RING, MapType::RingBuf, 0, 0, cap.ring_bytes),
        shape(
            sluice_abi::ev::LOST,
            MapType::PerCpuArray,
            4,
            8,
            sluice_abi::ev::LOST_COUNT,
        ),
        shape(sluice_abi::ev::CONFIG, MapType::Array, 4, 8, 1),
        shape(sluice_abi::ev::IF_STATS, MapType::LruPerCpuHash, 8, 16, 8192),
    ]);
    use sluice_abi::tc;
    v.extend([
        shape(tc::FORWARDS, MapType::Hash, 20, 328, tc::MAX_FORWARDS),
        shape(tc::FORWARD_COUNTERS, MapType::PerCpuArray, 4, 16, tc::MAX_FORWARDS),
        shape(tc::CT, MapType::LruHash, 40, 32, cap.max_flows),
        shape(tc::REDIRECT4, MapType::LpmTrie, 8, 20, tc::MAX_REDIRECTS),
        shape(tc::REDIRECT6, MapType::LpmTrie, 20, 20, tc::MAX_REDIRECTS),
        shape(tc::REDIRECT_COUNTERS, MapType::PerCpuArray, 4, 16, tc::MAX_REDIRECTS),
        shape(tc::PEER_MAC, MapType::Hash, 4, 8, tc::PEER_MAC_ENTRIES),
        shape(tc::CONFIG, MapType::Array, 4, 24, 1),
        shape(sluice_abi::l7::PORTS_MAP, MapType::Hash, 2, 1, sluice_abi::l7::PORTS),
        shape(
            sluice_abi::l7::FLOWS_MAP,
            MapType::LruHash,
            40,
            8,
            sluice_abi::l7::FLOWS,
        ),
        shape(tc::STATS, MapType::PerCpuArray, 4, 16, tc::STAT_COUNT),
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

/// How the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (veth, most NICs).
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Generic,
}

impl AttachMode {
    fn tag(self) -> &'static str {
        match self {
            AttachMode::Native => "drv",
            AttachMode::Generic => "skb",
        }
    }
}

/// The XDP link on one interface.
#[derive(Debug)]
struct XdpHook {
    mode: AttachMode,
    pin: PathBuf,
    _link: FdLink,
}

/// One tcx link (ingress or egress) on one interface.
#[derive(Debug)]
struct TcHook {
    kind: ProbeKind,
    pin: PathBuf,
    _link: FdLink,
}

/// One managed interface and the probes attached to it. A disabled probe
/// (`sluice probes disable xdp/IFACE`) has no link here.
#[derive(Debug)]
pub struct Attachment {
    pub ifindex: u32,
    pub name: String,
    /// True if this daemon adopted a link pinned by an earlier one.
    pub adopted: bool,
    xdp: Option<XdpHook>,
    tc_links: Vec<TcHook>,
    /// Why an enabled probe is not attached here (e.g. no tcx on this
    /// kernel), by kind.
    errors: BTreeMap<ProbeKind, String>,
}

impl Attachment {
    /// Why the enabled probe `kind` is not attached here, if it failed.
    pub fn error(&self, kind: ProbeKind) -> Option<&str> {
        self.errors.get(&kind).map(String::as_str)
    }

    /// How the XDP firewall runs here; None while `xdp/NAME` is disabled.
    pub fn mode(&self) -> Option<AttachMode> {
        self.xdp.as_ref().map(|x| x.mode)
    }

    /// True if both TC programs (forward, redirect) are attached.
    pub fn tc(&self) -> bool {
        self.tc_links.len() == 2
    }

    /// True if the probe of this kind is attached here.
    pub fn has(&self, kind: ProbeKind) -> bool {
        match kind {
            ProbeKind::Xdp => self.xdp.is_some(),
            k => self.tc_links.iter().any(|h| h.kind == k),
        }
    }

    fn pins(&self) -> impl Iterator<Item = &PathBuf> {
        self.xdp
            .iter()
            .map(|x| &x.pin)
            .chain(self.tc_links.iter().map(|h| &h.pin))
    }
}

/// One program at one attach point, as `sluice probes list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// Stable id: `xdp/IFACE`, `tc-ingress/IFACE`, `tc-egress/IFACE`,
    /// `trace/inet_sock_set_state`; other owners' programs get a
    /// `/foreign-PROGID` suffix.
    pub id: String,
    pub kind: String,
    /// Interface name or tracepoint.
    pub attach: String,
    pub program: String,
    pub prog_id: Option<u32>,
    /// "sluice", or "foreign" for a program sluice did not load.
    pub owner: String,
    /// XDP only: native or generic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AttachMode>,
    /// "enabled", "disabled" (by the operator), or "failed" (see `error`).
    pub state: String,
    /// Why sluice could not attach here (e.g. another owner's program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Kernel BPF stats (zero unless stats are enabled).
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// The loaded programs and the interfaces they are attached to.
pub struct Dataplane {
    ebpf: Ebpf,
    /// The TC object (forward, redirect).
    tc: Ebpf,
    /// The connection tracer, once loaded and attached.
    trace: Option<Ebpf>,
    /// Connections found in /proc when the tracer attached, for the
    /// connection table ([`Dataplane::take_trace_seed`]).
    trace_seed: Option<Vec<crate::procfs::ExistingConn>>,
    /// Kernel time (CLOCK_MONOTONIC ns) just before the tracer attached:
    /// conn events older than this come from an earlier tracer.
    trace_since: u64,
    cap: Capacity,
    pin_dir: PathBuf,
    attached: BTreeMap<u32, Attachment>,
    /// Probes the operator disabled (persisted by [`crate::probes::ProbeStates`]).
    disabled: BTreeSet<ProbeId>,
    /// Interfaces that matched but could not be attached: (name, why).
    failed: BTreeMap<u32, (String, String)>,
}

impl Dataplane {
    /// Loads the XDP object, reusing (or creating) the maps pinned in
    /// `pin_dir`, and returns the dataplane plus the firewall and limit tables.
    pub fn load(pin_dir: &Path, cap: Capacity) -> Result<(Self, KernelTables, KernelLimitTables), DataplaneError> {
        Self::load_object(XDP_OBJ, pin_dir, cap)
    }

    /// [`Dataplane::load`] of a given build of the XDP object.
    pub fn load_object(
        obj: &[u8],
        pin_dir: &Path,
        cap: Capacity,
    ) -> Result<(Self, KernelTables, KernelLimitTables), DataplaneError> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir.join("links")).map_err(io_err(pin_dir))?;
        check_pins(pin_dir, cap)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        for t in FwTable::ALL {
            loader.map_max_entries(t.map_name(), cap.max_rules);
        }
        loader.map_max_entries(names::RULE_COUNTERS, cap.max_rules);
        loader.map_max_entries(names::LIMIT_SOURCES, cap.limit_sources);
        loader.map_max_entries(sluice_abi::ev::RING, cap.ring_bytes);
        let mut ebpf = loader.load(obj)?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(DataplaneError::Missing(names::PROGRAM))?
            .try_into()?;
        prog.load()?;
        let tables = KernelTables::new(&mut ebpf, cap.max_rules)?;
        let ncpus = tables.ncpus();
        let limits = KernelLimitTables::new(&mut ebpf, cap.limit_sources, ncpus)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir);
        loader.map_max_entries(sluice_abi::tc::CT, cap.max_flows);
        loader.map_max_entries(sluice_abi::ev::RING, cap.ring_bytes);
        let mut tc = loader.load(TC_OBJ)?;
        for name in [sluice_abi::tc::INGRESS, sluice_abi::tc::EGRESS] {
            let prog: &mut SchedClassifier = tc.program_mut(name).ok_or(DataplaneError::Missing(name))?.try_into()?;
            prog.load()?;
        }
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
        Ok((dp, tables, limits))
    }

    /// Takes the forward and redirect maps out of the TC object; None if
    /// already taken.
    pub fn take_nat_tables(&mut self) -> Result<Option<NatTables>, DataplaneError> {
        if self.tc.map(sluice_abi::tc::FORWARDS).is_none() {
            return Ok(None);
        }
        Ok(Some(NatTables::new(&mut self.tc, self.cap.max_flows)?))
    }

    /// A TC program (ingress or egress), for test_run.
    pub fn tc_program(&mut self, name: &str) -> Option<&mut SchedClassifier> {
        self.tc.program_mut(name)?.try_into().ok()
    }

    /// Takes the event maps (ring buffer, lost counters, event config,
    /// per-interface counters) out of the XDP object; None if already taken.
    pub fn take_event_maps(&mut self) -> Result<Option<EventMaps>, DataplaneError> {
        if self.ebpf.map(sluice_abi::ev::RING).is_none() {
            return Ok(None);
        }
        Ok(Some(EventMaps::new(&mut self.ebpf)?))
    }

    /// Loads the connection tracer (sharing the pinned event ring) and
    /// attaches it to sock/inet_sock_set_state, mounting tracefs if needed.
    /// The attachment lives as long as this dataplane: nobody reads the log
    /// while the daemon is down.
    pub fn attach_trace(&mut self) -> Result<(), DataplaneError> {
        ensure_tracefs()?;
        let since = crate::limits::monotonic_ns();
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&self.pin_dir);
        loader.map_max_entries(sluice_abi::ev::RING, self.cap.ring_bytes);
        let mut ebpf = loader.load(TRACE_OBJ)?;
        let prog: &mut aya::programs::TracePoint = ebpf
            .program_mut(sluice_abi::trace::PROGRAM)
            .ok_or(DataplaneError::Missing(sluice_abi::trace::PROGRAM))?
            .try_into()?;
        prog.load()?;
        prog.attach(sluice_abi::trace::CATEGORY, sluice_abi::trace::TRACEPOINT)?;
        // Listeners and connections older than us: the tracer never saw
        // them start. Read after attaching, so none can fall between the two.
        let mut map: aya::maps::HashMap<_, sluice_abi::ListenKey, sluice_abi::Owner> = aya::maps::HashMap::try_from(
            ebpf.map_mut("sl_listeners")
                .ok_or(DataplaneError::Missing("sl_listeners"))?,
        )?;
        let scan = crate::procfs::scan();
        let found = scan.listeners;
        for l in &found {
            tracing::debug!(netns = l.netns, family = l.family, port = l.port, pid = l.pid, comm = %l.comm, "existing listener");
            let mut comm = [0u8; 16];
            let n = l.comm.len().min(15);
            comm[..n].copy_from_slice(&l.comm.as_bytes()[..n]);
            let key = sluice_abi::ListenKey {
                netns: l.netns,
                family: l.family,
                port: l.port,
            };
            // BPF_NOEXIST: what the tracepoint recorded meanwhile is fresher.
            const BPF_NOEXIST: u64 = 1;
            if let Err(e) = map.insert(key, sluice_abi::Owner { pid: l.pid, comm }, BPF_NOEXIST) {
                tracing::debug!(error = %e, port = l.port, "listener already known or map full");
            }
        }
        tracing::info!(
            listeners = found.len(),
            connections = scan.conns.len(),
            "connection log: existing listeners and connections seeded from /proc"
        );
        self.trace_seed = Some(scan.conns);
        self.trace_since = since;
        self.trace = Some(ebpf);
        Ok(())
    }

    /// The connections that existed when the tracer last attached, once.
    pub fn take_trace_seed(&mut self) -> Option<(Vec<crate::procfs::ExistingConn>, u64)> {
        self.trace_seed.take().map(|s| (s, self.trace_since))
    }

    /// Kernel id of the connection tracer, if attached.
    pub fn trace_program_id(&self) -> Option<u32> {
        let p: &aya::programs::TracePoint = self
            .trace
            .as_ref()?
            .program(sluice_abi::trace::PROGRAM)?
            .try_into()
            .ok()?;
        p.info().ok().map(|i| i.id())
    }

    /// The XDP program, for test_run and attach.
    pub fn xdp(&mut self) -> &mut Xdp {
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

    /// Every program × attach point sluice manages (enabled, disabled or
    /// failed), plus other owners' programs on the same XDP, tc and tcx
    /// hooks, with kernel run statistics. `hooks` is what netlink reports
    /// per interface ([`crate::probes::netlink_hooks`]).
    pub fn probes(&self, hooks: &BTreeMap<u32, NetlinkHooks>) -> Vec<Probe> {
        let stats: BTreeMap<u32, (u64, u64)> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|i| (i.id(), (i.run_count(), i.run_time().as_nanos() as u64)))
            .collect();
        let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|i| (i.id(), i.name_as_str().unwrap_or("?").to_string()))
            .collect();
        let probe = |kind: ProbeKind, attach: &str, program: &str, prog_id: Option<u32>, state: &str| {
            let (run_count, run_time_ns) = prog_id.and_then(|i| stats.get(&i).copied()).unwrap_or((0, 0));
            Probe {
                id: ProbeId::new(kind, attach).to_string(),
                kind: kind.as_str().into(),
                attach: attach.into(),
                program: program.into(),
                prog_id,
                owner: "sluice".into(),
                mode: None,
                state: state.into(),
                error: None,
                run_count,
                run_time_ns,
            }
        };
        let foreign = |kind: ProbeKind, attach: &str, id: u32, name: Option<&str>| {
            let mut p = probe(
                kind,
                attach,
                name.filter(|n| !n.is_empty())
                    .or(names.get(&id).map(String::as_str))
                    .unwrap_or("?"),
                Some(id),
                "enabled",
            );
            p.id = format!("{}/foreign-{id}", p.id);
            p.owner = "foreign".into();
            p
        };
        let tc_ids: BTreeMap<&str, Option<u32>> = self.tc_program_ids().into_iter().collect();
        let xdp_id = self.program_id();
        let no_hooks = NetlinkHooks::default();
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for a in self.attachments() {
            let nl = hooks.get(&a.ifindex).unwrap_or(&no_hooks);
            let state = |k| {
                if a.has(k) {
                    "enabled"
                } else if !self.wants(k, &a.name) {
                    "disabled"
                } else {
                    "failed"
                }
            };
            let mut x = probe(
                ProbeKind::Xdp,
                &a.name,
                names::PROGRAM,
                a.has(ProbeKind::Xdp).then_some(xdp_id).flatten(),
                state(ProbeKind::Xdp),
            );
            x.mode = a.mode();
            x.error = a.error(ProbeKind::Xdp).map(String::from);
            out.push(x);
            for id in nl.xdp.iter().filter(|i| Some(**i) != xdp_id) {
                out.push(foreign(ProbeKind::Xdp, &a.name, *id, None));
            }
            for (kind, ty, prog, legacy) in [
                (
                    ProbeKind::TcIngress,
                    TcAttachType::Ingress,
                    sluice_abi::tc::INGRESS,
                    &nl.tc_ingress,
                ),
                (
                    ProbeKind::TcEgress,
                    TcAttachType::Egress,
                    sluice_abi::tc::EGRESS,
                    &nl.tc_egress,
                ),
            ] {
                let mine = tc_ids.get(prog).copied().flatten();
                let mut p = probe(kind, &a.name, prog, a.has(kind).then_some(mine).flatten(), state(kind));
                p.error = a.error(kind).map(String::from);
                out.push(p);
                let tcx = SchedClassifier::query_tcx(&a.name, ty).map(|r| r.1).unwrap_or_default();
                for info in tcx.iter().filter(|i| Some(i.id()) != mine) {
                    out.push(foreign(kind, &a.name, info.id(), info.name_as_str()));
                }
                for (id, name) in legacy {
                    out.push(foreign(kind, &a.name, *id, Some(name)));
                }
            }
            for k in [ProbeKind::Xdp, ProbeKind::TcIngress, ProbeKind::TcEgress] {
                seen.insert(ProbeId::new(k, &a.name));
            }
        }
        for (ifindex, (name, why)) in &self.failed {
            let mut p = probe(ProbeKind::Xdp, name, names::PROGRAM, None, "failed");
            p.error = Some(why.clone());
            out.push(p);
            seen.insert(ProbeId::new(ProbeKind::Xdp, name));
            for id in hooks.get(ifindex).map(|h| h.xdp.as_slice()).unwrap_or_default() {
                out.push(foreign(ProbeKind::Xdp, name, *id, None));
            }
        }
        let trace = self.trace_program_id();
        out.push(probe(
            ProbeKind::Trace,
            sluice_abi::trace::TRACEPOINT,
            sluice_abi::trace::PROGRAM,
            trace,
            if trace.is_some() {
                "enabled"
            } else if self.disabled.contains(&ProbeId::trace()) {
                "disabled"
            } else {
                "failed"
            },
        ));
        seen.insert(ProbeId::trace());
        // Disabled probes of interfaces that are not here now.
        for id in self.disabled.iter().filter(|id| !seen.contains(*id)) {
            let program = match id.kind {
                ProbeKind::Xdp => names::PROGRAM,
                ProbeKind::TcIngress => sluice_abi::tc::INGRESS,
                ProbeKind::TcEgress => sluice_abi::tc::EGRESS,
                ProbeKind::Trace => sluice_abi::trace::PROGRAM,
            };
            out.push(probe(id.kind, &id.attach, program, None, "disabled"));
        }
        out
    }

    /// Sets the disabled set before anything is attached (daemon start).
    pub fn set_disabled(&mut self, disabled: BTreeSet<ProbeId>) {
        self.disabled = disabled;
    }

    /// True unless the operator disabled this probe.
    pub fn wants(&self, kind: ProbeKind, attach: &str) -> bool {
        !self.disabled.contains(&ProbeId::new(kind, attach))
    }

    /// Enables or disables one probe, at once: the link is detached and
    /// unpinned, or attached (a fresh link); only that probe's hook is
    /// touched. Enabling a probe that is already enabled retries attaching
    /// it if it failed. Returns whether the probe's attach point exists now
    /// (a probe of an absent interface takes effect when the interface
    /// appears). On failure the previous state is restored.
    pub fn set_probe(&mut self, id: &ProbeId, enabled: bool) -> Result<bool, DataplaneError> {
        let before = self.disabled.clone();
        if enabled {
            self.disabled.remove(id);
        } else {
            self.disabled.insert(id.clone());
        }
        let attached = |dp: &Self| dp.attached.values().find(|a| a.name == id.attach).map(|a| a.ifindex);
        let failed = |dp: &Self| dp.failed.iter().find(|(_, (n, _))| *n == id.attach).map(|(i, _)| *i);
        let r = match id.kind {
            ProbeKind::Trace => {
                if enabled && self.trace.is_none() {
                    self.attach_trace().map(|_| true)
                } else {
                    if !enabled {
                        self.trace = None;
                        self.trace_seed = None;
                    }
                    Ok(true)
                }
            }
            kind => match (attached(self), failed(self)) {
                (Some(ifindex), _) => self.sync_kind(ifindex, kind).map(|_| true),
                // Not managed because its XDP hook failed: an XDP change
                // tries again (a disabled XDP probe no longer needs the
                // hook); a tc change is recorded and applies once it is.
                (None, Some(ifindex)) if kind == ProbeKind::Xdp => {
                    let name = id.attach.clone();
                    self.attach(ifindex, &name).map(|_| true)
                }
                (None, Some(_)) => Ok(false),
                (None, None) => Ok(false),
            },
        };
        if r.is_err() {
            self.disabled = before;
            if let Some(ifindex) = attached(self) {
                let _ = self.sync_kind(ifindex, id.kind);
            }
        }
        r
    }

    /// Puts a probe state back without failing: as [`Dataplane::set_probe`],
    /// but an XDP probe that cannot attach leaves its interface unmanaged
    /// and failed, and a tc or trace probe is left failed, as after a
    /// restart with this state.
    pub fn restore_probe(&mut self, id: &ProbeId, enabled: bool) {
        let Err(e) = self.set_probe(id, enabled) else {
            return;
        };
        if enabled {
            self.disabled.remove(id);
        } else {
            self.disabled.insert(id.clone());
        }
        let Some(ifindex) = self.attached.values().find(|a| a.name == id.attach).map(|a| a.ifindex) else {
            return;
        };
        if id.kind == ProbeKind::Xdp {
            self.detach(ifindex);
            self.failed.insert(ifindex, (id.attach.clone(), chain(&e)));
        } else {
            let _ = self.sync_kind(ifindex, id.kind);
        }
    }

    /// Kernel id of the loaded XDP program.
    pub fn program_id(&self) -> Option<u32> {
        let p: &Xdp = self.ebpf.program(names::PROGRAM)?.try_into().ok()?;
        p.info().ok().map(|i| i.id())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    /// Pinned XDP links left in the pin directory: (ifindex, mode, path).
    pub fn pinned_links(&self) -> Vec<(u32, AttachMode, PathBuf)> {
        pinned_links(&self.links_dir())
    }

    /// Attaches the enabled probes to `ifindex`, adopting the links an
    /// earlier daemon pinned there by atomically swapping this daemon's
    /// programs into them. An XDP failure (e.g. another owner's program on
    /// the hook: sluice never replaces one) leaves the interface unmanaged
    /// and is reported by [`Dataplane::probes`].
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<&Attachment, DataplaneError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(&self.attached[&ifindex]);
        }
        let mut att = Attachment {
            ifindex,
            name: name.into(),
            adopted: false,
            xdp: None,
            tc_links: Vec::new(),
            errors: BTreeMap::new(),
        };
        if let Err(e) = self.sync_xdp(&mut att) {
            self.failed.insert(ifindex, (name.into(), chain(&e)));
            return Err(e);
        }
        self.failed.remove(&ifindex);
        if let Err(e) = self.sync_tc(&mut att, None) {
            tracing::warn!(ifindex, name, error = %chain(&e), "TC programs not attached: forwards and redirects will not apply here");
        }
        tracing::info!(ifindex, name, mode = ?att.mode(), adopted = att.adopted, tc = att.tc(), "attached");
        Ok(self.attached.entry(ifindex).or_insert(att))
    }

    /// Makes an attachment's links match the enabled probes of its name
    /// (after a rename); failures are recorded per hook, not returned.
    fn sync(&mut self, ifindex: u32) {
        let Some(mut att) = self.attached.remove(&ifindex) else {
            return;
        };
        let _ = self.sync_xdp(&mut att);
        let _ = self.sync_tc(&mut att, None);
        self.attached.insert(ifindex, att);
    }

    /// Makes one hook of an attachment match its probe's state.
    fn sync_kind(&mut self, ifindex: u32, kind: ProbeKind) -> Result<(), DataplaneError> {
        let Some(mut att) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        let r = match kind {
            ProbeKind::Xdp => self.sync_xdp(&mut att),
            k => self.sync_tc(&mut att, Some(k)),
        };
        self.attached.insert(ifindex, att);
        r
    }

    fn sync_xdp(&mut self, att: &mut Attachment) -> Result<(), DataplaneError> {
        let r = self.sync_xdp_inner(att);
        match &r {
            Err(e) => att.errors.insert(ProbeKind::Xdp, chain(e)),
            Ok(()) => att.errors.remove(&ProbeKind::Xdp),
        };
        r
    }

    fn sync_xdp_inner(&mut self, att: &mut Attachment) -> Result<(), DataplaneError> {
        let want = self.wants(ProbeKind::Xdp, &att.name);
        if !want {
            if let Some(h) = att.xdp.take() {
                unpin(&h.pin);
                tracing::info!(ifindex = att.ifindex, name = %att.name, "XDP firewall disabled here");
            }
            // A link an earlier daemon pinned would keep the program running.
            for (_, _, pin) in self.pinned_links().into_iter().filter(|(i, _, _)| *i == att.ifindex) {
                unpin(&pin);
            }
            return Ok(());
        }
        if att.xdp.is_some() {
            return Ok(());
        }
        let pinned = self.pinned_links().into_iter().find(|(i, _, _)| *i == att.ifindex);
        let hook = match pinned {
            Some((_, mode, pin)) => match self.adopt(&pin) {
                Ok(link) => {
                    att.adopted = true;
                    XdpHook { mode, pin, _link: link }
                }
                Err(e) => {
                    // A stale pin (interface recreated with the same index, or
                    // a link the kernel already tore down): replace it.
                    tracing::warn!(ifindex = att.ifindex, name = %att.name, error = %e, "pinned link unusable, attaching afresh");
                    let _ = fs::remove_file(&pin);
                    self.attach_new(att.ifindex, &att.name)?
                }
            },
            None => self.attach_new(att.ifindex, &att.name)?,
        };
        att.xdp = Some(hook);
        Ok(())
    }

    /// Attaches (or adopts the pinned links of) the enabled TC programs,
    /// tcx ingress and egress, each pinned like the XDP link; detaches the
    /// disabled ones. The hooks attached by one call are all or nothing: one
    /// without the other would leave a program running that status reports
    /// as absent.
    fn sync_tc(&mut self, att: &mut Attachment, only: Option<ProbeKind>) -> Result<(), DataplaneError> {
        let r = self.sync_tc_inner(att, only);
        for kind in [ProbeKind::TcIngress, ProbeKind::TcEgress] {
            if only.is_some_and(|o| o != kind) {
                continue;
            }
            match &r {
                Err(e) if self.wants(kind, &att.name) && !att.has(kind) => {
                    att.errors.insert(kind, chain(e));
                }
                _ => {
                    att.errors.remove(&kind);
                }
            }
        }
        r
    }

    fn sync_tc_inner(&mut self, att: &mut Attachment, only: Option<ProbeKind>) -> Result<(), DataplaneError> {
        let mut added = Vec::new();
        for (kind, tag) in [(ProbeKind::TcIngress, "in"), (ProbeKind::TcEgress, "out")] {
            if only.is_some_and(|o| o != kind) {
                continue;
            }
            let want = self.wants(kind, &att.name);
            if !want {
                if let Some(i) = att.tc_links.iter().position(|h| h.kind == kind) {
                    unpin(&att.tc_links.remove(i).pin);
                    tracing::info!(ifindex = att.ifindex, name = %att.name, probe = kind.as_str(), "TC program disabled here");
                }
                unpin(&self.links_dir().join(format!("tcx_{tag}_{}", att.ifindex)));
                continue;
            }
            if att.has(kind) {
                continue;
            }
            match self.attach_tc_hook(att.ifindex, kind, tag) {
                Ok(h) => added.push(h),
                Err(e) => {
                    for h in added {
                        unpin(&h.pin);
                    }
                    return Err(e);
                }
            }
        }
        att.tc_links.extend(added);
        Ok(())
    }

    fn attach_tc_hook(&mut self, ifindex: u32, kind: ProbeKind, tag: &str) -> Result<TcHook, DataplaneError> {
        let (prog_name, ty) = match kind {
            ProbeKind::TcIngress => (sluice_abi::tc::INGRESS, TcAttachType::Ingress),
            _ => (sluice_abi::tc::EGRESS, TcAttachType::Egress),
        };
        let pin = self.links_dir().join(format!("tcx_{tag}_{ifindex}"));
        let prog: &mut SchedClassifier = self
            .tc
            .program_mut(prog_name)
            .ok_or(DataplaneError::Missing(prog_name))?
            .try_into()?;
        let adopted = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = aya::programs::tc::SchedClassifierLink::try_from(FdLink::from(old))?;
                match prog.attach_to_link(link) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!(ifindex, error = %e, "pinned tcx link unusable, attaching afresh");
                        let _ = fs::remove_file(&pin);
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let (id, fresh) = match adopted {
            Some(id) => (id, false),
            None => {
                let name = ifname(ifindex).ok_or(DataplaneError::Missing("interface"))?;
                let id = prog.attach_with_options(
                    &name,
                    ty,
                    aya::programs::tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::default()),
                )?;
                (id, true)
            }
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        let link = if fresh { link.pin(&pin)?.into() } else { link };
        Ok(TcHook { kind, pin, _link: link })
    }

    fn adopt(&mut self, pin: &Path) -> Result<FdLink, DataplaneError> {
        let link: FdLink = PinnedLink::from_pin(pin)?.into();
        let xdp_link = aya::programs::xdp::XdpLink::try_from(link)?;
        let prog = self.xdp();
        let id = prog.attach_to_link(xdp_link)?;
        let link = prog.take_link(id)?;
        Ok(FdLink::try_from(link)?)
    }

    fn attach_new(&mut self, ifindex: u32, name: &str) -> Result<XdpHook, DataplaneError> {
        let prog = self.xdp();
        let (id, mode) = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native) => match prog.attach_to_if_index(ifindex, XdpMode::Skb) {
                Ok(id) => (id, AttachMode::Generic),
                Err(generic) => {
                    return Err(DataplaneError::Attach {
                        name: name.into(),
                        native: chain(&native),
                        generic: chain(&generic),
                    })
                }
            },
        };
        let link = FdLink::try_from(prog.take_link(id)?)?;
        let pin = self.links_dir().join(format!("xdp_{ifindex}_{}", mode.tag()));
        let link: FdLink = link.pin(&pin)?.into();
        Ok(XdpHook { mode, pin, _link: link })
    }

    /// Detaches from `ifindex` (unpins and closes the links). Returns the
    /// attachment that was removed, if any.
    pub fn detach(&mut self, ifindex: u32) -> Option<Attachment> {
        self.failed.remove(&ifindex);
        let att = self.attached.remove(&ifindex)?;
        for pin in att.pins() {
            unpin(pin);
        }
        tracing::info!(ifindex, name = %att.name, "detached");
        Some(att)
    }

    /// Removes pinned links this daemon did not attach or adopt, e.g. for
    /// interfaces that vanished or no longer match the configured globs.
    pub fn prune_unowned(&mut self) -> Vec<u32> {
        let mut gone = Vec::new();
        for (ifindex, _, pin) in self.pinned_links() {
            if !self.attached.contains_key(&ifindex) && fs::remove_file(&pin).is_ok() {
                gone.push(ifindex);
            }
        }
        for (ifindex, pin) in tc_pins(&self.links_dir()) {
            if !self.attached.contains_key(&ifindex) {
                let _ = fs::remove_file(&pin);
            }
        }
        gone
    }

    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attached.values()
    }

    /// Forgets an interface that failed to attach (it vanished, or no
    /// longer matches the globs).
    pub fn forget_failed(&mut self, ifindex: u32) {
        self.failed.remove(&ifindex);
    }

    /// Interfaces that matched but could not be attached: (ifindex, name, why).
    pub fn failed(&self) -> impl Iterator<Item = (u32, &str, &str)> {
        self.failed.iter().map(|(i, (n, w))| (*i, n.as_str(), w.as_str()))
    }

    /// Renames an attachment after an interface rename; probe states follow
    /// the new name.
    pub fn rename(&mut self, ifindex: u32, name: &str) {
        if let Some(a) = self.attached.get_mut(&ifindex) {
            if a.name == name {
                return;
            }
            a.name = name.to_string();
            self.sync(ifindex);
        }
    }
}

/// Removes a link pin (detaching the link unless someone else holds it).
fn unpin(pin: &Path) {
    match fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "unpinning link"),
    }
}

/// An error with its causes, one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Pinned tcx links: (ifindex, path), ingress and egress.
fn tc_pins(dir: &Path) -> Vec<(u32, PathBuf)> {
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

fn pinned_links(dir: &Path) -> Vec<(u32, AttachMode, PathBuf)> {
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
        return Err(DataplaneError::NoBpffs(
            pin_dir.to_path_buf(),
            io::Error::other("not a directory below a bpffs mount; refusing to remove anything in it"),
        ));
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

/// Interface name of an ifindex in this network namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Ifindex of an interface name in this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
