//! The differential check of the XDP program against its reference model
//! (`sluice_proto::xdp_model`), shared by `tests/xdp_differential.rs` (the
//! suite: about 100 000 frames) and `benches/differential.rs` (1 000 000
//! and more). Both include this file by path.
//!
//! Seeded random rule sets go in through the real `Firewall` and `Limiter`
//! (in-memory stores; a limit rule, when a set has one, is far above any
//! rate a test reaches, so it never drops); seeded random and hostile frames
//! (`sluice_proto::framegen`) run through the loaded program one
//! BPF_PROG_TEST_RUN each. Every frame's verdict (XDP_PASS or XDP_DROP) is
//! compared with the model's; the verdict and note counters and every
//! rule's counter (packets and bytes) are compared per batch of [`BATCH`]
//! frames with the sums the model predicts (reading per-CPU counters per
//! frame would cost more than the run). A batch that differs in anything is
//! replayed frame by frame, reading the counters around each, to name the
//! frames that disagree.
//! Each mismatch is reported with the frame in hex, the rule set and both
//! outcomes.

use std::{collections::BTreeMap, path::Path, time::Instant};

use aya::programs::{TestRun, TestRunOptions};
use sluice::{
    dataplane::{Capacity, Dataplane},
    firewall::{Action, Firewall, RuleSpec, Which},
    limits::{LimitRequest, Limiter},
    store::Store,
};
use sluice_abi::{stat, Counter};
use sluice_proto::{
    framegen::{self, hex, Rng, Universe},
    xdp_model::{judge, Outcome, Rules},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Frames between two reads of the counters.
pub const BATCH: usize = 500;
/// Frames run under one rule set before the next is drawn.
pub const FRAMES_PER_SET: usize = 2_000;
/// Mismatches described in full (all are counted).
const SHOWN: usize = 10;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub frames: u64,
    pub rule_sets: u64,
    /// Frames by the verdict counter the model chose (a `stat` index).
    pub by_verdict: BTreeMap<u32, u64>,
    /// Frames whose outcome differs in any way (verdict or counters).
    pub mismatches: u64,
    /// The first [`SHOWN`] of them, described in full.
    pub reports: Vec<String>,
    pub secs: f64,
}

impl Summary {
    /// One line per verdict counter, for the log.
    pub fn verdict_line(&self) -> String {
        self.by_verdict
            .iter()
            .map(|(v, n)| format!("{} {n}", stat::NAMES[*v as usize]))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Loaded {
    dp: Dataplane,
    fw: Firewall,
    limits: Limiter,
}

/// The kernel side: what moved for one frame or batch.
#[derive(Debug, Default, PartialEq, Eq)]
struct Moved {
    /// By stat index: packets, bytes.
    stats: BTreeMap<u32, (u64, u64)>,
    /// By rule index in the set: packets, bytes.
    rules: BTreeMap<usize, (u64, u64)>,
}

impl Moved {
    fn add(&mut self, o: &Outcome, len: u64) {
        for i in std::iter::once(o.verdict).chain(o.notes.iter().copied()) {
            let e = self.stats.entry(i).or_default();
            *e = (e.0 + 1, e.1 + len);
        }
        if let Some(r) = o.rule {
            let e = self.rules.entry(r).or_default();
            *e = (e.0 + 1, e.1 + len);
        }
    }
}

/// Counter snapshot: every stat, every rule of the set (by index).
struct Snapshot {
    stats: Vec<Counter>,
    rules: Vec<Counter>,
}

impl Loaded {
    fn new(pin_dir: &Path) -> Self {
        let cap = Capacity {
            max_rules: 64,
            limit_sources: 64,
            ..Default::default()
        };
        let (dp, maps) = Dataplane::load(pin_dir, cap).expect("load the dataplane");
        let (fw, _) = Firewall::open(Store::in_memory().unwrap(), Box::new(maps.firewall)).unwrap();
        let limits = Limiter::open(Store::in_memory().unwrap(), Box::new(maps.limits)).unwrap();
        Loaded { dp, fw, limits }
    }

    /// Replaces every rule with `set`; returns the slot of each rule of the
    /// set, in order.
    fn install(&mut self, set: &Rules) -> Vec<u32> {
        for action in [Action::Deny, Action::Allow] {
            for (r, _) in self.fw.list(action).unwrap() {
                self.fw.delete(action, &Which::Id(r.id)).unwrap();
            }
        }
        for l in self.limits.rules().map(|l| l.id).collect::<Vec<_>>() {
            self.limits.delete(l).unwrap();
        }
        let specs: Vec<RuleSpec> = set
            .rules
            .iter()
            .map(|r| {
                let action = if r.deny { Action::Deny } else { Action::Allow };
                RuleSpec::new(action, &r.cidr(), r.dst, None).unwrap_or_else(|e| panic!("{r}: {e}"))
            })
            .collect();
        let slots = if specs.is_empty() {
            Vec::new()
        } else {
            self.fw.add(specs).unwrap().iter().map(|r| r.slot).collect()
        };
        if set.limits {
            // 10^9 packets per second with a burst of one second: no test
            // comes near it, so this rule is in force and never drops.
            let req = LimitRequest {
                pps: Some(1_000_000_000),
                ..Default::default()
            };
            self.limits.add(req.validate().unwrap()).unwrap();
        }
        slots
    }

    fn snapshot(&self, slots: &[u32]) -> Snapshot {
        let mut by_slot = BTreeMap::new();
        for action in [Action::Deny, Action::Allow] {
            for (r, c) in self.fw.list(action).unwrap() {
                by_slot.insert(r.slot, c);
            }
        }
        Snapshot {
            stats: self.fw.stats().unwrap(),
            rules: slots.iter().map(|s| by_slot[s]).collect(),
        }
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        };
        self.dp.xdp_program().test_run(opts).expect("test_run").return_value
    }
}

fn moved(before: &Snapshot, after: &Snapshot) -> Moved {
    let mut m = Moved::default();
    for (i, (b, a)) in before.stats.iter().zip(&after.stats).enumerate() {
        if a != b {
            m.stats.insert(i as u32, (a.packets - b.packets, a.bytes - b.bytes));
        }
    }
    for (i, (b, a)) in before.rules.iter().zip(&after.rules).enumerate() {
        if a != b {
            m.rules.insert(i, (a.packets - b.packets, a.bytes - b.bytes));
        }
    }
    m
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "XDP_?",
    }
}

fn describe_moved(m: &Moved, set: &Rules) -> String {
    let stats: Vec<String> = m
        .stats
        .iter()
        .map(|(i, (p, b))| format!("{} {p}/{b}B", stat::NAMES[*i as usize]))
        .collect();
    let rules: Vec<String> = m
        .rules
        .iter()
        .map(|(i, (p, b))| format!("[{i}] {} {p}/{b}B", set.rules[*i]))
        .collect();
    format!("counters [{}], rules [{}]", stats.join(", "), rules.join(", "))
}

fn describe_set(set: &Rules) -> String {
    let mut lines: Vec<String> = set
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| format!("[{i}] {r}"))
        .collect();
    if set.limits {
        lines.push("a limit rule (never drops)".into());
    }
    if lines.is_empty() {
        "no rules".into()
    } else {
        lines.join("; ")
    }
}

/// Runs `frames` frames from `seed` through the program loaded with its
/// maps pinned in `pin_dir` (the caller removes it) and compares every
/// outcome with the model.
pub fn run(pin_dir: &Path, seed: u64, frames: u64) -> Summary {
    let t0 = Instant::now();
    let mut k = Loaded::new(pin_dir);
    let mut rng = Rng::new(seed);
    let mut sum = Summary::default();
    let report = |sum: &mut Summary, what: String| {
        sum.mismatches += 1;
        if sum.reports.len() < SHOWN {
            sum.reports.push(what);
        }
    };
    while sum.frames < frames {
        let u = Universe::new(&mut rng);
        let set = framegen::rules(&mut rng, &u);
        let slots = k.install(&set);
        sum.rule_sets += 1;
        let set_no = sum.rule_sets;
        let in_set = (FRAMES_PER_SET as u64).min(frames - sum.frames) as usize;
        let mut done = 0;
        while done < in_set {
            let n = BATCH.min(in_set - done);
            let batch: Vec<(Vec<u8>, Outcome)> = (0..n)
                .map(|_| {
                    let f = framegen::frame(&mut rng, &u);
                    let o = judge(&set, &f);
                    (f, o)
                })
                .collect();
            let before = k.snapshot(&slots);
            let mut want = Moved::default();
            let mut verdicts_differ = false;
            for (f, o) in &batch {
                let model = if o.drop { XDP_DROP } else { XDP_PASS };
                verdicts_differ |= k.run(f) != model;
                want.add(o, f.len() as u64);
                *sum.by_verdict.entry(o.verdict).or_default() += 1;
            }
            let after = k.snapshot(&slots);
            if verdicts_differ || moved(&before, &after) != want {
                // Replay the batch frame by frame to name the culprits.
                for (i, (f, o)) in batch.iter().enumerate() {
                    let before = k.snapshot(&slots);
                    let v = k.run(f);
                    let got = moved(&before, &k.snapshot(&slots));
                    let model = if o.drop { XDP_DROP } else { XDP_PASS };
                    let mut want = Moved::default();
                    want.add(o, f.len() as u64);
                    if v != model || got != want {
                        let at = sum.frames + (done + i) as u64;
                        report(
                            &mut sum,
                            format!(
                                "seed {seed}, rule set {set_no}, frame {at}:\n  kernel {}, {}\n  model  {}, {}\n  frame ({} bytes): {}\n  rules: {}",
                                verdict_name(v),
                                describe_moved(&got, &set),
                                verdict_name(model),
                                describe_moved(&want, &set),
                                f.len(),
                                hex(f),
                                describe_set(&set)
                            ),
                        );
                    }
                }
            }
            done += n;
        }
        sum.frames += in_set as u64;
    }
    sum.secs = t0.elapsed().as_secs_f64();
    sum
}
