//! madbase proxy: the public edge. Resolves the tenant (subdomain
//! `<tenant>.<MADBASE_DOMAIN>` or path prefix `/t/<tenant>/`), checks its API
//! key, rate-limits per tenant and forwards `/rest/v1/*` to the worker and
//! `/functions/v1/*` to functions, streaming bodies both ways. Answers CORS
//! for `/rest/v1` (`cors.rs`); `OPTIONS` to a function reaches the function.
#![warn(missing_docs)]

mod cors;
mod forward;
mod metrics;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, client, secrets};
use madbase_tenancy::{Tenancy, TenantClient};

/// The proxy's configuration, from the environment.
#[derive(Clone)]
pub struct Config {
    /// Listeners, logging and telemetry settings shared by every service.
    pub common: CommonConfig,
    /// `JWT_SECRET`: signs the internal tokens used to ask control about tenants.
    pub jwt_secret: secrets::SecretString,
    /// `MADBASE_CONTROL_URL`, default `http://127.0.0.1:8001`.
    pub control_url: String,
    /// `MADBASE_WORKER_URL`, default `http://127.0.0.1:8002`.
    pub worker_url: String,
    /// `MADBASE_FUNCTIONS_URL`, default `http://127.0.0.1:8003`.
    pub functions_url: String,
    /// `MADBASE_DOMAIN`: tenants are `<tenant>.<domain>`; default `localhost`.
    pub domain: String,
    /// `MADBASE_RATE_LIMIT_RPS` per tenant (default 1000; 0 disables) and
    /// `MADBASE_RATE_LIMIT_BURST` (default 2 × rate).
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
    /// `MADBASE_MAX_BODY_BYTES`, default 10 MiB.
    pub max_body_bytes: u64,
    /// `MADBASE_UPSTREAM_CONNECT_TIMEOUT_SECONDS`, default 2.
    pub connect_timeout: Duration,
    /// `MADBASE_REST_TIMEOUT_SECONDS` (default 30) and
    /// `MADBASE_FUNCTIONS_TIMEOUT_SECONDS` (default 155, past the functions
    /// service's 150 s wall limit so its 504 arrives first): time to the upstream's
    /// response head.
    pub rest_timeout: Duration,
    /// The same limit for `/functions/v1` (`MADBASE_FUNCTIONS_TIMEOUT_SECONDS`).
    pub functions_timeout: Duration,
    /// `MADBASE_TRUSTED_PROXIES`: addresses or CIDR ranges (comma-separated,
    /// default none) of proxies in front of this one (a TLS terminator, a load
    /// balancer) whose `X-Forwarded-Proto` and `X-Forwarded-Host` are kept;
    /// anyone else's are replaced by what this proxy saw.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `MADBASE_TENANT_CACHE_SECONDS` (default 30) and
    /// `MADBASE_TENANT_NEGATIVE_CACHE_SECONDS` (default 5).
    pub tenant_ttl: Duration,
    /// How long an unknown tenant stays cached as unknown (`MADBASE_TENANT_NEGATIVE_CACHE_SECONDS`).
    pub tenant_negative_ttl: Duration,
    /// `MADBASE_CORS_ORIGINS`: the browser origins allowed to call the data
    /// API, comma-separated (default `*`, any); a tenant's settings in
    /// control override it.
    pub cors_origins: Vec<String>,
    /// `MADBASE_PROXY_IN_PROCESS` (default true): when the worker or the
    /// functions service runs in the proxy's process (`madbase dev`,
    /// `madbase serve --all`), hand requests to it in-process instead of
    /// over HTTP (see [`Local`]). `false` keeps the HTTP hop.
    pub in_process: bool,
    /// `MADBASE_UPSTREAM_HTTP2` (default false): speak HTTP/2 cleartext
    /// (prior knowledge, h2c) to the worker and the functions service, every
    /// request multiplexed on pooled connections, instead of HTTP/1.1 with
    /// an upstream connection per client connection. madbase services accept
    /// h2c on their API port; any other upstream must too.
    pub upstream_http2: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("control_url", &self.control_url)
            .field("worker_url", &self.worker_url)
            .field("functions_url", &self.functions_url)
            .field("domain", &self.domain)
            .field("rate_limit", &self.rate_limit)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("cors_origins", &self.cors_origins)
            .field("in_process", &self.in_process)
            .field("upstream_http2", &self.upstream_http2)
            .finish_non_exhaustive()
    }
}

fn non_zero(var: &str, n: u32) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(n).ok_or_else(|| ConfigError {
        var: var.to_owned(),
        problem: "must be positive".to_owned(),
    })
}

impl Config {
    /// Reads and validates the proxy's variables; the first problem is the error.
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        let domain = env
            .raw(madbase_platform::env::MADBASE_DOMAIN)
            .unwrap_or_else(|| "localhost".to_owned());
        let valid_domain = !domain.is_empty()
            && domain.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_domain {
            return Err(ConfigError {
                var: madbase_platform::env::MADBASE_DOMAIN.into(),
                problem: format!("{domain:?} is not a DNS name like api.example.com"),
            });
        }
        let rps = env
            .parse::<u32>(
                madbase_platform::env::MADBASE_RATE_LIMIT_RPS,
                "a number of requests per second",
            )?
            .unwrap_or(1000);
        let rate_limit = if rps == 0 {
            None
        } else {
            let burst = env
                .parse::<u32>(
                    madbase_platform::env::MADBASE_RATE_LIMIT_BURST,
                    "a number of requests",
                )?
                .unwrap_or(rps.saturating_mul(2));
            Some((
                non_zero(madbase_platform::env::MADBASE_RATE_LIMIT_RPS, rps)?,
                non_zero(madbase_platform::env::MADBASE_RATE_LIMIT_BURST, burst)?,
            ))
        };
        let trusted_proxies = trusted_proxies(
            env.raw(madbase_platform::env::MADBASE_TRUSTED_PROXIES)
                .as_deref(),
        )?;
        let cors_origins = cors_origins(
            env.raw(madbase_platform::env::MADBASE_CORS_ORIGINS)
                .as_deref(),
        )?;
        Ok(Config {
            in_process: env
                .parse::<bool>(
                    madbase_platform::env::MADBASE_PROXY_IN_PROCESS,
                    "true or false",
                )?
                .unwrap_or(true),
            upstream_http2: env
                .parse::<bool>(
                    madbase_platform::env::MADBASE_UPSTREAM_HTTP2,
                    "true or false",
                )?
                .unwrap_or(false),
            cors_origins,
            common: CommonConfig::from_env(Service::Proxy, env)?,
            trusted_proxies,
            jwt_secret: secrets::jwt_secret(env)?,
            control_url: env.url(
                madbase_platform::env::MADBASE_CONTROL_URL,
                "http://127.0.0.1:8001",
            )?,
            worker_url: env.url(
                madbase_platform::env::MADBASE_WORKER_URL,
                "http://127.0.0.1:8002",
            )?,
            functions_url: env.url(
                madbase_platform::env::MADBASE_FUNCTIONS_URL,
                "http://127.0.0.1:8003",
            )?,
            domain: domain.to_ascii_lowercase(),
            rate_limit,
            max_body_bytes: env
                .parse::<u64>(
                    madbase_platform::env::MADBASE_MAX_BODY_BYTES,
                    "a number of bytes",
                )?
                .unwrap_or(10 << 20),
            connect_timeout: env.seconds(
                madbase_platform::env::MADBASE_UPSTREAM_CONNECT_TIMEOUT_SECONDS,
                Duration::from_secs(2),
            )?,
            rest_timeout: env.seconds(
                madbase_platform::env::MADBASE_REST_TIMEOUT_SECONDS,
                Duration::from_secs(30),
            )?,
            functions_timeout: env.seconds(
                madbase_platform::env::MADBASE_FUNCTIONS_TIMEOUT_SECONDS,
                Duration::from_secs(155),
            )?,
            tenant_ttl: env.seconds(
                madbase_platform::env::MADBASE_TENANT_CACHE_SECONDS,
                Duration::from_secs(30),
            )?,
            tenant_negative_ttl: env.seconds(
                madbase_platform::env::MADBASE_TENANT_NEGATIVE_CACHE_SECONDS,
                Duration::from_secs(5),
            )?,
        })
    }
}

/// `MADBASE_TRUSTED_PROXIES`: `10.0.0.0/8, 192.168.1.10, ::1`.
fn trusted_proxies(raw: Option<&str>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    raw.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError {
                    var: madbase_platform::env::MADBASE_TRUSTED_PROXIES.into(),
                    problem: format!("{s:?} is not an IP address or a CIDR range like 10.0.0.0/8"),
                })
        })
        .collect()
}

/// `MADBASE_CORS_ORIGINS`: `*` (the default) or
/// `https://app.example.com, http://localhost:3000`.
fn cors_origins(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let list: Vec<&str> = raw
        .unwrap_or("*")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    madbase_tenancy::normalize_cors_origins(&list).map_err(|problem| ConfigError {
        var: madbase_platform::env::MADBASE_CORS_ORIGINS.into(),
        problem,
    })
}

/// An upstream service behind the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// The data API (`/rest/v1`).
    Worker,
    /// The functions service (`/functions/v1`).
    Functions,
}

impl Upstream {
    /// Its place in per-upstream arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Upstream::Worker => 0,
            Upstream::Functions => 1,
        }
    }

    /// The upstream's name in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Worker => "worker",
            Upstream::Functions => "functions",
        }
    }
}

/// Everything the forwarding handler needs.
pub(crate) struct State {
    pub(crate) config: Config,
    /// Who is calling: the tenant client and the verified-key cache.
    pub(crate) tenancy: Tenancy,
    /// Upstream connections of HTTP/2 client connections, and the retry of
    /// a request a client connection's own upstream connection could not
    /// send (see `forward::send`); every upstream request with
    /// `MADBASE_UPSTREAM_HTTP2` (then it speaks only HTTP/2).
    pub(crate) http: Client<HttpConnector, axum::body::Body>,
    /// Opens each HTTP/1 client connection's own upstream connection.
    pub(crate) connector: HttpConnector,
    /// The worker's and the functions service's URLs, parsed once.
    pub(crate) upstreams: [forward::UpstreamBase; 2],
    pub(crate) limiter: Option<DefaultKeyedRateLimiter<String>>,
    pub(crate) metrics: metrics::ProxyMetrics,
    pub(crate) cors: cors::Cors,
    /// The worker's and the functions service's routers when they run in
    /// this process (see [`Local`]).
    pub(crate) local: [Option<Router>; 2],
}

/// Upstreams served by this same process (`madbase dev`, `madbase serve
/// --all`): the proxy hands a request to their routers directly — a tower
/// `Service` call with the same headers, limits, timeouts and metrics, and
/// the upstream's own pipeline (request ID, span, metrics, log line) — with
/// no HTTP serialisation and no loopback socket.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The worker's API router with its pipeline (`api_router_with`).
    pub worker: Option<Router>,
    /// The functions service's API router with its pipeline.
    pub functions: Option<Router>,
}

pub(crate) type AppState = Arc<State>;

/// Builds the proxy: routes, readiness checks, metrics.
pub fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    app_with_local(config, Local::default())
}

/// The proxy handing requests for `local`'s upstreams to them in-process.
pub fn app_with_local(config: &Config, local: Local) -> anyhow::Result<ServiceApp> {
    let metrics = Metrics::new();
    let tenants = TenantClient::new(&config.control_url, config.jwt_secret.clone(), &metrics)
        .with_ttl(config.tenant_ttl, config.tenant_negative_ttl);
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    let http = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .http2_only(config.upstream_http2)
        .build(connector.clone());
    let upstream = |url: &str| {
        forward::UpstreamBase::new(url)
            .ok_or_else(|| anyhow::anyhow!("{url} is not an absolute http:// URL"))
    };
    let upstreams = [
        upstream(&config.worker_url)?,
        upstream(&config.functions_url)?,
    ];
    let limiter = config
        .rate_limit
        .map(|(rps, burst)| RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst)));
    let state: AppState = Arc::new(State {
        config: config.clone(),
        tenancy: Tenancy::new(tenants),
        http,
        connector,
        upstreams,
        limiter,
        metrics: metrics::ProxyMetrics::new(&metrics),
        cors: cors::Cors::new(&config.cors_origins),
        local: [local.worker, local.functions],
    });
    let api = Router::new()
        .route("/t/{tenant}/rest/v1", any(forward::by_path))
        .route("/t/{tenant}/rest/v1/{*rest}", any(forward::by_path))
        .route("/rest/v1", any(forward::by_host))
        .route("/rest/v1/{*rest}", any(forward::by_host))
        .route("/t/{tenant}/functions/v1", any(forward::by_path))
        .route("/t/{tenant}/functions/v1/{*rest}", any(forward::by_path))
        .route("/functions/v1", any(forward::by_host))
        .route("/functions/v1/{*rest}", any(forward::by_host))
        .with_state(state);
    Ok(ServiceApp {
        service: Service::Proxy,
        api,
        ready: vec![ReadyCheck::http(
            "control",
            client::internal_client(),
            &config.control_url,
        )],
        metrics,
    })
}
