//! The two listeners of a service (API and admin), the request pipeline every
//! route goes through, and graceful shutdown.
//!
//! Pipeline, outermost first: drop an invalid `X-Request-Id` (and give an
//! HTTP/2 request its `Host` from `:authority`) → tower-http
//! sets one when missing → tower-http copies it to the response → [`observe`]
//! (request span continuing the incoming `traceparent`, request scope,
//! the request-head size check with its 431 JSON, the 400 JSON for a path
//! that is not UTF-8 once percent-decoded, metrics, one log line) →
//! the route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use opentelemetry_http::HeaderExtractor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::ServiceExt as _;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::client;
pub use crate::config::ConnLimits;
use crate::error;
use crate::health::{self, HealthState, ReadyCheck};
use crate::metrics::Metrics;
use crate::request_id;
use crate::service::Service;
use crate::telemetry;

/// What a service contributes: its API routes, readiness checks and metrics.
#[derive(Debug)]
pub struct ServiceApp {
    /// The service being served (labels logs, metrics and `/health`).
    pub service: Service,
    /// The API routes (`/health` and the 404 fallback are added).
    pub api: Router,
    /// Dependencies `/ready` checks.
    pub ready: Vec<ReadyCheck>,
    /// The registry `/metrics` serves (create it with [`Metrics::new`] and
    /// register the service's metrics on it).
    pub metrics: Metrics,
}

#[derive(Debug, Clone)]
struct Observer {
    service: Service,
    metrics: Option<Metrics>,
    /// [`ConnLimits::max_header_bytes`].
    max_header_bytes: usize,
}

/// The API router: the service's routes, `/health`, 404 JSON for the rest,
/// request IDs, tracing and metrics, with the default [`ConnLimits`].
pub fn api_router(app: &ServiceApp) -> Router {
    api_router_with(app, ConnLimits::default())
}

/// [`api_router`] with these limits.
pub fn api_router_with(app: &ServiceApp, limits: ConnLimits) -> Router {
    let health = HealthState {
        service: app.service,
        checks: Arc::new(app.ready.clone()),
    };
    let observer = Observer {
        service: app.service,
        metrics: Some(app.metrics.clone()),
        max_header_bytes: limits.max_header_bytes,
    };
    with_pipeline(
        app.api
            .clone()
            .route("/health", get(health::health).with_state(health)),
        observer,
    )
}

/// The admin router: `/health`, `/ready`, `/metrics`, with the default
/// [`ConnLimits`].
pub fn admin_router(app: &ServiceApp) -> Router {
    admin_router_with(app, ConnLimits::default())
}

/// [`admin_router`] with these limits.
pub fn admin_router_with(app: &ServiceApp, limits: ConnLimits) -> Router {
    let health = HealthState {
        service: app.service,
        checks: Arc::new(app.ready.clone()),
    };
    let observer = Observer {
        service: app.service,
        metrics: None,
        max_header_bytes: limits.max_header_bytes,
    };
    let routes = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .with_state(health)
        .route(
            "/metrics",
            get(metrics_handler).with_state(app.metrics.clone()),
        );
    with_pipeline(routes, observer)
}

/// The pipeline is one layer: axum wraps every route (and the fallback) in
/// it and clones a route per request, and each `Router::layer` call would
/// add a boxed service to clone.
fn with_pipeline(routes: Router, observer: Observer) -> Router {
    routes.fallback(error::not_found).layer(
        ServiceBuilder::new()
            .map_request(prepare)
            .layer(request_id::set_layer())
            .layer(request_id::propagate_layer())
            .layer(middleware::from_fn_with_state(observer, observe)),
    )
}

/// Before the pipeline: an invalid `X-Request-Id` is dropped (tower-http
/// then sets one), and an HTTP/2 request without `Host` gets one from its
/// `:authority`, as RFC 9113 §8.3.1 asks of whoever turns it into an
/// HTTP/1.1 request: handlers (and the worker's `request.headers`) see the
/// same headers over either version.
fn prepare(req: Request) -> Request {
    let mut req = request_id::drop_invalid(req);
    if req.version() == http::Version::HTTP_2
        && !req.headers().contains_key(http::header::HOST)
        && let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
    req
}

async fn metrics_handler(State(metrics): State<Metrics>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            metrics.encode_openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            metrics.encode_prometheus(),
        )
            .into_response()
    }
}

/// 431 JSON for a request whose head is larger than `max` (observed,
/// logged and counted like any answer). hyper's own limit sits above this
/// one (see [`ConnLimits::hard_head_limit`]), so only heads beyond that get
/// hyper's bare 431.
fn head_too_large(req: &Request, max: usize) -> Option<Response> {
    let size = head_size(req);
    (size > max).then(|| {
        error::ApiError::new(
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_header_too_large",
            format!("the request line and headers take {size} bytes; at most {max} are accepted"),
        )
        .into_response()
    })
}

/// The size of the request head as HTTP/1.1 sends it: request line and
/// `name: value` lines with their line ends.
fn head_size(req: &Request) -> usize {
    const LINE_END: usize = 2;
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1".len() + LINE_END;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + LINE_END)
        .sum::<usize>()
        + line
        + LINE_END
}

/// 400 JSON for a path whose percent-decoded bytes are not UTF-8. Every
/// route parameter is text (axum's `Path` would refuse such a path with
/// its own plain-text 400), so the request is refused here, as JSON with
/// the request ID like every other error. A path without `%` is a `str`
/// already and costs one scan.
fn path_not_utf8(req: &Request) -> Option<Response> {
    let path = req.uri().path().as_bytes();
    if !path.contains(&b'%') {
        return None;
    }
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let (Some(high), Some(low)) = (hex(path.get(i + 1)), hex(path.get(i + 2)))
        {
            // Two hex digits: at most 0xff.
            decoded.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
            i += 3;
        } else {
            decoded.push(path[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).is_err().then(|| {
        error::ApiError::bad_request("the request path is not valid UTF-8 once percent-decoded")
            .into_response()
    })
}

/// A name, not a `&str`: a `&str` name is parsed on every lookup.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The request span (continuing an incoming `traceparent`), the request
/// scope (ID and trace headers for outgoing calls), the head-size check,
/// metrics by route template, and one log line per request.
async fn observe(State(obs): State<Observer>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    // MatchedPath is shared text: cloning it copies no string.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let id = request_id::of(&req);
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        service = obs.service.name(),
        request_id = id.to_str().unwrap_or_default(),
        tenant = Empty,
        http.request.method = method.as_str(),
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = Empty,
    );
    // Without a traceparent the span is a new root (OpenTelemetry's current
    // context is never activated, see `telemetry`); an invalid one does the
    // same through the propagator.
    if req.headers().contains_key(&TRACEPARENT) {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        telemetry::set_parent(&span, parent);
    }
    // Builds the span's trace context now: log lines read their trace and
    // span ids from it, outgoing calls its propagation headers.
    let trace = client::trace_of(&span);
    let scope = request_id::RequestScope { id, trace };

    let max_header_bytes = obs.max_header_bytes;
    let handled = async move {
        match head_too_large(&req, max_header_bytes).or_else(|| path_not_utf8(&req)) {
            Some(refused) => refused,
            None => next.run(req).await,
        }
    };
    let response = request_id::scope(scope, handled.instrument(span.clone())).await;

    let status = response.status();
    let elapsed = start.elapsed();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(metrics) = &obs.metrics {
        metrics.observe_request(&method, route, status.as_u16(), elapsed);
    }
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request completed"
        );
    });
    response
}

/// Both listeners of a service, bound.
#[derive(Debug)]
pub struct Listeners {
    api: TcpListener,
    admin: TcpListener,
    limits: ConnLimits,
}

impl Listeners {
    /// Binds both addresses; the error names the address that is taken.
    pub async fn bind(api: SocketAddr, admin: SocketAddr) -> anyhow::Result<Self> {
        let api_listener = TcpListener::bind(api)
            .await
            .with_context(|| format!("cannot listen on {api} (MADBASE_LISTEN)"))?;
        let admin_listener = TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} (MADBASE_ADMIN_LISTEN)"))?;
        Ok(Listeners {
            api: api_listener,
            admin: admin_listener,
            limits: ConnLimits::default(),
        })
    }

    /// Replaces the connection limits.
    pub fn with_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound address of the API listener (useful after binding port 0).
    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound address of the admin listener (useful after binding port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves `app` until `shutdown` is cancelled, then lets in-flight
    /// requests finish for at most `drain`.
    pub async fn serve(
        self,
        app: ServiceApp,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let service = app.service;
        tracing::info!(
            api = %self.api_addr(),
            admin = %self.admin_addr(),
            version = crate::VERSION,
            "{service} listening"
        );
        let graceful = Arc::new(GracefulShutdown::new());
        let api = accept_loop(
            self.api,
            api_router_with(&app, self.limits).layer(axum::Extension(Draining(shutdown.clone()))),
            self.limits,
            graceful.clone(),
            shutdown.clone(),
        );
        let admin = accept_loop(
            self.admin,
            admin_router_with(&app, self.limits),
            self.limits,
            graceful.clone(),
            shutdown.clone(),
        );
        let anchor = hold_timer_wheel(self.limits.header_read_timeout / 2, shutdown.clone());
        tokio::try_join!(api, admin, anchor)?;
        tracing::info!(
            drain_seconds = drain.as_secs_f64(),
            "{service} shutting down: draining in-flight requests"
        );
        let graceful =
            Arc::try_unwrap(graceful).map_err(|_| anyhow::anyhow!("accept loops still running"))?;
        match tokio::time::timeout(drain, graceful.shutdown()).await {
            Ok(()) => tracing::info!("{service} stopped"),
            Err(_) => tracing::warn!("{service} drain time exceeded; remaining requests cut"),
        }
        Ok(())
    }
}

/// Keeps a timer due within `period` while the service runs, so that the
/// header-read timer hyper arms after every response (due in
/// `header_read_timeout`, twice `period`) is never the earliest one.
///
/// Tokio wakes its own driver (an eventfd write, then one more
/// `epoll_wait`) whenever a timer is registered that is due before every
/// timer the driver knew of when it last went to sleep. While a request
/// waits (for its upstream, its worker, Postgres), the only timer left is
/// usually that request's own timeout (60 s upstream, a function's 150 s
/// wall limit): hyper dropped the connection's header-read timer when the
/// request's head arrived. So each keep-alive request paid two system calls
/// for nothing when its response went out; with this timer it does not
/// (`strace -c` of the functions service: 1 write and 1 `epoll_wait` fewer
/// per warm invocation). It costs one wake-up per `period` (5 s by
/// default).
async fn hold_timer_wheel(period: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
    }
}

/// In every API request's extensions: cancelled when the service starts
/// shutting down. Endless responses (control's change feed) end on it, so
/// the drain does not wait for them.
#[derive(Debug, Clone)]
pub struct Draining(pub CancellationToken);

/// State of one client connection that its requests share: each request's
/// extensions hold it. HTTP/1.1 serves a connection's requests one at a
/// time, so a handler can take something out, use it, and put it back for
/// the next request (the proxy keeps its upstream connection here).
#[derive(Clone, Default)]
pub struct ConnectionState(Arc<std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>>>);

impl ConnectionState {
    /// Removes and returns the first `T` that `wanted` accepts.
    pub fn take<T: std::any::Any + Send>(&self, wanted: impl Fn(&T) -> bool) -> Option<T> {
        let mut items = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = items
            .iter()
            .position(|item| item.downcast_ref::<T>().is_some_and(&wanted))?;
        items.swap_remove(at).downcast::<T>().ok().map(|b| *b)
    }

    /// Keeps `value` for a later request of this connection.
    pub fn put<T: std::any::Any + Send>(&self, value: T) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(value));
    }
}

impl std::fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionState")
    }
}

/// Accepts connections until `shutdown`, serving each with hyper (HTTP/1.1
/// and h2c) under `graceful`. The client's address is available to handlers
/// as `ConnectInfo<SocketAddr>`, the connection's [`ConnectionState`] as an
/// extension.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    graceful: Arc<GracefulShutdown>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.hard_head_limit());
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = ConnectionState::default();
        let svc = router
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                let ext = req.extensions_mut();
                ext.insert(ConnectInfo(peer));
                ext.insert(state.clone());
                req
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
            .into_owned();
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}
