//! The worker's errors and their PostgREST-compatible JSON bodies.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use madbase_platform::ApiError;
use madbase_tenancy::{Failure, Surface};

use crate::conns::DbError;
use crate::query::ParseError;

/// Every error the worker answers with itself, in one table: its code
/// (PostgREST's `PGRST…`, PostgreSQL's SQLSTATE where PostgREST answers
/// one before any query, or the platform's tenancy codes) and its status.
/// Errors Postgres raises keep their own SQLSTATE (see `db_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// PGRST000 (503): no connection to the database could be opened
    /// (server down, restarting, refusing connections).
    Connection,
    /// PGRST001 (503): the connection broke under a request (the server
    /// ended the session, or went away, possibly during `COMMIT`).
    ClientError,
    /// PGRST003 (504): no pooled connection in time.
    PoolTimeout,
    /// PGRST100 (400): a malformed query string.
    QueryString,
    /// PGRST101 (405): a method rpc does not take.
    RpcMethod,
    /// PGRST102 (400): a malformed body.
    InvalidBody,
    /// PGRST103 (416): `Range`/`limit`/`offset` beyond what there is.
    RangeNotSatisfiable,
    /// PGRST105 (405): a PUT whose filters are not `eq` on all and only the
    /// primary key's columns (or a table without a primary key).
    PutFilters,
    /// PGRST106 (406): `Accept-Profile`/`Content-Profile` names an unexposed schema.
    SchemaNotExposed,
    /// PGRST107 (406): no media type of `Accept` is produced.
    NotAcceptable,
    /// PGRST108 (400): a filter, order or limit names an embed not selected.
    NotEmbedded,
    /// PGRST109 (400): `limit`/`offset` on PATCH or DELETE without `order`.
    LimitWithoutOrder,
    /// PGRST110 (400): a limited PATCH or DELETE changed more rows than its
    /// `limit` (its `order` columns are not unique).
    ChangesOffLimits,
    /// PGRST114 (400): `limit`/`offset` on PUT.
    PutLimit,
    /// PGRST115 (400): a PUT body whose primary key is not the URL's.
    PutMatchingPk,
    /// PGRST116 (406): a singular response did not get exactly one row.
    NotSingular,
    /// PGRST117 (405): a method tables do not take.
    UnsupportedMethod,
    /// PGRST118 (400): ordering by a to-many embed.
    RelatedOrder,
    /// PGRST119 (400): spreading a to-many embed.
    Spread,
    /// PGRST122 (400): invalid preferences with `handling=strict`.
    InvalidPreferences,
    /// PGRST123 (400): aggregates in `select` while they are disabled.
    AggregatesDisabled,
    /// PGRST124 (400): more rows affected than `max-affected`.
    MaxAffected,
    /// PGRST200 (400): no relationship for an embed.
    NoRelationship,
    /// PGRST201 (300): several relationships fit an embed.
    AmbiguousRelationship,
    /// PGRST202 (404): no function fits the rpc.
    FunctionNotFound,
    /// PGRST203 (300): several functions fit the rpc.
    AmbiguousFunction,
    /// PGRST204 (400): a written column the table does not have.
    ColumnNotFound,
    /// PGRST205 (404): no such table or view.
    TableNotFound,
    /// PGRST301 (401): a refused JWT.
    Jwt,
    /// 42703 (400): an unknown column, found while planning (PostgREST
    /// answers PostgreSQL's code).
    UndefinedColumn,
    /// `tenant_required` (400): no `X-Madbase-Tenant`.
    TenantRequired,
    /// `tenant_not_found` (404).
    TenantNotFound,
    /// `unavailable` (503): control could not be asked about the tenant.
    ControlUnavailable,
}

impl Code {
    /// The table: code and status of each error.
    const fn entry(self) -> (&'static str, StatusCode) {
        match self {
            Code::Connection => ("PGRST000", StatusCode::SERVICE_UNAVAILABLE),
            Code::ClientError => ("PGRST001", StatusCode::SERVICE_UNAVAILABLE),
            Code::PoolTimeout => ("PGRST003", StatusCode::GATEWAY_TIMEOUT),
            Code::QueryString => ("PGRST100", StatusCode::BAD_REQUEST),
            Code::RpcMethod => ("PGRST101", StatusCode::METHOD_NOT_ALLOWED),
            Code::InvalidBody => ("PGRST102", StatusCode::BAD_REQUEST),
            Code::RangeNotSatisfiable => ("PGRST103", StatusCode::RANGE_NOT_SATISFIABLE),
            Code::PutFilters => ("PGRST105", StatusCode::METHOD_NOT_ALLOWED),
            Code::SchemaNotExposed => ("PGRST106", StatusCode::NOT_ACCEPTABLE),
            Code::NotAcceptable => ("PGRST107", StatusCode::NOT_ACCEPTABLE),
            Code::NotEmbedded => ("PGRST108", StatusCode::BAD_REQUEST),
            Code::LimitWithoutOrder => ("PGRST109", StatusCode::BAD_REQUEST),
            Code::ChangesOffLimits => ("PGRST110", StatusCode::BAD_REQUEST),
            Code::PutLimit => ("PGRST114", StatusCode::BAD_REQUEST),
            Code::PutMatchingPk => ("PGRST115", StatusCode::BAD_REQUEST),
            Code::NotSingular => ("PGRST116", StatusCode::NOT_ACCEPTABLE),
            Code::UnsupportedMethod => ("PGRST117", StatusCode::METHOD_NOT_ALLOWED),
            Code::RelatedOrder => ("PGRST118", StatusCode::BAD_REQUEST),
            Code::Spread => ("PGRST119", StatusCode::BAD_REQUEST),
            Code::InvalidPreferences => ("PGRST122", StatusCode::BAD_REQUEST),
            Code::AggregatesDisabled => ("PGRST123", StatusCode::BAD_REQUEST),
            Code::MaxAffected => ("PGRST124", StatusCode::BAD_REQUEST),
            Code::NoRelationship => ("PGRST200", StatusCode::BAD_REQUEST),
            Code::AmbiguousRelationship => ("PGRST201", StatusCode::MULTIPLE_CHOICES),
            Code::FunctionNotFound => ("PGRST202", StatusCode::NOT_FOUND),
            Code::AmbiguousFunction => ("PGRST203", StatusCode::MULTIPLE_CHOICES),
            Code::ColumnNotFound => ("PGRST204", StatusCode::BAD_REQUEST),
            Code::TableNotFound => ("PGRST205", StatusCode::NOT_FOUND),
            Code::Jwt => tenancy(Failure::InvalidKey),
            Code::UndefinedColumn => ("42703", StatusCode::BAD_REQUEST),
            Code::TenantRequired => tenancy(Failure::NoTenant),
            Code::TenantNotFound => tenancy(Failure::UnknownTenant),
            Code::ControlUnavailable => tenancy(Failure::ControlUnreachable),
        }
    }

    /// The code as the body's `code` says it.
    pub const fn as_str(self) -> &'static str {
        self.entry().0
    }

    pub const fn status(self) -> StatusCode {
        self.entry().1
    }

    fn api(self, message: impl Into<String>) -> ApiError {
        ApiError::new(self.status(), self.as_str(), message)
    }
}

/// A refusal's code and status on the data API, from the tenancy table
/// (`madbase_tenancy::Failure::answer`), which every service answers from.
const fn tenancy(failure: Failure) -> (&'static str, StatusCode) {
    let (status, code) = failure.answer(Surface::DataApi);
    (code, status)
}

/// One of the worker's own errors: its code, message, details and hint.
#[derive(Debug)]
pub struct Api {
    pub code: Code,
    pub message: String,
    pub details: Details,
    pub hint: Option<String>,
}

/// An error's `details`: text, or JSON (PGRST201 lists the candidate
/// relationships).
#[derive(Debug)]
pub enum Details {
    None,
    Text(String),
    Json(serde_json::Value),
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.status().as_u16(),
            self.code.as_str(),
            self.message
        )
    }
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One of the worker's own errors (see [`Code`]).
    #[error("{0}")]
    Api(Box<Api>),
    /// A Postgres error; `anon` says whether the request had no user (42501 → 401).
    #[error("database: {source}")]
    Db { source: DbError, anon: bool },
    /// A bug or an impossible state: 500 with the cause logged.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error::Api(Box::new(Api {
            code,
            message: message.into(),
            details: Details::None,
            hint: None,
        }))
    }

    /// PGRST109: `limit`/`offset` on PATCH or DELETE without an `order`.
    pub fn limit_without_order() -> Self {
        Error::new(
            Code::LimitWithoutOrder,
            "A 'limit' was applied without an explicit 'order'",
        )
        .hint("Apply an 'order' using unique column(s)")
    }

    /// PGRST115: a PUT whose body does not hold the URL's key.
    pub fn put_matching_pk() -> Self {
        Error::new(
            Code::PutMatchingPk,
            "Payload values do not match URL in primary key column(s)",
        )
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        if let Error::Api(a) = &mut self {
            a.hint = Some(hint.into());
        }
        self
    }

    pub fn details(mut self, details: impl Into<String>) -> Self {
        if let Error::Api(a) = &mut self {
            a.details = Details::Text(details.into());
        }
        self
    }

    /// `details` as JSON rather than a string.
    pub fn json_details(mut self, details: serde_json::Value) -> Self {
        if let Error::Api(a) = &mut self {
            a.details = Details::Json(details);
        }
        self
    }

    /// PGRST100: a malformed query string.
    pub fn query(e: ParseError) -> Self {
        Error::new(Code::QueryString, e.message).details(e.details)
    }

    /// The code of one of the worker's own errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Api(a) => Some(a.code),
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
}

/// Maps a Postgres error the way PostgREST does.
fn db_error(e: &DbError, anon: bool) -> ApiError {
    // The server ended the session (57P01 on a restart or a terminated
    // backend, 08xxx): the database is unavailable, not the request wrong.
    if e.is_broken_connection() {
        return broken(e);
    }
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
        DbError::PoolTimedOut => {
            Code::PoolTimeout.api("Timed out acquiring connection from connection pool.")
        }
        DbError::PoolClosed | DbError::Connect(_) => unavailable(e),
        DbError::Postgres(_) if e.is_broken_connection() => broken(e),
        other => ApiError::internal(&anyhow::anyhow!("{other}")),
    }
}

/// PostgREST's PGRST000: no connection could be opened; the details say
/// why (libpq's message there, the server's or the socket's here).
fn unavailable(e: &DbError) -> ApiError {
    tracing::warn!(error = %e, "database connection failed");
    Code::Connection
        .api("Database connection error. Retrying the connection.")
        .details(e.to_string())
}

/// PostgREST's PGRST001: the connection broke under the request.
fn broken(e: &DbError) -> ApiError {
    tracing::warn!(error = %e, "database connection broken");
    Code::ClientError
        .api("Database client error. Retrying the connection.")
        .details(e.to_string())
}

/// PostgREST's error body: exactly `code`, `details`, `hint` and `message`
/// (`null` when absent). The request ID travels in `X-Request-Id` only, so
/// the platform's body (which adds `request_id`) is not used here.
#[derive(serde::Serialize)]
struct Body<'a> {
    code: &'a str,
    details: BodyDetails<'a>,
    hint: Option<&'a str>,
    message: &'a str,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum BodyDetails<'a> {
    Text(Option<&'a str>),
    Json(&'a serde_json::Value),
}

const JSON_UTF8: &str = "application/json; charset=utf-8";

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Api(a) => {
                let details = match &a.details {
                    Details::None => BodyDetails::Text(None),
                    Details::Text(t) => BodyDetails::Text(Some(t)),
                    Details::Json(v) => BodyDetails::Json(v),
                };
                reply(
                    a.code.status(),
                    a.code.as_str(),
                    details,
                    a.hint.as_deref(),
                    &a.message,
                )
            }
            Error::Db { source, anon } => {
                let api = db_error(&source, anon);
                api_reply(&api)
            }
            Error::Internal(msg) => api_reply(&ApiError::internal(&anyhow::anyhow!(msg))),
        }
    }
}

fn api_reply(api: &ApiError) -> Response {
    reply(
        api.status,
        &api.code,
        BodyDetails::Text(api.details.as_deref()),
        api.hint.as_deref(),
        &api.message,
    )
}

fn reply(
    status: StatusCode,
    code: &str,
    details: BodyDetails<'_>,
    hint: Option<&str>,
    message: &str,
) -> Response {
    let body = Body {
        code,
        details,
        hint,
        message,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(axum::body::Body::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(JSON_UTF8),
    );
    if status == StatusCode::UNAUTHORIZED {
        // PostgREST: a refused token names the error; otherwise a token is required.
        let value = if code == Code::Jwt.as_str() {
            let described = serde_json::to_string(message).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: Error) -> (StatusCode, serde_json::Value, Option<String>) {
        let resp = e.into_response();
        let status = resp.status();
        let auth = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let v = serde_json::from_slice(&bytes).unwrap_or_default();
        (status, v, auth)
    }

    #[tokio::test]
    async fn bodies_carry_code_message_details_hint() {
        let (status, v, auth) = body(
            Error::new(Code::AmbiguousRelationship, "m")
                .hint("h")
                .json_details(serde_json::json!([{"a": 1}])),
        )
        .await;
        assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
        assert_eq!(
            v,
            serde_json::json!({"code": "PGRST201", "details": [{"a": 1}], "hint": "h", "message": "m"})
        );
        assert_eq!(auth, None);
        let (status, v, auth) = body(Error::new(Code::Jwt, "JWT expired")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            v,
            serde_json::json!({"code": "PGRST301", "details": null, "hint": null, "message": "JWT expired"})
        );
        assert_eq!(
            auth.as_deref(),
            Some(r#"Bearer error="invalid_token", error_description="JWT expired""#)
        );
        let (status, _, auth) = body(Error::new(Code::MaxAffected, "x").details("d")).await;
        assert_eq!((status, auth), (StatusCode::BAD_REQUEST, None));
    }

    #[test]
    fn each_code_is_written_once() {
        let all = [
            Code::Connection,
            Code::ClientError,
            Code::PoolTimeout,
            Code::QueryString,
            Code::RpcMethod,
            Code::InvalidBody,
            Code::RangeNotSatisfiable,
            Code::PutFilters,
            Code::SchemaNotExposed,
            Code::NotAcceptable,
            Code::NotEmbedded,
            Code::LimitWithoutOrder,
            Code::ChangesOffLimits,
            Code::PutLimit,
            Code::PutMatchingPk,
            Code::NotSingular,
            Code::UnsupportedMethod,
            Code::RelatedOrder,
            Code::Spread,
            Code::InvalidPreferences,
            Code::AggregatesDisabled,
            Code::MaxAffected,
            Code::NoRelationship,
            Code::AmbiguousRelationship,
            Code::FunctionNotFound,
            Code::AmbiguousFunction,
            Code::ColumnNotFound,
            Code::TableNotFound,
            Code::Jwt,
            Code::UndefinedColumn,
            Code::TenantRequired,
            Code::TenantNotFound,
            Code::ControlUnavailable,
        ];
        let mut codes: Vec<&str> = all.iter().map(|c| c.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert_eq!(Code::TableNotFound.as_str(), "PGRST205");
        assert_eq!(Code::TableNotFound.status(), StatusCode::NOT_FOUND);
    }
}
