//! The strict JSON body extractor: the content type must be JSON, a key
//! may appear once per object, every request struct must be a JSON object,
//! and the body is capped per type ([`Body`]). Every rejection is a JSON
//! error with a 4xx status.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{
    types::{OneOrMany, ProbeStateRequest, StatsRequest},
    ApiError, BODY_READ_TIMEOUT, MAX_BODY, MAX_POLICY_BODY,
};
use crate::{
    control::policy::Policy,
    firewall::RuleRequest,
    forward::{ForwardRequest, RedirectRequest},
    limits::LimitRequest,
    model::json::Obj,
};

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
impl Body for Policy {
    const MAX_BODY: usize = MAX_POLICY_BODY;
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
