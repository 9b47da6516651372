//! Benchmark: L7 records end to end under load. Real servers in a lab
//! namespace (redis-server; a keep-alive HTTP server), real load tools in
//! the other (redis-benchmark; wrk), the real daemon (release build) with
//! L7 capture on. For each run it reports the client's request rate, the
//! records the daemon paired per second, the accounting identities
//!
//!   kernel:  captures attempted = captures received + captures lost
//!   daemon:  records paired     = records stored + records dropped by the store
//!
//! and the cost: daemon CPU per 10k requests/s, and the TC programs' own
//! run time (kernel BPF stats, enabled for the run). A baseline run with
//! `l7_capture_bytes = 0` shows what capture costs the load itself.
//!
//! `cargo bench --bench l7_load` (as root; needs redis-server, redis-tools
//! and wrk: `scripts/setup.sh`).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use common::{is_root, BenchDaemon, LabGuard, PinGuard};
use serde_json::Value;
use sluice::lab::LabHost;

const LAB: &str = "bl7";
const LAB_NUMBER: u8 = 90;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nsenter(host: &LabHost, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", host.netns_path())).args(args);
    c
}

/// A keep-alive HTTP/1.1 server answering every request with a small body.
fn http_server(host: &LabHost, addr: SocketAddr) -> Result<()> {
    let l = host.in_netns(move || TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n"
                        && w.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello sluice",
                        )
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// (run count, run time ns) of the TC programs, summed.
fn tc_prog_stats() -> (u64, u64) {
    let out = Command::new("bpftool").args(["prog", "show", "-j"]).output();
    let Ok(out) = out else { return (0, 0) };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut cnt = 0;
    let mut ns = 0;
    for p in v.as_array().into_iter().flatten() {
        if matches!(p["name"].as_str(), Some("sluice_tc_in" | "sluice_tc_out")) {
            cnt += p["run_cnt"].as_u64().unwrap_or(0);
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
        }
    }
    (cnt, ns)
}

#[derive(Debug, Default, Clone)]
struct Snap {
    records: u64,
    lost_kernel: u64,
    attempted: u64,
    segments: u64,
    stored: u64,
    store_dropped: u64,
    cpu: f64,
    prog: (u64, u64),
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

impl BenchDaemon {
    fn snap(&self) -> Result<Snap> {
        let st = self.json(&["status"])?;
        let metrics = {
            use std::io::Read;
            let mut s = std::os::unix::net::UnixStream::connect(self.socket())?;
            write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            out
        };
        Ok(Snap {
            records: st["events"]["received"]["l7"].as_u64().unwrap_or(0),
            lost_kernel: st["events"]["lost_kernel"]["l7"].as_u64().unwrap_or(0),
            attempted: st["forwarding"]["tc"]["l7_captures"]["packets"].as_u64().unwrap_or(0),
            segments: metric(&metrics, "sluice_l7_segments_total"),
            store_dropped: metric(&metrics, "sluice_l7_store_dropped_total"),
            stored: metric(&metrics, "sluice_l7_stored_total"),
            cpu: cpu_secs(self.pid())?,
            prog: tc_prog_stats(),
        })
    }
}

struct Row {
    name: String,
    requests: u64,
    secs: f64,
    before: Snap,
    after: Snap,
}

fn run_load(name: &str, d: &BenchDaemon, load: impl FnOnce() -> Result<u64>) -> Result<Row> {
    let before = d.snap()?;
    let t0 = Instant::now();
    let requests = load()?;
    let secs = t0.elapsed().as_secs_f64();
    // Let the pipeline drain: records stop growing and the store catches up.
    let mut last = u64::MAX;
    let mut after = d.snap()?;
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(200));
        after = d.snap()?;
        if after.records == last
            && after.stored - before.stored + after.store_dropped - before.store_dropped
                == after.records - before.records
        {
            break;
        }
        last = after.records;
    }
    Ok(Row {
        name: name.into(),
        requests,
        secs,
        before,
        after,
    })
}

fn redis_load(a: &LabHost, b: &LabHost, n: u64, clients: u32) -> Result<u64> {
    let out = nsenter(
        a,
        &[
            "redis-benchmark",
            "-h",
            &b.ns_v4.to_string(),
            "-n",
            &n.to_string(),
            "-c",
            &clients.to_string(),
            "-t",
            "set,get",
            "-q",
        ],
    )
    .output()
    .context("redis-benchmark (apt-get install redis-tools)")?;
    ensure!(
        out.status.success(),
        "redis-benchmark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(2 * n)
}

fn wrk_load(a: &LabHost, b: &LabHost, secs: u32, conns: u32) -> Result<u64> {
    let url = format!("http://{}/", b.ns_v4);
    let out = nsenter(a, &["wrk", "-t2", &format!("-c{conns}"), &format!("-d{secs}s"), &url])
        .output()
        .context("wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk (apt-get install wrk): {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "123456 requests in 10.00s, ..."
    let n = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .map(|(n, _)| n.trim().parse::<u64>())
        })
        .context("wrk printed no request count")??;
    Ok(n)
}

fn main() -> Result<()> {
    if !is_root() {
        eprintln!("l7_load: skipped, needs root (it builds namespaces and loads BPF)");
        return Ok(());
    }
    let stats_was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let res = bench();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim());
    res
}

fn bench() -> Result<()> {
    let lab = LabGuard::new(LAB, LAB_NUMBER)?;
    let (a, b) = (lab.0.host('a').clone(), lab.0.host('b').clone());
    let redis = Killed(
        nsenter(
            &b,
            &[
                "redis-server",
                "--bind",
                &b.ns_v4.to_string(),
                "--port",
                "6379",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server")?,
    );
    http_server(&b, SocketAddr::new(b.ns_v4.into(), 80))?;
    std::thread::sleep(Duration::from_millis(500));

    let mut rows = Vec::new();
    for capture in [true, false] {
        let extra = if capture { "" } else { "l7_capture_bytes = 0\n" };
        let glob = format!("{LAB}-*");
        let mut d = BenchDaemon::spawn(PinGuard::new("sluice-benchl7", "")?, extra, &["--iface", &glob])?;
        d.wait_ready("attach to the lab", |d| {
            Ok(d.json(&["status"])?["interfaces"].as_array().map_or(0, |v| v.len()) == 2)
        })?;
        let tag = if capture { "" } else { " (capture off)" };
        for round in 0..2 {
            eprintln!("  redis-benchmark{tag}, round {}", round + 1);
            rows.push(run_load(&format!("redis set+get, 50 clients{tag}"), &d, || {
                redis_load(&a, &b, 100_000, 50)
            })?);
            eprintln!("  wrk{tag}, round {}", round + 1);
            rows.push(run_load(&format!("http wrk, 50 conns{tag}"), &d, || {
                wrk_load(&a, &b, 8, 50)
            })?);
        }
        d.down()?;
    }
    drop(redis);

    println!(
        "\nL7 records end to end under load (release daemon, 2 vCPU VM, {} )",
        uname()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "load", "req/s", "records", "rec/s", "captures", "lost(k)", "stored", "dropped", "cpu%/10k", "tc ns/pkt", "ok?"
    );
    for r in &rows {
        let rec = r.after.records - r.before.records;
        let att = r.after.attempted - r.before.attempted;
        let seg = r.after.segments - r.before.segments;
        let lost = r.after.lost_kernel - r.before.lost_kernel;
        let stored = r.after.stored - r.before.stored;
        let dropped = r.after.store_dropped - r.before.store_dropped;
        let cpu = r.after.cpu - r.before.cpu;
        let rps = r.requests as f64 / r.secs;
        let cpu_per_10k = cpu / r.secs * 100.0 / (rps / 10_000.0);
        let (pc, pns) = (r.after.prog.0 - r.before.prog.0, r.after.prog.1 - r.before.prog.1);
        let identities = att == seg + lost && rec == stored + dropped;
        println!(
            "{:<34} {:>9.0} {:>9} {:>9.0} {:>9} {:>9} {:>9} {:>8} {:>9.1} {:>9.0} {:>9}",
            r.name,
            rps,
            rec,
            rec as f64 / r.secs,
            att,
            lost,
            stored,
            dropped,
            cpu_per_10k,
            if pc > 0 { pns as f64 / pc as f64 } else { 0.0 },
            if identities { "exact" } else { "MISMATCH" }
        );
    }
    println!(
        "\nreq/s: the load tool's rate over the run; records: exchanges the daemon paired; captures: TC\n\
         captures attempted (kernel counter) = received + lost(k) (ring full); stored + dropped = records\n\
         (the audit writer's queue); cpu%/10k: daemon CPU (user+sys) per 10k req/s, % of one core;\n\
         tc ns/pkt: mean run time of the TC programs per packet (kernel BPF stats)."
    );
    Ok(())
}

fn uname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}
