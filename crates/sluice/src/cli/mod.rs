//! The `sluice` command line (clap derive), one file per command group.
//! `run` is the daemon ([`crate::daemon`]); `down` and `lab` act on this
//! machine directly; every other command is a thin client of the daemon's
//! REST API ([`client`]), printing tables for people and, with `--json`,
//! the API's own types for programs.

pub mod client;
mod containers;
mod forward;
mod lab;
mod limit;
mod policy;
mod probes;
mod rules;
mod status;
mod visibility;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use self::{
    forward::{ForwardOp, RedirectOp},
    lab::LabOp,
    limit::LimitOp,
    probes::ProbeOp,
    rules::RuleOp,
};
use crate::{
    daemon::{
        self,
        config::{Config, DEFAULT_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR},
    },
    firewall::Action,
};

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
pub(crate) struct ClientOpts {
    /// The daemon's API socket.
    #[arg(long, env = "SLUICE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub(crate) socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run(RunOpts),
    /// Show the daemon's version, interfaces, programs, rules and counters.
    Status(ClientOpts),
    /// The containers the daemon knows: name, id, runtime, host-side
    /// interfaces and addresses (one in full with NAME).
    Containers {
        /// A name or id prefix: print that container in full (JSON).
        name: Option<String>,
        #[command(flatten)]
        c: ClientOpts,
    },
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
        /// Let a policy with no rules remove every rule in force (refused
        /// otherwise: an empty file is more often a mistake).
        #[arg(long)]
        allow_empty: bool,
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
        #[arg(long, value_delimiter = ',', value_parser = visibility::event_kind)]
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
        Cmd::Status(c) => status::status(&c).await,
        Cmd::Deny { op } => rules::rules(Action::Deny, op).await,
        Cmd::Allow { op } => rules::rules(Action::Allow, op).await,
        Cmd::Limit { op } => limit::limit(op).await,
        Cmd::Forward { op } => forward::forward(op).await,
        Cmd::Probes { op } => probes::probes(op).await,
        Cmd::Apply {
            file,
            dry_run,
            allow_empty,
            c,
        } => policy::apply(&file, dry_run, allow_empty, &c).await,
        Cmd::Export { output, c } => policy::export(output.as_deref(), &c).await,
        Cmd::Redirect { op } => forward::redirect(op).await,
        Cmd::L7 {
            proto,
            since,
            limit,
            follow,
            c,
        } => visibility::l7(proto, since, limit, follow, &c).await,
        Cmd::Conns { follow: true, c } => visibility::events(vec!["conn".into()], true, &c).await,
        Cmd::Conns { follow: false, c } => visibility::conns(&c).await,
        Cmd::Events { follow, kind, c } => visibility::events(kind, follow, &c).await,
        Cmd::Containers { name, c } => containers::containers(name, &c).await,
        Cmd::Down { state_dir, pin_dir, c } => {
            let serving = serving_daemon(&c.socket).await?;
            daemon::down(daemon::Down {
                state_dir: &state_dir,
                pin_dir: &pin_dir,
                socket: &c.socket,
                serving,
                json: c.json,
            })
        }
        Cmd::Lab { op } => lab::lab(op),
    }
}

/// The daemon serving `socket`, as it describes itself; `None` if nothing
/// listens there. `sluice down` stops that daemon and no other.
async fn serving_daemon(socket: &std::path::Path) -> Result<Option<daemon::Serving>> {
    let client = client::Client::new(socket);
    let ask = client.get::<crate::api::types::Status>("/v1/status");
    match tokio::time::timeout(std::time::Duration::from_secs(10), ask).await {
        Err(_) => anyhow::bail!(
            "the daemon on {} did not answer within 10 s; nothing was stopped or removed",
            socket.display()
        ),
        Ok(Ok(s)) => Ok(Some(daemon::Serving {
            pid: s.pid,
            pin_dir: s.pin_dir.into(),
            state_dir: s.state_dir.into(),
        })),
        Ok(Err(e)) if e.is::<client::NotRunning>() => Ok(None),
        Ok(Err(e)) => Err(e.context(format!(
            "asking {} which daemon serves it; nothing was stopped or removed",
            socket.display()
        ))),
    }
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
