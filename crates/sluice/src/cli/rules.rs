//! `sluice deny|allow add|del|list|import`: the firewall's rules.

use std::{
    io::{Read, Write},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::{
    client::{Client, ConnectionLost},
    print_json, ClientOpts,
};
use crate::{
    api::{
        types::{ImportView, RuleRequest, RuleView},
        MAX_IMPORT_BODY,
    },
    firewall::Action,
    model::Target,
};

#[derive(Subcommand, Debug)]
pub(super) enum RuleOp {
    /// Add a rule; prints it with its id.
    Add {
        /// IPv4/IPv6 address or CIDR (host bits must be zero), or a
        /// selector: container:NAME (name or id prefix), label:KEY=VALUE.
        #[arg(value_name = "CIDR|SELECTOR")]
        cidr: String,
        /// Match the destination address instead of the source.
        #[arg(long)]
        dst: bool,
        #[arg(long)]
        comment: Option<String>,
        /// Add a container: rule for a container that does not exist yet.
        #[arg(long)]
        inactive: bool,
        #[command(flatten)]
        c: ClientOpts,
    },
    /// Delete a rule by id, or by what it matches (with --dst for a
    /// destination rule).
    Del {
        #[arg(value_name = "CIDR|SELECTOR|ID")]
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
    /// stdin) as one operation: every rule is in force, or (on any error,
    /// which names its line) none is.
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

fn print_rules(rules: &[RuleView]) {
    println!(
        "{:<8} {:<44} {:<4} {:>12} {:>14}  COMMENT",
        "ID", "CIDR|SELECTOR", "DIR", "PACKETS", "BYTES"
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
        if let Some(addrs) = &r.addrs {
            println!("{:<8} {}", "", resolution_line(r, addrs));
        }
    }
}

/// What a selector rule holds now: `-> web (172.17.0.2)`, or inactive.
fn resolution_line(r: &RuleView, addrs: &[std::net::IpAddr]) -> String {
    if r.inactive {
        return "-> inactive: no running container matches".into();
    }
    let a: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!(
        "-> {} ({})",
        r.containers.as_deref().unwrap_or_default().join(", "),
        a.join(", ")
    )
}

pub(super) async fn rules(action: Action, op: RuleOp) -> Result<()> {
    let base = format!("/v1/{}", action.as_str());
    match op {
        RuleOp::Add {
            cidr,
            dst,
            comment,
            inactive,
            c,
        } => {
            // Validated here for a precise message; the daemon validates again.
            cidr.parse::<Target>()?;
            let req = RuleRequest {
                cidr,
                dst,
                comment,
                inactive,
            };
            let r: RuleView = Client::new(&c.socket).post(&base, &req).await?;
            if c.json {
                return print_json(&r);
            }
            println!(
                "added {} rule {}: {} {}{}",
                r.action,
                r.id,
                r.direction,
                r.cidr,
                r.comment.clone().map(|c| format!(" ({c})")).unwrap_or_default()
            );
            if let Some(addrs) = &r.addrs {
                println!("  {}", resolution_line(&r, addrs));
            }
        }
        RuleOp::Del { target, dst, c } => {
            let path = match target.parse::<i64>() {
                Ok(id) => format!("{base}/{id}"),
                Err(_) => {
                    // Validate locally for a precise message, then let the
                    // daemon decide (it validates again).
                    target.parse::<Target>()?;
                    format!(
                        "{base}?cidr={}&dst={dst}",
                        percent_encoding::utf8_percent_encode(&target, percent_encoding::NON_ALPHANUMERIC)
                    )
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
    let mut body = Vec::new();
    let mut reader: Box<dyn Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
    };
    // One byte more than the daemon takes, to say so here.
    reader
        .by_ref()
        .take(MAX_IMPORT_BODY as u64 + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("reading {}", file.display()))?;
    if body.len() > MAX_IMPORT_BODY {
        bail!(
            "{} is larger than {MAX_IMPORT_BODY} bytes; split it into smaller imports",
            file.display()
        );
    }
    let mut query = vec![];
    if dst {
        query.push("dst=true".to_string());
    }
    if let Some(cm) = &comment {
        query.push(format!(
            "comment={}",
            percent_encoding::utf8_percent_encode(cm, percent_encoding::NON_ALPHANUMERIC)
        ));
    }
    let path = format!("{base}/import?{}", query.join("&"));
    if !c.json {
        eprint!(
            "sending {} bytes to the daemon, which applies them all or none...",
            body.len()
        );
        std::io::stderr().flush().ok();
    }
    let r: Result<ImportView> = Client::new(&c.socket).post_text(&path, body).await;
    if !c.json {
        eprintln!();
    }
    let v = r.map_err(|e| {
        if e.downcast_ref::<ConnectionLost>().is_some() {
            e.context(format!(
                "the import is all or nothing: either every rule of {} is in force or none is; `sluice {} list` shows which",
                file.display(),
                action.as_str()
            ))
        } else {
            e
        }
    })?;
    if c.json {
        return print_json(&v);
    }
    println!(
        "imported {} {} rules (ids {}..={}) in {:.2} s; all in force",
        v.imported,
        v.action,
        v.first_id,
        v.last_id,
        v.duration_ms / 1e3
    );
    Ok(())
}
