//! The ring reader: drains the kernel's event ring ([`EventRing`]) into the
//! [`Hub`], and drives the L7 stage's housekeeping (holes that will not
//! fill, idle connections) on a 100 ms tick. L7 captures are written to the
//! ring without a wakeup until 64 KiB wait, so the tick also drains what is
//! there.

use std::{sync::Arc, time::Duration};

use super::{decode::Decoder, hub::Hub};
use crate::dataplane::EventRing;

/// Most records handled per wakeup, so the tick still runs under a
/// sustained stream.
const BATCH: usize = 8192;
/// Most records drained per tick.
const TICK_BATCH: usize = 65536;

/// Reads the ring buffer until the task is dropped.
pub async fn read_ring(mut ring: EventRing, hub: Arc<Hub>, mut dec: Decoder) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = ring.read(BATCH, |b| hub.ingest(&mut dec, b)) => {
                if let Err(e) = r {
                    // Enforcement goes on; only the events stop.
                    tracing::error!(error = %e, "cannot poll the event ring buffer; no more events will be read");
                    return;
                }
            }
            _ = tick.tick() => {
                ring.poll(TICK_BATCH, |b| hub.ingest(&mut dec, b));
                for e in dec.l7_tick() {
                    hub.publish(e);
                }
            }
        }
    }
}
