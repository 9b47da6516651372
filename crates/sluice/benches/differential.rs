//! The XDP program against its reference model, at scale, and the cost of
//! its parser by VLAN depth. Run as root with `cargo bench --bench
//! differential` (release profile, about a minute).
//!
//! 1. **Differential check**: [`FRAMES`] (1 000 000; `SLUICE_DIFF_FRAMES`
//!    overrides, `SLUICE_DIFF_SEED` picks the seed) seeded random and
//!    hostile frames under random rule sets, each run through `sluice_xdp`
//!    by BPF_PROG_TEST_RUN and compared with `sluice_proto::xdp_model`:
//!    verdict per frame, verdict/note/rule counters per batch (the check of
//!    `tests/common/differential.rs`, which the suite runs on 100 000). It
//!    prints the count and the mismatches, and fails on any mismatch.
//! 2. **Per-packet cost by VLAN depth**: kernel-reported ns/packet of
//!    `sluice_xdp` (median of [`ROUNDS`] runs of [`REPEAT`] repeats, cases
//!    interleaved) on TCP over IPv4 and IPv6 from a source no rule matches,
//!    behind 0 to 9 priority tags, with one deny rule per family installed
//!    (so the lookups run). With `SLUICE_BASELINE_XDP=path/to/sluice_xdp.bpf.o`
//!    (an object of an earlier build) the same frames are timed on it too,
//!    in the same rounds, for a before/after comparison.
//!
//! Everything it creates (pins under `/sys/fs/bpf/sluice-bench-*`) is
//! removed at the end, on error and on panic.

mod common;
#[allow(dead_code)]
#[path = "../tests/common/differential.rs"]
mod differential;

use std::{net::IpAddr, path::Path, time::Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use common::PinGuard;
use sluice::{
    dataplane::{Capacity, Dataplane},
    firewall::{Action, Firewall, RuleSpec},
    store::Store,
};
use sluice_abi::{FwConfig, FwRule, FwTable};
use sluice_proto::packet::Packet;

/// Frames of the differential check.
const FRAMES: u64 = 1_000_000;
/// Runs per BPF_PROG_TEST_RUN call; the kernel reports the average.
const REPEAT: u32 = 1_000_000;
/// Calls per measurement; the median is reported.
const ROUNDS: usize = 7;
/// Stacked tags timed.
const DEPTHS: [usize; 6] = [0, 1, 2, 3, 8, 9];

/// A TCP SYN from a source no rule matches, behind `tags` 802.1Q tags (VID 0).
fn frame(v6: bool, tags: usize) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        ("2001:2:0:7::7".parse().unwrap(), "2001:2:0:8::8".parse().unwrap())
    } else {
        ("198.18.7.7".parse().unwrap(), "198.18.8.8".parse().unwrap())
    };
    let f = Packet::tcp(src, dst, 40000, 80).with_payload(&[0; 10]).build();
    sluice_proto::packet::insert_tags(&f, &vec![(0x8100, 0); tags])
}

/// The earlier build named by `SLUICE_BASELINE_XDP`, loaded raw (its maps
/// may predate this build's) with the same two deny rules.
fn load_baseline(obj: &Path, pins: &Path) -> Result<Ebpf> {
    let bytes = std::fs::read(obj).with_context(|| format!("reading {}", obj.display()))?;
    std::fs::create_dir_all(pins)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins)
        .map_max_entries(sluice_abi::ev::RING, 4096)
        .load(&bytes)?;
    let prog: &mut Xdp = ebpf
        .program_mut(sluice_abi::xdp::PROGRAM)
        .context("no XDP program")?
        .try_into()?;
    prog.load()?;
    let rule = FwRule { slot: 0, gen: 0 };
    let mut v4: LpmTrie<_, [u8; 4], FwRule> =
        LpmTrie::try_from(ebpf.map_mut(FwTable::DenySrc4.map_name()).context("v4 table")?)?;
    v4.insert(&Key::new(24, [198, 18, 1, 0]), rule, 0)?;
    let mut v6: LpmTrie<_, [u8; 16], FwRule> =
        LpmTrie::try_from(ebpf.map_mut(FwTable::DenySrc6.map_name()).context("v6 table")?)?;
    let net: std::net::Ipv6Addr = "2001:2:0:1::".parse()?;
    v6.insert(&Key::new(64, net.octets()), FwRule { slot: 1, ..rule }, 0)?;
    let mut cfg: Array<_, FwConfig> = Array::try_from(ebpf.map_mut(sluice_abi::xdp::CONFIG).context("config")?)?;
    cfg.set(
        0,
        FwConfig {
            abi_version: sluice_abi::ABI_VERSION,
            table_mask: FwTable::DenySrc4.bit() | FwTable::DenySrc6.bit(),
        },
        0,
    )?;
    Ok(ebpf)
}

fn test_run(xdp: &mut Xdp, frame: &[u8], repeat: u32) -> Result<(u64, u32)> {
    let r = xdp
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.duration.as_nanos() as u64, r.return_value))
}

/// One timed row: ns and verdict for [this build v4, v6, baseline v4, v6].
type Row = (usize, Vec<(u64, u32)>);

fn bench_cost() -> Result<Vec<Row>> {
    let pins = PinGuard::new("sluice-bench", "-vlan")?;
    let cap = Capacity {
        max_rules: 64,
        limit_sources: 64,
        ..Default::default()
    };
    let (mut dp, maps) = Dataplane::load(&pins.0, cap)?;
    let (mut fw, _) = Firewall::open(Store::in_memory()?, Box::new(maps.firewall))?;
    fw.add(vec![
        RuleSpec::new(Action::Deny, "198.18.1.0/24", false, None)?,
        RuleSpec::new(Action::Deny, "2001:2:0:1::/64", false, None)?,
    ])?;
    let base_pins = PinGuard::new("sluice-bench", "-vlan-base")?;
    let mut baseline = match std::env::var_os("SLUICE_BASELINE_XDP") {
        Some(p) => Some(load_baseline(Path::new(&p), &base_pins.0)?),
        None => None,
    };
    let mut rows = Vec::new();
    for tags in DEPTHS {
        let frames = [frame(false, tags), frame(true, tags)];
        let mut samples: Vec<Vec<u64>> = vec![Vec::new(); 4];
        let mut verdicts = [0u32; 4];
        let mut progs: Vec<&mut Xdp> = vec![dp.xdp_program()];
        if let Some(b) = baseline.as_mut() {
            progs.push(b.program_mut(sluice_abi::xdp::PROGRAM).unwrap().try_into()?);
        }
        for (p, prog) in progs.iter_mut().enumerate() {
            for (i, f) in frames.iter().enumerate() {
                verdicts[2 * p + i] = test_run(prog, f, 10_000)?.1;
            }
        }
        for _ in 0..ROUNDS {
            for (p, prog) in progs.iter_mut().enumerate() {
                for (i, f) in frames.iter().enumerate() {
                    let (ns, v) = test_run(prog, f, REPEAT)?;
                    ensure!(v == verdicts[2 * p + i], "verdict changed between runs");
                    samples[2 * p + i].push(ns);
                }
            }
        }
        let row: Vec<(u64, u32)> = samples
            .iter_mut()
            .zip(verdicts)
            .filter(|(s, _)| !s.is_empty())
            .map(|(s, v)| {
                s.sort_unstable();
                (s[ROUNDS / 2], v)
            })
            .collect();
        eprintln!("  {tags} tags: {row:?} (ns, verdict)");
        rows.push((tags, row));
    }
    Ok(rows)
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        1 => "DROP",
        2 => "PASS",
        _ => "?",
    }
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this benchmark loads BPF programs and pins maps: run it as root");
    }
    let started = Instant::now();
    let env = |k: &str, d: u64| -> Result<u64> {
        std::env::var(k).map_or(Ok(d), |v| v.parse().with_context(|| format!("{k}={v}")))
    };
    let (frames, seed) = (
        env("SLUICE_DIFF_FRAMES", FRAMES)?,
        env("SLUICE_DIFF_SEED", 0x5eed_1000)?,
    );
    eprintln!("== differential check: {frames} frames, seed {seed}");
    let pins = PinGuard::new("sluice-bench", "-diff")?;
    let diff = differential::run(&pins.0, seed, frames);
    drop(pins);
    eprintln!("== per-packet cost by VLAN depth");
    let cost = bench_cost()?;

    println!();
    println!("Differential check of sluice_xdp against sluice_proto::xdp_model (BPF_PROG_TEST_RUN), seed {seed}:");
    println!(
        "{} frames under {} random rule sets in {:.1} s ({:.0} frames/s), {} mismatches",
        diff.frames,
        diff.rule_sets,
        diff.secs,
        diff.frames as f64 / diff.secs,
        diff.mismatches
    );
    println!("frames by verdict: {}", diff.verdict_line());
    println!();
    println!("BPF_PROG_TEST_RUN of sluice_xdp by stacked 802.1Q tags (VID 0), 64-byte TCP frame");
    println!("(+4 bytes a tag) from a source no rule matches, one deny rule per family;");
    println!("kernel-reported ns/packet, median of {ROUNDS} runs of {REPEAT} repeats:");
    println!();
    let baseline = cost.first().is_some_and(|(_, r)| r.len() == 4);
    if baseline {
        println!(
            "| tags | IPv4 ns (baseline) | IPv4 verdict (baseline) | IPv6 ns (baseline) | IPv6 verdict (baseline) |"
        );
        println!(
            "|-----:|-------------------:|:------------------------|-------------------:|:------------------------|"
        );
    } else {
        println!("| tags | IPv4 ns | IPv4 verdict | IPv6 ns | IPv6 verdict |");
        println!("|-----:|--------:|:-------------|--------:|:-------------|");
    }
    for (tags, r) in &cost {
        if baseline {
            println!(
                "| {tags:>4} | {:>7} ({:>3}) | {} ({}) | {:>7} ({:>3}) | {} ({}) |",
                r[0].0,
                r[2].0,
                verdict_name(r[0].1),
                verdict_name(r[2].1),
                r[1].0,
                r[3].0,
                verdict_name(r[1].1),
                verdict_name(r[3].1)
            );
        } else {
            println!(
                "| {tags:>4} | {:>7} | {:<12} | {:>7} | {:<12} |",
                r[0].0,
                verdict_name(r[0].1),
                r[1].0,
                verdict_name(r[1].1)
            );
        }
    }
    println!();
    println!("total bench time {:.1?}", started.elapsed());
    if diff.mismatches > 0 {
        bail!(
            "{} of {} frames disagree with the model; the first {}:\n{}",
            diff.mismatches,
            diff.frames,
            diff.reports.len(),
            diff.reports.join("\n")
        );
    }
    Ok(())
}
