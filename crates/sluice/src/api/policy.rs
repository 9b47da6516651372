//! The policy routes: `GET /v1/policy` (export) and
//! `POST /v1/policy[?dry_run=true][&allow_empty=true]` (apply, all or
//! nothing; a policy with no rules may remove every rule only with
//! `allow_empty`).

use axum::{extract::DefaultBodyLimit, extract::State, routing::get, Router};

use super::{blocking, ApiResult, AppState, Json, Query, MAX_POLICY_BODY};
use crate::control::policy::{self, Policy, PolicyDiff};

/// Every policy route.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/policy",
        get(export_policy)
            .post(apply_policy)
            .layer(DefaultBodyLimit::max(MAX_POLICY_BODY)),
    )
}

async fn export_policy(State(s): State<AppState>) -> ApiResult<Json<Policy>> {
    blocking(move || Ok(Json(policy::export(&s)))).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    /// A policy with no rules may remove every rule in force.
    #[serde(default)]
    allow_empty: bool,
}

/// `POST /v1/policy[?dry_run=true]`: makes the rule set equal to the body,
/// all or nothing, and answers with the diff.
async fn apply_policy(
    State(s): State<AppState>,
    Query(q): Query<ApplyQuery>,
    Json(p): Json<Policy>,
) -> ApiResult<Json<PolicyDiff>> {
    blocking(move || {
        let opts = policy::ApplyOptions {
            dry_run: q.dry_run,
            allow_empty: q.allow_empty,
        };
        let d = policy::apply(&s, &p, opts)?;
        if d.applied {
            tracing::info!(
                added = d.added.len(),
                removed = d.removed.len(),
                changed = d.changed.len(),
                "policy applied"
            );
        }
        Ok(Json(d))
    })
    .await
}
