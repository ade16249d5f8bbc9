//! CORS for the data API (`/rest/v1`), the way Supabase's gateway (Kong's
//! `cors` plugin) answers it: tower-http's `CorsLayer` does the protocol;
//! this module only picks the policy per request, since the allowed origins
//! may be the tenant's own (control's tenant settings) rather than
//! `MADBASE_CORS_ORIGINS`.
//!
//! - A preflight (`OPTIONS` with `Origin`) is answered here, without a key
//!   and without reaching the worker: 204 with `Access-Control-Allow-Origin`
//!   (when the origin is allowed), `-Allow-Methods`, `-Allow-Headers` (the
//!   requested ones), `-Max-Age`.
//! - Every other response to a request with `Origin`, the proxy's own errors
//!   included (401, 404, 413, 429, 502, 504), carries
//!   `Access-Control-Allow-Origin` and `-Expose-Headers`, so a page can read
//!   them.
//! - Allowed origins `*` answer `Access-Control-Allow-Origin: *` without
//!   credentials; an explicit list answers the request's origin when listed,
//!   with `Access-Control-Allow-Credentials: true`. A disallowed origin gets
//!   no `Access-Control-Allow-Origin` (the browser blocks the response).
//! - `Vary: Origin, Access-Control-Request-Method,
//!   Access-Control-Request-Headers` on every response, also without
//!   `Origin`, so a shared cache never serves one origin's answer to another.

use std::time::Duration;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::{IntoResponse as _, Response};
use http::header::VARY;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

use crate::AppState;

/// How long a browser may cache a preflight (Chromium caps it at 2 h).
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// The methods of the data API.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PATCH,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
];

/// Response headers a page may read besides the CORS-safelisted ones.
const EXPOSED: [&str; 6] = [
    "content-range",
    "content-location",
    "location",
    "preference-applied",
    "x-request-id",
    "retry-after",
];

/// What tower-http's layer says in `Vary`, also sent without `Origin`.
const VARY_VALUE: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

/// The CORS policies: the platform's, and how to build a tenant's.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    /// `MADBASE_CORS_ORIGINS`.
    default: CorsLayer,
}

impl Cors {
    /// The platform's policy from `MADBASE_CORS_ORIGINS` (normalised).
    pub(crate) fn new(origins: &[String]) -> Self {
        Cors {
            default: layer(origins),
        }
    }

    /// The policy for `tenant_origins` (`None`: the platform's).
    fn policy(&self, tenant_origins: Option<&[String]>) -> CorsLayer {
        match tenant_origins {
            Some(origins) => layer(origins),
            None => self.default.clone(),
        }
    }
}

/// A tower-http layer allowing `origins` (`["*"]`: any, without
/// credentials; otherwise these exact origins, with credentials).
fn layer(origins: &[String]) -> CorsLayer {
    let base = CorsLayer::new()
        .allow_methods(METHODS)
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(ExposeHeaders::list(EXPOSED.map(HeaderName::from_static)))
        .max_age(MAX_AGE);
    if origins.iter().any(|o| o == "*") {
        return base.allow_origin(AllowOrigin::any());
    }
    // Origins are validated (control's settings, the proxy's configuration);
    // one that still is not a header value can match no request.
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    base.allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
}

/// `resp` with the `Vary` of a CORS answer: a data API response to a
/// request without `Origin` (not a browser's cross-origin request: nothing
/// to answer, nothing to look up; the hot path of server-side clients).
pub(crate) fn vary(mut resp: Response) -> Response {
    resp.headers_mut().append(VARY, VARY_VALUE);
    resp
}

/// Answers CORS for a data API request with `Origin` to `tenant` around
/// `inner` (the forwarding): a preflight is answered here (204) without
/// running `inner`; any other response of `inner`, errors included, gets
/// the CORS headers. The tenant's own origins apply when it has some;
/// unknown tenants and an unreachable control get the platform's (their
/// errors must still be readable).
pub(crate) async fn around<F, Fut>(
    state: &AppState,
    tenant: Option<&str>,
    req: Request,
    inner: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let info = match tenant {
        Some(t) if madbase_tenancy::is_valid_id(t) => {
            state.tenancy.tenants().get(t).await.ok().flatten()
        }
        _ => None,
    };
    let policy = state
        .cors
        .policy(info.as_ref().and_then(|i| i.cors_origins.as_deref()));
    let preflight = req.method() == Method::OPTIONS;
    // tower-http calls the service once at most (never for a preflight).
    let mut inner = Some(inner);
    let service = tower::service_fn(move |req: Request| {
        let inner = inner.take();
        async move {
            Ok::<_, Infallible>(match inner {
                Some(inner) => inner(req).await,
                None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            })
        }
    });
    let mut resp = match policy.layer(service).oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    if preflight {
        // tower-http answers 200 with an empty body; 204 says so.
        *resp.status_mut() = StatusCode::NO_CONTENT;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_origin_never_allows_credentials() {
        // tower-http refuses (panics on) credentials with `*`: the `*`
        // policy must be built without them.
        let l = layer(&["*".to_owned()]);
        let svc = l.layer(tower::service_fn(|_: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));
        let req = http::Request::builder()
            .header(http::header::ORIGIN, "https://a.example")
            .body(String::new())
            .expect("request");
        let resp = block_on(svc.oneshot(req));
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert!(
            !resp
                .headers()
                .contains_key("access-control-allow-credentials")
        );
    }

    fn block_on<F: std::future::Future<Output = Result<T, std::convert::Infallible>>, T>(
        f: F,
    ) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        match rt.block_on(f) {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }
}
