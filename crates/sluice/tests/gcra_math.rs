//! Tier 1: the rate limiter's arithmetic. These tests call the exact C
//! functions of `bpf/include/gcra.h` that the XDP program inlines, compiled
//! for the host by build.rs, with parameters from `limits::Gcra` — so what is
//! tested is what runs. Time is simulated: refill, burst, warm-up ramp,
//! clock wrap, long-run drift and lost updates under real thread contention.

use sluice::limits::{Gcra, LimitKind};

extern "C" {
    fn sl_gcra_cost(units: u64, unit_fp: u64, shift: u32) -> u64;
    fn sl_gcra_warm(cost: u64, now: u64, warm_start: u64, warmup_ns: u64) -> u64;
    fn sl_gcra_limit(tau: u64, cost: u64) -> i64;
    fn sl_gcra_admit(tat: *mut u64, now_fp: u64, limit: i64, charge: u64) -> i32;
    fn sl_gcra_time_shift() -> u32;
}

const SEC: u64 = 1_000_000_000;

/// The kernel's TAT time unit: now << GCRA_TIME_SHIFT (bits shifted out
/// wrap, exactly as in C).
fn fp(ns: u64) -> u64 {
    let shift = unsafe { sl_gcra_time_shift() };
    assert_eq!(shift, sluice_abi::GCRA_TIME_SHIFT, "C and Rust agree on the time unit");
    ns << shift
}

struct Bucket {
    tat: u64,
    g: Gcra,
    warmup_ns: u64,
    warm_start: u64,
}

impl Bucket {
    /// A new bucket at time `now` (the kernel starts TAT at the creation time).
    fn new(kind: LimitKind, rate: u64, burst: u64, now: u64) -> Self {
        Bucket {
            tat: fp(now),
            g: Gcra::new(kind, rate, burst),
            warmup_ns: 0,
            warm_start: now,
        }
    }

    fn offer(&mut self, now: u64, units: u64) -> bool {
        // SAFETY: plain integer functions; tat is a valid pointer.
        unsafe {
            let cost = sl_gcra_cost(units, self.g.unit_fp, self.g.shift);
            let charge = sl_gcra_warm(cost, now, self.warm_start, self.warmup_ns);
            sl_gcra_admit(&mut self.tat, fp(now), sl_gcra_limit(self.g.tau, cost), charge) == 1
        }
    }

    /// Offers one packet every `gap` ns over [start, start + dur); returns how many passed.
    fn run(&mut self, start: u64, dur: u64, gap: u64, units: u64) -> u64 {
        let mut passed = 0;
        let mut t = start;
        while t.wrapping_sub(start) < dur {
            passed += self.offer(t, units) as u64;
            t = t.wrapping_add(gap);
        }
        passed
    }
}

#[test]
fn cost_is_ns_of_rate_time() {
    let g = Gcra::new(LimitKind::Pps, 1000, 1000);
    assert_eq!(unsafe { sl_gcra_cost(1, g.unit_fp, g.shift) }, fp(1_000_000));
    let g = Gcra::new(LimitKind::Bps, 1_000_000, 1_000_000);
    assert_eq!(unsafe { sl_gcra_cost(1500, g.unit_fp, g.shift) }, fp(1_500_000));
}

#[test]
fn an_idle_bucket_admits_exactly_its_burst_then_refills_at_the_rate() {
    let now = 5 * SEC;
    let mut b = Bucket::new(LimitKind::Pps, 1000, 10, now);
    let burst: u32 = (0..20).map(|_| b.offer(now, 1) as u32).sum();
    assert_eq!(burst, 10);
    assert!(!b.offer(now + 999_999, 1), "refill not yet due");
    assert!(b.offer(now + 1_000_000, 1), "one packet's worth refilled after 1 ms");
    assert!(!b.offer(now + 1_000_000, 1));
    // Idle long enough: the full burst is back, never more.
    let later = now + 60 * SEC;
    assert_eq!((0..100).filter(|_| b.offer(later, 1)).count(), 10);
}

#[test]
fn overload_is_cut_to_the_rate_plus_burst() {
    for (rate, overload) in [(1000u64, 10u64), (1000, 20), (50_000, 10), (7, 100)] {
        let mut b = Bucket::new(LimitKind::Pps, rate, rate, SEC);
        let gap = SEC / (rate * overload);
        let passed = b.run(SEC, 10 * SEC, gap, 1);
        let want = rate * 10 + rate; // 10 s of rate + the initial burst
        assert!(
            passed.abs_diff(want) <= 1,
            "rate {rate} x{overload}: passed {passed}, want {want}"
        );
    }
}

#[test]
fn bytes_per_second_counts_frame_lengths() {
    let mut b = Bucket::new(LimitKind::Bps, 1_500_000, 15_000, SEC);
    // 1500-byte frames offered at 10x the byte rate for 2 s.
    let passed = b.run(SEC, 2 * SEC, 100_000, 1500);
    assert!(passed.abs_diff(2 * 1000 + 10) <= 1, "{passed}");
    // A frame larger than the burst can never pass.
    let mut small = Bucket::new(LimitKind::Bps, 10_000, 1518, SEC);
    assert!(!small.offer(SEC, 1600));
    assert!(small.offer(SEC, 1518));
}

#[test]
fn warm_up_ramps_from_a_third_to_the_full_rate() {
    // Burst 30 (10 ms): enough tolerance that discrete arrivals do not
    // quantize the period (with burst 1, a packet 1 gap late loses a slot).
    let mut b = Bucket::new(LimitKind::Pps, 3000, 30, 10 * SEC);
    b.warmup_ns = 3 * SEC;
    let gap = SEC / 30_000; // 10x overload
    let windows: Vec<u64> = (0..5).map(|i| b.run(10 * SEC + i * SEC, SEC, gap, 1)).collect();
    // Rate at progress p is 3000 * (1 + 2p) / 3: 1000 at p=0, 3000 at p=1.
    // Window means: p in [0,1/3] -> ~1333, [1/3,2/3] -> ~2000, [2/3,1] -> ~2667, then 3000.
    let want = [1333u64 + 30, 2000, 2667, 3000, 3000];
    for (got, want) in windows.iter().zip(want) {
        assert!(got.abs_diff(want) <= want / 50, "windows {windows:?}, want ~{want}");
    }
    // Without warm-up the cost is untouched.
    assert_eq!(unsafe { sl_gcra_warm(1000, 5, 0, 0) }, 1000);
    // A warm start in the future (clock skew) counts as cold, not as a panic.
    assert_eq!(unsafe { sl_gcra_warm(1000, 5, 10, 100) }, 3000);
    // The largest costs user space allows (just under 2^62: a bytes/s rule
    // at a tiny rate and a big frame) are scaled, not wrapped around.
    for cost in [1u64 << 52, (1 << 62) - 1] {
        let cold = unsafe { sl_gcra_warm(cost, 5, 5, 100) };
        assert!(cold.abs_diff(3 * cost) <= 3 * 3072, "cold {cost}: {cold}");
        let half = unsafe { sl_gcra_warm(cost, 55, 5, 100) }; // p = 0.5: 3 / 2
        assert!((half as f64 / cost as f64 - 1.5).abs() < 1e-3, "half {cost}: {half}");
    }
}

#[test]
fn the_clock_wrapping_around_changes_nothing() {
    let start = (u64::MAX >> sluice_abi::GCRA_TIME_SHIFT) - SEC / 2; // the TAT clock wraps half-way through
    let mut wrapped = Bucket::new(LimitKind::Pps, 1000, 100, start);
    let mut plain = Bucket::new(LimitKind::Pps, 1000, 100, SEC);
    let gap = SEC / 10_000;
    let a = wrapped.run(start, 3 * SEC, gap, 1);
    let b = plain.run(SEC, 3 * SEC, gap, 1);
    assert_eq!(a, b);
    assert!(a.abs_diff(3100) <= 1, "{a}");
}

#[test]
fn no_drift_over_an_hour() {
    // 997 pps (not a divisor of 1e9) at 4x overload for an hour of simulated time.
    let mut b = Bucket::new(LimitKind::Pps, 997, 997, SEC);
    let passed = b.run(SEC, 3600 * SEC, SEC / (997 * 4), 1);
    let want = 997 * 3600 + 997;
    assert!(passed.abs_diff(want) <= 1, "passed {passed}, want {want}");
}

#[test]
fn concurrent_updates_are_not_lost() {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };
    // Four threads hammer one shared TAT at the same simulated instant: the
    // compare-and-swap loop must admit exactly the burst, never more.
    let now = 100 * SEC;
    let tat = Arc::new(AtomicU64::new(fp(now)));
    let g = Gcra::new(LimitKind::Pps, 1000, 5000);
    let passed: u64 = (0..4)
        .map(|_| {
            let tat = tat.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                for _ in 0..5000 {
                    // SAFETY: AtomicU64 has the layout of u64; the C side uses atomic CAS.
                    let ok = unsafe {
                        let cost = sl_gcra_cost(1, g.unit_fp, g.shift);
                        sl_gcra_admit(tat.as_ptr(), fp(now), sl_gcra_limit(g.tau, cost), cost)
                    };
                    n += ok as u64;
                }
                n
            })
        })
        .map(|h| h.join().unwrap())
        .sum();
    // CAS losers after GCRA_CAS_TRIES attempts are dropped, so the total can
    // fall short under contention but must never exceed the burst.
    assert!(passed <= 5000, "{passed} admitted, burst is 5000");
    assert!(passed >= 4500, "{passed}: too many lost races");
    assert_eq!(tat.load(Ordering::SeqCst), fp(now) + passed * fp(1_000_000));
}
