//! `sluice deny|allow add|del|list|import`: the firewall's rules.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::{client::Client, print_json, ClientOpts};
use crate::{
    api::{
        types::{RuleRequest, RuleView},
        MAX_BODY,
    },
    firewall::{Action, RuleSpec},
    model::Cidr,
};

#[derive(Subcommand, Debug)]
pub(super) enum RuleOp {
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

pub(super) async fn rules(action: Action, op: RuleOp) -> Result<()> {
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
                    target.parse::<Cidr>()?;
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
