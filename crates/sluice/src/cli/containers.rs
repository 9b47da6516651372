//! `sluice containers [NAME]`: the containers the daemon knows, with their
//! host-side interfaces and addresses, and the state of each source.

use anyhow::Result;

use super::{client::Client, print_json, ClientOpts};
use crate::api::types::{Container, ContainersView};

pub(super) async fn containers(name: Option<String>, c: &ClientOpts) -> Result<()> {
    let client = Client::new(&c.socket);
    if let Some(name) = name {
        let path = format!(
            "/v1/containers/{}",
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        );
        let one: Container = client.get(&path).await?;
        return print_json(&one);
    }
    let v: ContainersView = client.get("/v1/containers").await?;
    if c.json {
        return print_json(&v);
    }
    println!(
        "{:<20} {:<12} {:<10} {:<8} {:<16} {:<34} IMAGE",
        "NAME", "ID", "RUNTIME", "STATE", "INTERFACES", "ADDRESSES"
    );
    for k in &v.containers {
        let ifs: Vec<&str> = k.interfaces.iter().map(|i| i.name.as_str()).collect();
        let addrs: Vec<String> = k.addrs.iter().map(|a| a.to_string()).collect();
        println!(
            "{:<20} {:<12} {:<10} {:<8} {:<16} {:<34} {}",
            k.name,
            k.short_id(),
            k.runtime,
            if k.running { "running" } else { "stopped" },
            if k.host_network {
                "(host network)".into()
            } else {
                or_dash(ifs.join(","))
            },
            or_dash(addrs.join(",")),
            or_dash(k.image.clone())
        );
    }
    for (src, st) in &v.sources {
        let src = serde_json::to_value(src)?;
        println!("source {}: {} {}", src.as_str().unwrap_or("?"), st.state, st.detail);
    }
    Ok(())
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}
