//! `/metrics` in Prometheus text format (prometheus-client). Values are read
//! from the kernel maps and the pipeline counters at scrape time into a
//! fresh registry, so there is no second copy of any counter to drift.
//! Also the middleware that counts API requests by route and status.

use std::sync::atomic::Ordering::Relaxed;

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use sluice_abi::stat;

use super::{blocking, ApiError, AppState};
use crate::{
    firewall::Action,
    sys::{iface::ifname, procfs::self_usage},
    visibility::Kind,
};

type Labels = Vec<(String, String)>;

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Counts every request by its route template and status.
pub async fn count_requests(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let resp = next.run(req).await;
    *s.requests
        .lock()
        .unwrap()
        .entry((route, resp.status().as_u16()))
        .or_insert(0) += 1;
    resp
}

pub async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let body = blocking(move || {
        let err = |e: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e);
        let mut reg = Registry::with_prefix("sluice");

        let packets = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        reg.register(
            "packets",
            "Packets judged by XDP, by interface and verdict",
            packets.clone(),
        );
        reg.register("bytes", "Bytes judged by XDP, by interface and verdict", bytes.clone());
        for ((ifindex, verdict), c) in s.events.lock().unwrap().if_stats()? {
            let name = ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
            let v = stat::NAMES.get(verdict as usize).copied().unwrap_or("unknown");
            let lb = l(&[("interface", &name), ("verdict", v)]);
            packets.get_or_create(&lb).inc_by(c.packets);
            bytes.get_or_create(&lb).inc_by(c.bytes);
        }

        // Probes by kind and state (enabled, disabled, failed to attach).
        let probes = Family::<Labels, Gauge>::default();
        reg.register(
            "probes",
            "sluice's probes by kind and state (failed: another owner's program holds the hook, or similar)",
            probes.clone(),
        );
        for (kind, state) in s.hooks.lock().unwrap().probe_states() {
            probes
                .get_or_create(&l(&[("kind", kind.as_str()), ("state", state)]))
                .inc();
        }

        // Rule hits: per rule up to 1000 rules, per action beyond that.
        let hits = Family::<Labels, Counter>::default();
        reg.register("rule_hits", "Packets that matched a deny/allow rule", hits.clone());
        {
            let fw = s.fw.lock().unwrap();
            for action in [Action::Deny, Action::Allow] {
                let rules = fw.list(action).map_err(|e| err(e.to_string()))?;
                let many = rules.len() > 1000;
                for (r, c) in rules {
                    let id = r.id.to_string();
                    let lb = if many {
                        l(&[("action", action.as_str())])
                    } else {
                        l(&[("action", action.as_str()), ("rule", &id)])
                    };
                    hits.get_or_create(&lb).inc_by(c.packets);
                }
            }
        }
        let lim_passed = Family::<Labels, Counter>::default();
        let lim_dropped = Family::<Labels, Counter>::default();
        reg.register("limit_passed", "Packets a limit rule let through", lim_passed.clone());
        reg.register("limit_dropped", "Packets a limit rule dropped", lim_dropped.clone());
        for (r, st) in s.limits.lock().unwrap().list().map_err(|e| err(e.to_string()))? {
            let lb = l(&[("rule", &r.id.to_string())]);
            lim_passed.get_or_create(&lb).inc_by(st.passed);
            lim_dropped.get_or_create(&lb).inc_by(st.dropped);
        }

        // Forwards and redirects: per rule, plus the TC program's totals.
        let fwd_packets = Family::<Labels, Counter>::default();
        let fwd_flows = Family::<Labels, Gauge>::default();
        let redir_packets = Family::<Labels, Counter>::default();
        let tc_stats = Family::<Labels, Counter>::default();
        reg.register(
            "forward_packets",
            "Packets translated by a forward rule (both directions)",
            fwd_packets.clone(),
        );
        reg.register("forward_flows", "Live flows of a forward rule", fwd_flows.clone());
        reg.register(
            "redirect_packets",
            "Packets sent on by a redirect rule",
            redir_packets.clone(),
        );
        reg.register(
            "tc_packets",
            "TC program outcomes: dnat, snat, new_flows, redirected, errors",
            tc_stats.clone(),
        );
        {
            let n = s.forward.lock().unwrap();
            let flows = n.flow_counts();
            for f in n.forwards() {
                let lb = l(&[("rule", &f.id.to_string())]);
                let c = n.forward_counter(f.slot).map_err(|e| err(e.to_string()))?;
                fwd_packets.get_or_create(&lb).inc_by(c.packets);
                fwd_flows
                    .get_or_create(&lb)
                    .set(flows.get(&f.slot).copied().unwrap_or(0) as i64);
            }
            for r in n.redirects() {
                let c = n.redirect_counter(r.slot).map_err(|e| err(e.to_string()))?;
                redir_packets
                    .get_or_create(&l(&[("rule", &r.id.to_string())]))
                    .inc_by(c.packets);
            }
            for (name, c) in n.stats().map_err(|e| err(e.to_string()))? {
                tc_stats.get_or_create(&l(&[("outcome", name)])).inc_by(c.packets);
            }
        }

        if let Some(log) = &s.l7 {
            let m = &s.l7_metrics;
            let c = &log.store().counters;
            reg.register(
                "l7_requests",
                "L7 exchanges recorded, by protocol and status",
                m.requests.clone(),
            );
            reg.register(
                "l7_latency_seconds",
                "L7 request-to-response latency, by protocol",
                m.latency.clone(),
            );
            let seg = Counter::<u64>::default();
            seg.inc_by(m.segments.load(Relaxed));
            reg.register("l7_segments", "TCP payload captures received from the kernel", seg);
            let dropped = Counter::<u64>::default();
            dropped.inc_by(c.dropped.load(Relaxed));
            let stored = Counter::<u64>::default();
            stored.inc_by(c.stored.load(Relaxed));
            reg.register("l7_stored", "L7 records written to the audit log", stored);
            reg.register(
                "l7_store_dropped",
                "L7 records not stored because the audit writer fell behind",
                dropped,
            );
        }

        let conns = Family::<Labels, Counter>::default();
        reg.register("connections", "TCP connections seen, by event", conns.clone());
        conns
            .get_or_create(&l(&[("event", "opened")]))
            .inc_by(s.hub.counters.opened.load(Relaxed));
        conns
            .get_or_create(&l(&[("event", "closed")]))
            .inc_by(s.hub.counters.closed.load(Relaxed));

        let received = Family::<Labels, Counter>::default();
        let lost = Family::<Labels, Counter>::default();
        reg.register(
            "events_received",
            "Events read from the kernel ring buffer",
            received.clone(),
        );
        reg.register("events_lost", "Events lost, by source and where", lost.clone());
        for k in Kind::ALL {
            received
                .get_or_create(&l(&[("source", k.as_str())]))
                .inc_by(s.hub.counters.received[k as usize].load(Relaxed));
        }
        let kl = s.events.lock().unwrap().lost()?;
        for (name, v) in sluice_abi::ev::LOST_NAMES.iter().zip(kl) {
            lost.get_or_create(&l(&[("source", name), ("where", "kernel")]))
                .inc_by(v);
        }
        lost.get_or_create(&l(&[("source", "all"), ("where", "subscriber")]))
            .inc_by(s.hub.lost_by_subscribers());

        let reqs = Family::<Labels, Counter>::default();
        reg.register("api_requests", "API requests by route and status", reqs.clone());
        for ((route, status), n) in s.requests.lock().unwrap().iter() {
            reqs.get_or_create(&l(&[("route", route), ("status", &status.to_string())]))
                .inc_by(*n);
        }

        if let Some((rss, cpu)) = self_usage() {
            let g = Gauge::<i64>::default();
            g.set(rss as i64);
            reg.register("process_resident_memory_bytes", "Resident memory of the daemon", g);
            let c = Counter::<f64>::default();
            c.inc_by(cpu);
            reg.register("process_cpu_seconds", "CPU time of the daemon (user + system)", c);
        }

        let mut out = String::new();
        encode(&mut out, &reg).map_err(|e| err(e.to_string()))?;
        Ok(out)
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
