//! `sluice conns`, `sluice events` and `sluice l7`: what the daemon sees.

use anyhow::Result;
use sluice_proto::l7::{Proto, Summary};

use super::{client::Client, print_json, ClientOpts};
use crate::visibility::{conns::Conn, l7::L7Record, parse_kinds, Event, Kind};

fn event_line(e: &Event) -> String {
    match e {
        Event::Conn(c) => format!(
            "{}  conn    {:<15} {:>7}  {}:{} -> {}:{}  {} -> {}  {}{}",
            c.time,
            c.comm,
            c.pid,
            c.src,
            c.sport,
            c.dst,
            c.dport,
            c.old_state,
            c.state,
            c.direction,
            c.duration_ms.map(|d| format!("  after {d:.1} ms")).unwrap_or_default()
        ),
        Event::L7(r) => l7_line(r),
        Event::Packet(p) | Event::Drop(p) | Event::Limit(p) => format!(
            "{}  {:<7} {:<15} {} {}:{} -> {}:{}  {} bytes  {}{}",
            p.time,
            e.kind().as_str(),
            p.interface,
            p.proto,
            p.src,
            p.sport,
            p.dst,
            p.dport,
            p.len,
            p.verdict,
            p.rule
                .as_ref()
                .map(|r| format!(" by {} rule {}", r.kind, r.id.map_or("?".into(), |i| i.to_string())))
                .unwrap_or_default()
        ),
    }
}

/// An event kind argument (an unknown one is a usage error, exit 2).
pub(super) fn event_kind(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !t.is_empty() {
        t.parse::<Kind>()?;
    }
    Ok(t.to_string())
}

/// `sluice conns`: the connection table.
pub(super) async fn conns(c: &ClientOpts) -> Result<()> {
    let v: Vec<Conn> = Client::new(&c.socket).get("/v1/conns").await?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<27}  {:<15} {:>7}  {:<3}  {:<40}  {:<40}  {:<11}  DURATION",
        "STARTED", "COMM", "PID", "DIR", "SOURCE", "DESTINATION", "STATE"
    );
    let mut unseen = 0;
    for x in &v {
        let mut time = x.time.clone();
        if !x.observed_start {
            unseen += 1;
            time.push('*');
        }
        let duration = match (x.open, x.duration_ms) {
            (true, _) => "open".to_string(),
            (false, Some(d)) if d >= 1000.0 => format!("{:.1} s", d / 1000.0),
            (false, Some(d)) => format!("{d:.1} ms"),
            (false, None) => "?".to_string(),
        };
        println!(
            "{:<27}  {:<15} {:>7}  {:<3}  {:<40}  {:<40}  {:<11}  {}",
            time,
            x.comm,
            x.pid,
            x.direction,
            std::net::SocketAddr::new(x.src, x.sport).to_string(),
            std::net::SocketAddr::new(x.dst, x.dport).to_string(),
            x.state,
            duration
        );
    }
    if unseen > 0 {
        println!("* older than the connection tracer: first seen then, owner from /proc, no duration");
    }
    Ok(())
}

pub(super) async fn events(kinds: Vec<String>, follow: bool, c: &ClientOpts) -> Result<()> {
    let kinds: Vec<String> = kinds
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    parse_kinds(&kinds.join(",")).map_err(anyhow::Error::msg)?;
    let q = if kinds.is_empty() {
        String::new()
    } else {
        format!("?kind={}", kinds.join(","))
    };
    let client = Client::new(&c.socket);
    if !follow {
        let v: Vec<Event> = client.get(&format!("/v1/events/recent{q}")).await?;
        for e in &v {
            if c.json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!("{}", event_line(e));
            }
        }
        return Ok(());
    }
    let json = c.json;
    client
        .follow(&format!("/v1/events{q}"), |event, data| {
            if event == "lost" {
                eprintln!("sluice: this client fell behind and lost {data} events");
                return Ok(());
            }
            let e: Event = serde_json::from_str(data)?;
            if json {
                println!("{data}");
            } else {
                println!("{}", event_line(&e));
            }
            Ok(())
        })
        .await
}

fn l7_line(r: &L7Record) -> String {
    use Summary as S;
    let req = match &r.request {
        Some(S::HttpRequest { method, path, host, .. }) => {
            format!("{method} {}{path}", host.as_deref().unwrap_or(""))
        }
        Some(S::RedisCommand { command, key, .. }) => format!("{command} {}", key.as_deref().unwrap_or("")),
        Some(S::MysqlCommand {
            command,
            query,
            stmt_id,
            schema,
        }) => match (query, stmt_id, schema) {
            (Some(q), _, _) => format!("{command} {q}"),
            (_, Some(id), _) => format!("{command} stmt {id}"),
            (_, _, Some(db)) => format!("{command} {db}"),
            _ => command.clone(),
        },
        Some(other) => format!("{other:?}"),
        None => "(request not seen)".into(),
    };
    let resp = match &r.response {
        Some(S::RedisReply { error: Some(e), .. }) => format!("error {e}"),
        Some(S::MysqlReply {
            error_code: Some(c),
            error_message,
            ..
        }) => format!("err {c} {}", error_message.as_deref().unwrap_or("")),
        _ => r.status.clone(),
    };
    // Bytes from the network: no control characters reach the terminal.
    let clean = |s: &str| -> String { s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect() };
    let mut req = clean(&req);
    let resp = clean(&resp);
    if req.chars().count() > 80 {
        req = req.chars().take(77).collect::<String>() + "...";
    }
    let server = std::net::SocketAddr::new(r.server, r.server_port);
    let target = match (r.target, r.target_port) {
        (Some(ip), Some(port)) => format!(" (target {})", std::net::SocketAddr::new(ip, port)),
        _ => String::new(),
    };
    format!(
        "{}  {:<5} {} -> {}{}  {:<80}  {:<12} {:>9}{}",
        r.time,
        r.proto.as_str(),
        std::net::SocketAddr::new(r.client, r.client_port),
        server,
        target,
        req,
        resp,
        r.latency_ms.map_or("-".into(), |l| format!("{l:.3} ms")),
        if r.partial { "  (partial)" } else { "" }
    )
}

pub(super) async fn l7(
    proto: Option<String>,
    since: Option<String>,
    limit: usize,
    follow: bool,
    c: &ClientOpts,
) -> Result<()> {
    let client = Client::new(&c.socket);
    if !follow {
        // Query values are percent-encoded (a duration may hold spaces).
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let mut q = vec![format!("limit={limit}")];
        if let Some(p) = &proto {
            q.push(format!("proto={}", enc(p)));
        }
        if let Some(s) = &since {
            q.push(format!("since={}", enc(s)));
        }
        let v: Vec<L7Record> = client.get(&format!("/v1/l7?{}", q.join("&"))).await?;
        if c.json {
            return print_json(&v);
        }
        for r in &v {
            println!("{}", l7_line(r));
        }
        return Ok(());
    }
    let want = match &proto {
        Some(p) => {
            Some(Proto::parse(p).ok_or_else(|| anyhow::anyhow!("unknown protocol {p:?}: http, redis or mysql"))?)
        }
        None => None,
    };
    let json = c.json;
    client
        .follow("/v1/events?kind=l7", |event, data| {
            if event == "lost" {
                eprintln!("sluice: this client fell behind and lost {data} events");
                return Ok(());
            }
            let Event::L7(r) = serde_json::from_str::<Event>(data)? else {
                return Ok(());
            };
            if want.is_some_and(|p| p != r.proto) {
                return Ok(());
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}", l7_line(&r));
            }
            Ok(())
        })
        .await
}
