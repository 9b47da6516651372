//! Benchmarks of flow control (issue 3). Run as root with
//! `cargo bench --bench limits` (release profile, about 75 s).
//!
//! It measures four things and prints them as Markdown tables; it asserts
//! nothing about speed and fails only if the setup is broken (a wrong
//! verdict, a rule that drops when it must not, lost bucket updates, a
//! daemon that does not start or attach, a flood nobody judged):
//!
//! 1. **Accuracy of the delivered rate** at 10x and 20x overload: a lab
//!    (`bl-a`/`bl-b`, lab number 60) and the real `sluice run` daemon on
//!    `bl-*`; for each case a fresh `limit add --src A --pps R` (or `--bps`,
//!    default burst = one second of the rate), a paced flood from namespace
//!    `bl-a` with the XDP live-frames generator for [`ACC_FLOOD`], and the
//!    steady-state delivered rate (passed at 5 s - passed at 1 s) / 4 s from
//!    `limit list --json`, so the initial burst is excluded; as a
//!    cross-check, the least-squares slope of reads every [`ACC_SAMPLE`]
//!    over the same window.
//! 2. **Cost of limits in the pipeline**: `BPF_PROG_TEST_RUN` ns/packet
//!    (kernel average over [`REPEAT`] runs, median of [`ROUNDS`], cases
//!    interleaved) of the full program with 10 IPv4 deny prefixes that miss,
//!    alone and followed by 10 limit rules (all matching, 1 of 10 matching,
//!    10 per-source rules matching), each variant in its own dataplane and
//!    pin dir. The limits are so generous ([`FAST_PPS`]) that nothing drops.
//! 3. **Compare-and-swap vs spin lock** on a shared bucket: the shipping
//!    object ([`dataplane::objects::XDP_OBJ`]) against the spin-lock build
//!    ([`dataplane::objects::XDP_SPIN_OBJ`]), one matching shared rule, test_run on
//!    one thread and on two threads pinned to different CPUs hammering the
//!    same bucket at once; then a lost-update check: rate 1 pps, burst
//!    100 000, two threads sending 100 000 packets each.
//! 4. **Drop throughput vs nftables**: a flat-out flood from `bl-a` against
//!    sluice (`--src A --pps 1000` at XDP on `bl-a`) and then, with sluice
//!    down and GRO enabled on `bl-a` so that XDP_TX'd frames are delivered to
//!    the stack, against an nftables netdev ingress `limit rate over
//!    1000/second` rule on the same veth.
//!
//! Everything it creates (the lab namespaces and veths, pins under
//! `/sys/fs/bpf/sluice-benchlim-*`, the daemon, the `netdev slbench` nft
//! table, temp dirs) is removed at the end, on error and on panic. Nothing
//! is attached to any interface outside the lab.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr},
    process::{Command, Output, Stdio},
    sync::Barrier,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use common::{is_root, BenchDaemon, LabGuard, PinGuard};
use serde_json::Value;
use sluice::{
    dataplane::{
        self,
        gen::{flood, Flood, FloodReport},
        Capacity, Dataplane,
    },
    firewall::{Action, Firewall, RuleSpec},
    lab::LabHost,
    limits::{LimitKind, LimitMatch, LimitRequest, LimitSpec, LimitStats, Limiter},
    store::Store,
};
use sluice_proto::packet::Packet;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Runs per BPF_PROG_TEST_RUN call; the kernel reports the average.
const REPEAT: u32 = 1_000_000;
/// Calls per measurement; the median is reported.
const ROUNDS: usize = 7;
/// Warm-up runs of each case before the measured rounds.
const WARMUP: u32 = 10_000;
/// A rate no test_run can reach (1 ns of rate-time per packet, burst one
/// second of it): the rule is evaluated and charged but never drops.
const FAST_PPS: i64 = 1_000_000_000;
/// Source address of the test_run frame.
const TEST_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// Lost-update check: a shared bucket of this depth at 1 pps, and this many
/// packets from each of two threads.
const CHECK_BURST: u64 = 100_000;

/// Lab of the end-to-end parts: its own name and number, so it cannot
/// collide with the tests' labs.
const LAB_NAME: &str = "bl";
const LAB_NUMBER: u8 = 60;
const LAB_GLOB: &str = "bl-*";
/// Length of each accuracy flood; the rate is read at 1 s and 5 s.
const ACC_FLOOD: Duration = Duration::from_secs(6);
const ACC_WINDOW: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(5));
/// Counters are also read every this often inside the window, for a
/// least-squares cross-check of the two-point rate.
const ACC_SAMPLE: Duration = Duration::from_millis(250);
/// (kind, limit, overload factor) of the accuracy cases.
const ACC_CASES: [(LimitKind, u64, u64); 7] = [
    (LimitKind::Pps, 1_000, 10),
    (LimitKind::Pps, 1_000, 20),
    (LimitKind::Pps, 10_000, 10),
    (LimitKind::Pps, 10_000, 20),
    (LimitKind::Pps, 100_000, 10),
    (LimitKind::Pps, 100_000, 20),
    // 600 000 B/s = 10 000 frames of 60 bytes per second.
    (LimitKind::Bps, 600_000, 10),
];
/// Length of each flat-out flood of the drop-throughput comparison.
const DROP_FLOOD: Duration = Duration::from_secs(5);
/// Rate of the sluice and nftables rules of the drop-throughput comparison.
const DROP_LIMIT_PPS: u64 = 1_000;
const NFT_TABLE: &str = "slbench";

fn median_f(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs a command; fails with its stderr if it exits non-zero.
fn run_cmd(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

// ---------------------------------------------------------------------------
// Guards

/// The nftables table of the comparison, deleted on drop.
struct NftGuard;

impl NftGuard {
    /// Creates `netdev slbench` with an ingress chain on `dev` that drops
    /// packets from `src` above `pps` and counts the rest.
    fn new(dev: &str, src: Ipv4Addr, pps: u64) -> Result<Self> {
        let _ = Command::new("nft")
            .args(["delete", "table", "netdev", NFT_TABLE])
            .stderr(Stdio::null())
            .status();
        run_cmd(&["nft", "add", "table", "netdev", NFT_TABLE])?;
        let guard = NftGuard;
        let chain = format!("{{ type filter hook ingress device {dev} priority 0; }}");
        run_cmd(&["nft", "add", "chain", "netdev", NFT_TABLE, "in", &chain])?;
        let (src, rate) = (src.to_string(), format!("{pps}/second"));
        run_cmd(&[
            "nft", "add", "rule", "netdev", NFT_TABLE, "in", "ip", "saddr", &src, "limit", "rate", "over", &rate,
            "counter", "drop",
        ])?;
        run_cmd(&[
            "nft", "add", "rule", "netdev", NFT_TABLE, "in", "ip", "saddr", &src, "counter", "accept",
        ])?;
        Ok(guard)
    }

    /// Packet counters of the rules in order: [dropped, accepted].
    fn counters(&self) -> Result<Vec<u64>> {
        let out = run_cmd(&["nft", "-j", "list", "table", "netdev", NFT_TABLE])?;
        let v: Value = serde_json::from_slice(&out.stdout).context("parsing `nft -j` output")?;
        let mut counts = Vec::new();
        for item in v["nftables"].as_array().context("no nftables array")? {
            let Some(exprs) = item.get("rule").and_then(|r| r["expr"].as_array()) else {
                continue;
            };
            for e in exprs {
                if let Some(c) = e.get("counter") {
                    counts.push(c["packets"].as_u64().context("counter without packets")?);
                }
            }
        }
        ensure!(counts.len() == 2, "expected 2 nft counters, got {counts:?}");
        Ok(counts)
    }
}

impl Drop for NftGuard {
    fn drop(&mut self) {
        match Command::new("nft")
            .args(["delete", "table", "netdev", NFT_TABLE])
            .status()
        {
            Ok(s) if s.success() => eprintln!("  nft table netdev {NFT_TABLE} removed"),
            other => eprintln!("warning: nft delete table netdev {NFT_TABLE}: {other:?}"),
        }
    }
}

/// A limit rule's counters as `limit list --json` shows them.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    passed: u64,
    passed_bytes: u64,
    dropped: u64,
}

/// A daemon managing the bench lab, with limit helpers.
impl BenchDaemon {
    fn start(glob: &str, iface: &str) -> Result<Self> {
        let mut d = BenchDaemon::spawn(PinGuard::new("sluice-benchlim", "")?, "", &["--iface", glob])?;
        let took = d.wait_ready(&format!("attach to {iface}"), |d| {
            let st = d.json(&["status"])?;
            Ok(st["interfaces"]
                .as_array()
                .is_some_and(|v| v.iter().any(|i| i["name"] == iface)))
        })?;
        eprintln!(
            "  daemon pid {} up in {took:.2?}, attached to {iface} (pins {})",
            d.pid(),
            d.pins.0.display()
        );
        Ok(d)
    }

    fn add_limit(&self, args: &[&str]) -> Result<u64> {
        let mut a = vec!["limit", "add"];
        a.extend_from_slice(args);
        let v = self.json(&a)?;
        v["id"].as_u64().with_context(|| format!("no id in {v}"))
    }

    fn del_limit(&self, id: u64) -> Result<()> {
        self.json(&["limit", "del", &id.to_string()])?;
        Ok(())
    }

    fn counts(&self, id: u64) -> Result<Counts> {
        let v = self.json(&["limit", "list"])?;
        let row = v
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"] == id))
            .with_context(|| format!("no limit {id} in {v}"))?;
        let f = |k: &str| row[k].as_u64().with_context(|| format!("{k} missing in {row}"));
        Ok(Counts {
            passed: f("passed")?,
            passed_bytes: f("passed_bytes")?,
            dropped: f("dropped")?,
        })
    }

    /// Reads the counters at `at` (sleeping until then). Returns the middle
    /// of the read as its time stamp, and how long the read took.
    fn counts_at(&self, id: u64, at: Instant) -> Result<(Instant, Duration, Counts)> {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let c = self.counts(id)?;
        let took = t.elapsed();
        Ok((t + took / 2, took, c))
    }
}

// ---------------------------------------------------------------------------
// test_run

/// A 64-byte TCP SYN/IPv4 frame from `src` (as in the firewall bench).
fn test_frame(src: Ipv4Addr) -> Vec<u8> {
    Packet::tcp(IpAddr::V4(src), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)), 40000, 80)
        .with_payload(&[0u8; 10])
        .build()
}

/// One program and frame to time, with the verdict it must get.
struct Case<'a> {
    what: String,
    xdp: &'a Xdp,
    frame: Vec<u8>,
    want: u32,
}

/// Kernel-reported ns/packet of `repeat` runs, checking the verdict.
fn time_run(xdp: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let r = xdp
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

/// Median ns/packet of each case over [`ROUNDS`] rounds of [`REPEAT`] runs,
/// checking every verdict. Each round runs every case once, so a slow phase
/// of the VM spreads over all cases instead of skewing one of them.
fn measure(cases: &[Case]) -> Result<Vec<f64>> {
    let run = |c: &Case, repeat: u32| -> Result<f64> {
        let (v, ns) = time_run(c.xdp, &c.frame, repeat).with_context(|| c.what.clone())?;
        ensure!(v == c.want, "{}: XDP returned {v}, expected {}", c.what, c.want);
        Ok(ns)
    };
    for c in cases {
        run(c, WARMUP)?;
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for _ in 0..ROUNDS {
        for (c, s) in cases.iter().zip(&mut samples) {
            s.push(run(c, REPEAT)?);
        }
    }
    Ok(cases
        .iter()
        .zip(&mut samples)
        .map(|(c, s)| {
            let m = median_f(s);
            eprintln!("    {:<42} {m:>5.0} ns/pkt   (sorted rounds: {s:.0?})", c.what);
            m
        })
        .collect())
}

/// A dataplane in its own pin dir with its firewall and limiter.
struct Loaded {
    dp: Dataplane,
    _fw: Firewall,
    limits: Limiter,
    _pins: PinGuard,
}

impl Loaded {
    fn new(obj: &[u8], tag: &str, deny: &[String], limits: &[LimitRequest]) -> Result<Self> {
        let pins = PinGuard::new("sluice-benchlim", &format!("-{tag}"))?;
        let cap = Capacity {
            max_rules: 1024,
            limit_sources: 1024,
            ..Default::default()
        };
        let (dp, maps) =
            Dataplane::load_object(obj, &pins.0, cap).with_context(|| format!("loading the {tag} dataplane"))?;
        let (mut fw, _) = Firewall::open(Store::in_memory()?, Box::new(maps.firewall))?;
        if !deny.is_empty() {
            let specs = deny
                .iter()
                .map(|c| RuleSpec::new(Action::Deny, c, false, None))
                .collect::<Result<Vec<_>, _>>()?;
            fw.add(specs)?;
        }
        let mut limiter = Limiter::open(Store::in_memory()?, Box::new(maps.limits))?;
        for r in limits {
            limiter.add(r.validate()?)?;
        }
        Ok(Loaded {
            dp,
            _fw: fw,
            limits: limiter,
            _pins: pins,
        })
    }

    fn stats(&self) -> Result<Vec<LimitStats>> {
        Ok(self.limits.list()?.into_iter().map(|(_, s)| s).collect())
    }
}

/// The 10 prefixes /32 ... /23 that contain `ip`.
fn covering_prefixes(ip: Ipv4Addr) -> Vec<String> {
    (0..10)
        .map(|k| format!("{}/{}", Ipv4Addr::from(u32::from(ip) & (u32::MAX << k)), 32 - k))
        .collect()
}

fn fast_limit(src: &str, per_source: bool) -> LimitRequest {
    LimitRequest {
        src: Some(src.into()),
        pps: Some(FAST_PPS),
        per_source,
        ..Default::default()
    }
}

struct PipelineRow {
    what: &'static str,
    ns: f64,
    /// Limit rules that match the frame.
    matching: usize,
}

/// One rule set of the pipeline comparison.
struct Variant {
    what: &'static str,
    tag: &'static str,
    deny: Vec<String>,
    limits: Vec<LimitRequest>,
    /// Limit rules that match the frame.
    matching: usize,
}

fn bench_pipeline() -> Result<Vec<PipelineRow>> {
    eprintln!("== test_run: deny-only vs deny + 10 limit rules");
    let deny: Vec<String> = (0..10).map(|i| format!("10.{i}.0.0/16")).collect();
    let covering = covering_prefixes(TEST_SRC);
    let mut one_of_ten: Vec<_> = (1..10)
        .map(|i| fast_limit(&format!("203.0.113.{i}/32"), false))
        .collect();
    one_of_ten.push(fast_limit(&format!("{TEST_SRC}/32"), false));
    let variant = |what, tag, deny: &[String], limits: Vec<LimitRequest>, matching| Variant {
        what,
        tag,
        deny: deny.to_vec(),
        limits,
        matching,
    };
    let variants = [
        variant("no rules", "none", &[], Vec::new(), 0),
        variant("deny-only (10 deny prefixes, all miss)", "deny", &deny, Vec::new(), 0),
        variant(
            "deny + 10 shared limits, all match",
            "all",
            &deny,
            covering.iter().map(|c| fast_limit(c, false)).collect(),
            10,
        ),
        variant("deny + 10 shared limits, 1 matches", "one", &deny, one_of_ten, 1),
        variant(
            "deny + 10 per-source limits, all match",
            "persrc",
            &deny,
            covering.iter().map(|c| fast_limit(c, true)).collect(),
            10,
        ),
    ];
    let mut loaded = Vec::new();
    for v in &variants {
        eprintln!("  loading {}", v.what);
        loaded.push(Loaded::new(dataplane::objects::XDP_OBJ, v.tag, &v.deny, &v.limits)?);
    }
    let frame = test_frame(TEST_SRC);
    ensure!(frame.len() == 64, "the test_run frame must be 64 bytes");
    let ns = {
        let cases: Vec<Case> = loaded
            .iter_mut()
            .zip(&variants)
            .map(|(l, v)| Case {
                what: v.what.to_string(),
                xdp: l.dp.xdp_program(),
                frame: frame.clone(),
                want: XDP_PASS,
            })
            .collect();
        measure(&cases)?
    };
    // Every matching rule judged every run and dropped none; the others
    // saw nothing.
    let runs = WARMUP as u64 + ROUNDS as u64 * REPEAT as u64;
    for (l, v) in loaded.iter().zip(&variants) {
        let (what, matching) = (v.what, v.matching);
        let stats = l.stats()?;
        ensure!(stats.len() == v.limits.len(), "{what}: {} limit rules", stats.len());
        let hit = stats.iter().filter(|s| s.passed == runs).count();
        let idle = stats.iter().filter(|s| s.passed == 0).count();
        ensure!(
            stats.iter().all(|s| s.dropped == 0) && hit == matching && hit + idle == stats.len(),
            "{what}: unexpected limit counters {stats:?} (expected {matching} rules with {runs} passed)"
        );
        if v.limits.iter().any(|r| r.per_source) {
            ensure!(
                stats.iter().all(|s| s.sources == 1),
                "{what}: expected one source bucket per rule: {stats:?}"
            );
        }
    }
    Ok(variants
        .iter()
        .zip(ns)
        .map(|(v, ns)| PipelineRow {
            what: v.what,
            ns,
            matching: v.matching,
        })
        .collect())
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, CPU_SET stays in
    // bounds for cpu < CPU_SETSIZE, and pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "sched_setaffinity(CPU {cpu}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// One test_run of `repeat` runs on each of two threads pinned to CPUs 0
/// and 1, started together. Returns each thread's (verdict, kernel ns/pkt)
/// and the wall time from the common start to the last finish.
fn contend(xdp: &Xdp, frame: &[u8], repeat: u32) -> Result<([(u32, f64); 2], Duration)> {
    let barrier = Barrier::new(2);
    let results: Vec<Result<(u32, f64, Instant, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|cpu| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(u32, f64, Instant, Instant)> {
                    let pinned = pin_to_cpu(cpu);
                    barrier.wait();
                    pinned?;
                    let start = Instant::now();
                    let (v, ns) = time_run(xdp, frame, repeat)?;
                    Ok((v, ns, start, Instant::now()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("test_run thread panicked"))))
            .collect()
    });
    let [a, b]: [Result<_>; 2] = results.try_into().map_err(|_| anyhow!("two results"))?;
    let (a, b) = (a?, b?);
    let wall = a.3.max(b.3) - a.2.min(b.2);
    Ok(([(a.0, a.1), (b.0, b.1)], wall))
}

struct LockRow {
    /// Position in the table.
    order: usize,
    name: &'static str,
    /// Loading error of this build, if any.
    error: Option<String>,
    single: f64,
    /// Median kernel ns/pkt of the thread on CPU 0 and on CPU 1.
    contended: [f64; 2],
    /// Median aggregate throughput of both threads, packets/s.
    aggregate_pps: f64,
    /// Packets dropped by the generous rule under contention (CAS give-ups).
    contended_drops: u64,
    contended_runs: u64,
    /// Lost-update check: passed, dropped, allowed maximum.
    check: (u64, u64, u64),
}

fn bench_locks() -> Result<Vec<LockRow>> {
    eprintln!("== test_run: shared bucket, compare-and-swap vs bpf_spin_lock");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    ensure!(cpus >= 2, "the contention test needs 2 CPUs, this machine has {cpus}");
    let frame = test_frame(TEST_SRC);
    let rule = [fast_limit(&format!("{TEST_SRC}/32"), false)];
    let builds: [(&'static str, &[u8], &str); 2] = [
        ("compare-and-swap (XDP_OBJ, ships)", dataplane::objects::XDP_OBJ, "cas"),
        ("bpf_spin_lock (XDP_SPIN_OBJ)", dataplane::objects::XDP_SPIN_OBJ, "spin"),
    ];
    let mut loaded = Vec::new();
    let mut rows = Vec::new();
    for (order, (name, obj, tag)) in builds.into_iter().enumerate() {
        eprintln!("  loading {name}");
        match Loaded::new(obj, tag, &[], &rule) {
            Ok(l) => {
                loaded.push((name, l, order));
            }
            Err(e) => {
                eprintln!("  {name} failed to load: {e:#}");
                rows.push(LockRow {
                    order,
                    name,
                    error: Some(format!("{e:#}")),
                    single: f64::NAN,
                    contended: [f64::NAN; 2],
                    aggregate_pps: f64::NAN,
                    contended_drops: 0,
                    contended_runs: 0,
                    check: (0, 0, 0),
                });
            }
        }
    }
    ensure!(!loaded.is_empty(), "neither build loaded");

    eprintln!("  (a) one thread");
    let single = {
        let cases: Vec<Case> = loaded
            .iter_mut()
            .map(|(name, l, _)| Case {
                what: name.to_string(),
                xdp: l.dp.xdp_program(),
                frame: frame.clone(),
                want: XDP_PASS,
            })
            .collect();
        measure(&cases)?
    };

    eprintln!("  (b) two threads on CPUs 0 and 1, same bucket");
    let before: Vec<u64> = loaded
        .iter()
        .map(|(_, l, _)| Ok(l.stats()?[0].dropped))
        .collect::<Result<_>>()?;
    let mut per_thread = vec![[Vec::new(), Vec::new()]; loaded.len()];
    let mut aggregate = vec![Vec::new(); loaded.len()];
    for (_, l, _) in &mut loaded {
        contend(l.dp.xdp_program(), &frame, WARMUP)?;
    }
    for _ in 0..ROUNDS {
        for (i, (name, l, _)) in loaded.iter_mut().enumerate() {
            let (res, wall) = contend(l.dp.xdp_program(), &frame, REPEAT)?;
            for (t, (v, ns)) in res.iter().enumerate() {
                // A compare-and-swap that loses every retry drops the packet
                // by design; any other verdict is a bug.
                ensure!(
                    *v == XDP_PASS || *v == XDP_DROP,
                    "{name}: XDP returned {v} under contention"
                );
                per_thread[i][t].push(*ns);
            }
            aggregate[i].push(2.0 * REPEAT as f64 / wall.as_secs_f64());
        }
    }
    let contended_runs = 2 * (WARMUP as u64 + ROUNDS as u64 * REPEAT as u64);
    let mut contended = Vec::new();
    for (i, (name, l, _)) in loaded.iter().enumerate() {
        let [t0, t1] = &mut per_thread[i];
        let ns = [median_f(t0), median_f(t1)];
        let agg = median_f(&mut aggregate[i]);
        let drops = l.stats()?[0].dropped - before[i];
        eprintln!(
            "    {name:<42} CPU0 {:>4.0} ns/pkt, CPU1 {:>4.0} ns/pkt, together {:.2} Mpps, {drops} of {contended_runs} dropped (CPU0 rounds {t0:.0?}, CPU1 {t1:.0?})",
            ns[0],
            ns[1],
            agg / 1e6
        );
        contended.push((ns, agg, drops));
    }

    eprintln!("  (c) lost updates: 1 pps, burst {CHECK_BURST}, 2 threads x {CHECK_BURST} packets");
    let mut checks = Vec::new();
    for (name, l, _) in &mut loaded {
        let id = l.limits.list()?[0].0.id;
        l.limits.delete(id)?;
        let spec = LimitSpec {
            m: LimitMatch {
                src: Some(format!("{TEST_SRC}/32").parse()?),
                dst: None,
                dst_port: None,
                proto: None,
            },
            kind: LimitKind::Pps,
            rate: 1,
            burst: CHECK_BURST,
            per_source: false,
            warmup_ms: 0,
            comment: None,
        };
        // Built directly: the API refuses a burst of more than an hour of
        // the rate, and the kernel math does not care.
        let added = Instant::now();
        l.limits.add(spec)?;
        contend(l.dp.xdp_program(), &frame, CHECK_BURST as u32)?;
        let refill = added.elapsed().as_secs_f64().ceil() as u64;
        let s = l.stats()?[0];
        let max = CHECK_BURST + refill;
        eprintln!(
            "    {name:<42} passed {} dropped {} (at most {max} may pass)",
            s.passed, s.dropped
        );
        ensure!(
            s.passed + s.dropped == 2 * CHECK_BURST,
            "{name}: {} packets judged, expected {}",
            s.passed + s.dropped,
            2 * CHECK_BURST
        );
        ensure!(
            s.passed <= max,
            "{name}: {} passed a bucket of {CHECK_BURST}: lost updates",
            s.passed
        );
        checks.push((s.passed, s.dropped, max));
    }

    for (((name, _, order), s), ((ns, agg, drops), check)) in
        loaded.iter().zip(single).zip(contended.into_iter().zip(checks))
    {
        rows.push(LockRow {
            order: *order,
            name,
            error: None,
            single: s,
            contended: ns,
            aggregate_pps: agg,
            contended_drops: drops,
            contended_runs,
            check,
        });
    }
    rows.sort_by_key(|r| r.order);
    Ok(rows)
}

// ---------------------------------------------------------------------------
// Lab: accuracy and drop throughput

/// A 60-byte UDP frame from the namespace to the host side of its veth.
fn lab_frame(h: &LabHost) -> Vec<u8> {
    Packet::udp(IpAddr::V4(h.ns_v4), IpAddr::V4(h.host_v4), 40000, 9)
        .with_payload(&[0u8; 18])
        .build()
}

/// Floods from `h`'s namespace on a thread of its own.
fn start_flood(
    h: &LabHost,
    frame: &[u8],
    pps: Option<u64>,
    duration: Duration,
) -> std::thread::JoinHandle<Result<FloodReport>> {
    let ns = h.netns_path();
    let f = Flood {
        frame: frame.to_vec(),
        pps,
        duration,
        spoof: None,
    };
    std::thread::spawn(move || flood(&ns, "eth0", f).context("generator"))
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x / n, sy + y / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    sxy / sxx
}

fn join_flood(h: std::thread::JoinHandle<Result<FloodReport>>) -> Result<FloodReport> {
    h.join().map_err(|_| anyhow!("generator thread panicked"))?
}

struct AccRow {
    kind: LimitKind,
    limit: u64,
    factor: u64,
    /// What the generator sent, packets/s, and as a multiple of the limit.
    offered_pps: f64,
    offered_x: f64,
    /// Steady-state delivered rate in the limit's unit.
    delivered: f64,
    /// Cross-check: least-squares slope of all the reads in the window.
    fitted: f64,
    /// Packets the rule judged / packets the generator sent.
    judged: f64,
}

fn accuracy_case(
    d: &BenchDaemon,
    a: &LabHost,
    frame: &[u8],
    kind: LimitKind,
    limit: u64,
    factor: u64,
) -> Result<AccRow> {
    let unit = if kind == LimitKind::Bps { "B/s" } else { "pps" };
    let limit_pps = match kind {
        LimitKind::Bps => limit as f64 / frame.len() as f64,
        _ => limit as f64,
    };
    let send_pps = (limit_pps * factor as f64).round() as u64;
    eprintln!(
        "  limit {limit} {unit}, flood at {factor}x = {send_pps} pps for {:?}",
        ACC_FLOOD
    );
    let flag = format!("--{}", kind.as_str());
    let id = d.add_limit(&["--src", &a.ns_v4.to_string(), &flag, &limit.to_string()])?;
    let t0 = Instant::now();
    let gen = start_flood(a, frame, Some(send_pps), ACC_FLOOD);
    let reads = (|| -> Result<Vec<(Instant, Duration, Counts)>> {
        let mut v = Vec::new();
        let mut at = t0 + ACC_WINDOW.0;
        while at <= t0 + ACC_WINDOW.1 {
            v.push(d.counts_at(id, at)?);
            at += ACC_SAMPLE;
        }
        Ok(v)
    })();
    // Join the generator before any error propagates.
    let report = join_flood(gen)?;
    let reads = reads?;
    let end = d.counts(id)?;
    d.del_limit(id)?;
    let units = |c: &Counts| match kind {
        LimitKind::Bps => c.passed_bytes as f64,
        _ => c.passed as f64,
    };
    let ((t1, _, c1), (t5, _, c5)) = (reads[0], reads[reads.len() - 1]);
    let dt = (t5 - t1).as_secs_f64();
    let delivered = (units(&c5) - units(&c1)) / dt;
    let points: Vec<(f64, f64)> = reads
        .iter()
        .map(|(t, _, c)| ((*t - t1).as_secs_f64(), units(c)))
        .collect();
    let fitted = slope(&points);
    let slowest = reads.iter().map(|r| r.1).max().unwrap_or_default();
    let judged = end.passed + end.dropped;
    let row = AccRow {
        kind,
        limit,
        factor,
        offered_pps: report.pps(),
        offered_x: report.pps() / limit_pps,
        delivered,
        fitted,
        judged: judged as f64 / report.sent as f64,
    };
    eprintln!(
        "    sent {} at {:.0} pps ({:.1}x); window {dt:.3} s: delivered {delivered:.0} {unit}, error {:+.2}%; fit of {} reads {fitted:.0} {unit} ({:+.2}%, slowest read {slowest:.1?}); rule passed {} dropped {}",
        report.sent,
        row.offered_pps,
        row.offered_x,
        (delivered / limit as f64 - 1.0) * 100.0,
        reads.len(),
        (fitted / limit as f64 - 1.0) * 100.0,
        end.passed,
        end.dropped
    );
    ensure!(
        end.passed > 0 && end.passed_bytes == end.passed * frame.len() as u64,
        "limit {limit} {unit}: passed {} packets, {} bytes of {}-byte frames",
        end.passed,
        end.passed_bytes,
        frame.len()
    );
    ensure!(
        end.dropped > 0,
        "limit {limit} {unit}: nothing dropped, so the flood was not an overload"
    );
    ensure!(
        judged <= report.sent,
        "limit {limit} {unit}: judged {judged} packets but the generator sent only {}",
        report.sent
    );
    if (judged as f64) < 0.99 * report.sent as f64 {
        eprintln!(
            "    note: only {judged} of {} sent packets reached the rule",
            report.sent
        );
    }
    Ok(row)
}

struct DropRow {
    what: String,
    sent_pps: f64,
    processed_pps: f64,
    passed: u64,
    dropped: u64,
}

fn xdp_attached(dev: &str) -> Result<bool> {
    let out = run_cmd(&["ip", "link", "show", "dev", dev])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
}

fn bench_lab() -> Result<(Vec<AccRow>, Vec<DropRow>)> {
    eprintln!("== lab {LAB_NAME} (number {LAB_NUMBER}) and a sluice daemon on {LAB_GLOB}");
    let lab = LabGuard::new(LAB_NAME, LAB_NUMBER)?;
    let a = lab.0.host('a').clone();
    let mut d = BenchDaemon::start(LAB_GLOB, &a.host_if)?;
    let frame = lab_frame(&a);
    ensure!(frame.len() == 60, "the lab frame must be 60 bytes");

    eprintln!("== accuracy of the delivered rate (window {ACC_WINDOW:?} of each flood)");
    let mut acc = Vec::new();
    for (kind, limit, factor) in ACC_CASES {
        acc.push(accuracy_case(&d, &a, &frame, kind, limit, factor)?);
    }

    eprintln!("== drop throughput: flat-out flood from {} for {DROP_FLOOD:?}", a.netns);
    let mut drops = Vec::new();
    {
        let id = d.add_limit(&["--src", &a.ns_v4.to_string(), "--pps", &DROP_LIMIT_PPS.to_string()])?;
        let r = join_flood(start_flood(&a, &frame, None, DROP_FLOOD))?;
        let c = d.counts(id)?;
        let secs = r.elapsed.as_secs_f64();
        let row = DropRow {
            what: format!("sluice XDP (native on {}), `--pps {DROP_LIMIT_PPS}`", a.host_if),
            sent_pps: r.pps(),
            processed_pps: (c.passed + c.dropped) as f64 / secs,
            passed: c.passed,
            dropped: c.dropped,
        };
        eprintln!(
            "  sluice: sent {} ({:.2} Mpps), judged {:.2} Mpps, passed {} dropped {}",
            r.sent,
            row.sent_pps / 1e6,
            row.processed_pps / 1e6,
            c.passed,
            c.dropped
        );
        ensure!(c.dropped > 0 && c.passed > 0, "sluice: no overload? {c:?}");
        ensure!(c.passed + c.dropped <= r.sent, "sluice judged more than was sent");
        drops.push(row);
    }
    eprintln!("  sluice down");
    d.down()?;
    ensure!(
        !xdp_attached(&a.host_if)?,
        "an XDP program is still attached to {}",
        a.host_if
    );
    // XDP_TX'd frames reach a veth without an XDP program only in NAPI
    // (GRO) mode.
    run_cmd(&["ethtool", "-K", &a.host_if, "gro", "on"])?;
    let gro = run_cmd(&["ethtool", "-k", &a.host_if])?;
    ensure!(
        String::from_utf8_lossy(&gro.stdout).contains("generic-receive-offload: on"),
        "could not enable GRO on {}",
        a.host_if
    );
    {
        let nft = NftGuard::new(&a.host_if, a.ns_v4, DROP_LIMIT_PPS)?;
        eprintln!(
            "  nftables: netdev ingress on {} (GRO on), `limit rate over {DROP_LIMIT_PPS}/second counter drop`",
            a.host_if
        );
        let r = join_flood(start_flood(&a, &frame, None, DROP_FLOOD))?;
        let c = nft.counters()?;
        let (dropped, passed) = (c[0], c[1]);
        let secs = r.elapsed.as_secs_f64();
        let row = DropRow {
            what: format!("nftables netdev ingress on {} (GRO on)", a.host_if),
            sent_pps: r.pps(),
            processed_pps: (passed + dropped) as f64 / secs,
            passed,
            dropped,
        };
        eprintln!(
            "  nftables: sent {} ({:.2} Mpps), processed {:.2} Mpps, accepted {passed} dropped {dropped}",
            r.sent,
            row.sent_pps / 1e6,
            row.processed_pps / 1e6
        );
        ensure!(
            dropped > 0 && passed > 0,
            "nftables saw no overload (accepted {passed}, dropped {dropped}): were the frames delivered?"
        );
        drops.push(row);
    }
    Ok((acc, drops))
}

// ---------------------------------------------------------------------------

fn pct(x: f64) -> String {
    format!("{:+.2} %", x * 100.0)
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("this benchmark loads BPF programs, pins maps and builds network namespaces: run it as root");
    }
    let started = Instant::now();
    let pipeline = bench_pipeline()?;
    let locks = bench_locks()?;
    let (acc, drops) = bench_lab()?;

    println!();
    println!("Accuracy: steady-state delivered rate, (passed at 5 s - passed at 1 s) / 4 s, of a flood from");
    println!("bl-a through a fresh `limit add --src A --pps|--bps R` (default burst = 1 s of R), 60-byte UDP frames:");
    println!();
    println!("| limit | target overload | generator sent | achieved overload | delivered, 1-5 s | delivered / limit - 1 | least-squares fit, reads every {ACC_SAMPLE:?} | judged / sent |");
    println!("|------:|----------------:|---------------:|------------------:|-----------------:|----------------------:|---------------------------:|--------------:|");
    for r in &acc {
        let unit = if r.kind == LimitKind::Bps { "B/s" } else { "pps" };
        println!(
            "| {} {unit} | {}x | {:.0} pps | {:.1}x | {:.0} {unit} | {} | {:.0} {unit} ({}) | {:.4} |",
            r.limit,
            r.factor,
            r.offered_pps,
            r.offered_x,
            r.delivered,
            pct(r.delivered / r.limit as f64 - 1.0),
            r.fitted,
            pct(r.fitted / r.limit as f64 - 1.0),
            r.judged
        );
    }
    let deny_only = pipeline
        .iter()
        .find(|r| r.what.starts_with("deny-only"))
        .map_or(f64::NAN, |r| r.ns);
    println!();
    println!("BPF_PROG_TEST_RUN, 64-byte TCP/IPv4 frame, kernel ns/packet (median of {ROUNDS} x {REPEAT} runs);");
    println!("limits at {FAST_PPS} pps, so every packet passes:");
    println!();
    println!("| pipeline | limit rules matching | ns/pkt | ÷ deny-only |");
    println!("|----------|---------------------:|-------:|------------:|");
    for r in &pipeline {
        println!(
            "| {} | {} | {:.0} | {:.2} |",
            r.what,
            r.matching,
            r.ns,
            r.ns / deny_only
        );
    }
    println!();
    println!(
        "Shared bucket, 1 matching rule at {FAST_PPS} pps, kernel ns/packet (median of {ROUNDS} x {REPEAT} runs);"
    );
    println!("contended = two threads pinned to CPUs 0 and 1 running test_run on the same rule at once:");
    println!();
    println!("| build | 1 thread | contended, CPU 0 | contended, CPU 1 | both together | dropped under contention | lost-update check: passed / dropped (max) |");
    println!("|-------|---------:|-----------------:|-----------------:|--------------:|-------------------------:|-------------------------------------------:|");
    for r in &locks {
        match &r.error {
            Some(e) => println!("| {} | failed to load: {e} | | | | | |", r.name),
            None => println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} Mpps | {} of {} | {} / {} ({}) |",
                r.name,
                r.single,
                r.contended[0],
                r.contended[1],
                r.aggregate_pps / 1e6,
                r.contended_drops,
                r.contended_runs,
                r.check.0,
                r.check.1,
                r.check.2
            ),
        }
    }
    println!();
    println!(
        "Drop throughput, flat-out XDP live-frames flood from bl-a for {DROP_FLOOD:?}, limit {DROP_LIMIT_PPS} pps:"
    );
    println!();
    println!("| path | generator sent | processed | passed | dropped |");
    println!("|------|---------------:|----------:|-------:|--------:|");
    for r in &drops {
        println!(
            "| {} | {:.2} Mpps | {:.2} Mpps | {} | {} |",
            r.what,
            r.sent_pps / 1e6,
            r.processed_pps / 1e6,
            r.passed,
            r.dropped
        );
    }
    if let [x, n] = &drops[..] {
        println!();
        println!("sluice / nftables processed: {:.2}x", x.processed_pps / n.processed_pps);
    }
    println!();
    println!("total bench time {:.1?}", started.elapsed());
    Ok(())
}
