//! Forwarding: tenant resolution, key check, rate limit, then the request
//! streamed to the upstream and its response streamed back untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, ORIGIN, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, RETRY_AFTER,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Body as _;
use hyper::client::conn::http1;
use madbase_platform::server::ConnectionState;
use madbase_platform::{ApiError, client};
use madbase_tenancy::{Failure, Refusal, Surface};
use smallvec::SmallVec;
use tower::Service as _;
use tower::ServiceExt as _;

use crate::cors;
use crate::{AppState, Upstream};

/// The header carrying the tenant to upstreams; only the proxy sets it.
pub const TENANT_HEADER: &str = "x-madbase-tenant";

// Header names as constants: a `&str` key is parsed into a name on each use.
const TENANT: HeaderName = HeaderName::from_static(TENANT_HEADER);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// `/t/{tenant}/…` (the router matched the pattern; the tenant is the
/// second segment, taken from the path as sent).
pub(crate) async fn by_path(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let path = req.uri().path();
    let rest = path.get("/t/".len()..).unwrap_or_default();
    let (tenant, _) = rest.split_once('/').unwrap_or((rest, ""));
    let tenant = tenant.to_owned();
    let prefix_len = "/t/".len() + tenant.len();
    if !is_rest(upstream_path(req.uri(), prefix_len)) {
        return handle(state, tenant, prefix_len, peer, req).await;
    }
    if !req.headers().contains_key(ORIGIN) {
        return cors::vary(handle(state, tenant, prefix_len, peer, req).await);
    }
    let (s, t) = (state.clone(), tenant.clone());
    cors::around(&state, Some(&tenant), req, move |req| {
        handle(s, t, prefix_len, peer, req)
    })
    .await
}

/// `<tenant>.<domain>/…`
pub(crate) async fn by_host(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let tenant = host_tenant(&req, &state.config.domain);
    if !is_rest(req.uri().path()) {
        return by_host_tenant(state, tenant, peer, req).await;
    }
    if !req.headers().contains_key(ORIGIN) {
        return cors::vary(by_host_tenant(state, tenant, peer, req).await);
    }
    let (s, t) = (state.clone(), tenant.clone());
    cors::around(&state, tenant.as_deref(), req, move |req| {
        by_host_tenant(s, t, peer, req)
    })
    .await
}

async fn by_host_tenant(
    state: AppState,
    tenant: Option<String>,
    peer: SocketAddr,
    req: Request,
) -> Response {
    let Some(tenant) = tenant else {
        let (status, code) = Failure::NoTenant.answer(Surface::Gateway);
        return ApiError::new(
            status,
            code,
            format!(
                "no tenant in this request: use <tenant>.{} or the path prefix /t/<tenant>/",
                state.config.domain
            ),
        )
        .into_response();
    };
    handle(state, tenant, 0, peer, req).await
}

/// A data API path (after the tenant prefix): CORS is the proxy's to answer.
fn is_rest(path: &str) -> bool {
    path == "/rest/v1" || path.starts_with("/rest/v1/")
}

/// The tenant of a `<tenant>.<domain>` request.
fn host_tenant(req: &Request, domain: &str) -> Option<String> {
    let host = request_host(req).unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host.as_str(), |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host.as_str()
        }
    });
    let suffix = format!(".{domain}");
    host.to_ascii_lowercase()
        .strip_suffix(&suffix)
        .filter(|t| !t.contains('.'))
        .map(str::to_owned)
}

fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

fn tenant_not_found(tenant: &str) -> Response {
    Refusal::UnknownTenant(tenant.to_owned())
        .api_error(Surface::Gateway)
        .into_response()
}

/// The request path without the tenant prefix: the path the upstream sees.
fn upstream_path(uri: &Uri, prefix_len: usize) -> &str {
    uri.path().get(prefix_len..).unwrap_or("/")
}

/// `prefix_len`: how much of the request path is the tenant prefix (see
/// [`upstream_path`]).
async fn handle(
    state: AppState,
    tenant: String,
    prefix_len: usize,
    peer: SocketAddr,
    req: Request,
) -> Response {
    let path = upstream_path(req.uri(), prefix_len);
    let upstream = if is_rest(path) {
        Upstream::Worker
    } else if path == "/functions/v1" || path.starts_with("/functions/v1/") {
        Upstream::Functions
    } else {
        return ApiError::not_found("no route matches this path").into_response();
    };
    if !madbase_tenancy::is_valid_id(&tenant) {
        return tenant_not_found(&tenant);
    }
    tracing::Span::current().record("tenant", tenant.as_str());
    let response = authorize_and_forward(&state, &tenant, upstream, prefix_len, peer, req).await;
    // Only a tenant control knows becomes a label (bounded cardinality).
    let label = if response.extensions().get::<UnverifiedTenant>().is_some() {
        "unknown".to_owned()
    } else {
        tenant
    };
    state
        .metrics
        .request(label, upstream.name(), response.status().as_u16());
    response
}

/// Marks a response given before the tenant was known to exist (not
/// found, or control unreachable): its name is not a metrics label.
#[derive(Debug, Clone, Copy)]
struct UnverifiedTenant;

fn unverified(mut response: Response) -> Response {
    response.extensions_mut().insert(UnverifiedTenant);
    response
}

/// `tenant` as the handler's `String`: the rate limiter is keyed by
/// `String`, and borrowing it saves a copy per request.
#[allow(clippy::ptr_arg)]
async fn authorize_and_forward(
    state: &AppState,
    tenant: &String,
    upstream: Upstream,
    prefix_len: usize,
    peer: SocketAddr,
    req: Request,
) -> Response {
    // The tenant, and its key check (the tenancy contract: a refused
    // signature re-reads the tenant once, its keys may have been rotated
    // since it was cached). Functions
    // are reached without a key check here, as on Supabase (its gateway has
    // no key-auth on /functions/v1): the functions service verifies the
    // caller's JWT when the function has `verify_jwt` (the default) and
    // lets anyone in when it does not; a browser's preflight, which never
    // carries a key, reaches the function, which answers CORS itself.
    let checked = if upstream == Upstream::Functions {
        state.tenancy.tenant(tenant).await.map(drop)
    } else {
        (state.tenancy)
            .authenticate(tenant, req.headers(), Surface::Gateway)
            .await
            .map(drop)
    };
    if let Err(refusal) = checked {
        let response = refusal.api_error(Surface::Gateway).into_response();
        return match refusal.failure() {
            Failure::UnknownTenant | Failure::ControlUnreachable => unverified(response),
            _ => response,
        };
    }

    if let Some(limiter) = &state.limiter
        && let Err(not_until) = limiter.check_key(tenant)
    {
        state.metrics.rate_limited(tenant);
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many requests for tenant {tenant:?}; retry after {} s",
                seconds.max(1)
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return resp;
    }

    forward(state, tenant, upstream, prefix_len, peer, req).await
}

async fn forward(
    state: &AppState,
    tenant: &str,
    upstream: Upstream,
    prefix_len: usize,
    peer: SocketAddr,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let max = state.config.max_body_bytes;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return too_large(max);
    }
    let base = &state.upstreams[upstream.index()];
    let Some(path_and_query) = base.path_and_query(&parts.uri, prefix_len) else {
        return ApiError::bad_request("the request path cannot be forwarded").into_response();
    };

    // The client's header map, edited in place (no copy of its headers).
    let mut headers = parts.headers;
    let original_host = headers.remove(HOST);
    strip_forwarded(&mut headers);
    headers.reserve(ADDED_HEADERS);
    // Over HTTP/2 the upstream's address goes as `:authority` (`send`),
    // without a `Host` beside it (nginx refuses both).
    if let Some(host) = &base.host
        && !state.config.upstream_http2
    {
        headers.insert(HOST, host.clone());
    }
    headers.insert(
        TENANT,
        HeaderValue::from_str(tenant).unwrap_or(HeaderValue::from_static("")),
    );
    let mut xff = String::with_capacity(64);
    if let Some(prior) = headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        xff.push_str(prior);
        xff.push_str(", ");
    }
    push_ip(&mut xff, peer.ip());
    // The string's buffer becomes the value's (no second copy).
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    // A trusted proxy in front (a TLS terminator) says what the client
    // used; anyone else gets what this proxy saw.
    let trusted = state
        .config
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer.ip()));
    if !trusted || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !trusted || !headers.contains_key(X_FORWARDED_HOST) {
        match original_host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host);
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    client::inject(&mut headers);

    // An empty body (a GET) goes as it is: no limit to enforce, no box.
    // The limit tripping while the body streams raises a flag: the send's
    // error does not always carry the limit's (over HTTP/2 the body is
    // streamed by another task and the send fails with a reset stream).
    let mut over_limit = None;
    let body = if body.is_end_stream() {
        body
    } else {
        let flag = Arc::new(AtomicBool::new(false));
        over_limit = Some(flag.clone());
        Body::new(
            Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).map_err(move |e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    flag.store(true, Ordering::Relaxed);
                }
                e
            }),
        )
    };
    // In origin form, as written on an upstream connection; the pooled
    // client gets the absolute form (`send`).
    let mut upstream_req = http::Request::new(body);
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = Uri::from(path_and_query);
    *upstream_req.headers_mut() = headers;

    let timeout = match upstream {
        Upstream::Worker => state.config.rest_timeout,
        Upstream::Functions => state.config.functions_timeout,
    };
    let start = Instant::now();
    let name = upstream.name();
    if let Some(router) = &state.local[upstream.index()] {
        return in_process(state, upstream, router, upstream_req, timeout, max).await;
    }
    // HTTP/1 clients get an upstream connection each, unless the upstream
    // is spoken to in HTTP/2 (then every request goes through the pool).
    let conn = (parts.version <= http::Version::HTTP_11 && !state.config.upstream_http2)
        .then(|| parts.extensions.get::<ConnectionState>())
        .flatten();
    match tokio::time::timeout(timeout, send(state, upstream, conn, upstream_req)).await {
        Ok(Ok(resp)) => answered(state, upstream, start, resp.map(Body::new)),
        Ok(Err(_)) if over_limit.is_some_and(|f| f.load(Ordering::Relaxed)) => too_large(max),
        Ok(Err(e)) => upstream_failure(state, name, &e),
        Err(_) => timed_out(state, name, timeout),
    }
}

/// Where requests for one upstream go, parsed once from its URL.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamBase {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The URL's path without its trailing `/` (usually empty).
    path: String,
    /// The `Host` header of requests to it: its host, and its port unless
    /// the scheme's default.
    host: Option<HeaderValue>,
}

impl UpstreamBase {
    /// `None` when `url` has no scheme or authority (the configuration
    /// validates URLs, so only for a URL it would refuse).
    pub(crate) fn new(url: &str) -> Option<UpstreamBase> {
        let uri = url.parse::<Uri>().ok()?;
        Some(UpstreamBase {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
            path: uri.path().trim_end_matches('/').to_owned(),
            host: host_header(url),
        })
    }

    /// The upstream's path and query for a request to `uri` whose first
    /// `prefix_len` bytes of path are the tenant prefix. Without a prefix
    /// and base path the request's own (a reference count, no copy).
    fn path_and_query(&self, uri: &Uri, prefix_len: usize) -> Option<http::uri::PathAndQuery> {
        if prefix_len == 0 && self.path.is_empty() {
            return Some(
                uri.path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
        }
        let path = upstream_path(uri, prefix_len);
        let mut target = String::with_capacity(
            self.path.len() + path.len() + 1 + uri.query().map_or(0, str::len),
        );
        target.push_str(&self.path);
        target.push_str(path);
        if let Some(q) = uri.query() {
            target.push('?');
            target.push_str(q);
        }
        http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(target)).ok()
    }

    /// The absolute URI of an origin-form `uri` (for the pooled client and
    /// the connector).
    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }
}

/// Hands `req` (origin form, the upstream's `Host`, as it would go on the
/// wire) to `router`, the upstream's own router in this process: the body
/// is read first, within the same limit the HTTP path enforces while
/// streaming.
async fn in_process(
    state: &AppState,
    upstream: Upstream,
    router: &Router,
    req: http::Request<Body>,
    timeout: Duration,
    max: u64,
) -> Response {
    let name = upstream.name();
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return too_large(max);
                }
                source = s.source();
            }
            return ApiError::bad_request(format!("the request body could not be read: {e}"))
                .into_response();
        }
    };
    let req = http::Request::from_parts(parts, Body::from(bytes));
    match tokio::time::timeout(timeout, router.clone().oneshot(req)).await {
        Ok(Ok(resp)) => answered(state, upstream, start, resp),
        Ok(Err(never)) => match never {},
        Err(_) => timed_out(state, name, timeout),
    }
}

/// The upstream's answer, counted, without hop-by-hop headers (both paths).
fn answered(state: &AppState, upstream: Upstream, start: Instant, resp: Response) -> Response {
    state
        .metrics
        .upstream(upstream, resp.status().as_u16(), start.elapsed());
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body)
}

/// 504: the upstream did not answer within `timeout` (both paths).
fn timed_out(state: &AppState, name: &'static str, timeout: Duration) -> Response {
    state.metrics.upstream_error(name, "timeout");
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        format!(
            "the {name} service did not answer within {} s",
            secs(timeout)
        ),
    )
    .into_response()
}

/// What a client connection keeps of its upstream connection between its
/// requests.
struct OwnUpstream {
    upstream: Upstream,
    sender: http1::SendRequest<Body>,
}

/// Why a request did not reach its upstream or got no answer.
#[derive(Debug)]
enum SendError {
    /// Opening an upstream connection failed.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// Sending on the client connection's own upstream connection failed.
    Own(hyper::Error),
    /// Sending through the pool failed.
    Pooled(hyper_util::client::legacy::Error),
}

impl SendError {
    fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Own(_) => false,
            SendError::Pooled(e) => e.is_connect(),
        }
    }

    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            SendError::Connect(e) => e.as_ref(),
            SendError::Own(e) => e,
            SendError::Pooled(e) => e,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.as_error(), f)
    }
}

/// Sends `req` (origin form) to `upstream`. An HTTP/1 client connection (`conn`) gets an
/// upstream connection of its own, kept between its requests (which come
/// one at a time): no pool checkout per request, nor a task to return the
/// connection to the pool. HTTP/2 client connections (concurrent requests)
/// use the pool; so does a request that the own connection could not send
/// because it had been closed (it was not written, so it is sent again).
async fn send(
    state: &AppState,
    upstream: Upstream,
    conn: Option<&ConnectionState>,
    mut req: http::Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, SendError> {
    let base = &state.upstreams[upstream.index()];
    let Some(conn) = conn else {
        *req.uri_mut() = base.absolute(req.uri());
        return state.http.request(req).await.map_err(SendError::Pooled);
    };
    let kept = conn
        .take::<OwnUpstream>(|own| own.upstream == upstream)
        .map(|own| own.sender);
    let mut sender = match kept {
        // Ready once the previous response has been read to its end;
        // an error when the upstream has closed the connection.
        Some(mut sender) => match sender.ready().await {
            Ok(()) => sender,
            Err(_) => open(state, base).await?,
        },
        None => open(state, base).await?,
    };
    match sender.try_send_request(req).await {
        Ok(resp) => {
            conn.put(OwnUpstream { upstream, sender });
            Ok(resp)
        }
        Err(mut e) => match e.take_message() {
            Some(mut req) => {
                *req.uri_mut() = base.absolute(req.uri());
                state.http.request(req).await.map_err(SendError::Pooled)
            }
            None => Err(SendError::Own(e.into_error())),
        },
    }
}

/// The `Host` of requests to the upstream at `url`: its host, and its port
/// unless the scheme's default.
fn host_header(url: &str) -> Option<HeaderValue> {
    let uri = url.parse::<Uri>().ok()?;
    let authority = uri.authority()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match authority.port_u16() {
        Some(port) if port != default_port => {
            HeaderValue::from_str(&format!("{}:{port}", authority.host())).ok()
        }
        _ => HeaderValue::from_str(authority.host()).ok(),
    }
}

/// Opens a connection to `upstream`.
async fn open(
    state: &AppState,
    upstream: &UpstreamBase,
) -> Result<http1::SendRequest<Body>, SendError> {
    let io = state
        .connector
        .clone()
        .call(upstream.absolute(&Uri::from_static("/")))
        .await
        .map_err(|e| SendError::Connect(e.into()))?;
    let (sender, connection) = http1::handshake(io).await.map_err(SendError::Own)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn too_large(max: u64) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than {max} bytes"),
    )
    .into_response()
}

fn upstream_failure(state: &AppState, name: &'static str, e: &SendError) -> Response {
    if e.is_connect() {
        state.metrics.upstream_error(name, "connect");
        tracing::warn!(upstream = name, error = %e, "upstream unreachable");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("the {name} service is unreachable"),
        )
        .into_response()
    } else {
        state.metrics.upstream_error(name, "other");
        tracing::warn!(upstream = name, error = ?e, "upstream request failed");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!("the request to the {name} service failed"),
        )
        .into_response()
    }
}

/// Appends `ip` as `Display` writes it; IPv4 without the formatting
/// machinery (`Display` pads and aligns, and costs more than the rest of
/// the header work).
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// Headers the proxy adds to a forwarded request (room is made for them
/// at once, so adding them grows the map at most once).
const ADDED_HEADERS: usize = 8;

/// Removes from a client's headers what is not forwarded: hop-by-hop ones
/// (and those its `Connection` header lists) and every internal
/// (`x-madbase-*`) header a client may have sent. One pass over the names;
/// most requests have none of them (and an empty `Vec` does not allocate).
fn strip_forwarded(headers: &mut HeaderMap) {
    let found: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name) || name.as_str().starts_with("x-madbase-"))
        .cloned()
        .collect();
    if found.is_empty() {
        return;
    }
    for name in &connection_listed(headers) {
        headers.remove(name.as_str());
    }
    for name in found {
        headers.remove(name);
    }
}

/// The header names a `Connection` header lists (lowercase), leaving out
/// `close` and `keep-alive` (no header of that name is sent on, and
/// `Keep-Alive` is hop-by-hop anyway): the usual `Connection` values cost no
/// allocation.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    let usual = |v: &&HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    headers
        .get_all(CONNECTION)
        .iter()
        .filter(|v| !usual(v))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && !s.eq_ignore_ascii_case("close")
                && !s.eq_ignore_ascii_case("keep-alive")
        })
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1),
/// and `Transfer-Encoding` (the client library frames the body again).
/// Standard names compare as constants, without comparing strings.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names; most messages have none of them, or only
    // `Connection` (kept inline, no allocation).
    let found: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    if found.is_empty() {
        return;
    }
    // The names a `Connection` header lists are hop-by-hop too.
    for name in &connection_listed(headers) {
        headers.remove(name.as_str());
    }
    for name in found {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut ips: Vec<IpAddr> = [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 9, 99, 100],
            [255, 255, 255, 255],
            [203, 0, 113, 7],
            [1, 20, 200, 109],
        ]
        .into_iter()
        .map(|o| IpAddr::V4(Ipv4Addr::from(o)))
        .collect();
        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        ips.push("2001:db8::ff00:42:8329".parse().expect("ipv6"));
        ips.extend((0..=255u8).map(|b| IpAddr::V4(Ipv4Addr::new(b, b, 0, b))));
        for ip in ips {
            let mut out = String::from("x, ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x, {ip}"));
        }
    }

    #[test]
    fn forwarded_headers_drop_hop_by_hop_listed_host_and_internal() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "a.example"),
            ("connection", "keep-alive, X-Drop-Me"),
            ("keep-alive", "timeout=5"),
            ("x-drop-me", "1"),
            ("te", "trailers"),
            ("x-madbase-tenant", "spoofed"),
            ("x-madbase-role", "service_role"),
            ("accept", "application/json"),
            ("x-keep", "1"),
            ("x-keep", "2"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut out = h;
        strip_forwarded(&mut out);
        out.remove(HOST);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-keep"]);
        let kept: Vec<&HeaderValue> = out.get_all("x-keep").iter().collect();
        assert_eq!(kept, ["1", "2"]);
    }
}
