//! Outgoing HTTP: every request a service makes carries the current request
//! ID and W3C trace context.

use std::time::Duration;

use http::{HeaderMap, HeaderName};
use opentelemetry_http::HeaderInjector;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::request_id;

/// A client for calls between madbase services (plain HTTP on the internal
/// network, short timeouts).
pub fn internal_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("madbase/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Adds `X-Request-Id` (of the request being handled) and `traceparent`
/// (of the current span) to `headers`.
pub fn inject(headers: &mut HeaderMap) {
    if let Some(id) = request_id::current_header() {
        headers.insert(HeaderName::from_static(request_id::X_REQUEST_ID), id);
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers));
    });
}

/// The propagation headers for an outgoing request.
pub fn propagation_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    headers
}

/// A one-line description of a client error, with its cause chain.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
