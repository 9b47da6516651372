//! `sluice limit add|del|list`: flow control rules.

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{client::Client, print_json, ClientOpts};
use crate::api::types::{LimitRequest, LimitView};

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(super) struct Rate {
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
pub(super) enum LimitOp {
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

pub(super) async fn limit(op: LimitOp) -> Result<()> {
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
