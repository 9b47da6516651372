//! `GET /v1/status`: the daemon, its interfaces and programs, and a
//! summary of every capability's rules and counters.

use axum::{extract::State, routing::get, Router};
use sluice_abi::{stat, ABI_VERSION};

use super::{blocking, types::*, ApiResult, AppState, Json};
use crate::{control::Ctl, firewall::Action, model::Identify};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/status", get(status))
}

async fn status(State(s): State<AppState>) -> ApiResult<Json<Status>> {
    blocking(move || {
        let (counts, stats) = {
            let fw = s.fw.lock().unwrap();
            let counts = RuleCounts {
                deny: fw.count(Action::Deny),
                allow: fw.count(Action::Allow),
                max_rules: fw.capacity(),
            };
            (counts, fw.stats()?)
        };
        let limits = {
            let l = s.limits.lock().unwrap();
            let mut sum = LimitSummary {
                rules: l.count(),
                max_rules: sluice_abi::MAX_LIMITS,
                source_capacity: l.source_capacity(),
                ..Default::default()
            };
            for (_, st) in l.list()? {
                sum.passed += st.passed;
                sum.dropped += st.dropped;
                sum.sources += st.sources;
                sum.evictions += st.evictions;
            }
            sum
        };
        let mut verdicts = std::collections::BTreeMap::new();
        let mut notes = std::collections::BTreeMap::new();
        for (i, c) in stats.iter().enumerate() {
            let v = CounterView {
                packets: c.packets,
                bytes: c.bytes,
            };
            let name = stat::NAMES[i].to_string();
            if stat::is_verdict(i as u32) {
                verdicts.insert(name, v);
            } else {
                notes.insert(name, v);
            }
        }
        let disabled_probes: Vec<String> = s
            .probes
            .lock()
            .unwrap()
            .disabled()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let (mut interfaces, mut not_attached, programs) = {
            let h = s.hooks.lock().unwrap();
            (h.interfaces(), h.failed(), h.programs())
        };
        let name_of = |i: u32| s.containers.by_ifindex(i).map(|w| w.name);
        for i in &mut interfaces {
            i.container = name_of(i.ifindex);
        }
        for f in &mut not_attached {
            f.container = name_of(f.ifindex);
        }
        let all = s.containers.list();
        let containers = ContainerSummary {
            sources: s.containers.sources(),
            running: all.iter().filter(|c| c.running).count(),
            total: all.len(),
        };
        Ok(Json(Status {
            version: env!("CARGO_PKG_VERSION").into(),
            abi_version: ABI_VERSION,
            pid: std::process::id(),
            uptime_secs: s.started.elapsed().as_secs(),
            interface_globs: s.interface_globs.clone(),
            pin_dir: s.pin_dir.clone(),
            state_dir: s.state_dir.clone(),
            interfaces,
            not_attached,
            containers,
            disabled_probes,
            programs,
            rules: counts,
            limits,
            forwarding: forward_summary(&s)?,
            events: event_summary(&s)?,
            verdicts,
            notes,
        }))
    })
    .await
}

fn forward_summary(s: &Ctl) -> ApiResult<ForwardSummary> {
    let n = s.forward.lock().unwrap();
    let tc = n
        .stats()?
        .into_iter()
        .map(|(k, c)| {
            (
                k.to_string(),
                CounterView {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            )
        })
        .collect();
    Ok(ForwardSummary {
        forwards: n.forwards().count(),
        redirects: n.redirects().count(),
        inactive_redirects: n.redirects().filter(|r| r.target.is_none()).count(),
        flows: n.flow_counts().values().sum(),
        tc,
    })
}

fn event_summary(s: &Ctl) -> ApiResult<EventSummary> {
    use std::sync::atomic::Ordering::Relaxed;
    let lost = s.events.lock().unwrap().lost()?;
    let lost_kernel = sluice_abi::ev::LOST_NAMES
        .iter()
        .zip(lost)
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok(EventSummary {
        received: s.hub.received().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        lost_kernel,
        lost_subscribers: s.hub.lost_by_subscribers(),
        malformed: s.hub.counters.malformed.load(Relaxed),
        connections_open: s.hub.conns.lock().unwrap().open_count(),
    })
}
