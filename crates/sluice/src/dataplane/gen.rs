//! A packet generator for tests and benchmarks: BPF_PROG_TEST_RUN in XDP
//! live-frames mode, run from a thread inside a network namespace, makes the
//! `sluice_gen` program transmit a crafted frame out of an interface there
//! (XDP_TX), optionally with a random IPv4 source inside a prefix. Sends are
//! paced in 1 ms slices to a target rate, or go flat out.

use std::{
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
    Ebpf,
};
use sluice_abi::{gen as names, GenCfg};

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("entering {0}: {1}")]
    Netns(String, std::io::Error),
    #[error("no interface {0} in that namespace")]
    NoIface(String),
    #[error("generator: {0}")]
    Ebpf(String),
}

/// What to send.
#[derive(Clone, Debug)]
pub struct Flood {
    pub frame: Vec<u8>,
    /// Packets per second; None sends as fast as possible.
    pub pps: Option<u64>,
    pub duration: Duration,
    /// Random IPv4 source: (base, mask), host order.
    pub spoof: Option<(u32, u32)>,
}

#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

fn e(x: impl std::fmt::Display) -> GenError {
    GenError::Ebpf(x.to_string())
}

/// Sends `flood` out of `iface` inside the namespace at `netns_path`.
/// Blocks for the flood's duration (on a thread of its own).
pub fn flood(netns_path: &str, iface: &str, flood: Flood) -> Result<FloodReport, GenError> {
    let (netns_path, iface) = (netns_path.to_string(), iface.to_string());
    std::thread::spawn(move || run(&netns_path, &iface, &flood))
        .join()
        .map_err(|_| e("generator thread panicked"))?
}

fn run(netns_path: &str, iface: &str, f: &Flood) -> Result<FloodReport, GenError> {
    let ns = std::fs::File::open(netns_path).map_err(|err| GenError::Netns(netns_path.into(), err))?;
    // SAFETY: setns on this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(GenError::Netns(netns_path.into(), std::io::Error::last_os_error()));
    }
    let ifindex = crate::sys::iface::ifindex(iface).ok_or_else(|| GenError::NoIface(iface.into()))?;
    let mut ebpf = Ebpf::load(super::objects::GEN_OBJ).map_err(e)?;
    if let Some((base, mask)) = f.spoof {
        let mut cfg: Array<_, GenCfg> =
            Array::try_from(ebpf.map_mut(names::CONFIG).ok_or_else(|| e("no config map"))?).map_err(e)?;
        cfg.set(
            0,
            GenCfg {
                src_base: base & !mask,
                src_mask: mask,
            },
            0,
        )
        .map_err(e)?;
    }
    let prog: &mut Xdp = ebpf
        .program_mut(names::PROGRAM)
        .ok_or_else(|| e("no program"))?
        .try_into()
        .map_err(e)?;
    prog.load().map_err(e)?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: Vec<u8> = [0u32, f.frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < f.duration {
        let batch = match f.pps {
            Some(pps) => {
                let due = (started.elapsed().as_secs_f64() * pps as f64) as u64;
                if due <= sent {
                    std::thread::sleep(Duration::from_micros(20));
                    continue;
                }
                (due - sent).min(1 << 16) as u32
            }
            None => 1 << 16,
        };
        let opts = TestRunOptions {
            data_in: Some(&f.frame),
            ctx_in: Some(&md),
            repeat: batch,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        };
        prog.test_run(opts).map_err(e)?;
        sent += batch as u64;
    }
    Ok(FloodReport {
        sent,
        elapsed: started.elapsed(),
    })
}
