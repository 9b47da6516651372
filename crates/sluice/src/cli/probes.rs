//! `sluice probes list|enable|disable|stats`.

use anyhow::{bail, Result};
use clap::Subcommand;

use super::{client::Client, print_json, ClientOpts};
use crate::{
    api::types::{ProbeList, ProbeStateRequest, ProbeStateView, StatsRequest},
    dataplane::ProbeId,
};

#[derive(Subcommand, Debug)]
pub(super) enum ProbeOp {
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

async fn set_probe(id: &str, enabled: bool, c: &ClientOpts) -> Result<()> {
    // Validated here for a clear message; the daemon validates again.
    let pid: ProbeId = id.parse()?;
    let path = format!(
        "/v1/probes/{}/{}",
        pid.kind.as_str(),
        percent_encoding::utf8_percent_encode(&pid.attach, percent_encoding::NON_ALPHANUMERIC)
    );
    let req = ProbeStateRequest { enabled };
    let r: ProbeStateView = Client::new(&c.socket).put(&path, &req).await?;
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

pub(super) async fn probes(op: ProbeOp) -> Result<()> {
    match op {
        ProbeOp::List { c } => {
            let v: ProbeList = Client::new(&c.socket).get("/v1/probes").await?;
            if c.json {
                return print_json(&v.probes);
            }
            println!(
                "{:<44} {:<16} {:<8} {:<12} {:<16} {:>7} {:>14} {:>12}",
                "ID", "CONTAINER", "STATE", "OWNER", "PROGRAM", "PROG", "RUNS", "AVG ns"
            );
            for p in &v.probes {
                let avg = if p.run_count > 0 {
                    format!("{:.0}", p.run_time_ns as f64 / p.run_count as f64)
                } else {
                    "-".into()
                };
                println!(
                    "{:<44} {:<16} {:<8} {:<12} {:<16} {:>7} {:>14} {:>12}",
                    p.id,
                    p.container.as_deref().unwrap_or("-"),
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
            let req = StatsRequest { enabled: state == "on" };
            let r: StatsRequest = Client::new(&c.socket).put("/v1/probes/stats", &req).await?;
            if c.json {
                return print_json(&r);
            }
            println!("BPF run statistics {}", if r.enabled { "on" } else { "off" });
        }
    }
    Ok(())
}
