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
    collections::BTreeMap,
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
    #[error("pinned map {name} in {dir} does not match this sluice ({why}); run `sluice down` to remove the old pins (rules are kept in the state database), or use the sluice version that created them")]
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
        if info.max_entries() != shape.max_entries {
            return Err(bad(format!(
                "capacity {}, this configuration wants {}",
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

/// One interface the XDP firewall is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub ifindex: u32,
    pub name: String,
    pub mode: AttachMode,
    /// True if this daemon adopted a link pinned by an earlier one.
    pub adopted: bool,
    /// True if the TC programs (forward, redirect) are attached too.
    pub tc: bool,
    pin: PathBuf,
    _link: FdLink,
    /// The tcx ingress and egress links (pins, links).
    tc_links: Vec<(PathBuf, FdLink)>,
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
    cap: Capacity,
    pin_dir: PathBuf,
    attached: BTreeMap<u32, Attachment>,
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
            cap,
            pin_dir: pin_dir.to_path_buf(),
            attached: BTreeMap::new(),
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
        // Listeners older than us: their LISTEN transition was never seen.
        // Seeded after attaching, so none can fall between the two.
        let mut map: aya::maps::HashMap<_, sluice_abi::ListenKey, sluice_abi::Owner> = aya::maps::HashMap::try_from(
            ebpf.map_mut("sl_listeners")
                .ok_or(DataplaneError::Missing("sl_listeners"))?,
        )?;
        let found = crate::procfs::listeners();
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
            "connection log: existing listeners seeded from /proc"
        );
        self.trace = Some(ebpf);
        Ok(())
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

    /// Every program × attach point sluice manages, plus other owners'
    /// programs on the same tcx hooks, with kernel run statistics.
    pub fn probes(&self) -> Vec<Probe> {
        let stats: BTreeMap<u32, (u64, u64)> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|i| (i.id(), (i.run_count(), i.run_time().as_nanos() as u64)))
            .collect();
        let st = |id: Option<u32>| id.and_then(|i| stats.get(&i).copied()).unwrap_or((0, 0));
        let ours = |kind: &str, attach: &str, program: &str, prog_id: Option<u32>, mode: Option<AttachMode>| {
            let (run_count, run_time_ns) = st(prog_id);
            Probe {
                id: format!("{kind}/{attach}"),
                kind: kind.into(),
                attach: attach.into(),
                program: program.into(),
                prog_id,
                owner: "sluice".into(),
                mode,
                run_count,
                run_time_ns,
            }
        };
        let tc_ids: BTreeMap<&str, Option<u32>> = self.tc_program_ids().into_iter().collect();
        let mut out = Vec::new();
        for a in self.attachments() {
            out.push(ours("xdp", &a.name, names::PROGRAM, self.program_id(), Some(a.mode)));
            for (kind, ty, prog) in [
                ("tc-ingress", TcAttachType::Ingress, sluice_abi::tc::INGRESS),
                ("tc-egress", TcAttachType::Egress, sluice_abi::tc::EGRESS),
            ] {
                let mine = tc_ids.get(prog).copied().flatten();
                if a.tc {
                    out.push(ours(kind, &a.name, prog, mine, None));
                }
                let attached = SchedClassifier::query_tcx(&a.name, ty).map(|r| r.1).unwrap_or_default();
                for info in attached.iter().filter(|i| Some(i.id()) != mine) {
                    let (run_count, run_time_ns) = st(Some(info.id()));
                    out.push(Probe {
                        id: format!("{kind}/{}/foreign-{}", a.name, info.id()),
                        kind: kind.into(),
                        attach: a.name.clone(),
                        program: info.name_as_str().unwrap_or("?").into(),
                        prog_id: Some(info.id()),
                        owner: "foreign".into(),
                        mode: None,
                        run_count,
                        run_time_ns,
                    });
                }
            }
        }
        if let Some(id) = self.trace_program_id() {
            out.push(ours(
                "trace",
                sluice_abi::trace::TRACEPOINT,
                sluice_abi::trace::PROGRAM,
                Some(id),
                None,
            ));
        }
        out
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

    /// Attaches to `ifindex`, or adopts the link an earlier daemon pinned
    /// there by atomically swapping this daemon's program into it.
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<&Attachment, DataplaneError> {
        if self.attached.contains_key(&ifindex) {
            return Ok(&self.attached[&ifindex]);
        }
        let pinned = self.pinned_links().into_iter().find(|(i, _, _)| *i == ifindex);
        let mut att = match pinned {
            Some((_, mode, pin)) => match self.adopt(&pin) {
                Ok(link) => Attachment {
                    ifindex,
                    name: name.into(),
                    mode,
                    adopted: true,
                    tc: false,
                    pin,
                    _link: link,
                    tc_links: Vec::new(),
                },
                Err(e) => {
                    // A stale pin (interface recreated with the same index, or
                    // a link the kernel already tore down): replace it.
                    tracing::warn!(ifindex, name, error = %e, "pinned link unusable, attaching afresh");
                    let _ = fs::remove_file(&pin);
                    self.attach_new(ifindex, name)?
                }
            },
            None => self.attach_new(ifindex, name)?,
        };
        match self.attach_tc(ifindex) {
            Ok(links) => {
                att.tc = true;
                att.tc_links = links;
            }
            Err(e) => {
                tracing::warn!(ifindex, name, error = %chain(&e), "TC programs not attached: forwards and redirects will not apply here")
            }
        }
        tracing::info!(ifindex, name, mode = ?att.mode, adopted = att.adopted, tc = att.tc, "XDP firewall attached");
        Ok(self.attached.entry(ifindex).or_insert(att))
    }

    /// Attaches (or adopts the pinned links of) the TC programs: tcx
    /// ingress and egress, each pinned like the XDP link.
    fn attach_tc(&mut self, ifindex: u32) -> Result<Vec<(PathBuf, FdLink)>, DataplaneError> {
        let mut out = Vec::new();
        let r = self.attach_tc_into(ifindex, &mut out);
        if let Err(e) = r {
            // All or nothing: one hook without the other would leave a
            // program running that status reports as absent.
            for (pin, _) in &out {
                let _ = fs::remove_file(pin);
            }
            return Err(e);
        }
        Ok(out)
    }

    fn attach_tc_into(&mut self, ifindex: u32, out: &mut Vec<(PathBuf, FdLink)>) -> Result<(), DataplaneError> {
        for (prog_name, ty, tag) in [
            (sluice_abi::tc::INGRESS, TcAttachType::Ingress, "in"),
            (sluice_abi::tc::EGRESS, TcAttachType::Egress, "out"),
        ] {
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
            out.push((pin, link));
        }
        Ok(())
    }

    fn adopt(&mut self, pin: &Path) -> Result<FdLink, DataplaneError> {
        let link: FdLink = PinnedLink::from_pin(pin)?.into();
        let xdp_link = aya::programs::xdp::XdpLink::try_from(link)?;
        let prog = self.xdp();
        let id = prog.attach_to_link(xdp_link)?;
        let link = prog.take_link(id)?;
        Ok(FdLink::try_from(link)?)
    }

    fn attach_new(&mut self, ifindex: u32, name: &str) -> Result<Attachment, DataplaneError> {
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
        Ok(Attachment {
            ifindex,
            name: name.into(),
            mode,
            adopted: false,
            tc: false,
            pin,
            _link: link,
            tc_links: Vec::new(),
        })
    }

    /// Detaches from `ifindex` (unpins and closes the link). Returns the
    /// attachment that was removed, if any.
    pub fn detach(&mut self, ifindex: u32) -> Option<Attachment> {
        let att = self.attached.remove(&ifindex)?;
        for pin in std::iter::once(&att.pin).chain(att.tc_links.iter().map(|(p, _)| p)) {
            if let Err(e) = fs::remove_file(pin) {
                tracing::warn!(pin = %pin.display(), error = %e, "unpinning link");
            }
        }
        tracing::info!(ifindex, name = %att.name, "XDP firewall detached");
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

    /// Renames an attachment after an interface rename.
    pub fn rename(&mut self, ifindex: u32, name: &str) {
        if let Some(a) = self.attached.get_mut(&ifindex) {
            a.name = name.to_string();
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
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
