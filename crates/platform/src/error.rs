//! The JSON error body every service returns:
//! `{"code","message","details","hint","request_id"}`, never a stack trace.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use crate::request_id;

/// An error answered to a client.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    /// The HTTP status answered (not part of the body).
    #[serde(skip)]
    pub status: StatusCode,
    /// A stable machine-readable error code, e.g. `not_found`.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
    /// More detail about the failure, when there is any.
    pub details: Option<String>,
    /// A suggestion how to fix the request, when there is one.
    pub hint: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `message` and no details or hint.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            hint: None,
        }
    }

    /// Sets `details`.
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// Sets `hint`.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A 401 with code `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// A 500 for an unexpected failure: the cause chain is logged, the client
    /// only sees a generic message and the request ID.
    pub fn internal(cause: &anyhow::Error) -> Self {
        tracing::error!(error = format!("{cause:#}"), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        )
    }

    /// A 503 naming the dependency that is unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(flatten)]
    error: &'a ApiError,
    request_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: &self,
            request_id: request_id::current(),
        };
        (self.status, Json(body)).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The fallback for unknown routes: 404 JSON.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no route matches this path")
}
