//! `/functions/v1/{name}[/rest]`: one invocation.
//!
//! The proxy forwards here with `X-Madbase-Tenant` (it has checked the
//! request's API key). This handler looks the function up (`code.rs`),
//! checks the caller's `Authorization: Bearer` JWT with the tenant's secret
//! when the function has `verify_jwt` (the default), applies the
//! per-tenant concurrency cap and the request body limit, and runs the
//! function in a worker (`pool.rs`).
//!
//! Errors are the platform's JSON error body, with the request ID:
//!
//! | what | status | code |
//! |---|---|---|
//! | no such function (or deleted) | 404 | `function_not_found` |
//! | `verify_jwt` and no/invalid bearer JWT | 401 | `missing_authorization` / `invalid_jwt` |
//! | request body over the limit | 413 | `function_request_too_large` |
//! | the tenant's concurrent invocations at the cap | 429 | `function_concurrency_limit` |
//! | no worker free in time (queue full or waited too long) | 503 | `function_pool_busy` |
//! | CPU time limit | 546 | `function_cpu_limit` (Supabase's `WORKER_LIMIT` status) |
//! | memory limit | 500 | `function_memory_limit` |
//! | uncaught exception / rejected promise | 500 | `function_error` (with the message) |
//! | no `Deno.serve` / `export default { fetch }` | 500 | `function_no_handler` |
//! | the handler's value is not a `Response` | 500 | `function_bad_response` |
//! | response body over the limit | 500 | `function_response_too_large` |
//! | too many / too large sub-requests, blocked address | 500 | `function_fetch_limit` |
//! | wall-clock limit (the worker is killed) | 504 | `function_wall_limit` |
//! | the worker process died or broke the protocol | 500 | `function_crashed` |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use madbase_js::protocol::{
    FunctionError, FunctionKey, HeaderList, Invoke, Limits, Outcome, Reply,
};
use madbase_platform::metrics::{LatencyFamily, latency_family};
use madbase_platform::secrets::{ExposeSecret as _, SecretString};
use madbase_platform::{ApiError, Metrics, request_id};
use madbase_tenancy::jwt;
use madbase_tenancy::{Failure, Surface, Tenancy, TenantClient, TenantInfo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::Instrument as _;

use crate::Config;
use crate::code::{CodeCache, FunctionCode, LimitOverrides};
use crate::history::{History, Invocation};
use crate::pool::{Answer, Pool, RunError};

/// The status Supabase answers for a function over its resource limits
/// (`WORKER_LIMIT`); madbase uses it for the CPU limit.
pub(crate) const WORKER_LIMIT: u16 = 546;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    tenant: String,
    /// The function's name when it is deployed; `unknown` otherwise (names
    /// from requests never become labels: unbounded cardinality).
    function: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    tenant: String,
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Keys minted for one tenant secret (`SUPABASE_ANON_KEY`, `…_SERVICE_ROLE_KEY`).
#[derive(Debug, Clone)]
struct MintedKeys {
    secret: SecretString,
    anon: String,
    service: String,
}

/// State of the invocation routes.
#[derive(Debug)]
pub(crate) struct Invoker {
    /// Who is calling: the tenant client and the verified-key cache.
    tenancy: Tenancy,
    code: CodeCache,
    pool: Arc<Pool>,
    public_url: String,
    proxy_url: String,
    fetch_allow: Vec<String>,
    limits: Limits,
    /// `MADBASE_FUNCTIONS_WALL_SECONDS` (a tenant may override it).
    wall: std::time::Duration,
    max_request_bytes: usize,
    tenant_concurrency: usize,
    running: Mutex<HashMap<String, usize>>,
    keys: Mutex<HashMap<String, MintedKeys>>,
    invocations: Family<RunLabels, Counter>,
    durations: LatencyFamily<OutcomeLabels>,
    cold_starts: Family<FunctionLabels, Counter>,
    cpu: Family<FunctionLabels, Counter<f64>>,
    /// Recent invocations of each function (for the console).
    history: Arc<History>,
}

impl Invoker {
    pub(crate) fn new(
        config: &Config,
        tenants: TenantClient,
        code: CodeCache,
        pool: Arc<Pool>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let invocations = Family::default();
        metrics.register(
            "madbase_function_invocations",
            "Function invocations by tenant, function (`unknown` unless deployed) and outcome",
            invocations.clone(),
        );
        let durations = latency_family();
        metrics.register(
            "madbase_function_duration_seconds",
            "Function invocation time in the functions service, by outcome",
            durations.clone(),
        );
        let cold_starts = Family::default();
        metrics.register(
            "madbase_function_cold_starts",
            "Invocations that compiled the function in their worker, by tenant and function",
            cold_starts.clone(),
        );
        let cpu = Family::default();
        metrics.register(
            "madbase_function_cpu_seconds",
            "CPU time the workers spent on functions, by tenant and function",
            cpu.clone(),
        );
        let mut fetch_allow = config.fetch_allow.clone();
        for url in [&config.proxy_url, &config.public_url] {
            if let Some(host) = url_host(url)
                && !fetch_allow.contains(&host)
            {
                fetch_allow.insert(0, host);
            }
        }
        Arc::new(Invoker {
            tenancy: Tenancy::new(tenants),
            code,
            pool,
            public_url: config.public_url.clone(),
            proxy_url: config.proxy_url.clone(),
            fetch_allow,
            limits: Limits {
                cpu_ms: config.cpu_ms,
                memory_bytes: config.memory_bytes,
                max_response_bytes: config.max_response_bytes,
                max_fetches: config.max_fetches,
                max_fetch_bytes: config.max_fetch_bytes,
            },
            wall: config.wall,
            max_request_bytes: config.max_request_bytes,
            tenant_concurrency: config.tenant_concurrency,
            running: Mutex::default(),
            keys: Mutex::default(),
            invocations,
            durations,
            cold_starts,
            cpu,
            history: Arc::default(),
        })
    }

    /// The record of recent invocations.
    pub(crate) fn history(&self) -> Arc<History> {
        self.history.clone()
    }

    fn count(&self, tenant: &str, function: Option<&str>, outcome: &'static str, start: Instant) {
        self.invocations
            .get_or_create(&RunLabels {
                tenant: tenant.to_owned(),
                function: function.unwrap_or("unknown").to_owned(),
                outcome,
            })
            .inc();
        self.durations
            .get_or_create(&OutcomeLabels { outcome })
            .observe(start.elapsed().as_secs_f64());
    }

    /// The tenant's anon and service keys (minted once per tenant secret).
    fn keys(&self, info: &TenantInfo) -> MintedKeys {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = keys.get(&info.id)
            && k.secret.expose_secret() == info.jwt_secret.expose_secret()
        {
            return k.clone();
        }
        let minted = MintedKeys {
            secret: info.jwt_secret.clone(),
            anon: jwt::api_key(info.jwt_secret.expose_secret(), &info.id, "anon"),
            service: jwt::api_key(info.jwt_secret.expose_secret(), &info.id, "service_role"),
        };
        if keys.len() >= 10_000 {
            keys.clear();
        }
        keys.insert(info.id.clone(), minted.clone());
        minted
    }

    /// The limits of one invocation: the service's, with the tenant's
    /// overrides from control; and the tenant's concurrency cap.
    fn limits_for(&self, overrides: &LimitOverrides) -> (Limits, std::time::Duration, usize) {
        let mut limits = self.limits;
        if let Some(ms) = overrides.cpu_ms {
            limits.cpu_ms = ms;
        }
        if let Some(mb) = overrides.memory_mb {
            limits.memory_bytes = mb.saturating_mul(1024 * 1024);
        }
        let wall = overrides
            .wall_seconds
            .map_or(self.wall, std::time::Duration::from_secs);
        let cap = overrides
            .max_concurrent
            .map_or(self.tenant_concurrency, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
        (limits, wall, cap)
    }

    /// Takes one of the tenant's concurrent invocations, `None` at `cap`.
    fn admit(self: &Arc<Self>, tenant: &str, cap: usize) -> Option<Admitted> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = running.entry(tenant.to_owned()).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Admitted {
            invoker: self.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

/// One admitted invocation of a tenant; released on drop.
struct Admitted {
    invoker: Arc<Invoker>,
    tenant: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut running = self
            .invoker
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = running.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}

/// `host[:port]` of an `http(s)://` URL.
fn url_host(url: &str) -> Option<String> {
    let uri = url.parse::<http::Uri>().ok()?;
    uri.authority().map(|a| a.as_str().to_owned())
}

/// Headers a function does not see: hop-by-hop ones, the platform's own,
/// and `host` (the functions service's internal address: the request's URL
/// carries the public host; `x-forwarded-host` the client's).
fn forwarded_header(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    ) && !name.as_str().starts_with("x-madbase-")
}

/// Headers a function's response may not set: hop-by-hop ones, the body
/// length (the platform sets it) and the request ID (the platform's).
fn answered_header(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "x-request-id"
    )
}

/// Any method on `/functions/v1/{name}` and below.
pub(crate) async fn invoke(
    State(inv): State<Arc<Invoker>>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let start = Instant::now();
    let name = params
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let Some(tenant) = req
        .headers()
        .get("x-madbase-tenant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return ApiError::bad_request("missing X-Madbase-Tenant: call functions through the proxy")
            .into_response();
    };
    tracing::Span::current().record("tenant", tenant.as_str());
    match prepare(&inv, &tenant, &name, req).await {
        Ok(ready) => {
            let span = tracing::info_span!(
                "function",
                function = %ready.code.name,
                version = ready.code.version,
                cold = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            run(&inv, &tenant, ready, start).instrument(span).await
        }
        Err((outcome, function, err)) => {
            // An unknown tenant's name never becomes a label.
            let label = if outcome.starts_with("tenant_") {
                "unknown"
            } else {
                tenant.as_str()
            };
            inv.count(label, function.as_deref(), outcome, start);
            // A deployed function's refusal is one of its recent invocations.
            if let Some(function) = &function {
                inv.history.record(
                    &tenant,
                    function,
                    Invocation::new(
                        request_id::current().unwrap_or_default(),
                        None,
                        err.status.as_u16(),
                        outcome,
                        start.elapsed(),
                    )
                    .with_error(&err.message),
                );
            }
            err.into_response()
        }
    }
}

/// A function ready to run: its code, the request, the tenant's slot.
struct Ready {
    code: Arc<FunctionCode>,
    invoke: Invoke,
    body: Bytes,
    /// The invocation's wall time (the service's or the tenant's).
    wall: std::time::Duration,
    _admitted: Admitted,
}

type Refusal = (&'static str, Option<String>, ApiError);

fn function_not_found(tenant: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "function_not_found",
        format!("no function {name:?} is deployed for tenant {tenant:?}"),
    )
}

/// Everything before the worker: lookups, checks, the request read.
async fn prepare(
    inv: &Arc<Invoker>,
    tenant: &str,
    name: &str,
    req: Request,
) -> Result<Ready, Refusal> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "control lookup failed");
        (
            "unavailable",
            None,
            ApiError::unavailable("the control plane is unreachable"),
        )
    };
    // The tenancy contract's refusals, answered from its table.
    let refused = |r: madbase_tenancy::Refusal, function: Option<String>| {
        let outcome = match r.failure() {
            Failure::NoTenant | Failure::UnknownTenant => "tenant_not_found",
            Failure::ControlUnreachable => "tenant_unavailable",
            Failure::MissingKey | Failure::InvalidKey | Failure::ExpiredKey => "unauthorized",
        };
        (outcome, function, r.api_error(Surface::Functions))
    };
    // Only a tenant id's shape goes into control's URLs.
    let found = (inv.tenancy.tenant(tenant).await).map_err(|r| refused(r, None))?;
    let mut info = found.info.clone();
    if !valid_function_name(name) {
        return Err(("not_found", None, function_not_found(tenant, name)));
    }
    let code = match inv.code.get(tenant, name).await {
        Ok(Some(code)) => code,
        Ok(None) => return Err(("not_found", None, function_not_found(tenant, name))),
        Err(e) => return Err(unavailable(&e)),
    };
    let deployed = Some(code.name.clone());
    let (parts, body) = req.into_parts();

    // A browser's preflight never carries the JWT: it reaches the function,
    // which answers CORS itself (as Supabase's edge runtime does).
    // (The tenancy contract re-reads the tenant once on a bad signature:
    // its keys may have been rotated since it was cached.)
    if code.verify_jwt && parts.method != http::Method::OPTIONS {
        let caller = (inv.tenancy)
            .caller(found, &parts.headers, Surface::Functions)
            .await
            .map_err(|r| refused(r, deployed.clone()))?;
        info = caller.tenant.info;
    }

    let (limits, wall, cap) = inv.limits_for(&code.limits);
    let Some(admitted) = inv.admit(tenant, cap) else {
        return Err((
            "concurrency_limit",
            deployed,
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "function_concurrency_limit",
                format!("tenant {tenant:?} already runs {cap} function invocations at once"),
            ),
        ));
    };

    let too_large = || {
        (
            "request_too_large",
            Some(code.name.clone()),
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "function_request_too_large",
                format!(
                    "the request body is larger than {} bytes",
                    inv.max_request_bytes
                ),
            ),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > inv.max_request_bytes as u64) {
        return Err(too_large());
    }
    let body = match axum::body::to_bytes(body, inv.max_request_bytes).await {
        Ok(b) => b,
        Err(e) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                cause = c.source();
            }
            return Err((
                "bad_request",
                deployed,
                ApiError::bad_request(format!("reading the request body: {e}")),
            ));
        }
    };

    let keys = inv.keys(&info);
    let public = format!("{}/t/{tenant}", inv.public_url);
    let path = parts.uri.path();
    let url = match parts.uri.query() {
        Some(q) => format!("{public}{path}?{q}"),
        None => format!("{public}{path}"),
    };
    let supabase_url = format!("{}/t/{tenant}", inv.proxy_url);
    let mut env: Vec<(String, String)> = code
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
        .collect();
    env.push(("SUPABASE_URL".to_owned(), supabase_url));
    env.push(("SUPABASE_ANON_KEY".to_owned(), keys.anon));
    env.push(("SUPABASE_SERVICE_ROLE_KEY".to_owned(), keys.service));
    let headers = request_headers(&parts.headers);
    let invoke = Invoke {
        id: 0,
        key: FunctionKey {
            tenant: tenant.to_owned(),
            function: code.name.clone(),
            version: code.version,
        },
        source: None,
        bytecode_len: None,
        env: Some(env),
        request_id: request_id::current().unwrap_or_default(),
        method: parts.method.as_str().to_owned(),
        url,
        headers,
        limits,
        fetch_allow: inv.fetch_allow.clone(),
    };
    Ok(Ready {
        code,
        invoke,
        body,
        wall,
        _admitted: admitted,
    })
}

/// The headers the function sees, straight into the frame's encoding (no
/// string per header).
fn request_headers(headers: &HeaderMap) -> HeaderList {
    let mut list = HeaderList::with_capacity(
        headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 2)
            .sum(),
    );
    for (name, value) in headers {
        if let (true, Ok(value)) = (forwarded_header(name), value.to_str()) {
            list.push(name.as_str(), value);
        }
    }
    list
}

/// `^[a-z][a-z0-9_-]{0,62}$`, as control's deploy checks.
fn valid_function_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Runs the function and maps its outcome.
async fn run(inv: &Arc<Invoker>, tenant: &str, ready: Ready, start: Instant) -> Response {
    let Ready {
        code,
        invoke,
        body,
        wall,
        _admitted,
    } = ready;
    let limits = invoke.limits;
    let source = crate::pool::Module {
        source: code.source.clone(),
        compiled: code.compiled.get().cloned(),
    };
    let request_id = invoke.request_id.clone();
    // Recorded where the invocation ends (the pool's task), so an
    // invocation whose client went away is still logged and counted.
    let recorder = {
        let (inv, tenant, code) = (inv.clone(), tenant.to_owned(), code.clone());
        move |result: &Result<Answer, RunError>| {
            record(&inv, &tenant, &code, result, start, request_id);
            drop(_admitted);
        }
    };
    match inv
        .pool
        .run(invoke, source, body, wall, Box::new(recorder))
        .await
    {
        Ok(answer) => respond(&limits, answer.reply, answer.body),
        Err(RunError::Busy) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "function_pool_busy",
            "every function worker is busy; retry shortly",
        )
        .into_response(),
        Err(RunError::WallLimit) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "function_wall_limit",
            "the function did not answer within its wall-clock limit",
        )
        .into_response(),
        Err(RunError::Crashed(_)) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function_crashed",
            "the function's worker process failed while running it",
        )
        .into_response(),
        Err(RunError::Spawn(_)) => {
            ApiError::unavailable("cannot start a function worker").into_response()
        }
    }
}

/// An ended invocation: its console lines, cold start, CPU time and outcome
/// (on the span and in `madbase_function_invocations_total`).
fn record(
    inv: &Invoker,
    tenant: &str,
    code: &FunctionCode,
    result: &Result<Answer, RunError>,
    start: Instant,
    request_id: String,
) {
    let span = tracing::Span::current();
    match result {
        Ok(answer) => {
            let reply = &answer.reply;
            span.record("cold", reply.cold);
            log_console(reply, tenant, code);
            let labels = FunctionLabels {
                tenant: tenant.to_owned(),
                function: code.name.clone(),
            };
            if reply.cold {
                inv.cold_starts.get_or_create(&labels).inc();
            }
            inv.cpu
                .get_or_create(&labels)
                .inc_by(reply.cpu_us as f64 / 1e6);
        }
        Err(RunError::Crashed(detail)) => {
            tracing::error!(function = %code.name, error = %detail, "the function's worker failed");
        }
        Err(RunError::Spawn(detail)) => {
            tracing::error!(error = %detail, "cannot start a function worker");
        }
        Err(RunError::Busy | RunError::WallLimit) => {}
    }
    let outcome = outcome_of(inv.limits.max_response_bytes, result);
    span.record("outcome", outcome);
    inv.count(tenant, Some(&code.name), outcome, start);
    let mut call = Invocation::new(
        request_id,
        Some(code.version),
        status_of(inv.limits.max_response_bytes, result),
        outcome,
        start.elapsed(),
    );
    match result {
        Ok(answer) => {
            call = call.with_console(&answer.reply.logs);
            call.cold = Some(answer.reply.cold);
            call.cpu_ms = Some(answer.reply.cpu_us as f64 / 1000.0);
            if let Outcome::Error { message, .. } = &answer.reply.outcome {
                call = call.with_error(message);
            }
        }
        Err(RunError::Crashed(_)) => call = call.with_error("the function's worker failed"),
        Err(RunError::WallLimit) => call = call.with_error("wall-clock limit"),
        Err(RunError::Busy) => call = call.with_error("every function worker was busy"),
        Err(RunError::Spawn(_)) => call = call.with_error("cannot start a function worker"),
    }
    inv.history.record(tenant, &code.name, call);
}

/// The status [`respond`] (or [`run`]) answers for an ended invocation.
fn status_of(max_response_bytes: u64, result: &Result<Answer, RunError>) -> u16 {
    match result {
        Ok(answer) => match &answer.reply.outcome {
            Outcome::Response { status, .. } => {
                if answer.body.len() as u64 > max_response_bytes
                    || StatusCode::from_u16(*status).is_err()
                {
                    500
                } else {
                    *status
                }
            }
            Outcome::Error {
                error: FunctionError::CpuLimit,
                ..
            } => WORKER_LIMIT,
            Outcome::Error { .. } | Outcome::NeedSource => 500,
        },
        Err(RunError::Busy | RunError::Spawn(_)) => 503,
        Err(RunError::WallLimit) => 504,
        Err(RunError::Crashed(_)) => 500,
    }
}

/// The outcome label of an ended invocation (what [`respond`] answers).
fn outcome_of(max_response_bytes: u64, result: &Result<Answer, RunError>) -> &'static str {
    match result {
        Ok(answer) => match &answer.reply.outcome {
            Outcome::Response { status, .. } => {
                if answer.body.len() as u64 > max_response_bytes {
                    "response_too_large"
                } else if StatusCode::from_u16(*status).is_err() {
                    "bad_response"
                } else {
                    "ok"
                }
            }
            Outcome::NeedSource => "crashed",
            Outcome::Error { error, .. } => match error {
                FunctionError::CpuLimit => "cpu_limit",
                FunctionError::MemoryLimit => "memory_limit",
                FunctionError::Exception => "error",
                FunctionError::NoHandler => "no_handler",
                FunctionError::BadResponse => "bad_response",
                FunctionError::ResponseTooLarge => "response_too_large",
                FunctionError::FetchLimit => "fetch_limit",
            },
        },
        Err(RunError::Busy) => "pool_busy",
        Err(RunError::WallLimit) => "wall_limit",
        Err(RunError::Crashed(_)) => "crashed",
        Err(RunError::Spawn(_)) => "unavailable",
    }
}

/// One log line per `console.*` call, with the function and its version
/// (the request span adds `request_id` and `tenant`); the line's level is
/// the console method's (`log` → INFO), named in `console`.
fn log_console(reply: &Reply, tenant: &str, code: &FunctionCode) {
    for line in &reply.logs {
        let (function, version, console) = (code.name.as_str(), code.version, line.level.as_str());
        let message = line.message.as_str();
        match console {
            "error" => {
                tracing::error!(target: "function", tenant, function, version, console, "{message}");
            }
            "warn" => {
                tracing::warn!(target: "function", tenant, function, version, console, "{message}");
            }
            "debug" => {
                tracing::debug!(target: "function", tenant, function, version, console, "{message}");
            }
            _ => {
                tracing::info!(target: "function", tenant, function, version, console, "{message}");
            }
        }
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        code,
        message,
    )
    .into_response()
}

/// The HTTP answer for a worker's reply.
fn respond(limits: &Limits, reply: Reply, body: Vec<u8>) -> Response {
    match reply.outcome {
        Outcome::Response { status, headers } => {
            if body.len() as u64 > limits.max_response_bytes {
                return error(
                    500,
                    "function_response_too_large",
                    format!(
                        "the function's response body is larger than {} bytes",
                        limits.max_response_bytes
                    ),
                );
            }
            let Ok(status) = StatusCode::from_u16(status) else {
                return error(
                    500,
                    "function_bad_response",
                    format!("the function answered an invalid status {status}"),
                );
            };
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = status;
            let out = response.headers_mut();
            for (name, value) in headers {
                let lower = name.to_ascii_lowercase();
                if !answered_header(&lower) {
                    continue;
                }
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(lower.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    out.append(n, v);
                }
            }
            response
        }
        Outcome::NeedSource => error(
            500,
            "function_crashed",
            "the function's worker did not accept its source",
        ),
        Outcome::Error { error: e, message } => match e {
            FunctionError::CpuLimit => error(
                WORKER_LIMIT,
                "function_cpu_limit",
                format!(
                    "the function exceeded its CPU time limit of {} ms",
                    limits.cpu_ms
                ),
            ),
            FunctionError::MemoryLimit => error(
                500,
                "function_memory_limit",
                format!(
                    "the function exceeded its memory limit of {} MiB",
                    limits.memory_bytes / (1024 * 1024)
                ),
            ),
            FunctionError::Exception => error(500, "function_error", message),
            FunctionError::NoHandler => error(500, "function_no_handler", message),
            FunctionError::BadResponse => error(500, "function_bad_response", message),
            FunctionError::ResponseTooLarge => error(500, "function_response_too_large", message),
            FunctionError::FetchLimit => error(500, "function_fetch_limit", message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names() {
        for ok in ["a", "hello", "hello-world_2", &"a".repeat(63)] {
            assert!(valid_function_name(ok), "{ok}");
        }
        for bad in ["", "1a", "-a", "Hello", "a.b", "é", &"a".repeat(64)] {
            assert!(!valid_function_name(bad), "{bad}");
        }
    }

    #[test]
    fn headers_kept_from_requests_and_responses() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("x-madbase-tenant", HeaderValue::from_static("acme"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:8003"));
        h.insert(
            "x-binary",
            HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
        );
        let list = request_headers(&h);
        let kept: Vec<(&str, &str)> = list.iter().collect();
        // Hop-by-hop, internal and non-ASCII values are not forwarded.
        assert_eq!(kept, [("authorization", "Bearer x"), ("x-custom", "1")]);
        assert_eq!(list.len(), 2);
        assert!(answered_header("content-type"));
        assert!(!answered_header("x-request-id"));
        assert!(!answered_header("transfer-encoding"));
        assert_eq!(
            url_host("http://127.0.0.1:8000").as_deref(),
            Some("127.0.0.1:8000")
        );
    }
}
