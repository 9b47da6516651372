//! Command-line definitions (clap derive) and the client commands' output:
//! tables for people, `--json` for programs. The bodies sent and received
//! are the API's own types.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice::{
    api::{
        types::{ForwardView, LimitRequest, LimitView, RedirectView, RuleRequest, RuleView, Status},
        MAX_BODY,
    },
    config::{Config, DEFAULT_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR},
    events::Event,
    lab::Lab,
    rules::{Action, RuleSpec},
};

use crate::{client::Client, daemon};

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "eBPF traffic control and visibility for Linux hosts and their containers"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct ClientOpts {
    /// The daemon's API socket.
    #[arg(long, env = "SLUICE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run(RunOpts),
    /// Show the daemon's version, interfaces, programs, rules and counters.
    Status(ClientOpts),
    /// Drop traffic from (or, with --dst, to) a CIDR.
    Deny {
        #[command(subcommand)]
        op: RuleOp,
    },
    /// Always pass traffic from (or to) a CIDR; allow wins over deny.
    Allow {
        #[command(subcommand)]
        op: RuleOp,
    },
    /// Rate-limit packets/s, bytes/s or new TCP connections/s at XDP.
    Limit {
        #[command(subcommand)]
        op: LimitOp,
    },
    /// Port forwarding / service DNAT at TC: flows for MATCH go to a target.
    Forward {
        #[command(subcommand)]
        op: ForwardOp,
    },
    /// Send packets for a CIDR straight to an interface (bpf_redirect_peer
    /// into a veth's namespace), bypassing the host's routing.
    Redirect {
        #[command(subcommand)]
        op: RedirectOp,
    },
    /// HTTP, Redis and MySQL requests seen on the wire, paired with their
    /// responses, from the audit log (or live with --follow).
    L7 {
        /// Only this protocol: http, redis or mysql.
        #[arg(long)]
        proto: Option<String>,
        /// Only records newer than this (e.g. 10m, 2h).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Keep printing new records as they are paired.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Make the whole rule set (deny, allow, limits, forwards, redirects,
    /// probe states) equal to a policy file, all or nothing, printing the diff.
    Apply {
        /// The policy file (TOML, as `sluice export` writes it); `-` for stdin.
        #[arg(long, short)]
        file: PathBuf,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Print the whole rule set as a policy file (TOML) that `sluice apply`
    /// takes back unchanged.
    Export {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// The programs sluice runs, per attach point (and other owners' programs
    /// on the same hooks), with kernel run statistics.
    Probes {
        #[command(subcommand)]
        op: ProbeOp,
    },
    /// Every TCP connection on the host (all namespaces), with its process:
    /// the open ones, then the recently closed ones.
    Conns {
        /// Print each state change as it happens instead.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Connection, sampled packet, drop and limit events.
    Events {
        #[arg(long, short)]
        follow: bool,
        /// Only these kinds: conn, packet, drop, limit, l7 (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', value_parser = event_kind)]
        kind: Vec<String>,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Stop the daemon, detach every program and remove every pin. Rules stay
    /// in the state database.
    /// A socket left behind by a killed daemon is removed too.
    Down {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Build or remove the sandbox of network namespaces used by the tour and tests.
    Lab {
        #[command(subcommand)]
        op: LabOp,
    },
}

#[derive(Args, Debug)]
struct RunOpts {
    /// TOML config file; command-line options override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interface glob to manage (repeatable). Default: veth*.
    #[arg(long = "iface", value_name = "GLOB")]
    ifaces: Vec<String>,
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// bpffs directory for pins (default /sys/fs/bpf/sluice).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Also serve the API on this TCP address (IP:PORT). Anything but
    /// loopback needs --token-file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// File with the bearer token TCP clients must send (mode 0600).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum RuleOp {
    /// Add a rule; prints it with its id.
    Add {
        /// IPv4/IPv6 address or CIDR (host bits must be zero).
        cidr: String,
        /// Match the destination address instead of the source.
        #[arg(long)]
        dst: bool,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Delete a rule by id, or by CIDR (with --dst for a destination rule).
    Del {
        #[arg(value_name = "CIDR|ID")]
        target: String,
        #[arg(long)]
        dst: bool,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// List the rules with their packet and byte counters.
    List {
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Add many rules from a file (one CIDR per line, `#` comments; `-` is
    /// stdin). The whole file is validated before anything is sent, and a
    /// failure part-way removes what was added.
    Import {
        file: PathBuf,
        #[arg(long)]
        dst: bool,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        c: ClientOpts,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Rate {
    /// Packets per second.
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pps: Option<i64>,
    /// Bytes per second (Ethernet frame length).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    bps: Option<i64>,
    /// New TCP connections per second (SYN without ACK).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    conns: Option<i64>,
}

#[derive(Subcommand, Debug)]
enum LimitOp {
    /// Add a limit; excess packets are dropped at XDP. Prints it with its id.
    Add {
        /// Only packets from this CIDR.
        #[arg(long)]
        src: Option<String>,
        /// Only packets to this CIDR.
        #[arg(long)]
        dst: Option<String>,
        /// Only packets to this port: PORT, PORT/tcp or PORT/udp.
        #[arg(long, value_name = "PORT[/PROTO]")]
        dst_port: Option<String>,
        #[command(flatten)]
        rate: Rate,
        /// Bucket depth in packets, bytes or connections (default: one second of the rate).
        #[arg(long, allow_negative_numbers = true, value_name = "N")]
        burst: Option<i64>,
        /// A bucket per source address instead of one shared bucket.
        #[arg(long)]
        per_source: bool,
        /// Cold start: ramp from a third of the rate to the full rate over this
        /// long after the rule is created or its traffic was idle (e.g. 10s).
        #[arg(long, value_name = "DURATION")]
        warmup: Option<String>,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Delete a limit by id.
    Del {
        id: i64,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// List limits with passed/dropped counters and per-source bucket counts.
    List {
        #[command(flatten)]
        c: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
enum ForwardOp {
    /// Add a forward: MATCH_IP:PORT[/tcp|/udp] TO_IP:PORT [--to TO_IP:PORT]...
    /// (IPv6 as [ADDR]:PORT). Flows are spread over the targets by a flow
    /// hash; replies are translated back so clients only see MATCH.
    Add {
        #[arg(value_name = "MATCH_IP:PORT[/PROTO]")]
        service: String,
        #[arg(value_name = "TO_IP:PORT")]
        target: String,
        /// More targets (repeatable).
        #[arg(long = "to", value_name = "TO_IP:PORT")]
        more: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Delete a forward by id (its flows are forgotten).
    Del {
        id: i64,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// List forwards with packet counters and live flows.
    List {
        #[command(flatten)]
        c: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
enum RedirectOp {
    /// Add a redirect: packets to CIDR arriving on managed interfaces go to IFACE.
    Add {
        cidr: String,
        iface: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Delete a redirect by id.
    Del {
        id: i64,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// List redirects with their mode and packet counters.
    List {
        #[command(flatten)]
        c: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
enum ProbeOp {
    /// List every program × attach point with its id, owner and run stats.
    List {
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Detach one probe now and keep it off across restarts (e.g.
    /// `xdp/veth1a2b`: that interface is then not filtered at all).
    Disable {
        /// A probe id from `sluice probes list`.
        id: String,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Attach a disabled probe again (persisted).
    Enable {
        id: String,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Turn kernel BPF run statistics on or off (off by default: they cost
    /// a clock read per program run).
    Stats {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        c: ClientOpts,
    },
}

#[derive(Subcommand, Debug)]
enum LabOp {
    /// Create namespaces sluice-a and sluice-b behind veth-sluice-a/-b.
    Up {
        /// Print the lab's hosts and addresses as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove them.
    Down {
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// True for the long-running daemon (which must survive a closed pipe).
    pub fn is_daemon(&self) -> bool {
        matches!(self.cmd, Cmd::Run(_))
    }
}

pub async fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run(o) => {
            let mut cfg = Config::load(o.config.as_deref())?;
            if !o.ifaces.is_empty() {
                cfg.interfaces = o.ifaces;
            }
            cfg.socket = o.socket.unwrap_or(cfg.socket);
            cfg.state_dir = o.state_dir.unwrap_or(cfg.state_dir);
            cfg.pin_dir = o.pin_dir.unwrap_or(cfg.pin_dir);
            cfg.listen = o.listen.or(cfg.listen);
            cfg.token_file = o.token_file.or(cfg.token_file);
            daemon::run(cfg).await
        }
        Cmd::Status(c) => status(&c).await,
        Cmd::Deny { op } => rules(Action::Deny, op).await,
        Cmd::Allow { op } => rules(Action::Allow, op).await,
        Cmd::Limit { op } => limit(op).await,
        Cmd::Forward { op } => forward(op).await,
        Cmd::Probes { op } => probes(op).await,
        Cmd::Apply { file, dry_run, c } => apply(&file, dry_run, &c).await,
        Cmd::Export { output, c } => export(output.as_deref(), &c).await,
        Cmd::Redirect { op } => redirect(op).await,
        Cmd::L7 {
            proto,
            since,
            limit,
            follow,
            c,
        } => l7(proto, since, limit, follow, &c).await,
        Cmd::Conns { follow: true, c } => events(vec!["conn".into()], true, &c).await,
        Cmd::Conns { follow: false, c } => conns(&c).await,
        Cmd::Events { follow, kind, c } => events(kind, follow, &c).await,
        Cmd::Down { state_dir, pin_dir, c } => daemon::down(&state_dir, &pin_dir, &c.socket, c.json),
        Cmd::Lab { op } => lab(op),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn status(c: &ClientOpts) -> Result<()> {
    let s: Status = Client::new(&c.socket).get("/v1/status").await?;
    if c.json {
        return print_json(&s);
    }
    println!(
        "sluice {} (ABI {}), pid {}, up {}s",
        s.version, s.abi_version, s.pid, s.uptime_secs
    );
    println!(
        "managing: {}   pins: {}   state: {}",
        s.interface_globs.join(" "),
        s.pin_dir,
        s.state_dir
    );
    println!("\ninterfaces ({}):", s.interfaces.len());
    for i in &s.interfaces {
        let mode = match i.mode {
            Some(m) => serde_json::to_value(m)?.as_str().unwrap_or("?").to_string(),
            None if i.disabled.iter().any(|d| d == "xdp") => "DISABLED (not filtered)".into(),
            None => "NOT ATTACHED (not filtered)".into(),
        };
        println!(
            "  {:<16} ifindex {:<6} xdp {}{}{}{}",
            i.name,
            i.ifindex,
            mode,
            if i.tc {
                ", tcx ingress+egress"
            } else {
                ", no tc (forwards/redirects do not apply)"
            },
            if i.disabled.is_empty() {
                String::new()
            } else {
                format!(", disabled: {}", i.disabled.join(" "))
            },
            if i.adopted { " (adopted)" } else { "" }
        );
    }
    for i in &s.interfaces {
        for (kind, why) in &i.errors {
            println!("  {:<16} {kind} failed: {why}", i.name);
        }
    }
    for f in &s.not_attached {
        println!("  {:<16} ifindex {:<6} NOT ATTACHED: {}", f.name, f.ifindex, f.error);
    }
    if !s.disabled_probes.is_empty() {
        println!("disabled probes: {}", s.disabled_probes.join(" "));
    }
    println!("\nprograms:");
    for p in &s.programs {
        println!(
            "  {:<16} {:<5} id {}",
            p.name,
            p.kind,
            p.id.map_or("-".into(), |i| i.to_string())
        );
    }
    println!(
        "\nrules: {} deny, {} allow (max {})",
        s.rules.deny, s.rules.allow, s.rules.max_rules
    );
    let l = &s.limits;
    println!(
        "limits: {} rules (max {}); passed {} pkts, dropped {} pkts; per-source buckets {} of {} tracked, {} evictions",
        l.rules, l.max_rules, l.passed, l.dropped, l.sources, l.source_capacity, l.evictions
    );
    let fw = &s.forwarding;
    let tc_n = |k: &str| fw.tc.get(k).map_or(0, |c| c.packets);
    println!(
        "forwarding: {} forwards ({} live flows), {} redirects{}; translated {} out / {} back, redirected {}, errors {}",
        fw.forwards,
        fw.flows,
        fw.redirects,
        if fw.inactive_redirects > 0 {
            format!(" ({} inactive: interface missing)", fw.inactive_redirects)
        } else {
            String::new()
        },
        tc_n("dnat"),
        tc_n("snat"),
        tc_n("redirected"),
        tc_n("errors")
    );
    let ev = &s.events;
    println!(
        "events: received {:?}; lost in kernel {:?}; lost by slow subscribers {}; {} TCP connections open",
        ev.received, ev.lost_kernel, ev.lost_subscribers, ev.connections_open
    );
    println!("\npackets by verdict:");
    for name in sluice_abi::stat::NAMES {
        if let Some(v) = s.verdicts.get(name).or_else(|| s.notes.get(name)) {
            println!("  {:<12} {:>14} pkts {:>16} bytes", name, v.packets, v.bytes);
        }
    }
    Ok(())
}

fn print_rules(rules: &[RuleView]) {
    println!(
        "{:<8} {:<44} {:<4} {:>12} {:>14}  COMMENT",
        "ID", "CIDR", "DIR", "PACKETS", "BYTES"
    );
    for r in rules {
        println!(
            "{:<8} {:<44} {:<4} {:>12} {:>14}  {}",
            r.id,
            r.cidr,
            r.direction,
            r.packets,
            r.bytes,
            r.comment.as_deref().unwrap_or("")
        );
    }
}

async fn rules(action: Action, op: RuleOp) -> Result<()> {
    let base = format!("/v1/{}", action.as_str());
    match op {
        RuleOp::Add { cidr, dst, comment, c } => {
            let r: RuleView = Client::new(&c.socket)
                .post(&base, &RuleRequest { cidr, dst, comment })
                .await?;
            if c.json {
                return print_json(&r);
            }
            println!(
                "added {} rule {}: {} {}{}",
                r.action,
                r.id,
                r.direction,
                r.cidr,
                r.comment.map(|c| format!(" ({c})")).unwrap_or_default()
            );
        }
        RuleOp::Del { target, dst, c } => {
            let path = match target.parse::<i64>() {
                Ok(id) => format!("{base}/{id}"),
                Err(_) => {
                    // Validate locally for a precise message, then let the
                    // daemon decide (it validates again).
                    target.parse::<sluice::rules::Cidr>()?;
                    format!("{base}?cidr={}&dst={dst}", target.replace('/', "%2F"))
                }
            };
            let r: RuleView = Client::new(&c.socket).delete(&path).await?;
            if c.json {
                return print_json(&r);
            }
            println!("deleted {} rule {}: {} {}", r.action, r.id, r.direction, r.cidr);
        }
        RuleOp::List { c } => {
            let v: Vec<RuleView> = Client::new(&c.socket).get(&base).await?;
            if c.json {
                return print_json(&v);
            }
            print_rules(&v);
        }
        RuleOp::Import { file, dst, comment, c } => import(action, &base, &file, dst, comment, &c).await?,
    }
    Ok(())
}

async fn import(
    action: Action,
    base: &str,
    file: &PathBuf,
    dst: bool,
    comment: Option<String>,
    c: &ClientOpts,
) -> Result<()> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ))
    };
    // Validate everything first: nothing is sent if any line is bad.
    let mut reqs = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        let cidr = line.split('#').next().unwrap_or("").trim();
        if cidr.is_empty() {
            continue;
        }
        RuleSpec::new(action, cidr, dst, comment.clone())
            .with_context(|| format!("{} line {}", file.display(), n + 1))?;
        reqs.push(RuleRequest {
            cidr: cidr.to_string(),
            dst,
            comment: comment.clone(),
        });
    }
    if reqs.is_empty() {
        bail!("{} holds no CIDRs", file.display());
    }
    let client = Client::new(&c.socket);
    let total = reqs.len();
    let started = std::time::Instant::now();
    let mut added: Vec<RuleView> = Vec::with_capacity(total);
    let mut chunk: Vec<RuleRequest> = Vec::new();
    let mut chunk_bytes = 0;
    let mut iter = reqs.into_iter().peekable();
    while let Some(r) = iter.next() {
        chunk_bytes += r.cidr.len() + r.comment.as_ref().map_or(0, |c| c.len() * 6) + 48;
        chunk.push(r);
        if chunk_bytes > MAX_BODY / 2 || chunk.len() >= 20_000 || iter.peek().is_none() {
            match client.post::<_, Vec<RuleView>>(base, &chunk).await {
                Ok(v) => added.extend(v),
                Err(e) => {
                    eprintln!(
                        "import failed after {} of {total} rules: {e}; removing the {} already added",
                        added.len(),
                        added.len()
                    );
                    for r in &added {
                        let _: Result<RuleView> = client.delete(&format!("{base}/{}", r.id)).await;
                    }
                    return Err(e.context("import rolled back"));
                }
            }
            chunk.clear();
            chunk_bytes = 0;
            if !c.json {
                eprint!("\rimported {}/{total} {} rules", added.len(), action.as_str());
                std::io::stderr().flush().ok();
            }
        }
    }
    if c.json {
        return print_json(&added);
    }
    eprintln!();
    println!(
        "imported {} {} rules in {:.2?}",
        added.len(),
        action.as_str(),
        started.elapsed()
    );
    Ok(())
}

fn describe_limit(l: &LimitView) -> (String, String) {
    let mut m = Vec::new();
    if let Some(s) = &l.src {
        m.push(format!("src {s}"));
    }
    if let Some(d) = &l.dst {
        m.push(format!("dst {d}"));
    }
    match (l.dst_port, &l.proto) {
        (Some(p), Some(pr)) => m.push(format!("port {p}/{pr}")),
        (Some(p), None) => m.push(format!("port {p}")),
        (None, Some(pr)) => m.push(pr.clone()),
        (None, None) => {}
    }
    let what = if m.is_empty() { "all".into() } else { m.join(" ") };
    let mut rate = format!("{} {} burst {}", l.rate, l.kind, l.burst);
    if l.per_source {
        rate.push_str(" per-source");
    }
    if l.warmup_ms > 0 {
        rate.push_str(&format!(
            " warmup {}",
            humantime::format_duration(std::time::Duration::from_millis(l.warmup_ms))
        ));
    }
    (what, rate)
}

async fn limit(op: LimitOp) -> Result<()> {
    match op {
        LimitOp::Add {
            src,
            dst,
            dst_port,
            rate,
            burst,
            per_source,
            warmup,
            comment,
            c,
        } => {
            let req = LimitRequest {
                src,
                dst,
                dst_port,
                pps: rate.pps,
                bps: rate.bps,
                conns: rate.conns,
                burst,
                per_source,
                warmup,
                comment,
            };
            let l: LimitView = Client::new(&c.socket).post("/v1/limits", &req).await?;
            if c.json {
                return print_json(&l);
            }
            let (what, rate) = describe_limit(&l);
            println!("added limit {}: {what}: {rate}", l.id);
        }
        LimitOp::Del { id, c } => {
            let l: LimitView = Client::new(&c.socket).delete(&format!("/v1/limits/{id}")).await?;
            if c.json {
                return print_json(&l);
            }
            println!("deleted limit {}", l.id);
        }
        LimitOp::List { c } => {
            let v: Vec<LimitView> = Client::new(&c.socket).get("/v1/limits").await?;
            if c.json {
                return print_json(&v);
            }
            println!(
                "{:<5} {:<36} {:<40} {:>12} {:>12} {:>8} {:>8}  COMMENT",
                "ID", "MATCH", "LIMIT", "PASSED", "DROPPED", "SOURCES", "EVICTED"
            );
            for l in &v {
                let (what, rate) = describe_limit(l);
                let (src, ev) = if l.per_source {
                    (l.stats.sources.to_string(), l.stats.evictions.to_string())
                } else {
                    ("-".into(), "-".into())
                };
                println!(
                    "{:<5} {:<36} {:<40} {:>12} {:>12} {:>8} {:>8}  {}",
                    l.id,
                    what,
                    rate,
                    l.stats.passed,
                    l.stats.dropped,
                    src,
                    ev,
                    l.comment.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

async fn forward(op: ForwardOp) -> Result<()> {
    let describe = |f: &ForwardView| format!("{}/{} -> {}", f.service, f.proto.as_str(), f.to.join(", "));
    match op {
        ForwardOp::Add {
            service,
            target,
            more,
            comment,
            c,
        } => {
            let req = sluice::nat::ForwardRequest {
                service,
                to: std::iter::once(target).chain(more).collect(),
                comment,
            };
            let f: ForwardView = Client::new(&c.socket).post("/v1/forwards", &req).await?;
            if c.json {
                return print_json(&f);
            }
            println!("added forward {}: {}", f.id, describe(&f));
        }
        ForwardOp::Del { id, c } => {
            let f: ForwardView = Client::new(&c.socket).delete(&format!("/v1/forwards/{id}")).await?;
            if c.json {
                return print_json(&f);
            }
            println!("deleted forward {}: {}", f.id, describe(&f));
        }
        ForwardOp::List { c } => {
            let v: Vec<ForwardView> = Client::new(&c.socket).get("/v1/forwards").await?;
            if c.json {
                return print_json(&v);
            }
            println!(
                "{:<5} {:<60} {:>12} {:>14} {:>8}  COMMENT",
                "ID", "FORWARD", "PACKETS", "BYTES", "FLOWS"
            );
            for f in &v {
                println!(
                    "{:<5} {:<60} {:>12} {:>14} {:>8}  {}",
                    f.id,
                    describe(f),
                    f.packets,
                    f.bytes,
                    f.flows,
                    f.comment.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

async fn apply(file: &std::path::Path, dry_run: bool, c: &ClientOpts) -> Result<()> {
    let text = if file == std::path::Path::new("-") {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).context("reading the policy from stdin")?;
        t
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let policy = sluice::policy::from_toml(&text).with_context(|| format!("{}", file.display()))?;
    let path = if dry_run {
        "/v1/policy?dry_run=true"
    } else {
        "/v1/policy"
    };
    let d: sluice::policy::PolicyDiff = Client::new(&c.socket).post(path, &policy).await?;
    if c.json {
        return print_json(&d);
    }
    // A whole-table change would bury the summary: the first lines of each
    // kind, then a count (--json has them all).
    const SHOWN: usize = 200;
    for (sign, lines) in [("-", &d.removed), ("+", &d.added), ("~", &d.changed)] {
        for l in lines.iter().take(SHOWN) {
            println!("{sign} {l}");
        }
        if lines.len() > SHOWN {
            println!("{sign} ... and {} more (--json lists them all)", lines.len() - SHOWN);
        }
    }
    let counts = format!(
        "{} added, {} removed, {} changed, {} unchanged",
        d.added.len(),
        d.removed.len(),
        d.changed.len(),
        d.unchanged
    );
    if d.is_empty() {
        println!(
            "nothing to change: the running rule set equals {} ({} entries)",
            file.display(),
            d.unchanged
        );
    } else if dry_run {
        println!("dry run: would apply {counts}; nothing changed");
    } else {
        println!("applied: {counts}");
    }
    Ok(())
}

async fn export(output: Option<&std::path::Path>, c: &ClientOpts) -> Result<()> {
    let p: sluice::policy::Policy = Client::new(&c.socket).get("/v1/policy").await?;
    if c.json {
        return print_json(&p);
    }
    let text = sluice::policy::to_toml(&p);
    match output {
        None => print!("{text}"),
        Some(path) => {
            // Written whole or not at all: a temporary file renamed over it.
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp =
                tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing into {}", dir.display()))?;
            std::io::Write::write_all(&mut tmp, text.as_bytes())?;
            tmp.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote the policy to {}", path.display());
        }
    }
    Ok(())
}

async fn set_probe(id: &str, enabled: bool, c: &ClientOpts) -> Result<()> {
    // Validated here for a clear message; the daemon validates again.
    let pid: sluice::probes::ProbeId = id.parse()?;
    let path = format!(
        "/v1/probes/{}/{}",
        pid.kind.as_str(),
        percent_encoding::utf8_percent_encode(&pid.attach, percent_encoding::NON_ALPHANUMERIC)
    );
    let req = sluice::api::ProbeStateRequest { enabled };
    let r: sluice::api::ProbeStateView = Client::new(&c.socket).put(&path, &req).await?;
    if c.json {
        return print_json(&r);
    }
    let what = if enabled { "enabled" } else { "disabled" };
    match (r.changed, r.present) {
        (false, _) => println!("{} was already {what}", r.id),
        (true, true) => println!("{what} {} (persisted)", r.id),
        (true, false) => println!("{what} {} (persisted; not present now, applies when it appears)", r.id),
    }
    Ok(())
}

async fn probes(op: ProbeOp) -> Result<()> {
    match op {
        ProbeOp::List { c } => {
            let v: sluice::api::ProbeList = Client::new(&c.socket).get("/v1/probes").await?;
            if c.json {
                return print_json(&v.probes);
            }
            println!(
                "{:<44} {:<8} {:<8} {:<16} {:>7} {:>14} {:>12}",
                "ID", "STATE", "OWNER", "PROGRAM", "PROG", "RUNS", "AVG ns"
            );
            for p in &v.probes {
                let avg = if p.run_count > 0 {
                    format!("{:.0}", p.run_time_ns as f64 / p.run_count as f64)
                } else {
                    "-".into()
                };
                println!(
                    "{:<44} {:<8} {:<8} {:<16} {:>7} {:>14} {:>12}",
                    p.id,
                    p.state,
                    p.owner,
                    p.program,
                    p.prog_id.map_or("-".into(), |i| i.to_string()),
                    if v.stats { p.run_count.to_string() } else { "-".into() },
                    if v.stats { avg } else { "-".into() }
                );
            }
            for p in v.probes.iter().filter(|p| p.error.is_some()) {
                println!("{}: {}", p.id, p.error.as_deref().unwrap_or_default());
            }
            if !v.stats {
                println!("(run statistics are off: `sluice probes stats on`)");
            }
        }
        ProbeOp::Disable { id, c } | ProbeOp::Enable { id, c } if id.contains('\0') => {
            let _ = c;
            bail!("probe id {id:?} contains a NUL byte")
        }
        ProbeOp::Disable { id, c } => set_probe(&id, false, &c).await?,
        ProbeOp::Enable { id, c } => set_probe(&id, true, &c).await?,
        ProbeOp::Stats { state, c } => {
            let req = sluice::api::StatsRequest { enabled: state == "on" };
            let r: sluice::api::StatsRequest = Client::new(&c.socket).put("/v1/probes/stats", &req).await?;
            if c.json {
                return print_json(&r);
            }
            println!("BPF run statistics {}", if r.enabled { "on" } else { "off" });
        }
    }
    Ok(())
}

async fn redirect(op: RedirectOp) -> Result<()> {
    match op {
        RedirectOp::Add {
            cidr,
            iface,
            comment,
            c,
        } => {
            let req = sluice::nat::RedirectRequest { cidr, iface, comment };
            let r: RedirectView = Client::new(&c.socket).post("/v1/redirects", &req).await?;
            if c.json {
                return print_json(&r);
            }
            println!("added redirect {}: {} -> {} ({})", r.id, r.cidr, r.iface, r.mode);
        }
        RedirectOp::Del { id, c } => {
            let r: RedirectView = Client::new(&c.socket).delete(&format!("/v1/redirects/{id}")).await?;
            if c.json {
                return print_json(&r);
            }
            println!("deleted redirect {}: {} -> {}", r.id, r.cidr, r.iface);
        }
        RedirectOp::List { c } => {
            let v: Vec<RedirectView> = Client::new(&c.socket).get("/v1/redirects").await?;
            if c.json {
                return print_json(&v);
            }
            println!(
                "{:<5} {:<44} {:<16} {:<9} {:>12} {:>14}  COMMENT",
                "ID", "CIDR", "IFACE", "MODE", "PACKETS", "BYTES"
            );
            for r in &v {
                println!(
                    "{:<5} {:<44} {:<16} {:<9} {:>12} {:>14}  {}",
                    r.id,
                    r.cidr,
                    r.iface,
                    r.mode,
                    r.packets,
                    r.bytes,
                    r.comment.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

fn event_line(e: &Event) -> String {
    match e {
        Event::Conn(c) => format!(
            "{}  conn    {:<15} {:>7}  {}:{} -> {}:{}  {} -> {}  {}{}",
            c.time,
            c.comm,
            c.pid,
            c.src,
            c.sport,
            c.dst,
            c.dport,
            c.old_state,
            c.state,
            c.direction,
            c.duration_ms.map(|d| format!("  after {d:.1} ms")).unwrap_or_default()
        ),
        Event::L7(r) => l7_line(r),
        Event::Packet(p) | Event::Drop(p) | Event::Limit(p) => format!(
            "{}  {:<7} {:<15} {} {}:{} -> {}:{}  {} bytes  {}{}",
            p.time,
            e.kind().as_str(),
            p.interface,
            p.proto,
            p.src,
            p.sport,
            p.dst,
            p.dport,
            p.len,
            p.verdict,
            p.rule
                .as_ref()
                .map(|r| format!(" by {} rule {}", r.kind, r.id.map_or("?".into(), |i| i.to_string())))
                .unwrap_or_default()
        ),
    }
}

/// An event kind argument (an unknown one is a usage error, exit 2).
fn event_kind(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !t.is_empty() {
        t.parse::<sluice::events::Kind>()?;
    }
    Ok(t.to_string())
}

/// `sluice conns`: the connection table.
async fn conns(c: &ClientOpts) -> Result<()> {
    let v: Vec<sluice::conns::Conn> = Client::new(&c.socket).get("/v1/conns").await?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<27}  {:<15} {:>7}  {:<3}  {:<40}  {:<40}  {:<11}  DURATION",
        "STARTED", "COMM", "PID", "DIR", "SOURCE", "DESTINATION", "STATE"
    );
    let mut unseen = 0;
    for x in &v {
        let mut time = x.time.clone();
        if !x.observed_start {
            unseen += 1;
            time.push('*');
        }
        let duration = match (x.open, x.duration_ms) {
            (true, _) => "open".to_string(),
            (false, Some(d)) if d >= 1000.0 => format!("{:.1} s", d / 1000.0),
            (false, Some(d)) => format!("{d:.1} ms"),
            (false, None) => "?".to_string(),
        };
        println!(
            "{:<27}  {:<15} {:>7}  {:<3}  {:<40}  {:<40}  {:<11}  {}",
            time,
            x.comm,
            x.pid,
            x.direction,
            std::net::SocketAddr::new(x.src, x.sport).to_string(),
            std::net::SocketAddr::new(x.dst, x.dport).to_string(),
            x.state,
            duration
        );
    }
    if unseen > 0 {
        println!("* older than the connection tracer: first seen then, owner from /proc, no duration");
    }
    Ok(())
}

async fn events(kinds: Vec<String>, follow: bool, c: &ClientOpts) -> Result<()> {
    let kinds: Vec<String> = kinds
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    sluice::events::parse_kinds(&kinds.join(",")).map_err(anyhow::Error::msg)?;
    let q = if kinds.is_empty() {
        String::new()
    } else {
        format!("?kind={}", kinds.join(","))
    };
    let client = Client::new(&c.socket);
    if !follow {
        let v: Vec<Event> = client.get(&format!("/v1/events/recent{q}")).await?;
        for e in &v {
            if c.json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!("{}", event_line(e));
            }
        }
        return Ok(());
    }
    let json = c.json;
    client
        .follow(&format!("/v1/events{q}"), |event, data| {
            if event == "lost" {
                eprintln!("sluice: this client fell behind and lost {data} events");
                return Ok(());
            }
            let e: Event = serde_json::from_str(data)?;
            if json {
                println!("{data}");
            } else {
                println!("{}", event_line(&e));
            }
            Ok(())
        })
        .await
}

fn l7_line(r: &sluice::audit::L7Record) -> String {
    use sluice::l7::Summary as S;
    let req = match &r.request {
        Some(S::HttpRequest { method, path, host, .. }) => {
            format!("{method} {}{path}", host.as_deref().unwrap_or(""))
        }
        Some(S::RedisCommand { command, key, .. }) => format!("{command} {}", key.as_deref().unwrap_or("")),
        Some(S::MysqlCommand {
            command,
            query,
            stmt_id,
            schema,
        }) => match (query, stmt_id, schema) {
            (Some(q), _, _) => format!("{command} {q}"),
            (_, Some(id), _) => format!("{command} stmt {id}"),
            (_, _, Some(db)) => format!("{command} {db}"),
            _ => command.clone(),
        },
        Some(other) => format!("{other:?}"),
        None => "(request not seen)".into(),
    };
    let resp = match &r.response {
        Some(S::RedisReply { error: Some(e), .. }) => format!("error {e}"),
        Some(S::MysqlReply {
            error_code: Some(c),
            error_message,
            ..
        }) => format!("err {c} {}", error_message.as_deref().unwrap_or("")),
        _ => r.status.clone(),
    };
    // Bytes from the network: no control characters reach the terminal.
    let clean = |s: &str| -> String { s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect() };
    let mut req = clean(&req);
    let resp = clean(&resp);
    if req.chars().count() > 80 {
        req = req.chars().take(77).collect::<String>() + "...";
    }
    format!(
        "{}  {:<5} {}:{} -> {}:{}  {:<80}  {:<12} {:>9}{}",
        r.time,
        r.proto.as_str(),
        r.client,
        r.client_port,
        r.server,
        r.server_port,
        req,
        resp,
        r.latency_ms.map_or("-".into(), |l| format!("{l:.3} ms")),
        if r.partial { "  (partial)" } else { "" }
    )
}

async fn l7(proto: Option<String>, since: Option<String>, limit: usize, follow: bool, c: &ClientOpts) -> Result<()> {
    let client = Client::new(&c.socket);
    if !follow {
        // Query values are percent-encoded (a duration may hold spaces).
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut q = vec![format!("limit={limit}")];
        if let Some(p) = &proto {
            q.push(format!("proto={}", enc(p)));
        }
        if let Some(s) = &since {
            q.push(format!("since={}", enc(s)));
        }
        let v: Vec<sluice::audit::L7Record> = client.get(&format!("/v1/l7?{}", q.join("&"))).await?;
        if c.json {
            return print_json(&v);
        }
        for r in &v {
            println!("{}", l7_line(r));
        }
        return Ok(());
    }
    let want = match &proto {
        Some(p) => Some(
            sluice::l7::Proto::parse(p)
                .ok_or_else(|| anyhow::anyhow!("unknown protocol {p:?}: http, redis or mysql"))?,
        ),
        None => None,
    };
    let json = c.json;
    client
        .follow("/v1/events?kind=l7", |event, data| {
            if event == "lost" {
                eprintln!("sluice: this client fell behind and lost {data} events");
                return Ok(());
            }
            let Event::L7(r) = serde_json::from_str::<Event>(data)? else {
                return Ok(());
            };
            if want.is_some_and(|p| p != r.proto) {
                return Ok(());
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}", l7_line(&r));
            }
            Ok(())
        })
        .await
}

fn lab(op: LabOp) -> Result<()> {
    let lab = Lab::standard();
    match op {
        LabOp::Up { json: true } => {
            lab.up()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "hosts": lab.hosts }))?
            );
        }
        LabOp::Up { json: false } => {
            lab.up()?;
            println!("lab is up:");
            for h in &lab.hosts {
                println!(
                    "  namespace {:<9} eth0 {} / {}   host side {} {} / {}",
                    h.netns, h.ns_v4, h.ns_v6, h.host_if, h.host_v4, h.host_v6
                );
            }
            let (a, b) = (lab.host('a'), lab.host('b'));
            println!("\nsend traffic:");
            println!(
                "  nsenter --net=/run/netns/{} ping -c3 {}      # a -> host",
                a.netns, a.host_v4
            );
            println!(
                "  nsenter --net=/run/netns/{} ping -c3 {}      # a -> b, routed by the host",
                a.netns, b.ns_v4
            );
            println!(
                "  nsenter --net=/run/netns/{} ping -c3 {}   # IPv6 a -> host",
                a.netns, a.host_v6
            );
            println!(
                "then: sluice deny add {}   and try again; `sluice lab down` removes the lab",
                a.ns_v4
            );
        }
        LabOp::Down { json } => {
            lab.down()?;
            if json {
                let names: Vec<&str> = lab.hosts.iter().map(|h| h.netns.as_str()).collect();
                println!("{}", serde_json::json!({ "removed": names }));
            } else {
                println!("lab removed (namespaces sluice-a, sluice-b and their veths)");
            }
        }
    }
    Ok(())
}
