//! The event maps of the XDP object: the ring buffer every program writes
//! to (read through [`EventRing`]), the per-CPU lost counters, the sampling
//! configuration and the per-interface verdict counters.

use std::collections::BTreeMap;

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use sluice_abi::{ev, Counter, EvConfig, IfStatKey};

use super::DataplaneError;

pub struct EventMaps {
    ring: Option<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    config: Array<MapData, EvConfig>,
    if_stats: PerCpuHashMap<MapData, IfStatKey, Counter>,
}

impl EventMaps {
    pub(super) fn new(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        Ok(EventMaps {
            ring: Some(RingBuf::try_from(take(ev::RING)?)?),
            lost: PerCpuArray::try_from(take(ev::LOST)?)?,
            config: Array::try_from(take(ev::CONFIG)?)?,
            if_stats: PerCpuHashMap::try_from(take(ev::IF_STATS)?)?,
        })
    }

    /// The ring buffer, for its one reader (once).
    pub fn take_ring(&mut self) -> Option<EventRing> {
        self.ring.take().map(EventRing::new)
    }

    /// Sets packet sampling (1 in `sample_every` per CPU, 0 = off) and the
    /// per-CPU cap on drop events per second.
    pub fn configure(&mut self, sample_every: u32, drop_events_per_sec: u32) -> Result<(), DataplaneError> {
        Ok(self.config.set(
            0,
            EvConfig {
                sample_every,
                drop_events_per_sec,
            },
            0,
        )?)
    }

    /// Events the kernel could not deliver, by `ev::LOST_*` index, summed over CPUs.
    pub fn lost(&self) -> Result<[u64; ev::LOST_COUNT as usize], DataplaneError> {
        let mut out = [0; ev::LOST_COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.lost.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Packets and bytes by (ifindex, verdict), summed over CPUs.
    pub fn if_stats(&self) -> Result<BTreeMap<(u32, u32), Counter>, DataplaneError> {
        let mut out = BTreeMap::new();
        for kv in self.if_stats.iter() {
            let (k, v) = kv?;
            let sum = v.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            });
            out.insert((k.ifindex, k.verdict), sum);
        }
        Ok(out)
    }
}

/// The one reader of the event ring buffer. [`EventRing::poll`] takes what
/// is waiting, without waiting; [`EventRing::read`] waits (inside a tokio
/// runtime) until the kernel signals records, registering the ring with the
/// runtime the first time.
pub struct EventRing {
    ring: Ring,
}

enum Ring {
    Plain(RingBuf<MapData>),
    Polled(tokio::io::unix::AsyncFd<RingBuf<MapData>>),
    /// Registration failed: the error was returned once; nothing to read.
    Gone,
}

impl EventRing {
    fn new(ring: RingBuf<MapData>) -> Self {
        EventRing {
            ring: Ring::Plain(ring),
        }
    }

    fn buf(&mut self) -> Option<&mut RingBuf<MapData>> {
        match &mut self.ring {
            Ring::Plain(r) => Some(r),
            Ring::Polled(fd) => Some(fd.get_mut()),
            Ring::Gone => None,
        }
    }

    /// Passes up to `max` waiting records to `f` without waiting (records
    /// written without a wakeup are only found this way); returns how many.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let Some(ring) = self.buf() else { return 0 };
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            f(&item);
            n += 1;
        }
        n
    }

    /// Waits until records wait, then passes up to `max` of them to `f`;
    /// returns how many. Readiness stays set if more remain. An error means
    /// the ring cannot be polled: no more records will come this way.
    pub async fn read(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> std::io::Result<usize> {
        if let Ring::Plain(_) = self.ring {
            let Ring::Plain(ring) = std::mem::replace(&mut self.ring, Ring::Gone) else {
                unreachable!("matched above")
            };
            // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd
            // owns it, and as_raw_fd always returns that same fd.
            let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
            self.ring = Ring::Polled(fd);
        }
        let Ring::Polled(fd) = &mut self.ring else {
            return Err(std::io::Error::other("the event ring could not be polled"));
        };
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            f(&item);
            n += 1;
        }
        if n < max {
            guard.clear_ready();
        }
        Ok(n)
    }
}
