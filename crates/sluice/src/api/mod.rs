//! The REST API: `fn app(state) -> Router`, served by the daemon on its unix
//! socket and driven directly (no socket) by the tests. Every failure is a
//! status code plus `{"error": "..."}`; bad input never changes anything.
//! Request bodies are capped at [`MAX_BODY`] ([`MAX_POLICY_BODY`] for a
//! policy) and parsed strictly by [`Json`].

pub mod guard;
pub mod metrics;
pub mod serve;
pub mod types;

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{rejection::PathRejection, rejection::QueryRejection, DefaultBodyLimit, FromRequestParts, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get},
    Router,
};
use serde::Serialize;
use sluice_abi::{stat, ABI_VERSION};

use crate::{
    dataplane::Dataplane,
    dataplane::EventMaps,
    events::{parse_kinds, Hub, Kind, RuleNames},
    firewall::{Firewall, FwError, Selector},
    limits::{Limiter, LimiterError},
    nat::{ForwardRequest, Nat, NatError, RedirectRequest},
    probes::{ProbeId, ProbeKind, SetProbeError},
    rules::{Action, Direction, RuleSpec},
};
use types::*;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;
/// Largest accepted policy (`POST /v1/policy`): about 600,000 entries, so
/// a whole rule set at the default capacities fits with room to spare.
pub const MAX_POLICY_BODY: usize = 32 << 20;
/// Time a client has to send a request body.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most rules one request may add.
pub const MAX_BATCH: usize = 100_000;

/// What the handlers share.
pub struct Ctl {
    pub fw: Mutex<Firewall>,
    pub limits: Mutex<Limiter>,
    /// Forward and redirect rules.
    pub nat: Mutex<Nat>,
    /// The L7 audit log (None: L7 off or no kernel).
    pub audit: Option<Arc<crate::audit::AuditStore>>,
    pub hub: Arc<Hub>,
    /// Lost counters and per-interface counters (None without a kernel).
    pub events: Option<Mutex<EventMaps>>,
    /// API requests by (route, status), for /metrics.
    pub requests: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    /// Set to true when the daemon stops: ends every event stream, so a
    /// graceful shutdown never waits on a following client.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// None when the API runs without a kernel (tests).
    pub dp: Option<Arc<Mutex<Dataplane>>>,
    pub started: Instant,
    /// Disabled probes, persisted.
    pub probes: Mutex<crate::probes::ProbeStates>,
    /// Held while kernel BPF run statistics are on (`sluice probes stats on`).
    pub probe_stats: Mutex<Option<std::os::fd::OwnedFd>>,
    pub interface_globs: Vec<String>,
    pub pin_dir: String,
    pub state_dir: String,
}

pub type AppState = Arc<Ctl>;

impl Ctl {
    /// A control block with empty event plumbing and forward/redirect rules
    /// kept in memory only (tests; the daemon fills in the real ones).
    pub fn new(fw: Firewall, limits: Limiter, dp: Option<Arc<Mutex<Dataplane>>>, hub: Arc<Hub>) -> Self {
        let store = crate::store::Store::in_memory().expect("an in-memory store");
        Ctl {
            fw: Mutex::new(fw),
            limits: Mutex::new(limits),
            nat: Mutex::new(Nat::open(store, None).expect("an empty rule set").0),
            audit: None,
            hub,
            events: None,
            requests: Mutex::new(Default::default()),
            shutdown: tokio::sync::watch::channel(false).0,
            dp,
            started: Instant::now(),
            probes: Mutex::new(
                crate::probes::ProbeStates::open(crate::store::Store::in_memory().expect("an in-memory store"))
                    .expect("no probe states"),
            ),
            probe_stats: Mutex::new(None),
            interface_globs: Vec::new(),
            pin_dir: String::new(),
            state_dir: String::new(),
        }
    }

    /// Brings the connection table in line with the tracer after it was
    /// attached or detached: seeded from the /proc scan its attach made, or
    /// emptied of open connections nobody follows any more.
    pub fn sync_conn_table(&self) {
        let Some(dp) = &self.dp else { return };
        // The table is changed under the dataplane lock, so a concurrent
        // enable and disable cannot apply their changes out of order.
        let mut dp = dp.lock().unwrap();
        let (seed, attached) = (dp.take_trace_seed(), dp.trace_program_id().is_some());
        let mut table = self.hub.conns.lock().unwrap();
        if !attached {
            table.forget_open(crate::limits::monotonic_ns());
        } else if let Some((found, since)) = seed {
            let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
            table.seed(&found, &now, since);
        }
    }
}

/// Drop events name their rule through the controllers.
impl RuleNames for Ctl {
    fn name(&self, rule_kind: u8, slot: u32) -> Option<(i64, String)> {
        // try_lock: the ring reader must never wait behind a long rule
        // change; an event decoded meanwhile names the rule kind, not its id.
        if rule_kind == sluice_abi::ev::RULE_LIMIT {
            let l = self.limits.try_lock().ok()?;
            let r = l.by_slot(slot as u16)?;
            Some((
                r.id,
                format!("limit {} {} {}", r.spec.m, r.spec.rate, r.spec.kind.as_str()),
            ))
        } else {
            let f = self.fw.try_lock().ok()?;
            let r = f.rule_by_slot(slot)?;
            Some((r.id, r.spec.key().describe()))
        }
    }
}

/// An API error: status plus one human-readable line.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            axum::Json(ErrorBody {
                error: one_line(&self.1),
            }),
        )
            .into_response()
    }
}

/// Error messages quote what the client sent; control characters are
/// escaped so a message stays one line and cannot drive a terminal.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl From<FwError> for ApiError {
    fn from(e: FwError) -> Self {
        let code = match &e {
            FwError::Invalid(_) | FwError::DuplicateInRequest(_) => StatusCode::BAD_REQUEST,
            FwError::Duplicate { .. } | FwError::Full { .. } => StatusCode::CONFLICT,
            FwError::NotFound { .. } => StatusCode::NOT_FOUND,
            FwError::Dataplane(crate::dataplane::DataplaneError::Full { .. }) => StatusCode::CONFLICT,
            FwError::Dataplane(_) | FwError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(code, e.to_string())
    }
}

impl From<LimiterError> for ApiError {
    fn from(e: LimiterError) -> Self {
        let code = match &e {
            LimiterError::Invalid(_) => StatusCode::BAD_REQUEST,
            LimiterError::Conflict { .. } | LimiterError::Full => StatusCode::CONFLICT,
            LimiterError::NotFound(_) => StatusCode::NOT_FOUND,
            LimiterError::Dataplane(_) | LimiterError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(code, e.to_string())
    }
}

impl From<NatError> for ApiError {
    fn from(e: NatError) -> Self {
        let code = match &e {
            NatError::Invalid(_) => StatusCode::BAD_REQUEST,
            NatError::Conflict { .. } | NatError::Full(..) => StatusCode::CONFLICT,
            NatError::NotFound(_) => StatusCode::NOT_FOUND,
            NatError::Dataplane(_) | NatError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(code, e.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, r.body_text())
    }
}

/// A JSON request body, stricter than serde's defaults: the content type
/// must be JSON; a key may appear once per object (serde_json would keep
/// the last one silently, and a proxy might read the first); and every
/// request struct must be a JSON object ([`Obj`]: serde also accepts a
/// struct written as an array of its fields, so `[1]` would otherwise be a
/// valid, empty policy). Every rejection is a JSON error; it is also the
/// response type.
pub struct Json<T>(pub T);

/// A request body type, with its size cap.
pub trait Body {
    /// Largest body of this type (the route's `DefaultBodyLimit` must allow
    /// it too).
    const MAX_BODY: usize = MAX_BODY;
    /// True if the body must be one JSON object (see [`Obj`]).
    const OBJECT: bool = true;
}

/// One rule object or an array of them; its own `Deserialize` keeps each
/// to an object.
impl Body for OneOrMany<RuleRequest> {
    const OBJECT: bool = false;
}
impl Body for LimitRequest {}
impl Body for ForwardRequest {}
impl Body for RedirectRequest {}
impl Body for ProbeStateRequest {}
impl Body for StatsRequest {}

/// A `T` that only deserialises from a JSON object (or TOML table), never
/// from an array of its fields.
pub struct Obj<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(Obj)
    }
}

/// `deserialize_with` for a list of request structs: objects only.
pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let v: Vec<Obj<T>> = serde::Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(|o| o.0).collect())
}

/// Fails on the first object that holds a key twice (or on bad JSON).
fn no_duplicate_keys(body: &[u8]) -> Result<(), serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    struct Walk;
    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                if !seen.insert(k.clone()) {
                    return Err(serde::de::Error::custom(format!("duplicate field `{k}`")));
                }
                m.next_value_seed(Walk)?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            while s.next_element_seed(Walk)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    Walk.deserialize(&mut de)?;
    de.end()
}

fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Ok(m) = ct.parse::<mime::Mime>() else {
        return false;
    };
    m.type_() == mime::APPLICATION && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
}

impl<S, T> axum::extract::FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Body,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a request with Content-Type: application/json".into(),
            ));
        }
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than {} bytes; split it into smaller batches",
                    T::MAX_BODY
                ),
            )
        };
        if declared.is_some_and(|n| n > T::MAX_BODY as u64) {
            // Refused up front: never wait for a body that will be refused.
            return Err(too_large());
        }
        let read = axum::body::Bytes::from_request(req, state);
        let body = tokio::time::timeout(BODY_READ_TIMEOUT, read).await.map_err(|_| {
            ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
            )
        })?;
        let body = body.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError(r.status(), r.body_text())
            }
        })?;
        // Syntax first (400), then duplicate keys and the shape (422).
        let status = |e: &serde_json::Error| {
            if e.is_data() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            }
        };
        no_duplicate_keys(&body).map_err(|e| {
            let what = if e.is_data() {
                "invalid request body"
            } else {
                "failed to parse the request body as JSON"
            };
            ApiError(status(&e), format!("{what}: {e}"))
        })?;
        let mut de = serde_json::Deserializer::from_slice(&body);
        let t = if T::OBJECT {
            serde_path_to_error::deserialize(&mut de).map(|o: Obj<T>| o.0)
        } else {
            serde_path_to_error::deserialize(&mut de)
        };
        let t = t.map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            let at = if at == "." { String::new() } else { format!("{at}: ") };
            ApiError(status(&inner), format!("invalid request body: {at}{inner}"))
        })?;
        Ok(Json(t))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

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
        .route("/v1/status", get(status))
        .merge(rule_routes(Action::Deny))
        .merge(rule_routes(Action::Allow))
        .route("/v1/limits", get(list_limits).post(add_limit))
        .route("/v1/limits/{id}", delete(delete_limit))
        .route("/v1/forwards", get(list_forwards).post(add_forward))
        .route("/v1/forwards/{id}", delete(delete_forward))
        .route("/v1/redirects", get(list_redirects).post(add_redirect))
        .route("/v1/redirects/{id}", delete(delete_redirect))
        .route("/v1/l7", get(l7_records))
        .route("/v1/probes", get(list_probes))
        .route(
            "/v1/policy",
            get(export_policy)
                .post(apply_policy)
                .layer(DefaultBodyLimit::max(MAX_POLICY_BODY)),
        )
        .route("/v1/probes/stats", axum::routing::put(set_probe_stats))
        .route("/v1/probes/{kind}/{attach}", axum::routing::put(set_probe_state))
        .route("/v1/events", get(events_sse))
        .route("/v1/events/recent", get(events_recent))
        .route("/v1/conns", get(conns))
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

fn forward_summary(s: &Ctl) -> ApiResult<ForwardSummary> {
    let n = s.nat.lock().unwrap();
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
    let lost_kernel = match &s.events {
        Some(m) => {
            let l = m
                .lock()
                .unwrap()
                .lost()
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            sluice_abi::ev::LOST_NAMES
                .iter()
                .zip(l)
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        }
        None => Default::default(),
    };
    Ok(EventSummary {
        received: s.hub.received().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        lost_kernel,
        lost_subscribers: s.hub.lost_by_subscribers(),
        malformed: s.hub.counters.malformed.load(Relaxed),
        connections_open: s.hub.conns.lock().unwrap().open_count(),
    })
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
                            .map_err(|e: crate::rules::RuleError| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
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
        let n = s.nat.lock().unwrap();
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
    let f = blocking(move || Ok(s.nat.lock().unwrap().add_forward(&req)?)).await?;
    Ok((StatusCode::CREATED, Json(ForwardView::new(&f, Default::default(), 0))).into_response())
}

async fn delete_forward(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<ForwardView>> {
    let f = blocking(move || Ok(s.nat.lock().unwrap().del_forward(id)?)).await?;
    Ok(Json(ForwardView::new(&f, Default::default(), 0)))
}

async fn list_redirects(State(s): State<AppState>) -> ApiResult<Json<Vec<RedirectView>>> {
    blocking(move || {
        let n = s.nat.lock().unwrap();
        let mut out = Vec::new();
        for r in n.redirects() {
            out.push(RedirectView::new(r, n.redirect_counter(r.slot)?));
        }
        Ok(Json(out))
    })
    .await
}

async fn add_redirect(State(s): State<AppState>, Json(req): Json<RedirectRequest>) -> ApiResult<Response> {
    let r = blocking(move || Ok(s.nat.lock().unwrap().add_redirect(&req)?)).await?;
    Ok((StatusCode::CREATED, Json(RedirectView::new(&r, Default::default()))).into_response())
}

async fn delete_redirect(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<RedirectView>> {
    let r = blocking(move || Ok(s.nat.lock().unwrap().del_redirect(id)?)).await?;
    Ok(Json(RedirectView::new(&r, Default::default())))
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

async fn l7_records(
    State(s): State<AppState>,
    Query(q): Query<L7Query>,
) -> ApiResult<Json<Vec<crate::audit::L7Record>>> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let proto = match &q.proto {
        Some(p) => Some(
            crate::l7::Proto::parse(p).ok_or_else(|| bad(format!("unknown protocol {p:?}: http, redis or mysql")))?,
        ),
        None => None,
    };
    let since_ns = match &q.since {
        Some(d) => {
            let d = humantime::parse_duration(d).map_err(|e| bad(format!("since {d:?}: {e}")))?;
            Some(crate::audit::now_unix_ns().saturating_sub(d.as_nanos().min(u64::MAX as u128) as u64))
        }
        None => None,
    };
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_L7_LIMIT {
        return Err(bad(format!("limit must be between 1 and {MAX_L7_LIMIT}")));
    }
    let Some(store) = s.audit.clone() else {
        return Ok(Json(Vec::new()));
    };
    blocking(move || {
        store
            .query(proto, since_ns, limit)
            .map(Json)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct ProbeList {
    /// True while kernel BPF run statistics are being collected.
    pub stats: bool,
    pub probes: Vec<crate::dataplane::Probe>,
}

async fn list_probes(State(s): State<AppState>) -> ApiResult<Json<ProbeList>> {
    let ifindexes: Vec<u32> = match &s.dp {
        Some(dp) => {
            let dp = dp.lock().unwrap();
            dp.attachments()
                .map(|a| a.ifindex)
                .chain(dp.failed().map(|f| f.0))
                .collect()
        }
        None => Vec::new(),
    };
    let hooks = match crate::probes::netlink_hooks(&ifindexes).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "netlink query of XDP/tc hooks failed; foreign XDP and tc programs are not listed");
            Default::default()
        }
    };
    blocking(move || {
        let mut probes = match &s.dp {
            Some(dp) => dp.lock().unwrap().probes(&hooks),
            None => Vec::new(),
        };
        if s.dp.is_none() {
            // No kernel (tests): the persisted states are all there is.
            for id in s.probes.lock().unwrap().disabled() {
                probes.push(crate::dataplane::Probe {
                    id: id.to_string(),
                    kind: id.kind.as_str().into(),
                    attach: id.attach.clone(),
                    program: String::new(),
                    prog_id: None,
                    owner: "sluice".into(),
                    mode: None,
                    state: "disabled".into(),
                    error: None,
                    run_count: 0,
                    run_time_ns: 0,
                });
            }
        }
        Ok(Json(ProbeList {
            stats: s.probe_stats.lock().unwrap().is_some(),
            probes,
        }))
    })
    .await
}

async fn export_policy(State(s): State<AppState>) -> ApiResult<Json<crate::policy::Policy>> {
    blocking(move || crate::policy::export(&s).map(Json).map_err(ApiError::from)).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/policy[?dry_run=true]`: makes the rule set equal to the body,
/// all or nothing, and answers with the diff.
async fn apply_policy(
    State(s): State<AppState>,
    Query(q): Query<ApplyQuery>,
    Json(p): Json<crate::policy::Policy>,
) -> ApiResult<Json<crate::policy::PolicyDiff>> {
    blocking(move || {
        // Synced whatever happened: a failed apply may have toggled the
        // tracer and put it back.
        let d = crate::policy::apply(&s, &p, q.dry_run);
        s.sync_conn_table();
        let d = d?;
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

impl From<crate::policy::PolicyError> for ApiError {
    fn from(e: crate::policy::PolicyError) -> Self {
        use crate::policy::PolicyError as P;
        let code = match &e {
            P::Invalid(_) => StatusCode::BAD_REQUEST,
            P::Failed(_) => StatusCode::CONFLICT,
            P::Partial(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "policy apply");
        }
        ApiError(code, e.to_string())
    }
}

/// Body of `PUT /v1/probes/{kind}/{attach}`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStateRequest {
    pub enabled: bool,
}

/// Answer of `PUT /v1/probes/{kind}/{attach}`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProbeStateView {
    pub id: String,
    pub enabled: bool,
    /// False if the state was already so.
    pub changed: bool,
    /// False if the attach point does not exist now: the state applies
    /// when it appears.
    pub present: bool,
}

/// Enables or disables one probe, persisted, taking effect at once.
async fn set_probe_state(
    State(s): State<AppState>,
    Path((kind, attach)): Path<(String, String)>,
    Json(req): Json<ProbeStateRequest>,
) -> ApiResult<Json<ProbeStateView>> {
    let id: ProbeId = format!("{kind}/{attach}")
        .parse()
        .map_err(|e: crate::probes::ProbeIdError| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    blocking(move || set_probe(&s, &id, req.enabled).map(Json)).await
}

/// One probe state change: kernel first, then the store; a store failure
/// puts the kernel back, so the two never disagree.
pub(crate) fn set_probe(s: &Ctl, id: &ProbeId, enabled: bool) -> ApiResult<ProbeStateView> {
    let r = set_probe_inner(s, id, enabled);
    if id.kind == ProbeKind::Trace {
        s.sync_conn_table();
    }
    r
}

fn set_probe_inner(s: &Ctl, id: &ProbeId, enabled: bool) -> ApiResult<ProbeStateView> {
    let mut states = s.probes.lock().unwrap();
    let internal = |e: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e);
    let view = |changed, present| ProbeStateView {
        id: id.to_string(),
        enabled,
        changed,
        present,
    };
    if states.is_enabled(id) == enabled {
        let present = match &s.dp {
            // Already enabled: attach it again if it failed (idempotent
            // when it is attached).
            Some(dp) if enabled => dp
                .lock()
                .unwrap()
                .set_probe(id, true)
                .map_err(|e| ApiError(StatusCode::CONFLICT, format!("{id}: {}", crate::dataplane::chain(&e))))?,
            Some(dp) => {
                let dp = dp.lock().unwrap();
                id.kind == ProbeKind::Trace || dp.attachments().any(|a| a.name == id.attach)
            }
            None => false,
        };
        return Ok(view(false, present));
    }
    let present = states.apply(s.dp.as_deref(), id, enabled).map_err(|e| match e {
        SetProbeError::Kernel(m) => ApiError(StatusCode::CONFLICT, m),
        SetProbeError::Partial(m) => {
            tracing::error!(error = %m, "probe state change");
            internal(m)
        }
        SetProbeError::Store(e) => {
            tracing::error!(error = %e, "persisting a probe state");
            internal(e.to_string())
        }
    })?;
    Ok(view(true, present))
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsRequest {
    pub enabled: bool,
}

/// Turns kernel BPF run statistics on (held until turned off or the daemon
/// stops) or off. They cost a clock read per program run, so they are off
/// by default.
async fn set_probe_stats(State(s): State<AppState>, Json(req): Json<StatsRequest>) -> ApiResult<Json<StatsRequest>> {
    let mut held = s.probe_stats.lock().unwrap();
    if req.enabled && held.is_none() {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("enabling BPF stats: {e}")))?;
        *held = Some(fd);
    } else if !req.enabled {
        *held = None;
    }
    Ok(Json(StatsRequest {
        enabled: held.is_some(),
    }))
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
async fn events_recent(
    State(s): State<AppState>,
    Query(q): Query<KindQuery>,
) -> ApiResult<Json<Vec<crate::events::Event>>> {
    let kinds = kinds(&q)?;
    Ok(Json(s.hub.recent(&kinds).iter().map(|e| (**e).clone()).collect()))
}

/// `GET /v1/conns`: open connections, then recently closed ones, oldest
/// first in each.
async fn conns(State(s): State<AppState>) -> ApiResult<Json<Vec<crate::conns::Conn>>> {
    blocking(move || Ok(Json(s.hub.conns.lock().unwrap().list()))).await
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
            if (i as u32) < stat::VERDICTS {
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
        let (interfaces, not_attached, programs) = match &s.dp {
            Some(dp) => {
                let dp = dp.lock().unwrap();
                let ifs = dp
                    .attachments()
                    .map(|a| IfaceView {
                        name: a.name.clone(),
                        ifindex: a.ifindex,
                        mode: a.mode(),
                        adopted: a.adopted,
                        tc: a.tc(),
                        disabled: [ProbeKind::Xdp, ProbeKind::TcIngress, ProbeKind::TcEgress]
                            .into_iter()
                            .filter(|k| !dp.wants(*k, &a.name))
                            .map(|k| k.as_str().to_string())
                            .collect(),
                        errors: [ProbeKind::Xdp, ProbeKind::TcIngress, ProbeKind::TcEgress]
                            .into_iter()
                            .filter_map(|k| Some((k.as_str().to_string(), a.error(k)?.to_string())))
                            .collect(),
                    })
                    .collect();
                let failed = dp
                    .failed()
                    .map(|(ifindex, name, why)| FailedIfaceView {
                        name: name.into(),
                        ifindex,
                        error: why.into(),
                    })
                    .collect();
                let mut progs = vec![ProgramView {
                    name: sluice_abi::xdp::PROGRAM.into(),
                    kind: "xdp".into(),
                    id: dp.program_id(),
                }];
                for (name, id) in dp.tc_program_ids() {
                    progs.push(ProgramView {
                        name: name.into(),
                        kind: "tc".into(),
                        id,
                    });
                }
                (ifs, failed, progs)
            }
            None => (Vec::new(), Vec::new(), Vec::new()),
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
