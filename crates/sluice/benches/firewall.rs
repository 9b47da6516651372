//! Benchmarks of the XDP firewall (issue 2). Run as root with
//! `cargo bench --bench firewall` (release profile, about a minute).
//!
//! It measures two things and prints them as Markdown tables; it asserts
//! nothing about speed and fails only if the setup is broken (a wrong
//! verdict, a wrong rule count, a daemon that does not start):
//!
//! 1. **Per-packet cost** of the `sluice_xdp` program as reported by the
//!    kernel's `BPF_PROG_TEST_RUN` (average ns per run over [`REPEAT`] runs;
//!    the median of [`ROUNDS`] such runs, the cases interleaved), with 0, 10,
//!    10 000 and 1 000 000 IPv4 source deny prefixes installed, on a 64-byte
//!    TCP/IPv4 frame whose source hits a /32, hits a /24, misses inside
//!    10.0.0.0/8, or misses far outside it. The dataplane is loaded in a private pin directory and the
//!    rules go in through the real [`Firewall::add`] path (in-memory store,
//!    batches of [`BATCH`]), whose throughput is reported too.
//! 2. **Bulk load through the API**: the wall-clock time of
//!    `sluice deny import FILE` for 100 000 and 1 000 000 prefixes against a
//!    real `sluice run` daemon with fresh state and pins each time, whose
//!    only interface glob matches no interface, so nothing is ever attached.
//!
//! The prefixes are deterministic and distinct (see [`prefix`]): every 32nd
//! is a /24 inside 10.0.0.0/9, the others are /32 hosts inside
//! 10.128.0.0/9, spread by a fixed bijective bit mixer.
//!
//! Everything it creates (pins under `/sys/fs/bpf/sluice-bench-*`, daemon
//! processes, temp dirs) is removed at the end, on error and on panic.

mod common;

use std::{
    fs,
    io::{BufWriter, Write},
    net::{IpAddr, Ipv4Addr},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use common::{BenchDaemon, PinGuard};
use sluice::{
    dataplane::Dataplane,
    firewall::Firewall,
    firewall::{Action, RuleSpec},
    store::Store,
};
use sluice_proto::packet::Packet;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Runs per BPF_PROG_TEST_RUN call; the kernel reports the average.
const REPEAT: u32 = 1_000_000;
/// Calls per measurement; the median is reported.
const ROUNDS: usize = 7;
/// Deny prefixes installed for the per-packet measurements (cumulative).
const RULE_COUNTS: [usize; 4] = [0, 10, 10_000, 1_000_000];
/// Capacity of the in-process dataplane.
const XDP_MAX_RULES: u32 = 1_048_576 + 16;
/// Rules per `Firewall::add` call.
const BATCH: usize = 10_000;
/// Prefixes imported through the daemon, each on a fresh daemon.
const IMPORT_COUNTS: [usize; 2] = [100_000, 1_000_000];
/// `max_rules` of the benchmark daemon.
const DAEMON_MAX_RULES: u32 = 1_100_000;
/// Can never match: interface names are at most 15 bytes long.
const NO_IFACE_GLOB: &str = "sluice-bench-none*";
/// Largest number of prefixes [`prefix`] can generate distinctly.
const MAX_PREFIXES: usize = 32 * 32_768;

/// A pseudo-random bijection on `bits`-bit integers (`bits` <= 24): each
/// step (multiply by an odd constant, xor with a right shift) is invertible
/// modulo 2^bits, so distinct inputs give distinct outputs.
fn permute(x: u32, bits: u32) -> u32 {
    let mask = (1u32 << bits) - 1;
    let shift = bits.div_ceil(2);
    let mut x = x & mask;
    for m in [0x9e37_79b1u32, 0x85eb_ca77, 0xc2b2_ae3d] {
        x = x.wrapping_mul(m) & mask;
        x ^= x >> shift;
    }
    x
}

/// The `i`-th benchmark prefix. Every 32nd (`i` a multiple of 32) is a /24 inside
/// 10.0.0.0/9; the rest are /32 hosts inside 10.128.0.0/9. All are distinct
/// and none overlaps another, for any `i` < [`MAX_PREFIXES`].
fn prefix(i: usize) -> (Ipv4Addr, u8) {
    assert!(i < MAX_PREFIXES, "prefix index {i} out of range");
    if i.is_multiple_of(32) {
        let block = permute((i / 32) as u32, 15);
        (Ipv4Addr::from(0x0a00_0000 | (block << 8)), 24)
    } else {
        let host = permute((i - i / 32 - 1) as u32, 23);
        (Ipv4Addr::from(0x0a80_0000 | host), 32)
    }
}

fn prefix_str(i: usize) -> String {
    let (addr, len) = prefix(i);
    format!("{addr}/{len}")
}

/// A host in 10.128.0.0/9 that no benchmark set contains (the last index of
/// the /32 permutation, never generated for fewer than 2^23 - 1 hosts).
fn near_miss() -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0000 | permute((1 << 23) - 1, 23))
}

/// A 64-byte TCP SYN frame (Ethernet + IPv4 + TCP + 10 bytes of payload).
fn frame(src: Ipv4Addr) -> Vec<u8> {
    Packet::tcp(IpAddr::V4(src), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)), 40000, 80)
        .with_payload(&[0u8; 10])
        .build()
}

/// The source addresses probed for a set of `n` prefixes (for `n` = 0, the
/// baseline, those of the 10-prefix set).
struct Probes {
    hit32: Ipv4Addr,
    hit24: Ipv4Addr,
    miss_in: Ipv4Addr,
    miss_out: Ipv4Addr,
}

impl Probes {
    fn for_count(n: usize) -> Self {
        let n = n.max(10);
        // A /32 and a /24 from the middle of the set.
        let mut host_idx = n / 2;
        if host_idx.is_multiple_of(32) {
            host_idx += 1;
        }
        let net_idx = 32 * (n / 2 / 32);
        let (hit32, len32) = prefix(host_idx);
        let (net24, len24) = prefix(net_idx);
        assert_eq!((len32, len24), (32, 24));
        Probes {
            hit32,
            hit24: Ipv4Addr::from(u32::from(net24) | 77),
            miss_in: near_miss(),
            miss_out: Ipv4Addr::new(192, 0, 2, 1),
        }
    }
}

/// One frame to time, with the verdict it must get.
struct Case {
    what: String,
    frame: Vec<u8>,
    want: u32,
}

/// Median ns/packet of each case over [`ROUNDS`] rounds, checking every
/// verdict. Each round runs every case once, so a slow phase of the VM
/// spreads over all cases instead of skewing one of them.
fn measure<const N: usize>(xdp: &mut Xdp, cases: &[Case; N]) -> Result<[u64; N]> {
    let run = |c: &Case, repeat: u32| -> Result<u64> {
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(&c.frame),
                repeat,
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN ({})", c.what))?;
        ensure!(
            r.return_value == c.want,
            "{}: XDP returned {}, expected {}",
            c.what,
            r.return_value,
            c.want
        );
        Ok(r.duration.as_nanos() as u64)
    };
    // Warm-up (caches, branch predictors) and a first verdict check.
    for c in cases {
        run(c, 10_000)?;
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); N];
    for _ in 0..ROUNDS {
        for (c, s) in cases.iter().zip(&mut samples) {
            s.push(run(c, REPEAT)?);
        }
    }
    let mut out = [0; N];
    for ((c, s), o) in cases.iter().zip(&mut samples).zip(&mut out) {
        s.sort_unstable();
        *o = s[ROUNDS / 2];
        eprintln!("    {:<34} {:>4} ns/pkt   (sorted rounds: {s:?})", c.what, *o);
    }
    Ok(out)
}

struct XdpRow {
    rules: usize,
    /// ns/packet: hit /32, hit /24, miss inside 10/8, miss outside 10/8.
    ns: [u64; 4],
}

struct XdpResults {
    rows: Vec<XdpRow>,
    inserted: usize,
    insert_time: Duration,
}

fn bench_xdp() -> Result<XdpResults> {
    let pins = PinGuard::new("sluice-bench", "-xdp")?;
    eprintln!("== XDP test_run: loading the dataplane in {}", pins.0.display());
    let cap = sluice::dataplane::Capacity {
        max_rules: XDP_MAX_RULES,
        ..Default::default()
    };
    let (mut dp, maps) = Dataplane::load(&pins.0, cap).context("loading the XDP dataplane")?;
    let (mut fw, _) = Firewall::open(Store::in_memory()?, Box::new(maps.firewall))?;
    let mut installed = 0;
    let mut insert_time = Duration::ZERO;
    let mut rows = Vec::new();
    for n in RULE_COUNTS {
        if n > installed {
            eprintln!("  installing deny prefixes {installed}..{n} via Firewall::add");
            let t = Instant::now();
            while installed < n {
                let end = (installed + BATCH).min(n);
                let specs = (installed..end)
                    .map(|i| RuleSpec::new(Action::Deny, &prefix_str(i), false, None))
                    .collect::<Result<Vec<_>, _>>()?;
                fw.add(specs)?;
                installed = end;
                if installed.is_multiple_of(100_000) && installed < n {
                    eprintln!("    {installed}/{n} ({:.1?})", t.elapsed());
                }
            }
            insert_time += t.elapsed();
            eprintln!("    {n} installed ({:.2?} for this step)", t.elapsed());
        }
        ensure!(fw.count(Action::Deny) == n, "expected {n} deny rules");
        let p = Probes::for_count(n);
        let hit = if n == 0 { XDP_PASS } else { XDP_DROP };
        eprintln!("  {n} deny prefixes:");
        let case = |src: Ipv4Addr, want: u32, note: &str| Case {
            what: format!("src {src} ({note})"),
            frame: frame(src),
            want,
        };
        let cases = [
            case(p.hit32, hit, "in a /32"),
            case(p.hit24, hit, "in a /24"),
            case(p.miss_in, XDP_PASS, "miss, in 10/8"),
            case(p.miss_out, XDP_PASS, "miss"),
        ];
        ensure!(cases.iter().all(|c| c.frame.len() == 64), "frames must be 64 bytes");
        let ns = measure(dp.xdp_program(), &cases)?;
        rows.push(XdpRow { rules: n, ns });
    }
    drop(fw);
    drop(dp);
    drop(pins);
    Ok(XdpResults {
        rows,
        inserted: installed,
        insert_time,
    })
}

/// A daemon with no interface to manage and room for the import.
impl BenchDaemon {
    fn start(tag: &str) -> Result<Self> {
        let extra = format!(
            "interfaces = [{}]\nmax_rules = {DAEMON_MAX_RULES}\n",
            serde_json::to_string(NO_IFACE_GLOB)?
        );
        let mut d = BenchDaemon::spawn(PinGuard::new("sluice-bench", &format!("-{tag}"))?, &extra, &[])?;
        let took = d.wait_ready("open its socket", |_| Ok(true))?;
        eprintln!(
            "  daemon pid {} up in {took:.2?} (pins {})",
            d.pid(),
            d.pins.0.display()
        );
        let st = d.json(&["status"])?;
        let ifaces = st["interfaces"].as_array().map_or(usize::MAX, Vec::len);
        ensure!(
            ifaces == 0,
            "the bench daemon attached to interfaces: {}",
            st["interfaces"]
        );
        ensure!(st["rules"]["max_rules"] == DAEMON_MAX_RULES, "unexpected status {st}");
        Ok(d)
    }
}

struct ImportRow {
    rules: usize,
    wall: Duration,
}

fn bench_import(n: usize) -> Result<ImportRow> {
    eprintln!("== sluice deny import of {n} prefixes (fresh daemon)");
    let mut d = BenchDaemon::start(&format!("import{n}"))?;
    let file = d.dir().join("prefixes.txt");
    {
        let mut w = BufWriter::new(fs::File::create(&file)?);
        for i in 0..n {
            writeln!(w, "{}", prefix_str(i))?;
        }
        w.flush()?;
    }
    let file_s = file.to_str().context("non-UTF-8 temp path")?;
    let t = Instant::now();
    // The client's progress goes to our stderr; its summary is captured.
    let out = d
        .cli(&["deny", "import", file_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()?;
    let wall = t.elapsed();
    ensure!(
        out.status.success(),
        "sluice deny import failed; daemon log:\n{}",
        d.log_text()
    );
    eprintln!(
        "  client: {}  wall clock {:.2?}",
        String::from_utf8_lossy(&out.stdout).trim(),
        wall
    );
    let st = d.json(&["status"])?;
    ensure!(
        st["rules"]["deny"] == n,
        "daemon reports {} deny rules, expected {n}",
        st["rules"]["deny"]
    );
    d.down()?;
    Ok(ImportRow { rules: n, wall })
}

fn rate(n: usize, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64();
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else {
        format!("{:.0} k", r / 1e3)
    }
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this benchmark loads BPF programs and pins maps: run it as root");
    }
    let started = Instant::now();
    let xdp = bench_xdp()?;
    let imports = IMPORT_COUNTS
        .iter()
        .map(|&n| bench_import(n))
        .collect::<Result<Vec<_>>>()?;

    println!();
    println!("BPF_PROG_TEST_RUN of sluice_xdp, 64-byte TCP/IPv4 frame, IPv4 source deny prefixes;");
    println!("kernel-reported ns/packet, median of {ROUNDS} runs of {REPEAT} repeats:");
    println!();
    println!("| deny prefixes | hit /32 (DROP) | hit /24 (DROP) | miss in 10/8 (PASS) | miss 192.0.2.1 (PASS) |");
    println!("|--------------:|---------------:|---------------:|--------------------:|----------------------:|");
    for r in &xdp.rows {
        let [a, b, c, d] = r.ns;
        let (a, b) = if r.rules == 0 {
            (format!("{a} (PASS)"), format!("{b} (PASS)"))
        } else {
            (a.to_string(), b.to_string())
        };
        println!("| {:>13} | {a:>14} | {b:>14} | {c:>19} | {d:>21} |", r.rules);
    }
    println!();
    println!("Loading deny prefixes:");
    println!();
    println!("| path | prefixes | wall clock | rules/s |");
    println!("|------|---------:|-----------:|--------:|");
    println!(
        "| in-process `Firewall::add` (in-memory store, batches of {BATCH}) | {} | {:.2} s | {} |",
        xdp.inserted,
        xdp.insert_time.as_secs_f64(),
        rate(xdp.inserted, xdp.insert_time)
    );
    for r in &imports {
        println!(
            "| `sluice deny import` to a fresh daemon | {} | {:.2} s | {} |",
            r.rules,
            r.wall.as_secs_f64(),
            rate(r.rules, r.wall)
        );
    }
    println!();
    println!("total bench time {:.1?}", started.elapsed());
    Ok(())
}
