//! The probe routes: `GET /v1/probes`, `PUT /v1/probes/{kind}/{attach}`
//! and `PUT /v1/probes/stats`.

use axum::{extract::State, routing::get, Router};

use super::{blocking, types::*, ApiError, ApiResult, AppState, Json, Path};
use crate::{
    dataplane::{ProbeId, ProbeIdError},
    model::Identify,
};

/// Every probe route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/probes", get(list_probes))
        .route("/v1/probes/stats", axum::routing::put(set_probe_stats))
        .route("/v1/probes/{kind}/{attach}", axum::routing::put(set_probe_state))
}

async fn list_probes(State(s): State<AppState>) -> ApiResult<Json<ProbeList>> {
    blocking(move || {
        // One lock for a consistent listing; the netlink query in it takes
        // a few milliseconds.
        let h = s.hooks.lock().unwrap();
        let foreign = h.foreign(&h.probe_ifindexes());
        let mut probes = h.probes(&foreign);
        drop(h);
        for p in &mut probes {
            p.container = p.ifindex.and_then(|i| s.containers.by_ifindex(i)).map(|w| w.name);
        }
        Ok(Json(ProbeList {
            stats: s.probe_stats.lock().unwrap().is_some(),
            probes,
        }))
    })
    .await
}

/// Enables or disables one probe, persisted, taking effect at once.
async fn set_probe_state(
    State(s): State<AppState>,
    Path((kind, attach)): Path<(String, String)>,
    Json(req): Json<ProbeStateRequest>,
) -> ApiResult<Json<ProbeStateView>> {
    let id: ProbeId = format!("{kind}/{attach}")
        .parse()
        .map_err(|e: ProbeIdError| ApiError::bad_request(e.to_string()))?;
    blocking(move || {
        let c = s.set_probe(&id, req.enabled)?;
        Ok(Json(ProbeStateView {
            id: id.to_string(),
            enabled: req.enabled,
            changed: c.changed,
            present: c.present,
        }))
    })
    .await
}

/// Turns kernel BPF run statistics on (held until turned off or the daemon
/// stops) or off. They cost a clock read per program run, so they are off
/// by default.
async fn set_probe_stats(State(s): State<AppState>, Json(req): Json<StatsRequest>) -> ApiResult<Json<StatsRequest>> {
    let mut held = s.probe_stats.lock().unwrap();
    if req.enabled && held.is_none() {
        let fd = s
            .hooks
            .lock()
            .unwrap()
            .enable_stats()
            .map_err(|e| ApiError::internal(format!("enabling BPF stats: {e}")))?;
        *held = Some(fd);
    } else if !req.enabled {
        *held = None;
    }
    Ok(Json(StatsRequest {
        enabled: held.is_some(),
    }))
}
