//! Benchmark of the event pipeline (issue 4). Run as root with
//! `cargo bench --bench events` (release profile, about 70 s). It measures
//! how many sampled packet events per second the real daemon delivers to one
//! SSE subscriber, with every loss accounted for, and what the daemon's CPU
//! pays per event. It prints Markdown tables to stdout and progress to
//! stderr. It asserts nothing about speed. It fails if the setup is broken (a
//! daemon that does not start or attach, an SSE stream that does not open)
//! or, after printing the tables, if the loss accounting does not add up.
//!
//! Setup: a lab (`be-a`/`be-b`, lab number 70, IPv6 router solicitations off
//! in its namespaces) and the real `sluice run --iface 'be-*' --config CFG`
//! daemon with `packet_sample_every = 1`, so that every packet the XDP
//! program judges becomes a 72-byte packet event in the kernel's ring buffer.
//! The XDP live-frames generator floods 64-byte UDP frames from namespace
//! `be-a` at each rate of [`RATES`] (and flat out) for [`FLOOD`]. For each
//! flood the bench reads `/v1/status` before and after
//! (`events.received.packet`, `events.lost_kernel.packet` and the verdict
//! counters, i.e. packets judged). It waits, with a bound, until the ring and
//! the subscriber have drained. Then it reports generated −
//! (kernel-received + kernel-lost) and checks judged = kernel-received +
//! kernel-lost (judged also counts the namespaces' own packets, if any) and
//! kernel-received = subscriber-received + subscriber-lost. The subscriber is
//! a thread that reads `GET /v1/events?kind=packet` raw (HTTP/1.1, chunked)
//! over the unix socket. It counts `event: packet` lines and sums the `data: N` of
//! `event: lost` markers. Daemon CPU is utime + stime from `/proc/<pid>/stat`
//! (all threads). The floods run three times: with no subscriber, with one
//! subscriber (plus [`REFINE_STEPS`] bisection floods for the largest
//! lossless rate), and on a daemon restarted with `packet_sample_every = 0`
//! (no events: the CPU baseline).
//!
//! Everything it creates (the lab namespaces and veths, the pins under
//! `/sys/fs/bpf/sluice-benchev-<pid>`, the daemon, temp dirs) is removed at
//! the end, on error and on panic. Nothing is attached outside the lab.

mod common;

use std::{
    io::{Read, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{is_root, BenchDaemon, LabGuard, PinGuard};
use sluice::{
    api::types::Status,
    dataplane::gen::{flood, Flood},
    lab::LabHost,
};
use sluice_proto::packet::Packet;

const LAB_NAME: &str = "be";
const LAB_NUMBER: u8 = 70;
const LAB_GLOB: &str = "be-*";
/// Offered rates in frames (= events) per second; None is flat out.
const RATES: [Option<u64>; 6] = [
    Some(20_000),
    Some(50_000),
    Some(100_000),
    Some(200_000),
    Some(400_000),
    None,
];
/// Length of each flood.
const FLOOD: Duration = Duration::from_secs(3);
/// Bisection steps between the fastest lossless and the slowest lossy rate.
const REFINE_STEPS: usize = 3;
/// Longest wait for the ring and the subscriber to drain after a flood.
const DRAIN_MAX: Duration = Duration::from_secs(15);
/// The ring counts as drained once its counters stop moving for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Size of the lab frames (Ethernet + IPv4 + UDP + 22 payload bytes).
const FRAME_LEN: usize = 64;

// ---------------------------------------------------------------------------
// Guards

/// The bench lab, with the namespaces kept quiet: every packet the XDP
/// program judges becomes an event, so no periodic IPv6 router
/// solicitations (the frames themselves are never answered, see `lab_frame`).
fn quiet_lab() -> Result<LabGuard> {
    let guard = LabGuard::new(LAB_NAME, LAB_NUMBER)?;
    for h in &guard.0.hosts {
        let out = h.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0"])?;
        ensure!(
            out.status.success(),
            "sysctl in {}: {}",
            h.netns,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(guard)
}

/// Sum of the drop and error counters of `ethtool -S` on both ends of
/// `h`'s veth: frames the generator sent that never reached the XDP program.
fn veth_errors(h: &LabHost) -> Result<u64> {
    let host = Command::new("ethtool").args(["-S", &h.host_if]).output()?;
    let ns = h.exec(&["ethtool", "-S", "eth0"])?;
    let mut sum = 0;
    for out in [host, ns] {
        ensure!(
            out.status.success(),
            "ethtool -S: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.trim().split_once(": ") {
                if k.ends_with("drops") || k.ends_with("errors") {
                    sum += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok(sum)
}

/// A daemon managing the bench lab, polled with raw HTTP.
impl BenchDaemon {
    /// Starts a daemon with `extra` TOML and waits until it is attached to `iface`.
    fn start(extra: &str, iface: &str) -> Result<Self> {
        let mut d = BenchDaemon::spawn(PinGuard::new("sluice-benchev", "")?, extra, &["--iface", LAB_GLOB])?;
        let took = d.wait_ready(&format!("attach to {iface}"), |d| {
            Ok(d.status()?.interfaces.iter().any(|i| i.name == iface))
        })?;
        eprintln!(
            "  daemon pid {} up in {took:.2?}, attached to {iface} (pins {}, config: {})",
            d.pid(),
            d.pins.0.display(),
            extra.trim().replace('\n', ", ")
        );
        Ok(d)
    }

    /// `GET /v1/status`, raw HTTP/1.0 over the socket (no CLI process, so
    /// that polling costs the machine as little as possible).
    fn status(&self) -> Result<Status> {
        let mut s = UnixStream::connect(self.socket()).context("connecting to the daemon")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET /v1/status HTTP/1.0\r\nHost: sluice\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out
            .split_once("\r\n\r\n")
            .context("no HTTP header in the status reply")?;
        ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "status: {head}"
        );
        serde_json::from_str(body).with_context(|| format!("parsing the status {body}"))
    }
}

// ---------------------------------------------------------------------------
// The SSE subscriber

/// What the subscriber has counted so far.
#[derive(Default)]
struct SubCounts {
    /// Complete `event: packet` lines.
    packets: AtomicU64,
    /// Sum of the `data: N` of `event: lost` markers, and how many markers.
    lost: AtomicU64,
    markers: AtomicU64,
    /// Bytes of SSE text (after de-chunking).
    bytes: AtomicU64,
    /// The response head arrived with status 200.
    open: AtomicBool,
    /// Kernel thread id of the reader, for its CPU time.
    tid: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SubSnap {
    packets: u64,
    lost: u64,
    markers: u64,
    bytes: u64,
}

impl SubCounts {
    fn snap(&self) -> SubSnap {
        SubSnap {
            packets: self.packets.load(Ordering::SeqCst),
            lost: self.lost.load(Ordering::SeqCst),
            markers: self.markers.load(Ordering::SeqCst),
            bytes: self.bytes.load(Ordering::SeqCst),
        }
    }
}

/// Where the HTTP/1.1 chunked decoder stands.
#[derive(Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many payload bytes of the current chunk still to come.
    Data(usize),
    /// Expecting the CRLF after a chunk's payload.
    End,
    /// The zero-size chunk was seen: the stream is over.
    Done,
}

/// Incremental parser: HTTP head, chunked transfer coding, SSE lines.
struct SseParser {
    head: Option<bool>,
    raw: Vec<u8>,
    chunk: Chunk,
    text: Vec<u8>,
    /// The previous line was `event: lost`: the next `data:` is its count.
    lost_data: bool,
}

impl SseParser {
    fn new() -> Self {
        SseParser {
            head: None,
            raw: Vec::new(),
            chunk: Chunk::Size,
            text: Vec::new(),
            lost_data: false,
        }
    }

    /// Feeds bytes from the socket; updates `c`. Returns false at the end of the stream.
    fn feed(&mut self, bytes: &[u8], c: &SubCounts) -> Result<bool> {
        self.raw.extend_from_slice(bytes);
        let mut at = 0;
        if self.head.is_none() {
            let Some(end) = find(&self.raw, b"\r\n\r\n") else {
                return Ok(true);
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            ensure!(head.starts_with("http/1.1 200"), "SSE request refused: {head}");
            ensure!(
                head.contains("content-type: text/event-stream"),
                "not an event stream: {head}"
            );
            let chunked = head.contains("transfer-encoding: chunked");
            self.head = Some(chunked);
            c.open.store(true, Ordering::SeqCst);
            at = end + 4;
        }
        if self.head == Some(true) {
            loop {
                match self.chunk {
                    Chunk::Size => {
                        let Some(eol) = find(&self.raw[at..], b"\r\n") else {
                            break;
                        };
                        let line = std::str::from_utf8(&self.raw[at..at + eol])?;
                        let hex = line.split(';').next().unwrap_or("").trim();
                        let n = usize::from_str_radix(hex, 16).with_context(|| format!("chunk size {line:?}"))?;
                        at += eol + 2;
                        self.chunk = if n == 0 { Chunk::Done } else { Chunk::Data(n) };
                    }
                    Chunk::Data(n) => {
                        let take = n.min(self.raw.len() - at);
                        if take == 0 {
                            break;
                        }
                        self.text.extend_from_slice(&self.raw[at..at + take]);
                        at += take;
                        self.chunk = if take == n { Chunk::End } else { Chunk::Data(n - take) };
                    }
                    Chunk::End => {
                        if self.raw.len() - at < 2 {
                            break;
                        }
                        ensure!(&self.raw[at..at + 2] == b"\r\n", "chunk not followed by CRLF");
                        at += 2;
                        self.chunk = Chunk::Size;
                    }
                    Chunk::Done => break,
                }
            }
        } else {
            self.text.extend_from_slice(&self.raw[at..]);
            at = self.raw.len();
        }
        self.raw.drain(..at);
        self.lines(c)?;
        Ok(!matches!(self.chunk, Chunk::Done))
    }

    /// Counts the complete lines of `text`, keeping a partial last line.
    fn lines(&mut self, c: &SubCounts) -> Result<()> {
        let Some(last) = self.text.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let (mut packets, mut lost, mut markers) = (0, 0, 0);
        for line in self.text[..last].split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if self.lost_data {
                self.lost_data = false;
                let n = line
                    .strip_prefix(b"data: ")
                    .and_then(|d| std::str::from_utf8(d).ok())
                    .and_then(|d| d.trim().parse::<u64>().ok())
                    .with_context(|| format!("a lost marker without a count: {}", String::from_utf8_lossy(line)))?;
                lost += n;
                markers += 1;
            } else if line == b"event: packet" {
                packets += 1;
            } else if line == b"event: lost" {
                self.lost_data = true;
            }
        }
        c.bytes.fetch_add(last as u64 + 1, Ordering::SeqCst);
        c.lost.fetch_add(lost, Ordering::SeqCst);
        c.markers.fetch_add(markers, Ordering::SeqCst);
        c.packets.fetch_add(packets, Ordering::SeqCst);
        self.text.drain(..=last);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One SSE client of `GET /v1/events?kind=packet` on a thread of its own.
struct Subscriber {
    counts: Arc<SubCounts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Subscriber {
    fn connect(socket: &Path) -> Result<Self> {
        let mut s = UnixStream::connect(socket).context("connecting the SSE subscriber")?;
        write!(s, "GET /v1/events?kind=packet HTTP/1.1\r\nHost: sluice\r\n\r\n")?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let counts = Arc::new(SubCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (counts.clone(), stop.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            // SAFETY: gettid has no preconditions.
            c.tid.store(unsafe { libc::gettid() } as u64, Ordering::SeqCst);
            let mut p = SseParser::new();
            let mut buf = vec![0u8; 1 << 18];
            while !st.load(Ordering::SeqCst) {
                match s.read(&mut buf) {
                    Ok(0) => bail!("the daemon closed the event stream"),
                    Ok(n) => {
                        if !p.feed(&buf[..n], &c)? {
                            bail!("the event stream ended");
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e).context("reading the event stream"),
                }
            }
            Ok(())
        });
        let sub = Subscriber {
            counts,
            stop,
            thread: Some(thread),
        };
        let t = Instant::now();
        while !sub.counts.open.load(Ordering::SeqCst) {
            if sub.thread.as_ref().is_some_and(|t| t.is_finished()) {
                return Err(sub.close().err().unwrap_or_else(|| anyhow!("the subscriber stopped")));
            }
            ensure!(
                t.elapsed() < Duration::from_secs(5),
                "the SSE stream did not open in 5 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(sub)
    }

    fn tid(&self) -> u64 {
        self.counts.tid.load(Ordering::SeqCst)
    }

    /// Fails if the reader thread stopped with an error.
    fn check(&mut self) -> Result<()> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let r = self.thread.take().expect("checked").join();
            r.map_err(|_| anyhow!("subscriber thread panicked"))??;
            bail!("the subscriber thread stopped");
        }
        Ok(())
    }

    fn close(mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("subscriber thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// CPU time

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of a process or thread, in clock ticks, from its `stat` file.
fn stat_ticks(path: &str) -> Result<u64> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3,
    // utime field 14, stime field 15.
    let rest = &s[s.rfind(')').with_context(|| format!("no comm in {path}"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "short {path}");
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// CPU ticks of every thread of `pid`, by thread id.
fn thread_ticks(pid: u32) -> Vec<(u64, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u64 = e.ok()?.file_name().to_str()?.parse().ok()?;
        Some((tid, stat_ticks(&format!("/proc/{pid}/task/{tid}/stat")).ok()?))
    })
    .collect()
}

/// (busy, total) ticks of the whole machine, from the first line of /proc/stat.
fn machine_ticks() -> Result<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let line = s.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    ensure!(v.len() >= 5, "short /proc/stat line {line}");
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total: u64 = v.iter().take(8).sum();
    Ok((total - v[3] - v[4], total))
}

/// A CPU snapshot of the daemon, its busiest thread's share, the subscriber
/// thread and the machine.
struct CpuSnap {
    at: Instant,
    daemon: u64,
    threads: Vec<(u64, u64)>,
    sub: Option<u64>,
    machine: (u64, u64),
}

impl CpuSnap {
    fn take(pid: u32, sub_tid: Option<u64>) -> Result<Self> {
        Ok(CpuSnap {
            at: Instant::now(),
            daemon: stat_ticks(&format!("/proc/{pid}/stat"))?,
            threads: thread_ticks(pid),
            sub: sub_tid
                .map(|t| stat_ticks(&format!("/proc/self/task/{t}/stat")))
                .transpose()?,
            machine: machine_ticks()?,
        })
    }
}

/// CPU use between two snapshots.
#[derive(Clone, Copy, Debug, Default)]
struct CpuUse {
    /// Daemon CPU-seconds.
    daemon_s: f64,
    /// The busiest daemon thread, in % of one CPU over the interval.
    busiest_pct: f64,
    /// The subscriber thread, CPU-seconds.
    sub_s: f64,
    /// The machine, busy % summed over CPUs (200 % = both vCPUs busy).
    machine_pct: f64,
}

fn cpu_use(a: &CpuSnap, b: &CpuSnap) -> CpuUse {
    let tck = clk_tck();
    let secs = (b.at - a.at).as_secs_f64();
    let busiest = b
        .threads
        .iter()
        .map(|(tid, t1)| {
            let t0 = a.threads.iter().find(|(x, _)| x == tid).map_or(0, |x| x.1);
            t1.saturating_sub(t0)
        })
        .max()
        .unwrap_or(0);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (busy, total) = (b.machine.0 - a.machine.0, b.machine.1 - a.machine.1);
    CpuUse {
        daemon_s: (b.daemon - a.daemon) as f64 / tck,
        busiest_pct: busiest as f64 / tck / secs * 100.0,
        sub_s: match (a.sub, b.sub) {
            (Some(x), Some(y)) => (y - x) as f64 / tck,
            _ => 0.0,
        },
        machine_pct: if total > 0 {
            busy as f64 / total as f64 * ncpu * 100.0
        } else {
            0.0
        },
    }
}

// ---------------------------------------------------------------------------
// Floods

/// Counters of `/v1/status` that one flood moves.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    /// Packets the XDP program judged (all verdicts, all managed interfaces).
    judged: u64,
    received: u64,
    lost_kernel: u64,
    /// Connection events received (background noise on this host).
    conn: u64,
    lost_subscribers: u64,
}

fn counters(st: &Status) -> Counters {
    let get = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    Counters {
        judged: st.verdicts.values().map(|c| c.packets).sum(),
        received: get(&st.events.received, "packet"),
        lost_kernel: get(&st.events.lost_kernel, "packet"),
        conn: get(&st.events.received, "conn"),
        lost_subscribers: st.events.lost_subscribers,
    }
}

fn delta(a: Counters, b: Counters) -> Counters {
    Counters {
        judged: b.judged - a.judged,
        received: b.received - a.received,
        lost_kernel: b.lost_kernel - a.lost_kernel,
        conn: b.conn - a.conn,
        lost_subscribers: b.lost_subscribers - a.lost_subscribers,
    }
}

/// One flood and what became of it.
#[derive(Clone, Debug)]
struct Row {
    target: Option<u64>,
    sent: u64,
    secs: f64,
    k: Counters,
    /// What the subscriber counted (None: no subscriber).
    sub: Option<SubSnap>,
    /// Daemon CPU during the flood (flood window only).
    during: CpuUse,
    /// CPU from the flood's start until everything drained.
    total: CpuUse,
    /// Time from the flood's end until everything drained.
    drain: Duration,
    drained: bool,
    /// Growth of the veth's drop and error counters during the flood.
    veth_errors: u64,
}

impl Row {
    fn sent_rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }

    fn recv_rate(&self) -> f64 {
        self.k.received as f64 / self.secs
    }

    /// generated − (kernel-received + kernel-lost).
    fn kernel_diff(&self) -> i64 {
        self.sent as i64 - (self.k.received + self.k.lost_kernel) as i64
    }

    /// Packets the XDP program judged besides the generated ones: the lab
    /// namespaces' own traffic (IPv6 router solicitations and the like),
    /// which becomes events too.
    fn background(&self) -> i64 {
        self.k.judged as i64 - self.sent as i64
    }

    /// judged − (kernel-received + kernel-lost): every judged packet must
    /// have become an event or a counted loss. 0 when the books balance;
    /// equals `kernel_diff() + background()`.
    fn judged_diff(&self) -> i64 {
        self.k.judged as i64 - (self.k.received + self.k.lost_kernel) as i64
    }

    /// kernel-received − (subscriber-received + subscriber-lost).
    fn sub_diff(&self) -> Option<i64> {
        self.sub.map(|s| self.k.received as i64 - (s.packets + s.lost) as i64)
    }

    /// Daemon CPU in % of one CPU during the flood.
    fn cpu_pct(&self) -> f64 {
        self.during.daemon_s / self.secs * 100.0
    }

    /// Daemon CPU per event, flood start to drained, in µs.
    fn us_per_event(&self) -> f64 {
        if self.k.received == 0 {
            f64::NAN
        } else {
            self.total.daemon_s / self.k.received as f64 * 1e6
        }
    }

    /// Subscriber saw every generated event.
    fn lossless(&self) -> bool {
        self.sub.is_some_and(|s| s.lost == 0) && self.k.lost_kernel == 0 && self.drained
    }
}

fn target_str(t: Option<u64>) -> String {
    t.map_or_else(|| "flat out".to_string(), |r| format!("{}k/s", r / 1000))
}

/// 64-byte UDP frames from `a`'s namespace to the host side of its veth.
/// The destination MAC is not the veth's, so the host's stack drops them
/// after XDP and never answers (no ICMP, no ARP).
fn lab_frame(a: &LabHost) -> Result<Vec<u8>> {
    let frame = Packet::udp(IpAddr::V4(a.ns_v4), IpAddr::V4(a.host_v4), 40000, 9)
        .with_payload(&[0u8; 22])
        .build();
    ensure!(frame.len() == FRAME_LEN, "the lab frame is {} bytes", frame.len());
    Ok(frame)
}

/// Floods at `target` for [`FLOOD`], waits (bounded) for the ring and the
/// subscriber to drain, and accounts for every event.
fn run_flood(
    d: &BenchDaemon,
    a: &LabHost,
    frame: &[u8],
    target: Option<u64>,
    mut sub: Option<&mut Subscriber>,
    events_on: bool,
) -> Result<Row> {
    let pid = d.pid();
    let tid = sub.as_ref().map(|s| s.tid());
    let v0 = veth_errors(a)?;
    let c0 = counters(&d.status()?);
    let s0 = sub.as_ref().map(|s| s.counts.snap());
    let cpu0 = CpuSnap::take(pid, tid)?;
    let report = flood(
        &a.netns_path(),
        "eth0",
        Flood {
            frame: frame.to_vec(),
            pps: target,
            duration: FLOOD,
            spoof: None,
        },
    )
    .context("generator")?;
    let cpu1 = CpuSnap::take(pid, tid)?;
    let flood_end = Instant::now();

    // Drain: the ring is drained once received + lost covers what was sent
    // (or stops moving); the subscriber once it has accounted for every
    // event the daemon received.
    let (mut last, mut moved) = (None, Instant::now());
    let (k, snap, drained) = loop {
        let k = delta(c0, counters(&d.status()?));
        let snap = match (&mut sub, s0) {
            (Some(s), Some(s0)) => {
                s.check()?;
                let n = s.counts.snap();
                Some(SubSnap {
                    packets: n.packets - s0.packets,
                    lost: n.lost - s0.lost,
                    markers: n.markers - s0.markers,
                    bytes: n.bytes - s0.bytes,
                })
            }
            _ => None,
        };
        let seen = k.received + k.lost_kernel;
        if last != Some(seen) {
            last = Some(seen);
            moved = Instant::now();
        }
        let ring_done = !events_on || seen >= k.judged || moved.elapsed() >= QUIET;
        let sub_done = snap.is_none_or(|s| s.packets + s.lost >= k.received);
        if ring_done && sub_done {
            break (k, snap, true);
        }
        if flood_end.elapsed() > DRAIN_MAX {
            eprintln!("    warning: not drained after {DRAIN_MAX:?}");
            break (k, snap, false);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let drain = flood_end.elapsed();
    let cpu2 = CpuSnap::take(pid, tid)?;
    let veth = veth_errors(a)? - v0;
    let row = Row {
        target,
        sent: report.sent,
        secs: report.elapsed.as_secs_f64(),
        k,
        sub: snap,
        during: cpu_use(&cpu0, &cpu1),
        total: cpu_use(&cpu0, &cpu2),
        drain,
        drained,
        veth_errors: veth,
    };
    let subs = match row.sub {
        Some(s) => format!(
            "; subscriber got {} + lost {} in {} markers ({:.1} MB of SSE, {:.0} B/event), unaccounted {}",
            s.packets,
            s.lost,
            s.markers,
            s.bytes as f64 / 1e6,
            s.bytes as f64 / s.packets.max(1) as f64,
            row.sub_diff().unwrap_or(0)
        ),
        None => String::new(),
    };
    eprintln!(
        "    {:>8}: sent {} ({:.0}/s), judged {} ({:+} other), received {} ({:.0}/s), kernel lost {}, unaccounted {}{subs}; \
         lost_subscribers +{}, conn events +{}; daemon CPU {:.1} % (busiest thread {:.0} %), \
         {:.2} µs/event, machine {:.0} %, drained in {:.2?}, veth drops/errors +{}",
        target_str(target),
        row.sent,
        row.sent_rate(),
        k.judged,
        row.background(),
        k.received,
        row.recv_rate(),
        k.lost_kernel,
        row.judged_diff(),
        k.lost_subscribers,
        k.conn,
        row.cpu_pct(),
        row.during.busiest_pct,
        row.us_per_event(),
        row.during.machine_pct,
        row.drain,
        row.veth_errors
    );
    Ok(row)
}

fn run_rates(
    d: &BenchDaemon,
    a: &LabHost,
    frame: &[u8],
    mut sub: Option<&mut Subscriber>,
    events_on: bool,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for target in RATES {
        rows.push(run_flood(d, a, frame, target, sub.as_deref_mut(), events_on)?);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------

fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

fn fmt_rate(r: f64) -> String {
    fmt_n(r.round() as u64)
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("this benchmark loads BPF programs, pins maps and builds network namespaces: run it as root");
    }
    let started = Instant::now();
    eprintln!("== lab {LAB_NAME} (number {LAB_NUMBER}) and a sluice daemon on {LAB_GLOB}, packet_sample_every = 1");
    let lab = quiet_lab()?;
    let a = lab.0.host('a').clone();
    let frame = lab_frame(&a)?;
    let mut d = BenchDaemon::start("packet_sample_every = 1\n", &a.host_if)?;

    eprintln!("== warm-up (not reported)");
    let mut sub = Subscriber::connect(&d.socket())?;
    run_flood(&d, &a, &frame, Some(10_000), Some(&mut sub), true)?;
    sub.close()?;

    eprintln!("== no subscriber: floods of {FLOOD:?} from {}", a.netns);
    let none = run_rates(&d, &a, &frame, None, true)?;

    eprintln!("== one SSE subscriber (GET /v1/events?kind=packet)");
    let mut sub = Subscriber::connect(&d.socket())?;
    let mut one = run_rates(&d, &a, &frame, Some(&mut sub), true)?;
    // Refine the largest lossless rate by bisection between the fastest
    // lossless and the slowest lossy paced rate.
    let mut refined = Vec::new();
    let ok = one.iter().filter(|r| r.lossless()).filter_map(|r| r.target).max();
    let bad = one
        .iter()
        .filter(|r| !r.lossless())
        .filter_map(|r| r.target)
        .filter(|t| ok.is_none_or(|o| *t > o))
        .min();
    if let (Some(mut lo), Some(mut hi)) = (ok, bad) {
        eprintln!("== bisecting the largest lossless rate between {lo} and {hi} events/s");
        for _ in 0..REFINE_STEPS {
            let mid = (lo + hi) / 2 / 5_000 * 5_000;
            if mid <= lo || mid >= hi {
                break;
            }
            let r = run_flood(&d, &a, &frame, Some(mid), Some(&mut sub), true)?;
            if r.lossless() {
                lo = mid;
            } else {
                hi = mid;
            }
            refined.push(r);
        }
    }
    sub.close()?;
    let final_status = d.status()?;
    eprintln!("  sluice down");
    d.down()?;
    drop(d);

    eprintln!("== baseline: a fresh daemon with packet_sample_every = 0 (no events), no subscriber");
    let mut d = BenchDaemon::start("packet_sample_every = 0\n", &a.host_if)?;
    let off = run_rates(&d, &a, &frame, None, false)?;
    eprintln!("  sluice down");
    d.down()?;
    drop(d);
    drop(lab);

    // -----------------------------------------------------------------------
    println!();
    println!(
        "Event delivery to one SSE subscriber (GET /v1/events?kind=packet over the unix socket), \
         {FRAME_LEN}-byte UDP frames for {FLOOD:?} from be-a, packet_sample_every = 1, ring {} bytes:",
        fmt_n(sluice_abi::ev::DEFAULT_RING_BYTES as u64)
    );
    println!();
    println!("| offered | generator sent/s | kernel received | kernel lost | sent − (recv + lost) | other packets judged | judged − (recv + lost) | subscriber received | subscriber lost (markers) | recv − (sub recv + sub lost) | delivered to subscriber/s | drained in |");
    println!("|--------:|-----------------:|----------------:|------------:|---------------------:|---------------------:|-----------------------:|--------------------:|--------------------------:|-----------------------------:|--------------------------:|-----------:|");
    one.extend(refined);
    one.sort_by_key(|r| r.target.unwrap_or(u64::MAX));
    for r in &one {
        let s = r.sub.expect("subscriber row");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {:.0} ms |",
            target_str(r.target),
            fmt_rate(r.sent_rate()),
            fmt_n(r.k.received),
            fmt_n(r.k.lost_kernel),
            r.kernel_diff(),
            r.background(),
            r.judged_diff(),
            fmt_n(s.packets),
            fmt_n(s.lost),
            s.markers,
            r.sub_diff().unwrap_or(0),
            fmt_rate(s.packets as f64 / r.secs),
            r.drain.as_secs_f64() * 1e3
        );
    }
    let lossless = one.iter().filter(|r| r.lossless()).filter_map(|r| r.target).max();
    let sub_lossless = one
        .iter()
        .filter(|r| r.sub.is_some_and(|s| s.lost == 0))
        .filter_map(|r| r.target)
        .max();
    println!();
    match lossless {
        Some(r) => println!(
            "Largest offered rate at which the subscriber got every event: {} events/s",
            fmt_n(r)
        ),
        None => println!("The subscriber lost events at every offered rate"),
    }
    if sub_lossless != lossless {
        println!(
            "Largest offered rate with no subscriber loss (kernel losses allowed): {}",
            sub_lossless.map_or("none".into(), fmt_n)
        );
    }

    println!();
    println!("Kernel side with no subscriber (hub history and counters only):");
    println!();
    println!("| offered | generator sent/s | kernel received/s | kernel lost | sent − (recv + lost) | other packets judged | judged − (recv + lost) |");
    println!("|--------:|-----------------:|------------------:|------------:|---------------------:|---------------------:|-----------------------:|");
    for r in &none {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            target_str(r.target),
            fmt_rate(r.sent_rate()),
            fmt_rate(r.recv_rate()),
            fmt_n(r.k.lost_kernel),
            r.kernel_diff(),
            r.background(),
            r.judged_diff()
        );
    }

    println!();
    println!(
        "Daemon CPU (utime + stime of all its threads, % of one CPU during the {FLOOD:?} flood; µs/event over \
         flood + drain; CPU % per 100k events/s = 10 × µs/event). Sampling off = a daemon with \
         packet_sample_every = 0 at the same offered rate:"
    );
    println!();
    println!("| offered | events received/s | sampling off: daemon CPU | no subscriber: daemon CPU | µs/event | CPU % per 100k ev/s | one subscriber: daemon CPU | busiest daemon thread | µs/event | CPU % per 100k ev/s | subscriber thread CPU | machine busy (of 200 %) |");
    println!("|--------:|------------------:|-------------------------:|--------------------------:|---------:|--------------------:|---------------------------:|----------------------:|---------:|--------------------:|----------------------:|------------------------:|");
    for (i, target) in RATES.iter().enumerate() {
        let (o, n) = (&off[i], &none[i]);
        let Some(s) = one.iter().find(|r| r.target == *target) else {
            continue;
        };
        println!(
            "| {} | {} | {:.1} % | {:.1} % | {:.2} | {:.1} % | {:.1} % | {:.0} % | {:.2} | {:.1} % | {:.1} % | {:.0} % |",
            target_str(*target),
            fmt_rate(s.recv_rate()),
            o.cpu_pct(),
            n.cpu_pct(),
            n.us_per_event(),
            n.us_per_event() * 10.0,
            s.cpu_pct(),
            s.during.busiest_pct,
            s.us_per_event(),
            s.us_per_event() * 10.0,
            s.total.sub_s / s.secs * 100.0,
            s.during.machine_pct
        );
    }
    // Explain every row where generated and judged differ.
    let mut notes = Vec::new();
    for (phase, rows) in [
        ("no subscriber", &none),
        ("one subscriber", &one),
        ("sampling off", &off),
    ] {
        for r in rows.iter().filter(|r| r.background() != 0 || r.veth_errors != 0) {
            notes.push(format!(
                "{phase}, {}: XDP judged {} packets for {} generated ({:+}); veth drop/error counters +{}",
                target_str(r.target),
                r.k.judged,
                r.sent,
                r.background(),
                r.veth_errors
            ));
        }
    }
    if !notes.is_empty() {
        println!();
        println!("Generated vs judged:");
        for n in notes {
            println!("* {n}");
        }
    }
    println!();
    println!(
        "Daemon totals at the end of the subscriber phase: lost_subscribers {}, malformed {}",
        final_status.events.lost_subscribers, final_status.events.malformed
    );
    println!();
    println!("total bench time {:.1?}", started.elapsed());

    // The accounting must add up once everything drained.
    let mut bad = Vec::new();
    for r in none.iter().chain(&one) {
        if !r.drained {
            bad.push(format!("{}: did not drain", target_str(r.target)));
        }
        if r.judged_diff() != 0 {
            bad.push(format!(
                "{}: judged − (received + kernel lost) = {}",
                target_str(r.target),
                r.judged_diff()
            ));
        }
        if r.sub_diff().is_some_and(|x| x != 0) {
            bad.push(format!(
                "{}: received − (subscriber received + lost) = {}",
                target_str(r.target),
                r.sub_diff().unwrap_or(0)
            ));
        }
    }
    ensure!(
        bad.is_empty(),
        "the event accounting does not add up:\n  {}",
        bad.join("\n  ")
    );
    Ok(())
}
