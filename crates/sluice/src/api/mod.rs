//! The REST API, HTTP only: `fn app(state) -> Router`, served by the daemon
//! on its unix socket (and optional TCP listener) and driven directly (no
//! socket) by the tests. Handlers validate, call the control layer off the
//! async workers and render views; every failure is a status code plus
//! `{"error": "..."}`, and bad input never changes anything. Request bodies
//! are capped at [`MAX_BODY`] ([`MAX_POLICY_BODY`] for a policy) and parsed
//! strictly by [`Json`].
//!
//! One file per route group: [`rules`] (deny, allow, limits, forwards,
//! redirects), [`visibility`] (events, conns, l7), [`containers`], [`probes`], [`policy`],
//! [`status`] and [`metrics`]; [`guard`] is authentication and the request
//! rate limit, [`serve`] the connection loop.

mod containers;
mod error;
pub mod guard;
mod json;
pub mod metrics;
mod policy;
mod probes;
mod rules;
pub mod serve;
mod status;
pub mod types;
mod visibility;

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, FromRequestParts},
    http::StatusCode,
    routing::get,
    Router,
};
pub use error::ApiError;
pub use json::{Body, Json};

pub use crate::control::Ctl;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;
/// Largest accepted policy (`POST /v1/policy`): about 600,000 entries, so
/// a whole rule set at the default capacities fits with room to spare.
pub const MAX_POLICY_BODY: usize = 32 << 20;
/// Time a client has to send a request body.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most rules one request may add.
pub const MAX_BATCH: usize = 100_000;
/// Largest import body (`POST /v1/deny/import`): about three million lines.
pub const MAX_IMPORT_BODY: usize = 64 << 20;
/// Time a client has to send an import body.
pub const IMPORT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub type AppState = Arc<Ctl>;

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
struct Query<T>(T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
struct Path<T>(T);

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking work (map syscalls, SQLite) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")))?
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(status::routes())
        .merge(containers::routes())
        .merge(rules::routes())
        .merge(visibility::routes())
        .merge(probes::routes())
        .merge(policy::routes())
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such API route; see /v1/status".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method (see the README's API table)".into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .with_state(state)
}
