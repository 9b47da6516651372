//! `sluice apply` and `sluice export`: the whole rule set as a policy file.

use anyhow::{Context, Result};

use super::{client::Client, print_json, ClientOpts};
use crate::{
    api::types::{Policy, PolicyDiff},
    control::policy,
};

pub(super) async fn apply(file: &std::path::Path, dry_run: bool, allow_empty: bool, c: &ClientOpts) -> Result<()> {
    let text = if file == std::path::Path::new("-") {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).context("reading the policy from stdin")?;
        t
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let policy = policy::from_toml(&text).with_context(|| format!("{}", file.display()))?;
    let path = format!("/v1/policy?dry_run={dry_run}&allow_empty={allow_empty}");
    let d: PolicyDiff = Client::new(&c.socket).post(&path, &policy).await?;
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

pub(super) async fn export(output: Option<&std::path::Path>, c: &ClientOpts) -> Result<()> {
    let p: Policy = Client::new(&c.socket).get("/v1/policy").await?;
    if c.json {
        return print_json(&p);
    }
    let text = policy::to_toml(&p);
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
