//! The rule routes: `/v1/deny` and `/v1/allow` (firewall), `/v1/limits`,
//! `/v1/forwards` and `/v1/redirects`. Each handler validates, calls its
//! capability's controller off the async workers, and renders the view.

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get},
    Router,
};

use super::{blocking, types::*, ApiError, ApiResult, AppState, Json, Path, Query, MAX_BATCH};
use crate::{
    firewall::{Action, Direction, RuleRequest, RuleSpec, Selector},
    forward::{ForwardRequest, RedirectRequest},
    limits::LimitRequest,
    model::CidrError,
};

/// Every rule route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(rule_routes(Action::Deny))
        .merge(rule_routes(Action::Allow))
        .route("/v1/limits", get(list_limits).post(add_limit))
        .route("/v1/limits/{id}", delete(delete_limit))
        .route("/v1/forwards", get(list_forwards).post(add_forward))
        .route("/v1/forwards/{id}", delete(delete_forward))
        .route("/v1/redirects", get(list_redirects).post(add_redirect))
        .route("/v1/redirects/{id}", delete(delete_redirect))
}

fn rule_routes(action: Action) -> Router<AppState> {
    let base = format!("/v1/{}", action.as_str());
    Router::new()
        .route(
            &base,
            get(move |State(s): State<AppState>| list_rules(s, action))
                .post(
                    move |State(s): State<AppState>, Json(body): Json<OneOrMany<RuleRequest>>| {
                        add_rules(s, action, body)
                    },
                )
                .delete(
                    move |State(s): State<AppState>, Query(q): Query<DeleteQuery>| async move {
                        let cidr = q
                            .cidr
                            .parse()
                            .map_err(|e: CidrError| ApiError::bad_request(e.to_string()))?;
                        let dir = if q.dst { Direction::Dst } else { Direction::Src };
                        delete_rule(s, action, Selector::Cidr { cidr, dir }).await
                    },
                ),
        )
        .route(
            &format!("{base}/{{id}}"),
            delete(move |State(s): State<AppState>, Path(id): Path<i64>| delete_rule(s, action, Selector::Id(id))),
        )
}

async fn list_rules(s: AppState, action: Action) -> ApiResult<Json<Vec<RuleView>>> {
    blocking(move || {
        let fw = s.fw.lock().unwrap();
        let rules = fw.list(action)?;
        Ok(Json(
            rules
                .iter()
                .map(|(r, c)| RuleView::new(r, c.packets, c.bytes))
                .collect(),
        ))
    })
    .await
}

async fn add_rules(s: AppState, action: Action, body: OneOrMany<RuleRequest>) -> ApiResult<Response> {
    let (reqs, single) = match body {
        OneOrMany::One(r) => (vec![r], true),
        OneOrMany::Many(v) => (v, false),
    };
    if reqs.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "no rules in request".into()));
    }
    if reqs.len() > MAX_BATCH {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{} rules in one request; the limit is {MAX_BATCH}", reqs.len()),
        ));
    }
    let mut specs = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.into_iter().enumerate() {
        let spec = RuleSpec::new(action, &r.cidr, r.dst, r.comment).map_err(|e| {
            let at = if single {
                String::new()
            } else {
                format!("rule {}: ", i + 1)
            };
            ApiError(StatusCode::BAD_REQUEST, format!("{at}{e}"))
        })?;
        specs.push(spec);
    }
    let added = blocking(move || Ok(s.fw.lock().unwrap().add(specs)?)).await?;
    let views: Vec<RuleView> = added.iter().map(|r| RuleView::new(r, 0, 0)).collect();
    Ok(if single {
        (StatusCode::CREATED, Json(views.into_iter().next().expect("one rule"))).into_response()
    } else {
        (StatusCode::CREATED, Json(views)).into_response()
    })
}

async fn delete_rule(s: AppState, action: Action, sel: Selector) -> ApiResult<Json<RuleView>> {
    blocking(move || {
        let r = s.fw.lock().unwrap().delete(action, &sel)?;
        Ok(Json(RuleView::new(&r, 0, 0)))
    })
    .await
}

async fn list_forwards(State(s): State<AppState>) -> ApiResult<Json<Vec<ForwardView>>> {
    blocking(move || {
        let n = s.forward.lock().unwrap();
        let flows = n.flow_counts();
        let mut out = Vec::new();
        for f in n.forwards() {
            let c = n.forward_counter(f.slot)?;
            out.push(ForwardView::new(f, c, flows.get(&f.slot).copied().unwrap_or(0)));
        }
        Ok(Json(out))
    })
    .await
}

async fn add_forward(State(s): State<AppState>, Json(req): Json<ForwardRequest>) -> ApiResult<Response> {
    let f = blocking(move || Ok(s.forward.lock().unwrap().add_forward(&req)?)).await?;
    Ok((StatusCode::CREATED, Json(ForwardView::new(&f, Default::default(), 0))).into_response())
}

async fn delete_forward(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<ForwardView>> {
    let f = blocking(move || Ok(s.forward.lock().unwrap().del_forward(id)?)).await?;
    Ok(Json(ForwardView::new(&f, Default::default(), 0)))
}

async fn list_redirects(State(s): State<AppState>) -> ApiResult<Json<Vec<RedirectView>>> {
    blocking(move || {
        let n = s.forward.lock().unwrap();
        let mut out = Vec::new();
        for r in n.redirects() {
            out.push(RedirectView::new(r, n.redirect_counter(r.slot)?));
        }
        Ok(Json(out))
    })
    .await
}

async fn add_redirect(State(s): State<AppState>, Json(req): Json<RedirectRequest>) -> ApiResult<Response> {
    let r = blocking(move || Ok(s.forward.lock().unwrap().add_redirect(&req)?)).await?;
    Ok((StatusCode::CREATED, Json(RedirectView::new(&r, Default::default()))).into_response())
}

async fn delete_redirect(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<RedirectView>> {
    let r = blocking(move || Ok(s.forward.lock().unwrap().del_redirect(id)?)).await?;
    Ok(Json(RedirectView::new(&r, Default::default())))
}

async fn list_limits(State(s): State<AppState>) -> ApiResult<Json<Vec<LimitView>>> {
    blocking(move || {
        let l = s.limits.lock().unwrap();
        Ok(Json(l.list()?.iter().map(|(l, st)| LimitView::new(l, *st)).collect()))
    })
    .await
}

async fn add_limit(State(s): State<AppState>, Json(req): Json<LimitRequest>) -> ApiResult<Response> {
    let spec = req
        .validate()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let l = blocking(move || Ok(s.limits.lock().unwrap().add(spec)?)).await?;
    Ok((StatusCode::CREATED, Json(LimitView::new(&l, Default::default()))).into_response())
}

async fn delete_limit(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<LimitView>> {
    blocking(move || {
        let l = s.limits.lock().unwrap().delete(id)?;
        Ok(Json(LimitView::new(&l, Default::default())))
    })
    .await
}
