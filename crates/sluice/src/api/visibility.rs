//! The visibility routes: `/v1/events` (SSE), `/v1/events/recent`,
//! `/v1/conns` and `/v1/l7`.

use axum::{extract::State, http::StatusCode, routing::get, Router};
use sluice_proto::l7::Proto;

use super::{blocking, ApiError, ApiResult, AppState, Json, Query};
use crate::{
    sys::time::unix_ns,
    visibility::{conns::Conn, l7::L7Record, parse_kinds, Event, Kind},
};

/// Every visibility route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/l7", get(l7_records))
        .route("/v1/events", get(events_sse))
        .route("/v1/events/recent", get(events_recent))
        .route("/v1/conns", get(conns))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KindQuery {
    #[serde(default)]
    kind: Option<String>,
}

fn kinds(q: &KindQuery) -> ApiResult<Vec<Kind>> {
    parse_kinds(q.kind.as_deref().unwrap_or("")).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))
}

/// `GET /v1/events?kind=conn,drop`: Server-Sent Events, one `event:` per
/// kind with the event as JSON data. A client that falls behind loses its own
/// oldest events and is told so with a `lost` event carrying the count.
async fn events_sse(
    State(s): State<AppState>,
    Query(q): Query<KindQuery>,
) -> ApiResult<
    axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>,
> {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use tokio_stream::{
        wrappers::{errors::BroadcastStreamRecvError, BroadcastStream},
        StreamExt,
    };
    let kinds = kinds(&q)?;
    // The guard lives in the closure, so as long as the stream: it counts
    // this client's losses while it is stalled and when it goes away.
    let (rx, guard) = s.hub.subscribe();
    let stream = BroadcastStream::new(rx).filter_map(move |r| match r {
        Ok(e) if kinds.is_empty() || kinds.contains(&e.kind()) => {
            guard.took();
            // One serde_json pass into a String: axum's json_data scans and
            // copies every small write, the hottest path of the stream.
            let json = serde_json::to_string(&*e).expect("events serialise");
            Some(Ok(Sse::default().event(e.kind().as_str()).data(json)))
        }
        Ok(_) => {
            guard.took();
            None
        }
        Err(BroadcastStreamRecvError::Lagged(n)) => {
            guard.lagged(n);
            Some(Ok(Sse::default().event("lost").data(n.to_string())))
        }
    });
    let mut stop = s.shutdown.subscribe();
    let stream = futures::StreamExt::take_until(stream, async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    });
    Ok(axum::response::sse::Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /v1/events/recent?kind=...`: the in-memory history, oldest first.
async fn events_recent(State(s): State<AppState>, Query(q): Query<KindQuery>) -> ApiResult<Json<Vec<Event>>> {
    let kinds = kinds(&q)?;
    Ok(Json(s.hub.recent(&kinds).iter().map(|e| (**e).clone()).collect()))
}

/// `GET /v1/conns`: open connections, then recently closed ones, oldest
/// first in each.
async fn conns(State(s): State<AppState>) -> ApiResult<Json<Vec<Conn>>> {
    blocking(move || Ok(Json(s.hub.conns.lock().unwrap().list()))).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct L7Query {
    proto: Option<String>,
    /// A duration: records newer than now minus this.
    since: Option<String>,
    limit: Option<usize>,
}

/// Most records one `/v1/l7` request returns.
pub const MAX_L7_LIMIT: usize = 100_000;

async fn l7_records(State(s): State<AppState>, Query(q): Query<L7Query>) -> ApiResult<Json<Vec<L7Record>>> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let proto = match &q.proto {
        Some(p) => Some(Proto::parse(p).ok_or_else(|| bad(format!("unknown protocol {p:?}: http, redis or mysql")))?),
        None => None,
    };
    let since_ns = match &q.since {
        Some(d) => {
            let d = humantime::parse_duration(d).map_err(|e| bad(format!("since {d:?}: {e}")))?;
            Some(unix_ns().saturating_sub(d.as_nanos().min(u64::MAX as u128) as u64))
        }
        None => None,
    };
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_L7_LIMIT {
        return Err(bad(format!("limit must be between 1 and {MAX_L7_LIMIT}")));
    }
    let Some(log) = s.l7.clone() else {
        return Ok(Json(Vec::new()));
    };
    blocking(move || {
        log.query(proto, since_ns, limit)
            .map(Json)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await
}
