//! The rule routes: `/v1/deny` and `/v1/allow` (firewall), `/v1/limits`,
//! `/v1/forwards` and `/v1/redirects`. Each handler validates, calls its
//! capability's controller off the async workers, and renders the view.

use axum::{
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Router,
};

use super::{
    blocking, types::*, ApiError, ApiResult, AppState, Json, Path, Query, IMPORT_READ_TIMEOUT, MAX_BATCH,
    MAX_IMPORT_BODY,
};
use crate::{
    firewall::{Action, Direction, RuleKey, RuleRequest, RuleSpec, Which},
    forward::{ForwardRequest, RedirectRequest},
    limits::LimitRequest,
    model::{LookupError, Resolve, Selector, SelectorError, Target},
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
                        let target = q
                            .cidr
                            .parse()
                            .map_err(|e: SelectorError| ApiError::bad_request(e.to_string()))?;
                        let dir = if q.dst { Direction::Dst } else { Direction::Src };
                        delete_rule(s, action, Which::Target { target, dir }).await
                    },
                ),
        )
        .route(
            &format!("{base}/{{id}}"),
            delete(move |State(s): State<AppState>, Path(id): Path<i64>| delete_rule(s, action, Which::Id(id))),
        )
        .route(
            &format!("{base}/import"),
            post(
                move |State(s): State<AppState>, Query(q): Query<ImportQuery>, req: axum::extract::Request| {
                    import_rules(s, action, q, req)
                },
            )
            .layer(DefaultBodyLimit::max(MAX_IMPORT_BODY)),
        )
}

/// `POST /v1/{deny,allow}/import`: one request, one store transaction, one
/// switch in the kernel: every rule of the body is in force, or none is.
/// Lines are validated in full first; every error names its line.
async fn import_rules(
    s: AppState,
    action: Action,
    q: ImportQuery,
    req: axum::extract::Request,
) -> ApiResult<(StatusCode, Json<ImportView>)> {
    let nothing = |e: String| format!("{e}; nothing was imported");
    let text_plain = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| m.type_() == mime::TEXT && m.subtype() == mime::PLAIN);
    if !text_plain {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an import is text/plain: one CIDR per line, # comments".into(),
        ));
    }
    let body = tokio::time::timeout(
        IMPORT_READ_TIMEOUT,
        axum::body::to_bytes(req.into_body(), MAX_IMPORT_BODY),
    )
    .await
    .map_err(|_| {
        ApiError(
            StatusCode::REQUEST_TIMEOUT,
            nothing(format!("the import did not arrive within {IMPORT_READ_TIMEOUT:?}")),
        )
    })?
    .map_err(|_| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            nothing(format!("the import is larger than {MAX_IMPORT_BODY} bytes; split it")),
        )
    })?;
    let started = std::time::Instant::now();
    let (specs, lines) = parse_import(action, &body, &q).map_err(|e| ApiError::bad_request(nothing(e)))?;
    let view = blocking(move || {
        let mut fw = s.fw.lock().unwrap();
        for (spec, line) in specs.iter().zip(&lines) {
            if let Some(r) = fw.find(&spec.key()) {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    nothing(format!(
                        "line {line}: rule already exists: {} (id {})",
                        spec.key().describe(),
                        r.id
                    )),
                ));
            }
        }
        let added = fw.add(specs).map_err(|e| {
            let ApiError(code, msg) = ApiError::from(e);
            ApiError(code, nothing(msg))
        })?;
        Ok(ImportView {
            action: action.as_str().into(),
            imported: added.len(),
            first_id: added.first().map_or(0, |r| r.id),
            last_id: added.last().map_or(0, |r| r.id),
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    })
    .await?;
    tracing::info!(
        action = action.as_str(),
        rules = view.imported,
        ms = view.duration_ms,
        "import in force"
    );
    Ok((StatusCode::CREATED, Json(view)))
}

/// The body's rules with their line numbers; an error names the line.
fn parse_import(action: Action, body: &[u8], q: &ImportQuery) -> Result<(Vec<RuleSpec>, Vec<usize>), String> {
    let mut specs = Vec::new();
    let mut lines = Vec::new();
    let mut first_line: std::collections::HashMap<RuleKey, usize> = std::collections::HashMap::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let line = std::str::from_utf8(raw).map_err(|_| format!("line {n} is not UTF-8"))?;
        let cidr = line.split('#').next().unwrap_or("").trim();
        if cidr.is_empty() {
            continue;
        }
        let spec = RuleSpec::new(action, cidr, q.dst, q.comment.clone()).map_err(|e| format!("line {n}: {e}"))?;
        if spec.target.is_selector() {
            return Err(format!(
                "line {n}: an import takes CIDRs; add a rule for {} with `{} add`",
                spec.target,
                action.as_str()
            ));
        }
        if let Some(first) = first_line.insert(spec.key(), n) {
            return Err(format!(
                "line {n}: {} is listed twice (first on line {first})",
                spec.key().describe()
            ));
        }
        specs.push(spec);
        lines.push(n);
    }
    if specs.is_empty() {
        return Err("the import holds no CIDRs".into());
    }
    Ok((specs, lines))
}

async fn list_rules(s: AppState, action: Action) -> ApiResult<Json<Vec<RuleView>>> {
    blocking(move || {
        let fw = s.fw.lock().unwrap();
        let rules = fw.list(action)?;
        Ok(Json(
            rules
                .iter()
                .map(|(r, c)| RuleView::new(r, c.packets, c.bytes, fw.resolution(r.id)))
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
        let at = if single {
            String::new()
        } else {
            format!("rule {}: ", i + 1)
        };
        let spec = RuleSpec::new(action, &r.cidr, r.dst, r.comment)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{at}{e}")))?;
        if let Some(sel) = spec.target.selector() {
            if !r.inactive {
                check_selector(&s, sel).map_err(|ApiError(c, m)| ApiError(c, format!("{at}{m}")))?;
            }
        }
        specs.push(spec);
    }
    let st = s.clone();
    let added = blocking(move || Ok(st.fw.lock().unwrap().add(specs)?)).await?;
    let views: Vec<RuleView> = {
        let fw = s.fw.lock().unwrap();
        added
            .iter()
            .map(|r| RuleView::new(r, 0, 0, fw.resolution(r.id)))
            .collect()
    };
    Ok(if single {
        (StatusCode::CREATED, Json(views.into_iter().next().expect("one rule"))).into_response()
    } else {
        (StatusCode::CREATED, Json(views)).into_response()
    })
}

async fn delete_rule(s: AppState, action: Action, which: Which) -> ApiResult<Json<RuleView>> {
    blocking(move || {
        let r = s.fw.lock().unwrap().delete(action, &which)?;
        Ok(Json(RuleView::new(&r, 0, 0, None)))
    })
    .await
}

/// A `container:` selector must name exactly one existing container (a
/// typo must not silently protect nothing): 404 with the closest names, or
/// 400 listing the candidates. `--inactive` skips this.
pub(super) fn check_selector(s: &AppState, sel: &Selector) -> ApiResult<()> {
    s.containers.check(sel).map_err(|e| {
        let code = match e {
            LookupError::NotFound { .. } => StatusCode::NOT_FOUND,
            LookupError::Ambiguous { .. } => StatusCode::BAD_REQUEST,
        };
        ApiError(code, e.to_string())
    })
}

/// Checks every `container:` selector of `targets` (see [`check_selector`]).
#[allow(dead_code)]
pub(super) fn check_targets<'a>(s: &AppState, targets: impl IntoIterator<Item = &'a Target>) -> ApiResult<()> {
    for t in targets {
        if let Some(sel) = t.selector() {
            check_selector(s, sel)?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_name_the_line_of_every_error() {
        let q = ImportQuery::default();
        let ok = parse_import(Action::Deny, b"# list\n10.0.0.0/8\r\n\n2001:2::/48 # v6\n", &q).unwrap();
        assert_eq!(ok.1, vec![2, 4]);
        assert_eq!(ok.0[1].target.to_string(), "2001:2::/48");
        for (body, why) in [
            (&b"10.0.0.0/8\n\xff\xfe\n"[..], "line 2 is not UTF-8"),
            (
                b"10.0.0.0/8\n10.0.0.0/08\n",
                "line 2: invalid CIDR \"10.0.0.0/08\": write the prefix length",
            ),
            (
                b"1.2.3.4\n\n1.2.3.4\n",
                "line 3: deny src 1.2.3.4/32 is listed twice (first on line 1)",
            ),
            (b"", "no CIDRs"),
            (b"10.0.0.0/8\ncontainer:web\n", "line 2: an import takes CIDRs"),
        ] {
            let e = parse_import(Action::Deny, body, &q).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
