//! API errors: a status code plus `{"error": "one line"}`. Every
//! capability's error maps to a status here, and only here; a 5xx is logged.

use axum::{
    extract::rejection::{PathRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::types::ErrorBody;
use crate::{
    control::{policy::PolicyError, probes::SetProbeError},
    dataplane::DataplaneError,
    firewall::FwError,
    forward::ForwardError,
    limits::LimiterError,
};

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

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        tracing::error!(error = %msg, "request failed");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
}

impl From<FwError> for ApiError {
    fn from(e: FwError) -> Self {
        let code = match &e {
            FwError::Invalid(_) | FwError::DuplicateInRequest(_) => StatusCode::BAD_REQUEST,
            FwError::Duplicate { .. } | FwError::Full { .. } => StatusCode::CONFLICT,
            FwError::NotFound { .. } => StatusCode::NOT_FOUND,
            FwError::Dataplane(DataplaneError::Full { .. }) => StatusCode::CONFLICT,
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

impl From<ForwardError> for ApiError {
    fn from(e: ForwardError) -> Self {
        let code = match &e {
            ForwardError::Invalid(_) => StatusCode::BAD_REQUEST,
            ForwardError::Conflict { .. } | ForwardError::Full(..) => StatusCode::CONFLICT,
            ForwardError::NotFound(_) => StatusCode::NOT_FOUND,
            ForwardError::Dataplane(_) | ForwardError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(code, e.to_string())
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        let code = match &e {
            PolicyError::Invalid(_) => StatusCode::BAD_REQUEST,
            PolicyError::Failed(_) | PolicyError::Empty(_) => StatusCode::CONFLICT,
            PolicyError::Partial(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "policy apply");
        }
        ApiError(code, e.to_string())
    }
}

impl From<SetProbeError> for ApiError {
    fn from(e: SetProbeError) -> Self {
        match e {
            SetProbeError::Kernel(m) => ApiError(StatusCode::CONFLICT, m),
            SetProbeError::Partial(m) => {
                tracing::error!(error = %m, "probe state change");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, m)
            }
            SetProbeError::Store(e) => {
                tracing::error!(error = %e, "persisting a probe state");
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl From<DataplaneError> for ApiError {
    fn from(e: DataplaneError) -> Self {
        ApiError::internal(crate::model::chain(&e))
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
