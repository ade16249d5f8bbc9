//! Outgoing HTTP: every request a service makes carries the current request
//! ID and W3C trace context.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, TraceFlags};

use crate::request_id::{self, SpanTrace};
use crate::{telemetry, text};

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
/// (of the current span) to `headers`. Inside the request span itself this
/// copies the headers computed when the request started ([`span_trace`]);
/// inside another span it writes that span's.
pub fn inject(headers: &mut HeaderMap) {
    let scope = request_id::with_current(|s| (s.id.clone(), s.trace.clone()));
    let (id, trace) = scope.unzip();
    if let Some(id) = id {
        headers.insert(X_REQUEST_ID, id);
    }
    // The current span's id, read without taking a handle on the span (a
    // clone and a close in the registry).
    let current = tracing::dispatcher::get_default(|d| d.current_span().id().cloned());
    let trace = match trace.flatten() {
        Some(t) if current.as_ref() == Some(&t.span) => Some(t),
        _ => trace_of(&tracing::Span::current()),
    };
    if let Some(t) = trace {
        headers.insert(TRACEPARENT, t.traceparent);
        if let Some(state) = t.tracestate {
            headers.insert(TRACESTATE, state);
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static(request_id::X_REQUEST_ID);
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The propagation headers of `span` (None for a span without a trace
/// context).
pub fn trace_of(span: &tracing::Span) -> Option<SpanTrace> {
    let sc = telemetry::span_context(span)?;
    span_trace(span.id()?, &sc)
}

/// The `traceparent` and `tracestate` headers of span `span` whose trace
/// context is `sc`, exactly as the W3C trace-context propagator writes them
/// (None for an invalid span context, which the propagator does not send
/// either). Computed once per request, so outgoing calls copy two header
/// values.
pub fn span_trace(span: tracing::Id, sc: &SpanContext) -> Option<SpanTrace> {
    if !sc.is_valid() {
        return None;
    }
    // 00-<trace id>-<span id>-<flags>, lowercase hex.
    let mut traceparent = [0u8; 55];
    traceparent[..3].copy_from_slice(b"00-");
    traceparent[35] = b'-';
    traceparent[52] = b'-';
    let flags = (sc.trace_flags() & TraceFlags::SAMPLED).to_u8();
    text::lower_hex(&sc.trace_id().to_bytes(), &mut traceparent[3..35]);
    text::lower_hex(&sc.span_id().to_bytes(), &mut traceparent[36..52]);
    text::lower_hex(&[flags], &mut traceparent[53..55]);
    let state = sc.trace_state().header();
    Some(SpanTrace {
        span,
        traceparent: HeaderValue::from_bytes(&traceparent).ok()?,
        tracestate: (!state.is_empty())
            .then(|| HeaderValue::from_str(&state).ok())
            .flatten(),
    })
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

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId, TraceState};
    use opentelemetry_http::HeaderInjector;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    fn by_propagator(cx: &opentelemetry::Context) -> HeaderMap {
        let mut headers = HeaderMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(&mut headers));
        headers
    }

    #[test]
    fn span_trace_writes_what_the_propagator_writes() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("hex");
        let states = [
            TraceState::default(),
            TraceState::from_key_value([("vendor", "opaque"), ("other", "x")]).expect("state"),
        ];
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            for state in &states {
                let sc = SpanContext::new(trace_id, span_id, flags, true, state.clone());
                let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
                let expected = by_propagator(&cx);
                let got = span_trace(tracing::Id::from_u64(7), &sc).expect("valid context");
                assert_eq!(Some(&got.traceparent), expected.get("traceparent"));
                // The propagator always sends tracestate, empty when there
                // is none; W3C trace context makes an empty one the same as
                // none, which is what we send.
                let expected_state = expected.get("tracestate").filter(|v| !v.is_empty());
                assert_eq!(got.tracestate.as_ref(), expected_state);
                assert_eq!(got.span, tracing::Id::from_u64(7));
            }
        }
        // An invalid span context: the propagator sends nothing, nor do we.
        let empty = opentelemetry::Context::new();
        assert!(by_propagator(&empty).is_empty());
        assert!(span_trace(tracing::Id::from_u64(7), &SpanContext::NONE).is_none());
    }
}
