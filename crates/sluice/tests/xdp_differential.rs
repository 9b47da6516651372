//! Tier 2: the XDP program against its reference model
//! (`sluice_proto::xdp_model`, the README's Firewall semantics) on 100 000
//! seeded random and hostile frames under random rule sets, through
//! BPF_PROG_TEST_RUN: every verdict, every verdict and note counter and
//! every rule counter must agree, with 0 mismatches. The benchmark target
//! `cargo bench --bench differential` runs the same check on 1 000 000
//! frames. Set `SLUICE_DIFF_SEED` to replay another seed. Needs root.

mod common;
#[path = "common/differential.rs"]
mod differential;

use common::{require_root, PinDir};

/// Frames in the suite: a few seconds.
const FRAMES: u64 = 100_000;

#[test]
#[ignore = "needs root (BPF, namespaces): make test runs it"]
fn the_xdp_program_agrees_with_the_model_on_random_and_hostile_frames() {
    require_root();
    let seed = std::env::var("SLUICE_DIFF_SEED")
        .ok()
        .map_or(0x5eed_0001, |s| s.parse().expect("SLUICE_DIFF_SEED: a number"));
    let pins = PinDir::new("diff");
    let sum = differential::run(&pins.0, seed, FRAMES);
    eprintln!(
        "differential: seed {seed}, {} frames under {} rule sets in {:.1} s, {} mismatches; by verdict: {}",
        sum.frames,
        sum.rule_sets,
        sum.secs,
        sum.mismatches,
        sum.verdict_line()
    );
    assert_eq!(sum.frames, FRAMES);
    assert!(
        sum.mismatches == 0,
        "{} of {} frames disagree with the model; the first {}:\n{}",
        sum.mismatches,
        sum.frames,
        sum.reports.len(),
        sum.reports.join("\n")
    );
    // Every verdict of the model was exercised (its limit rules never drop).
    use sluice_abi::stat;
    for v in (0..stat::ALL).filter(|v| stat::is_verdict(*v) && *v != stat::LIMIT) {
        let n = sum.by_verdict.get(&v).copied().unwrap_or(0);
        assert!(n > 1000, "verdict {} seen {n} times", stat::NAMES[v as usize]);
    }
}
