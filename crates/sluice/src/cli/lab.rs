//! `sluice lab up|down`: the sandbox of network namespaces the tour and
//! the tests use. It acts on this machine directly, not through the daemon.

use anyhow::Result;
use clap::Subcommand;

use crate::lab::Lab;

#[derive(Subcommand, Debug)]
pub(super) enum LabOp {
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

pub(super) fn lab(op: LabOp) -> Result<()> {
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
