//! The event maps of the XDP object: the ring buffer every program writes
//! to, the per-CPU lost counters, the sampling configuration and the
//! per-interface verdict counters. Also the decoding of raw ring-buffer
//! records into the ABI structs, checked for size and kind.

use std::collections::BTreeMap;

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use sluice_abi::{ev, Counter, EvConfig, EvConn, EvHdr, EvPacket, IfStatKey};

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

    /// The ring buffer, for its one reader.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
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

/// A decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Conn(EvConn),
    Packet(EvPacket),
    Drop(EvPacket),
}

fn read<T: Copy>(b: &[u8]) -> Option<T> {
    // SAFETY: length checked; the ABI structs are plain integers, valid for
    // any bit pattern, and read_unaligned does not need alignment.
    (b.len() >= std::mem::size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Decodes one record; None for a record of unknown kind or wrong size.
pub fn decode(b: &[u8]) -> Option<RawEvent> {
    let h: EvHdr = read(b)?;
    match h.kind {
        ev::CONN if h.size as usize == std::mem::size_of::<EvConn>() => read(b).map(RawEvent::Conn),
        ev::PACKET if h.size as usize == std::mem::size_of::<EvPacket>() => read(b).map(RawEvent::Packet),
        ev::DROP if h.size as usize == std::mem::size_of::<EvPacket>() => read(b).map(RawEvent::Drop),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_kind_and_size() {
        let mut c = EvConn {
            pid: 42,
            ..Default::default()
        };
        c.h = EvHdr {
            kind: ev::CONN,
            size: 96,
            cpu: 0,
            ts_ns: 1,
        };
        // SAFETY: EvConn is plain integers.
        let bytes = unsafe { std::slice::from_raw_parts((&c as *const EvConn).cast::<u8>(), 96) }.to_vec();
        assert_eq!(decode(&bytes), Some(RawEvent::Conn(c)));
        assert_eq!(decode(&bytes[..50]), None, "truncated");
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(decode(&wrong), None, "unknown kind");
        let mut wrong = bytes;
        wrong[2] = 72; // size says packet, kind says conn
        assert_eq!(decode(&wrong), None);
        assert_eq!(decode(&[]), None);
    }
}
