//! Clocks. The kernel stamps events and buckets with CLOCK_MONOTONIC
//! (`bpf_ktime_get_ns`); rows and records carry wall-clock Unix time. These
//! are the only clock reads in sluice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock time in ns since the Unix epoch (0 before it).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Wall-clock time in whole seconds since the Unix epoch: a rule's `created`.
pub fn unix_secs() -> i64 {
    (unix_ns() / 1_000_000_000) as i64
}

/// Now as RFC 3339 with microseconds, the time format of every record.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Maps kernel timestamps (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    boot: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let mono = Duration::from_nanos(monotonic_ns());
        Clock {
            boot: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, ts_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.boot + Duration::from_nanos(ts_ns)).to_string()
    }

    /// A kernel timestamp (CLOCK_MONOTONIC ns) as ns since the Unix epoch.
    pub fn unix_ns(&self, ts_ns: u64) -> u64 {
        (self.boot + Duration::from_nanos(ts_ns))
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_agree_on_units() {
        let (a, b) = (monotonic_ns(), monotonic_ns());
        assert!(b >= a);
        let s = unix_secs();
        assert!((s - (unix_ns() / 1_000_000_000) as i64).abs() <= 1);
        assert!(s > 1_700_000_000, "the clock is set");
        assert!(rfc3339_now().ends_with('Z'));
    }
}
