//! Request IDs: an incoming `X-Request-Id` of 1–128 visible ASCII characters
//! is kept, anything else is replaced by a fresh UUID. tower-http's
//! request-id layers set and propagate the header; this module only adds the
//! validity rule and makes the current ID available to code that has no
//! access to the request (error bodies, outgoing requests).

use axum::extract::Request;
use http::{HeaderName, HeaderValue};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

/// The header carrying the request ID.
pub const X_REQUEST_ID: &str = "x-request-id";

/// [`X_REQUEST_ID`] as a header name (a `&str` name is parsed on every lookup).
const HEADER: HeaderName = HeaderName::from_static(X_REQUEST_ID);

/// What calls made while handling a request carry: its ID and, computed
/// once when the request span starts, that span's W3C trace context.
#[derive(Debug, Clone)]
pub struct RequestScope {
    /// The request ID, as the request carried it (or as generated).
    pub id: HeaderValue,
    /// The request span and its `traceparent` (and `tracestate`, when not
    /// empty): what an outgoing request made directly inside that span sends.
    pub trace: Option<SpanTrace>,
}

/// A span's trace context as propagation headers.
#[derive(Debug, Clone)]
pub struct SpanTrace {
    /// The span the context belongs to.
    pub span: tracing::Id,
    /// The W3C `traceparent` header value.
    pub traceparent: HeaderValue,
    /// The W3C `tracestate` header value, None when empty.
    pub tracestate: Option<HeaderValue>,
}

tokio::task_local! {
    static CURRENT: RequestScope;
}

/// True when `value` may be kept as a request ID: 1 to 128 characters, each
/// visible ASCII (`!` to `~`).
pub fn is_valid(value: &[u8]) -> bool {
    (1..=128).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Removes an `X-Request-Id` header that is not a valid request ID, so the
/// set layer replaces it with a generated one.
pub fn drop_invalid(mut req: Request) -> Request {
    let headers = req.headers_mut();
    let all_valid = {
        let mut values = headers.get_all(&HEADER).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => is_valid(v.as_bytes()),
            (None, _) => true,
            // More than one ID: ambiguous, replace it.
            (Some(_), Some(_)) => false,
        }
    };
    if !all_valid {
        headers.remove(&HEADER);
    }
    req
}

/// The layer that generates a UUID when the request has no (valid) ID.
pub fn set_layer() -> SetRequestIdLayer<MakeUuid> {
    SetRequestIdLayer::x_request_id(MakeUuid)
}

/// A random (v4) UUID, lowercase and hyphenated, as tower-http's
/// `MakeRequestUuid` makes it, written into a stack buffer instead of
/// formatted into a `String` first.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// The layer that copies the request ID onto the response.
pub fn propagate_layer() -> PropagateRequestIdLayer {
    PropagateRequestIdLayer::x_request_id()
}

/// The request ID of a request that went through [`set_layer`] (an empty
/// value if it did not).
pub fn of(req: &Request) -> HeaderValue {
    req.headers()
        .get(&HEADER)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""))
}

/// Runs `fut` inside the request `scope`.
pub async fn scope<F: Future>(scope: RequestScope, fut: F) -> F::Output {
    CURRENT.scope(scope, fut).await
}

/// Reads the scope of the request this task is handling, if any.
pub fn with_current<R>(f: impl FnOnce(&RequestScope) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}

/// The ID of the request being handled by this task, if any.
pub fn current() -> Option<String> {
    with_current(|s| s.id.to_str().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_v4_uuids_and_valid() {
        let req = http::Request::new(());
        let mut ids = std::collections::HashSet::new();
        for _ in 0..100 {
            let id = MakeUuid.make_request_id(&req).expect("an id");
            let text = id.header_value().to_str().expect("text");
            let parsed = uuid::Uuid::parse_str(text).expect("a uuid");
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(text, parsed.hyphenated().to_string());
            assert!(is_valid(text.as_bytes()));
            ids.insert(text.to_owned());
        }
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn validity_rule() {
        assert!(is_valid(b"abc-123"));
        assert!(is_valid(&[b'a'; 128]));
        assert!(!is_valid(&[b'a'; 129]));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"has space"));
        assert!(!is_valid(b"tab\there"));
        assert!(!is_valid("caf\u{e9}".as_bytes()));
    }
}
