//! `sluice forward|redirect add|del|list`: port forwarding and interface
//! redirect.

use anyhow::Result;
use clap::Subcommand;

use super::{client::Client, print_json, ClientOpts};
use crate::api::types::{ForwardRequest, ForwardView, RedirectRequest, RedirectView};

#[derive(Subcommand, Debug)]
pub(super) enum ForwardOp {
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
pub(super) enum RedirectOp {
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

pub(super) async fn forward(op: ForwardOp) -> Result<()> {
    let describe = |f: &ForwardView| format!("{}/{} -> {}", f.service, f.proto.as_str(), f.to.join(", "));
    match op {
        ForwardOp::Add {
            service,
            target,
            more,
            comment,
            c,
        } => {
            let req = ForwardRequest {
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

pub(super) async fn redirect(op: RedirectOp) -> Result<()> {
    match op {
        RedirectOp::Add {
            cidr,
            iface,
            comment,
            c,
        } => {
            let req = RedirectRequest { cidr, iface, comment };
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
