//! `sluice status`: the daemon, its interfaces and programs, and every
//! capability's rules and counters at a glance.

use anyhow::Result;

use super::{client::Client, print_json, ClientOpts};
use crate::api::types::Status;

pub(super) async fn status(c: &ClientOpts) -> Result<()> {
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
    println!(
        "\ninterfaces: {} managed, {} not attached",
        s.interfaces.len(),
        s.not_attached.len()
    );
    for i in &s.interfaces {
        let mode = match i.mode {
            Some(m) => serde_json::to_value(m)?.as_str().unwrap_or("?").to_string(),
            None if i.disabled.iter().any(|d| d == "xdp") => "DISABLED (not filtered)".into(),
            None => "NOT ATTACHED (not filtered)".into(),
        };
        println!(
            "  {:<16} ifindex {:<6} {}xdp {}{}{}{}",
            i.name,
            i.ifindex,
            i.container
                .as_ref()
                .map_or(String::new(), |c| format!("container {c}, ")),
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
        let c = f
            .container
            .as_ref()
            .map_or(String::new(), |c| format!("container {c}, "));
        println!("  {:<16} ifindex {:<6} {c}NOT ATTACHED: {}", f.name, f.ifindex, f.error);
        if let Some(o) = f.owner.as_ref().filter(|o| !f.error.contains(&o.to_string())) {
            println!("  {:<16} {o}", "");
        }
    }
    if !s.not_attached.is_empty() {
        println!("  (tried again every few seconds: attached once the other owner lets go)");
    }
    println!(
        "\ncontainers: {} running, {} known",
        s.containers.running, s.containers.total
    );
    for (src, st) in &s.containers.sources {
        let src = serde_json::to_value(src)?;
        let detail = if st.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", st.detail)
        };
        println!("  {:<8} {}{detail}", src.as_str().unwrap_or("?"), st.state);
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
            println!("  {:<13} {:>14} pkts {:>16} bytes", name, v.packets, v.bytes);
        }
    }
    Ok(())
}
