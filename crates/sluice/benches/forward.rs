//! Benchmarks of forwarding (port forwarding / service DNAT) and redirect
//! at TC. Run as root with `cargo bench --bench forward` (release profile,
//! about 85 s).
//!
//! It measures three things and prints them as Markdown tables; it asserts
//! nothing about speed and fails only if the setup is broken (a wrong
//! verdict, a frame not rewritten as expected, counters that do not add up,
//! a daemon that does not attach, a connection that never arrives):
//!
//! 1. **Per-packet cost of the TC ingress program**: `BPF_PROG_TEST_RUN`
//!    ns/packet (kernel average over [`REPEAT`] runs, median of [`ROUNDS`],
//!    all cases interleaved in every round) of `sluice_tc_in`: with no rules
//!    (early exit), with rules the frame does not match, an established flow
//!    being DNAT-rewritten (TCP over IPv4 and IPv6), a reply being
//!    reverse-translated, and a redirect hit. Rules go in through the real
//!    [`Forwarder`] controller; each rule set has its own dataplane and pin dir.
//!
//!    With `repeat`, the kernel runs the program again and again on the
//!    *same* skb, so a rewrite made by run *i* is the input of run *i + 1*:
//!    after the first run a client -> service frame is client -> target,
//!    which matches nothing. To time the established-flow path on every
//!    run, the bench writes the inverse translation into the pinned `sl_ct`
//!    (client -> target becomes client -> service again; for replies,
//!    service -> client becomes target -> client). The frame then
//!    alternates between the two tuples and every run is a translation-state
//!    hit with a full address and port rewrite. The bench checks that every
//!    run was translated (rule counter and `dnat`/`snat` statistics = runs)
//!    and, for contrast, also times the same frame without the inverse
//!    entry.
//! 2. **Bulk TCP throughput** between two lab namespaces (`bf-a`, `bf-b`, lab
//!    number 80), direct to b and through a `sluice forward add VIP:PORT
//!    B:PORT` of a real `sluice run` daemon managing the lab's veths (with
//!    L7 capture off, see [`DAEMON_CONFIG`]): iperf3
//!    for [`IPERF_SECS`], a -> b and b -> a (`-R`), [`RUNS`] runs of each
//!    variant, interleaved. Every forwarded run has its own service ports
//!    on the VIP (see [`IPERF_VIP_BASE`]); the direct runs use servers on
//!    other ports of b (see [`IPERF_PORT_DIRECT`]) and must translate
//!    nothing.
//! 3. **New-flow cost**: [`CONNS`] sequential TCP connect + close from `bf-a`
//!    to a server in `bf-b`, direct and through a forward, as connections/s.
//!
//! Everything it creates (the lab namespaces and veths, the bridge
//! [`BRIDGE`], pins under `/sys/fs/bpf/sluice-benchfwd-*`, the daemon, the
//! iperf3 servers, temp dirs) is removed at the end, on error and on panic.
//! Nothing is attached to any interface outside the lab.

mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use common::{is_root, BenchDaemon, LabGuard, PinGuard};
use serde_json::Value;
use sluice::{
    dataplane::{Capacity, Dataplane},
    forward::{spec::addr16, ForwardRequest, Forwarder, RedirectRequest},
    lab::LabHost,
    store::Store,
};
use sluice_abi::{tc, CtKey, CtVal};
use sluice_proto::{
    packet::{Packet, L4},
    verify::verify,
};

/// tcx "continue" (-1): the frame goes on to the stack.
const TCX_NEXT: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;

/// Runs per BPF_PROG_TEST_RUN call; the kernel reports the average. Even,
/// so an alternating frame ends where it started.
const REPEAT: u32 = 1_000_000;
/// Calls per measurement; the median is reported.
const ROUNDS: usize = 7;
/// Warm-up runs of each case before the measured rounds (even).
const WARMUP: u32 = 10_000;

/// The test_run flows: a client, a service with its target, and an
/// address no rule matches.
const CLIENT4: &str = "198.18.1.2:40000";
const SERVICE4: &str = "198.18.9.9:80";
const TARGET4: &str = "198.18.2.2:8080";
const CLIENT6: &str = "[2001:2:0:1::2]:40000";
const SERVICE6: &str = "[2001:2:0:99::9]:80";
const TARGET6: &str = "[2001:2:0:2::2]:8080";
const NOWHERE4: &str = "198.18.9.8:80";
/// The redirect rule of the test_run cases and an address inside it.
const REDIR_CIDR: &str = "198.18.6.0/24";
const REDIR_DST: &str = "198.18.6.5:80";
/// A bridge made for the redirect case (not a veth: bpf_redirect_neigh).
const BRIDGE: &str = "slbrbench";
/// Client port of the "same frame repeated, no inverse entry" contrast.
const NAIVE_PORT: u16 = 40001;

/// Lab of the end-to-end parts: its own name and number, so it cannot
/// collide with the tests' and the other benches' labs.
const LAB_NAME: &str = "bf";
const LAB_NUMBER: u8 = 80;
const LAB_GLOB: &str = "bf-*";
/// The daemon's config beyond socket, state and pins: L7 capture (on by
/// default) off, so that the TC programs do forwarding only and the direct
/// runs are a baseline without it.
const DAEMON_CONFIG: &str = "l7_capture_bytes = 0\n";
/// The virtual service address the forwards match (inside the lab range
/// 198.18.0.0/15, which bf-a routes to the host; translated at the ingress
/// of bf-a).
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 80);
/// Ports of the forward targets on b.
const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 7000;
/// Port of the iperf3 server the direct runs use. It (like
/// [`CONN_DIRECT_BASE`]) must differ from the forward targets' ports:
/// translation state outlives a flow (up to 120 s after a FIN), and a
/// direct connection whose reply tuple (b:port -> a:client port) equals a
/// finished forwarded flow's gets its replies rewritten to come from the
/// VIP, so it stalls.
const IPERF_PORT_DIRECT: u16 = 5202;
/// The direct connection runs (0 = warm-up) go to `base + run` on b, so
/// that, as for the forwarded runs, no run meets another's TIME_WAIT
/// sockets when the client picks its local ports.
const CONN_DIRECT_BASE: u16 = 7200;
/// Each forwarded run (0 = warm-up) has its own service ports on the VIP,
/// `base + run`, forwarded to [`IPERF_PORT`] and [`CONN_PORT`] on b. A
/// client reusing a local port towards the same service within 120 s can
/// hit a translation entry whose reverse half already expired (an RST in
/// one direction gives it 10 s instead of 120 s); that connection then
/// never completes. Fresh service ports per run keep the runs from
/// meeting each other's state.
const IPERF_VIP_BASE: u16 = 5300;
const CONN_VIP_BASE: u16 = 7100;
const IPERF_SECS: u32 = 5;
/// Runs of each end-to-end variant; the median and the spread are reported.
const RUNS: usize = 3;
/// Sequential connections per new-flow measurement.
const CONNS: usize = 2000;
/// Pause after a batch of connections so that their closing packets are
/// counted in the right run.
const SETTLE: Duration = Duration::from_millis(500);

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(*x), hi.max(*x))
    })
}

// ---------------------------------------------------------------------------
// Guards

/// A bridge interface, deleted on drop.
struct BridgeGuard(&'static str);

impl BridgeGuard {
    fn new(name: &'static str) -> Result<Self> {
        if Path::new("/sys/class/net").join(name).exists() {
            // A leftover of an earlier run that was killed: the name is ours.
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
        let out = Command::new("ip")
            .args(["link", "add", name, "type", "bridge"])
            .output()
            .context("running ip link add")?;
        ensure!(
            out.status.success(),
            "ip link add {name} type bridge: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(BridgeGuard(name))
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        match Command::new("ip").args(["link", "del", self.0]).status() {
            Ok(s) if s.success() => eprintln!("  bridge {} removed", self.0),
            other => eprintln!("warning: ip link del {}: {other:?}", self.0),
        }
    }
}

/// A child process (an iperf3 server), killed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        eprintln!("  stopping an iperf3 server (pid {})", self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// test_run

/// A TCP segment with ACK set and 10 payload bytes: mid-stream data of an
/// established flow (64 bytes over IPv4, 84 over IPv6).
fn tcp_frame(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    Packet::new(
        src.ip(),
        dst.ip(),
        L4::Tcp {
            sport: src.port(),
            dport: dst.port(),
            flags: 0x10,
        },
    )
    .with_payload(&[0u8; 10])
    .build()
}

/// A SYN: only a SYN starts a forwarded TCP flow.
fn syn_frame(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    Packet::tcp(src.ip(), dst.ip(), src.port(), dst.port()).build()
}

fn ends(frame: &[u8]) -> Result<(SocketAddr, SocketAddr)> {
    let p = verify(frame).map_err(|e| anyhow::anyhow!("bad frame: {e}"))?;
    Ok((
        SocketAddr::new(p.src, p.sport.context("no source port")?),
        SocketAddr::new(p.dst, p.dport.context("no destination port")?),
    ))
}

fn ct_key(src: SocketAddr, dst: SocketAddr) -> CtKey {
    CtKey {
        family: if src.is_ipv4() { 4 } else { 6 },
        proto: 6,
        sport: src.port().to_be(),
        dport: dst.port().to_be(),
        _pad: 0,
        saddr: addr16(src.ip()),
        daddr: addr16(dst.ip()),
    }
}

/// A dataplane in its own pin dir with its forward/redirect controller.
struct Tc {
    dp: Dataplane,
    fwd: Forwarder,
    pins: PinGuard,
}

impl Tc {
    fn load(tag: &str) -> Result<Self> {
        let pins = PinGuard::new("sluice-benchfwd", &format!("-{tag}"))?;
        let (dp, maps) =
            Dataplane::load(&pins.0, Capacity::default()).with_context(|| format!("loading the {tag} dataplane"))?;
        let (fwd, _) = Forwarder::open(Store::in_memory()?, Box::new(maps.forward))?;
        Ok(Tc { dp, fwd, pins })
    }

    fn prog(&mut self) -> Result<&SchedClassifier> {
        let p = self.dp.tc_program(tc::INGRESS).context("no TC ingress program")?;
        Ok(p)
    }

    fn add_forward(&mut self, service: &str, target: &str) -> Result<u32> {
        let f = self.fwd.add_forward(&ForwardRequest {
            service: service.into(),
            to: vec![target.into()],
            comment: None,
        })?;
        Ok(f.slot)
    }

    /// One run with the frame copied out: (verdict, frame after the run).
    fn run_once(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (v, _, out) = run(self.prog()?, frame, 1)?;
        Ok((v, out))
    }

    /// Runs `frame` once and checks the verdict and the rewritten ends.
    fn expect(&mut self, frame: &[u8], want: (SocketAddr, SocketAddr)) -> Result<()> {
        let (v, out) = self.run_once(frame)?;
        ensure!(v == TCX_NEXT, "verdict {v}, expected TCX_NEXT");
        let got = ends(&out)?;
        ensure!(
            got == want,
            "frame {:?} came out as {got:?}, expected {want:?}",
            ends(frame)?
        );
        Ok(())
    }

    /// Writes a translation-state entry straight into the pinned `sl_ct`.
    fn inject(&self, key: CtKey, val: CtVal) -> Result<()> {
        let data = MapData::from_pin(self.pins.0.join(tc::CT)).context("opening the pinned sl_ct")?;
        let mut ct: BpfHashMap<MapData, CtKey, CtVal> = BpfHashMap::try_from(Map::from_map_data(data)?)?;
        ct.insert(key, val, 0)?;
        Ok(())
    }

    fn counter(&self, slot: u32) -> Result<u64> {
        Ok(self.fwd.forward_counter(slot)?.packets)
    }

    fn stat(&self, name: &str) -> Result<u64> {
        Ok(self.fwd.stats()?.get(name).map_or(0, |c| c.packets))
    }
}

/// `repeat` runs of `frame`: (verdict, kernel ns/run, frame after the last run).
fn run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<(u32, f64, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration.as_nanos() as f64, out))
}

/// One frame on one program, with the verdict it must get and the frame it
/// must come back as after an even number of runs.
struct Case<'a> {
    what: &'static str,
    rules: &'static str,
    prog: &'a SchedClassifier,
    frame: Vec<u8>,
    want: u32,
}

struct TcRow {
    what: &'static str,
    rules: &'static str,
    bytes: usize,
    verdict: u32,
    ns: f64,
    lo: f64,
    hi: f64,
}

/// Median ns/packet of each case over [`ROUNDS`] rounds of [`REPEAT`] runs,
/// checking every verdict and that the frame is back to its input (every
/// case is either untouched or alternates between two tuples).
fn measure(cases: &[Case]) -> Result<Vec<TcRow>> {
    let go = |c: &Case, repeat: u32| -> Result<f64> {
        let (v, ns, out) = run(c.prog, &c.frame, repeat).with_context(|| c.what)?;
        ensure!(v == c.want, "{}: verdict {v}, expected {}", c.what, c.want);
        ensure!(
            ends(&out)? == ends(&c.frame)?,
            "{}: after {repeat} runs the frame is {:?}, expected {:?}",
            c.what,
            ends(&out)?,
            ends(&c.frame)?
        );
        Ok(ns)
    };
    for c in cases {
        go(c, WARMUP)?;
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for _ in 0..ROUNDS {
        for (c, s) in cases.iter().zip(&mut samples) {
            s.push(go(c, REPEAT)?);
        }
    }
    Ok(cases
        .iter()
        .zip(&samples)
        .map(|(c, s)| {
            let m = median_f(s);
            let (lo, hi) = min_max(s);
            let mut sorted = s.clone();
            sorted.sort_by(f64::total_cmp);
            eprintln!("    {:<44} {m:>5.0} ns/pkt   (sorted rounds: {sorted:.0?})", c.what);
            TcRow {
                what: c.what,
                rules: c.rules,
                bytes: c.frame.len(),
                verdict: c.want,
                ns: m,
                lo,
                hi,
            }
        })
        .collect())
}

/// Primes a forward flow (client -> service, then the target's reply) and
/// writes the inverse entries that make both directions alternate.
fn prime_flow(t: &mut Tc, slot: u32, client: SocketAddr, service: SocketAddr, target: SocketAddr) -> Result<()> {
    t.expect(&syn_frame(client, service), (client, target))?;
    t.expect(&tcp_frame(target, client), (service, client))?;
    let val = |to: SocketAddr, dir: u8| CtVal {
        addr: addr16(to.ip()),
        port: to.port().to_be(),
        dir,
        state: tc::CT_EST,
        slot,
        last_ns: 0,
    };
    // client -> target goes back to client -> service ...
    t.inject(ct_key(client, target), val(service, tc::CT_DNAT))?;
    // ... and service -> client back to target -> client.
    t.inject(ct_key(service, client), val(target, tc::CT_SNAT))?;
    // Both halves of each cycle work.
    t.expect(&tcp_frame(client, target), (client, service))?;
    t.expect(&tcp_frame(service, client), (target, client))?;
    Ok(())
}

/// The naive measurement, for contrast: one fresh flow's frame repeated
/// [`REPEAT`] times without an inverse entry. Returns (ns/run, runs that
/// were translated).
struct Naive {
    ns: f64,
    translated: u64,
}

fn bench_test_run() -> Result<(Vec<TcRow>, Naive)> {
    eprintln!("== test_run of {} (ingress)", tc::INGRESS);
    let (c4, s4, t4) = (sa(CLIENT4), sa(SERVICE4), sa(TARGET4));
    let (c6, s6, t6) = (sa(CLIENT6), sa(SERVICE6), sa(TARGET6));
    let nowhere = sa(NOWHERE4);

    eprintln!("  loading 3 dataplanes: no rules, 2 forwards, 1 redirect");
    let mut none = Tc::load("none")?;
    let mut fwd = Tc::load("fwd")?;
    let slot4 = fwd.add_forward(SERVICE4, TARGET4)?;
    let slot6 = fwd.add_forward(SERVICE6, TARGET6)?;
    let mut redir = Tc::load("redir")?;
    let _bridge = BridgeGuard::new(BRIDGE)?;
    let r = redir.fwd.add_redirect(&RedirectRequest {
        cidr: REDIR_CIDR.into(),
        iface: BRIDGE.into(),
        comment: None,
    })?;
    ensure!(
        r.target.is_some_and(|t| !t.peer),
        "a bridge gets bpf_redirect_neigh: {r:?}"
    );
    let redir_slot = r.slot;

    prime_flow(&mut fwd, slot4, c4, s4, t4)?;
    prime_flow(&mut fwd, slot6, c6, s6, t6)?;
    // Nothing else in any dataplane rewrites these.
    let (v, out) = none.run_once(&tcp_frame(c4, s4))?;
    ensure!(
        v == TCX_NEXT && ends(&out)? == (c4, s4),
        "no rules: the frame must pass untouched"
    );
    let base4 = fwd.counter(slot4)?;
    let base6 = fwd.counter(slot6)?;
    let (dnat0, snat0, new0) = (fwd.stat("dnat")?, fwd.stat("snat")?, fwd.stat("new_flows")?);

    let rows = {
        let p_none = none.prog()?;
        let p_fwd = fwd.prog()?;
        let p_redir = redir.prog()?;
        let case = |what, rules, prog, frame, want| Case {
            what,
            rules,
            prog,
            frame,
            want,
        };
        let cases = [
            case("(a) no rules: early exit", "none", p_none, tcp_frame(c4, s4), TCX_NEXT),
            case(
                "(b) forwards present, no match",
                "2 forwards",
                p_fwd,
                tcp_frame(c4, nowhere),
                TCX_NEXT,
            ),
            case(
                "(b) redirect present, no match",
                "1 redirect",
                p_redir,
                tcp_frame(c4, nowhere),
                TCX_NEXT,
            ),
            case(
                "(c) established flow DNAT, TCP/IPv4",
                "2 forwards",
                p_fwd,
                tcp_frame(c4, s4),
                TCX_NEXT,
            ),
            case(
                "(c) established flow DNAT, TCP/IPv6",
                "2 forwards",
                p_fwd,
                tcp_frame(c6, s6),
                TCX_NEXT,
            ),
            case(
                "(d) reply reverse-translated, TCP/IPv4",
                "2 forwards",
                p_fwd,
                tcp_frame(t4, c4),
                TCX_NEXT,
            ),
            case(
                "(d) reply reverse-translated, TCP/IPv6",
                "2 forwards",
                p_fwd,
                tcp_frame(t6, c6),
                TCX_NEXT,
            ),
            case(
                "(e) redirect hit (bpf_redirect_neigh)",
                "1 redirect",
                p_redir,
                tcp_frame(c4, sa(REDIR_DST)),
                TC_ACT_REDIRECT,
            ),
        ];
        measure(&cases)?
    };

    // Every run of the translating cases was translated, and nothing else
    // was: the counters are exact.
    let runs = WARMUP as u64 + ROUNDS as u64 * REPEAT as u64;
    let (d4, d6) = (fwd.counter(slot4)? - base4, fwd.counter(slot6)? - base6);
    ensure!(
        d4 == 2 * runs && d6 == 2 * runs,
        "forward counters grew by {d4} (IPv4) and {d6} (IPv6), expected {} each",
        2 * runs
    );
    let (dnat, snat, new) = (
        fwd.stat("dnat")? - dnat0,
        fwd.stat("snat")? - snat0,
        fwd.stat("new_flows")? - new0,
    );
    ensure!(
        dnat == 2 * runs && snat == 2 * runs && new == 0,
        "dnat {dnat}, snat {snat}, new flows {new}: expected {} / {} / 0",
        2 * runs,
        2 * runs
    );
    let redirected = redir.fwd.redirect_counter(redir_slot)?.packets;
    ensure!(redirected == runs, "redirect counter {redirected}, expected {runs}");
    ensure!(
        none.stat("dnat")? + none.stat("new_flows")? == 0,
        "the empty dataplane translated something"
    );

    // Contrast: a fresh flow's frame repeated as is.
    let c_naive = SocketAddr::new(c4.ip(), NAIVE_PORT);
    let before = fwd.counter(slot4)?;
    let (v, ns, out) = run(fwd.prog()?, &syn_frame(c_naive, s4), REPEAT)?;
    ensure!(v == TCX_NEXT, "naive case: verdict {v}");
    let translated = fwd.counter(slot4)? - before;
    ensure!(
        ends(&out)? == (c_naive, t4),
        "naive case: the frame ends as {:?}",
        ends(&out)?
    );
    eprintln!(
        "    same DNAT frame repeated without an inverse entry: {ns:.0} ns/run, {translated} of {REPEAT} runs translated"
    );
    Ok((rows, Naive { ns, translated }))
}

// ---------------------------------------------------------------------------
// Lab: throughput and new flows

/// A daemon managing the bench lab, with forward helpers.
impl BenchDaemon {
    fn start(glob: &str, ifaces: &[&str]) -> Result<Self> {
        let mut d = BenchDaemon::spawn(PinGuard::new("sluice-benchfwd", "")?, DAEMON_CONFIG, &["--iface", glob])?;
        let took = d.wait_ready(&format!("attach XDP and tcx to {ifaces:?}"), |d| {
            let st = d.json(&["status"])?;
            let Some(list) = st["interfaces"].as_array() else {
                return Ok(false);
            };
            Ok(ifaces
                .iter()
                .all(|name| list.iter().any(|i| i["name"] == *name && i["tc"] == true)))
        })?;
        eprintln!(
            "  daemon pid {} up in {took:.2?}, attached to {ifaces:?} (pins {})",
            d.pid(),
            d.pins.0.display()
        );
        Ok(d)
    }

    fn add_forward(&self, service: SocketAddr, target: SocketAddr) -> Result<u64> {
        let v = self.json(&["forward", "add", &service.to_string(), &target.to_string()])?;
        v["id"].as_u64().with_context(|| format!("no id in {v}"))
    }

    /// Packets and bytes each forward translated, both directions, by id.
    fn forward_counters(&self) -> Result<BTreeMap<u64, (u64, u64)>> {
        let v = self.json(&["forward", "list"])?;
        let mut out = BTreeMap::new();
        for row in v.as_array().with_context(|| format!("not a list: {v}"))? {
            let field = |k: &str| row[k].as_u64().with_context(|| format!("no {k} in {row}"));
            out.insert(field("id")?, (field("packets")?, field("bytes")?));
        }
        Ok(out)
    }
}

/// `iperf3 -s` inside `host`'s namespace, up once it listens.
fn iperf_server(host: &LabHost, port: u16) -> Result<ChildGuard> {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", host.netns_path()))
        .args(["--", "iperf3", "-s", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning iperf3 -s")?;
    let mut g = ChildGuard(child);
    let t = Instant::now();
    loop {
        let out = host.exec(&["ss", "-Hltn", &format!("sport = :{port}")])?;
        if out.status.success() && !out.stdout.is_empty() {
            return Ok(g);
        }
        if let Some(st) = g.0.try_wait()? {
            bail!("iperf3 -s exited with {st}");
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("iperf3 -s did not listen on port {port} in 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One iperf3 run from `client`'s namespace: (Gbit/s at the receiver,
/// sender retransmits).
fn iperf(client: &LabHost, dst: SocketAddr, secs: u32, reverse: bool) -> Result<(f64, u64)> {
    let (host, port, t) = (dst.ip().to_string(), dst.port().to_string(), secs.to_string());
    let mut args = vec!["iperf3", "-c", &host, "-p", &port, "-t", &t, "-J"];
    if reverse {
        args.push("-R");
    }
    let out = client.exec(&args)?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing iperf3 -J output: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3 to {dst}: {e}");
    }
    ensure!(out.status.success(), "iperf3 to {dst} exited with {}", out.status);
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?;
    let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e9, retr))
}

/// A TCP server in a namespace that accepts and closes every connection,
/// counting them. Stopped on drop.
struct AcceptServer {
    host: LabHost,
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AcceptServer {
    fn start(host: &LabHost, addr: SocketAddr) -> Result<Self> {
        let l = host.in_netns(move || TcpListener::bind(addr))??;
        let (accepted, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (n, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut c) = conn {
                    n.fetch_add(1, Ordering::SeqCst);
                    // Read to the client's FIN, then close.
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.read(&mut [0u8; 16]);
                }
            }
        });
        Ok(AcceptServer {
            host: host.clone(),
            addr,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for AcceptServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept with one last connection.
        let addr = self.addr;
        let woke = self
            .host
            .in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());
        if matches!(woke, Ok(true)) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// [`CONNS`] sequential connect + close from `client` to `dst`; returns the
/// wall time. Waits until the server has accepted all of them.
fn connect_close(client: &LabHost, dst: SocketAddr, n: usize, server: &AcceptServer) -> Result<Duration> {
    let before = server.accepted();
    let took = client.in_netns(move || -> std::io::Result<Duration> {
        let t = Instant::now();
        for _ in 0..n {
            let s = TcpStream::connect(dst)?;
            drop(s);
        }
        Ok(t.elapsed())
    })??;
    let t = Instant::now();
    while server.accepted() < before + n as u64 {
        ensure!(
            t.elapsed() < Duration::from_secs(5),
            "the server accepted {} of {n} connections to {dst}",
            server.accepted() - before
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(took)
}

#[derive(Default)]
struct PathRuns {
    up: Vec<f64>,
    down: Vec<f64>,
    retr_up: Vec<u64>,
    retr_down: Vec<u64>,
    conns_per_s: Vec<f64>,
    /// Packets (skbs) and bytes the iperf3 forward translated in the run
    /// (both tests, both directions; 0 for direct runs).
    iperf_skbs: Vec<u64>,
    iperf_bytes: Vec<u64>,
}

struct LabResult {
    direct: PathRuns,
    forward: PathRuns,
}

fn bench_lab() -> Result<LabResult> {
    eprintln!("== lab {LAB_NAME} (number {LAB_NUMBER}) and a sluice daemon on {LAB_GLOB}");
    let lab = LabGuard::new(LAB_NAME, LAB_NUMBER)?;
    let (a, b) = (lab.0.host('a').clone(), lab.0.host('b').clone());
    let mut d = BenchDaemon::start(LAB_GLOB, &[&a.host_if, &b.host_if])?;
    let on_b = |port| SocketAddr::new(IpAddr::V4(b.ns_v4), port);
    let (b_iperf, b_conn) = (on_b(IPERF_PORT), on_b(CONN_PORT));
    let direct_iperf = on_b(IPERF_PORT_DIRECT);
    let mut servers = Vec::new();
    for port in [IPERF_PORT, IPERF_PORT_DIRECT] {
        servers.push(iperf_server(&b, port)?);
    }
    let fwd_server = AcceptServer::start(&b, b_conn)?;
    let mut direct_servers = Vec::new();
    for run in 0..=RUNS as u16 {
        direct_servers.push(AcceptServer::start(&b, on_b(CONN_DIRECT_BASE + run))?);
    }
    // (VIP iperf service, its forward id, VIP connection service, its id)
    // of the warm-up (0) and of each forwarded run.
    let mut vips = Vec::new();
    for run in 0..=RUNS as u16 {
        let vi = SocketAddr::new(IpAddr::V4(VIP), IPERF_VIP_BASE + run);
        let vc = SocketAddr::new(IpAddr::V4(VIP), CONN_VIP_BASE + run);
        vips.push((vi, d.add_forward(vi, b_iperf)?, vc, d.add_forward(vc, b_conn)?));
    }
    eprintln!(
        "  {} forwards: {VIP}:{IPERF_VIP_BASE}+run -> {b_iperf}, {VIP}:{CONN_VIP_BASE}+run -> {b_conn} (run 0 = warm-up)",
        vips.len() * 2
    );
    eprintln!(
        "  direct runs go to {direct_iperf} and {}:{CONN_DIRECT_BASE}+run",
        b.ns_v4
    );
    let (vip_iperf, _, vip_conn, _) = vips[0];

    eprintln!("  warm-up (not reported): 1 s iperf3 and 200 connections each way");
    for dst in [direct_iperf, vip_iperf] {
        iperf(&a, dst, 1, false)?;
    }
    connect_close(&a, direct_servers[0].addr, 200, &direct_servers[0])?;
    connect_close(&a, vip_conn, 200, &fwd_server)?;
    std::thread::sleep(SETTLE);

    let mut res = LabResult {
        direct: PathRuns::default(),
        forward: PathRuns::default(),
    };
    for (round, &(vip_iperf, f_iperf, vip_conn, f_conn)) in vips.iter().enumerate().skip(1) {
        // Alternate which path goes first, so neither always runs on a
        // machine just warmed (or disturbed) by the other.
        let order = if round % 2 == 1 { [false, true] } else { [true, false] };
        for forwarded in order {
            let (name, iperf_dst, conn_dst, server, runs) = if forwarded {
                ("forward", vip_iperf, vip_conn, &fwd_server, &mut res.forward)
            } else {
                let s = &direct_servers[round];
                ("direct", direct_iperf, s.addr, s, &mut res.direct)
            };
            let p0 = d.forward_counters()?;
            let (up, ru) = iperf(&a, iperf_dst, IPERF_SECS, false)?;
            let (down, rd) = iperf(&a, iperf_dst, IPERF_SECS, true)?;
            let took = connect_close(&a, conn_dst, CONNS, server)?;
            // The last connections' FIN exchanges finish after the server
            // accepted them: let them pass before reading the counters.
            std::thread::sleep(SETTLE);
            let p1 = d.forward_counters()?;
            let delta = |id: u64| {
                let (a, b) = (
                    p1.get(&id).copied().unwrap_or_default(),
                    p0.get(&id).copied().unwrap_or_default(),
                );
                (a.0 - b.0, a.1 - b.1)
            };
            let ((di, di_bytes), (dc, _)) = (delta(f_iperf), delta(f_conn));
            let total: u64 = p1.keys().map(|id| delta(*id).0).sum();
            ensure!(
                total == di + dc || !forwarded,
                "forward run {round}: other forwards translated {} packets",
                total - di - dc
            );
            if forwarded {
                // At least the SYN, SYN-ACK, ACK and FINs of every connection.
                ensure!(
                    di > 0 && dc >= 4 * CONNS as u64,
                    "forward run {round}: the forwards translated only {di} / {dc} packets"
                );
            } else {
                ensure!(
                    total == 0,
                    "direct run {round}: the forwards translated {total} packets"
                );
            }
            let cps = CONNS as f64 / took.as_secs_f64();
            eprintln!(
                "  run {round} {name:<7}: a->b {up:.2} Gbit/s ({ru} retr), b->a {down:.2} Gbit/s ({rd} retr), \
                 {CONNS} connections in {took:.2?} ({cps:.0}/s); forward packets +{di} / +{dc}"
            );
            runs.up.push(up);
            runs.down.push(down);
            runs.retr_up.push(ru);
            runs.retr_down.push(rd);
            runs.conns_per_s.push(cps);
            runs.iperf_skbs.push(di);
            runs.iperf_bytes.push(di_bytes);
        }
    }
    drop((fwd_server, direct_servers));
    drop(servers);
    eprintln!("  sluice down");
    d.down()?;
    drop(d);
    drop(lab);
    Ok(res)
}

// ---------------------------------------------------------------------------

fn cell(v: &[f64], prec: usize) -> String {
    let (lo, hi) = min_max(v);
    format!("{:.prec$} ({lo:.prec$}–{hi:.prec$})", median_f(v))
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("this benchmark loads BPF programs, pins maps and builds network namespaces: run it as root");
    }
    let started = Instant::now();
    let (rows, naive) = bench_test_run()?;
    let lab = bench_lab()?;

    println!();
    println!(
        "BPF_PROG_TEST_RUN of {} (tcx ingress), kernel ns/packet, median of {ROUNDS} x {REPEAT} runs (min–max of the rounds):",
        tc::INGRESS
    );
    println!();
    println!("| case | rules in the dataplane | frame | verdict | ns/pkt | rounds min–max |");
    println!("|------|------------------------|------:|--------:|-------:|---------------:|");
    for r in &rows {
        let verdict = if r.verdict == TC_ACT_REDIRECT {
            "REDIRECT"
        } else {
            "NEXT"
        };
        println!(
            "| {} | {} | {} B | {verdict} | {:.0} | {:.0}–{:.0} |",
            r.what, r.rules, r.bytes, r.ns, r.lo, r.hi
        );
    }
    println!();
    println!(
        "Contrast: the IPv4 DNAT frame of a fresh flow repeated {REPEAT} times without the inverse entry: \
         {:.0} ns/run, {} of {REPEAT} runs translated (the first; the rest see client -> target and match nothing).",
        naive.ns, naive.translated
    );

    let (dr, fw) = (&lab.direct, &lab.forward);
    println!();
    println!(
        "Bulk TCP, iperf3 -t {IPERF_SECS} from {LAB_NAME}-a, Gbit/s at the receiver, median of {RUNS} runs (min–max):"
    );
    println!();
    println!("| path | a → b | b → a (-R) | retransmits a → b / b → a (sum) |");
    println!("|------|------:|-----------:|--------------------------------:|");
    for (name, r) in [("direct to b", dr), ("through the forward (VIP → b)", fw)] {
        println!(
            "| {name} | {} | {} | {} / {} |",
            cell(&r.up, 2),
            cell(&r.down, 2),
            r.retr_up.iter().sum::<u64>(),
            r.retr_down.iter().sum::<u64>()
        );
    }
    println!();
    println!(
        "forward / direct (medians): a → b {:.3}, b → a {:.3}",
        median_f(&fw.up) / median_f(&dr.up),
        median_f(&fw.down) / median_f(&dr.down)
    );
    let (skbs, bytes): (u64, u64) = (fw.iperf_skbs.iter().sum(), fw.iperf_bytes.iter().sum());
    let secs = (2 * IPERF_SECS) as f64 * fw.iperf_skbs.len() as f64;
    println!(
        "During the forwarded iperf3 runs the TC programs translated {:.0} k skbs/s (both directions), {:.0} bytes per skb on average.",
        skbs as f64 / secs / 1e3,
        bytes as f64 / skbs.max(1) as f64
    );
    println!();
    println!("New flows: {CONNS} sequential TCP connect + close from {LAB_NAME}-a, median of {RUNS} runs (min–max):");
    println!();
    println!("| path | connections/s | µs per connection |");
    println!("|------|--------------:|------------------:|");
    for (name, r) in [("direct to b", dr), ("through the forward (VIP → b)", fw)] {
        println!(
            "| {name} | {} | {:.1} |",
            cell(&r.conns_per_s, 0),
            1e6 / median_f(&r.conns_per_s)
        );
    }
    println!();
    println!(
        "forward / direct (medians): {:.3}",
        median_f(&fw.conns_per_s) / median_f(&dr.conns_per_s)
    );
    eprintln!("done in {:.0?}", started.elapsed());
    Ok(())
}
