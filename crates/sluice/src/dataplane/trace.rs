//! The connection tracer: loaded on demand, sharing the pinned event ring,
//! attached to `sock/inet_sock_set_state`, and seeded from /proc with the
//! listeners and connections older than it.

use aya::EbpfLoader;

use super::{Dataplane, DataplaneError};
use crate::sys::{mounts::ensure_tracefs, procfs, time::monotonic_ns};

impl Dataplane {
    pub fn attach_trace(&mut self) -> Result<(), DataplaneError> {
        ensure_tracefs()?;
        let since = monotonic_ns();
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&self.pin_dir);
        loader.map_max_entries(sluice_abi::ev::RING, self.cap.ring_bytes);
        let mut ebpf = loader.load(super::objects::TRACE_OBJ)?;
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
        let scan = procfs::scan();
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
    pub fn take_trace_seed(&mut self) -> Option<(Vec<procfs::ExistingConn>, u64)> {
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
}
