//! The worker's errors and their PostgREST-compatible JSON bodies.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use madbase_platform::ApiError;

use crate::conns::DbError;
use crate::query::ParseError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fully formed API error.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// An API error whose `details` is JSON rather than a string (PGRST201
    /// lists the candidate relationships).
    #[error("{api}")]
    Detailed {
        api: Box<ApiError>,
        details: serde_json::Value,
    },
    /// PGRST205.
    #[error("table not found: {0}")]
    TableNotFound(String),
    /// A Postgres error; `anon` says whether the request had no user (42501 → 401).
    #[error("database: {source}")]
    Db { source: DbError, anon: bool },
    /// A bug or an impossible state: 500 with the cause logged.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn api(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Error::Api(Box::new(ApiError::new(status, code, message)))
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        match self {
            Error::Api(e) => Error::Api(Box::new(e.hint(hint))),
            Error::Detailed { api, details } => Error::Detailed {
                api: Box::new(api.hint(hint)),
                details,
            },
            other => other,
        }
    }

    pub fn details(self, details: impl Into<String>) -> Self {
        match self {
            Error::Api(e) => Error::Api(Box::new(e.details(details))),
            other => other,
        }
    }

    /// PGRST100: a malformed query string.
    pub fn query(e: ParseError) -> Self {
        Error::api(StatusCode::BAD_REQUEST, "PGRST100", e.message).details(e.details)
    }

    /// PGRST102: a malformed body.
    pub fn body(message: impl Into<String>) -> Self {
        Error::api(StatusCode::BAD_REQUEST, "PGRST102", message)
    }

    /// PGRST301: a refused JWT.
    pub fn jwt(message: impl Into<String>) -> Self {
        Error::api(StatusCode::UNAUTHORIZED, "PGRST301", message)
    }

    /// The code of an API error (`PGRST…`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(e) => Some(&e.code),
            Error::Detailed { api, .. } => Some(&api.code),
            _ => None,
        }
    }

    /// The SQLSTATE of a database error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db { source, .. } => source.sqlstate(),
            _ => None,
        }
    }

    /// The connection broke (worth one retry on a fresh connection).
    pub fn is_broken_connection(&self) -> bool {
        matches!(self, Error::Db { source, .. } if source.is_broken_connection())
    }

    pub fn into_api(self) -> ApiError {
        match self {
            Error::Api(e) => *e,
            Error::Detailed { api, details } => api.details(details.to_string()),
            Error::TableNotFound(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "PGRST205",
                format!("Could not find the table '{name}' in the schema cache"),
            ),
            Error::Db { source, anon } => db_error(&source, anon),
            Error::Internal(msg) => ApiError::internal(&anyhow::anyhow!(msg)),
        }
    }
}

/// Maps a Postgres error the way PostgREST does.
fn db_error(e: &DbError, anon: bool) -> ApiError {
    if let Some(db) = e.db() {
        let code = db.code().code();
        let status = match code {
            "23505" | "23503" | "40001" => StatusCode::CONFLICT,
            "42P01" | "42883" => StatusCode::NOT_FOUND,
            "42501" if anon => StatusCode::UNAUTHORIZED,
            "42501" => StatusCode::FORBIDDEN,
            "25006" => StatusCode::METHOD_NOT_ALLOWED,
            "57014" => StatusCode::SERVICE_UNAVAILABLE,
            "P0001" => StatusCode::BAD_REQUEST,
            c if c.starts_with("28") || c.starts_with("0L") || c.starts_with("0P") => {
                StatusCode::FORBIDDEN
            }
            c if c.starts_with("08") || c.starts_with("53") => StatusCode::SERVICE_UNAVAILABLE,
            c if c.starts_with("XX") => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut err = ApiError::new(status, code, db.message());
        if let Some(d) = db.detail() {
            err = err.details(d);
        }
        if let Some(h) = db.hint() {
            err = err.hint(h);
        }
        if status.is_server_error() {
            tracing::warn!(error = %e, "database error");
        }
        return err;
    }
    match e {
        DbError::PoolTimedOut => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "PGRST003",
            "Timed out acquiring connection from connection pool.",
        ),
        DbError::PoolClosed => unavailable(e),
        DbError::Postgres(_) if e.is_broken_connection() => unavailable(e),
        other => ApiError::internal(&anyhow::anyhow!("{other}")),
    }
}

fn unavailable(e: &DbError) -> ApiError {
    tracing::warn!(error = %e, "database connection failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "PGRST000",
        "Database client error. Retrying the connection.",
    )
}

/// PostgREST's error body: exactly `code`, `details`, `hint` and `message`
/// (`null` when absent). The request ID travels in `X-Request-Id` only, so
/// the platform's body (which adds `request_id`) is not used here.
#[derive(serde::Serialize)]
struct Body<'a> {
    code: &'a str,
    details: Details<'a>,
    hint: Option<&'a str>,
    message: &'a str,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum Details<'a> {
    Text(Option<&'a str>),
    Json(&'a serde_json::Value),
}

const JSON_UTF8: &str = "application/json; charset=utf-8";

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (api, json) = match self {
            Error::Detailed { api, details } => (*api, Some(details)),
            other => (other.into_api(), None),
        };
        let body = Body {
            code: &api.code,
            details: match &json {
                Some(v) => Details::Json(v),
                None => Details::Text(api.details.as_deref()),
            },
            hint: api.hint.as_deref(),
            message: &api.message,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(axum::body::Body::from(bytes));
        *resp.status_mut() = api.status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(JSON_UTF8),
        );
        if api.status == StatusCode::UNAUTHORIZED {
            // PostgREST: a refused token names the error; otherwise a token is required.
            let value = if api.code == "PGRST301" {
                let described = serde_json::to_string(&api.message).unwrap_or_default();
                http::HeaderValue::from_str(&format!(
                    "Bearer error=\"invalid_token\", error_description={described}"
                ))
                .unwrap_or(http::HeaderValue::from_static("Bearer"))
            } else {
                http::HeaderValue::from_static("Bearer")
            };
            resp.headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}
