//! The container routes: `GET /v1/containers` (every container sluice
//! knows, with its interfaces and addresses, and the state of each source)
//! and `GET /v1/containers/{name}` (one, by name or id prefix).

use axum::{extract::State, http::StatusCode, routing::get, Router};

use super::{types::ContainersView, ApiError, ApiResult, AppState, Json, Path};
use crate::containers::Container;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/containers", get(list))
        .route("/v1/containers/{name}", get(one))
}

async fn list(State(s): State<AppState>) -> Json<ContainersView> {
    Json(ContainersView {
        sources: s.containers.sources(),
        containers: s.containers.list(),
    })
}

async fn one(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Container>> {
    s.containers
        .lookup(&name)
        .map(Json)
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))
}
