//! madbase functions: runs tenants' JavaScript functions.
//!
//! `/functions/v1/{name}[/rest]` (reached through the proxy, which sets
//! `X-Madbase-Tenant`) looks the function up in control (`code.rs`, cached
//! for a few seconds), checks the caller's JWT when the function wants it,
//! and runs it in one of a pool of supervised `madbase functions-worker`
//! processes (`pool.rs`) speaking the frame protocol of
//! `madbase_js::protocol`. Limits, the error mapping and the metrics are in
//! `invoke.rs`; the data flow is described in ARCHITECTURE.md ("Functions").
//! `history.rs` keeps each function's recent invocations in memory for the
//! operator console (`GET /internal/v1/tenants/{id}/functions/{name}/invocations`,
//! internal token).
#![warn(missing_docs)]

mod code;
pub mod history;
mod invoke;
mod pool;

use std::ffi::OsString;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::secrets::SecretString;
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, client, secrets};
use madbase_tenancy::TenantClient;

/// The functions service's configuration, from the environment.
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `MADBASE_CONTROL_URL` | `http://127.0.0.1:8001` | control (functions' code, secrets, tenants) |
/// | `MADBASE_PUBLIC_URL` | `http://127.0.0.1:8000` | the proxy as clients reach it: a function's `request.url` is `<this>/t/<tenant>/functions/v1/…` |
/// | `MADBASE_FUNCTIONS_PROXY_URL` | `MADBASE_PUBLIC_URL` | the proxy as functions reach it (e.g. `http://proxy:8000` in compose): `SUPABASE_URL` is `<this>/t/<tenant>` |
/// | `MADBASE_FUNCTIONS_WORKERS` | available parallelism | worker processes (at most; started on demand) |
/// | `MADBASE_FUNCTIONS_WORKER_CMD` | this executable + `functions-worker` | the worker command (program and arguments separated by spaces) |
/// | `MADBASE_FUNCTIONS_QUEUE` | 64 | invocations that may wait for a free worker (0: none); beyond: 503 `function_pool_busy` |
/// | `MADBASE_FUNCTIONS_QUEUE_SECONDS` | 5 | how long one may wait; beyond: 503 `function_pool_busy` |
/// | `MADBASE_FUNCTIONS_TENANT_CONCURRENCY` | 20 | concurrent invocations per tenant; beyond: 429 `function_concurrency_limit` |
/// | `MADBASE_FUNCTIONS_WALL_SECONDS` | 150 | wall time per invocation; beyond: the worker is killed, 504 `function_wall_limit` |
/// | `MADBASE_FUNCTIONS_CPU_MS` | 2000 | CPU time per invocation; beyond: 546 `function_cpu_limit` |
/// | `MADBASE_FUNCTIONS_MEMORY_MB` | 256 | memory per function runtime; beyond: 500 `function_memory_limit` |
/// | `MADBASE_FUNCTIONS_MAX_REQUEST_BYTES` | 6 MiB | request body; beyond: 413 `function_request_too_large` |
/// | `MADBASE_FUNCTIONS_MAX_RESPONSE_BYTES` | 6 MiB | response body; beyond: 500 `function_response_too_large` |
/// | `MADBASE_FUNCTIONS_MAX_FETCHES` | 50 | `fetch` calls per invocation |
/// | `MADBASE_FUNCTIONS_MAX_FETCH_BYTES` | 10 MiB | largest `fetch` response body |
/// | `MADBASE_FUNCTIONS_FETCH_ALLOW` | (none) | comma list of hosts/CIDRs `fetch` may reach although private (the hosts of `MADBASE_PUBLIC_URL` and `MADBASE_FUNCTIONS_PROXY_URL` always are) |
/// | `MADBASE_FUNCTIONS_CODE_CACHE_SECONDS` | 2 | how long a function's code and secrets are cached at most (control's change feed drops them at once on a deploy, delete or secret change; this bounds how long a change goes unseen while the feed is down) |
/// | `MADBASE_FUNCTIONS_TEST_HOOKS` | unset | `1`: workers (which inherit it) offer test-only hooks such as `__madbaseTestCrash()`; never in production |
#[derive(Clone)]
pub struct Config {
    /// Listeners, logging and telemetry settings shared by every service.
    pub common: CommonConfig,
    /// `JWT_SECRET`: signs the internal tokens used to ask control.
    pub jwt_secret: SecretString,
    /// `MADBASE_CONTROL_URL`, default `http://127.0.0.1:8001`.
    pub control_url: String,
    /// `MADBASE_PUBLIC_URL`, default `http://127.0.0.1:8000`.
    pub public_url: String,
    /// `MADBASE_FUNCTIONS_PROXY_URL`, default `public_url`.
    pub proxy_url: String,
    /// `MADBASE_FUNCTIONS_WORKER_CMD`: program and arguments.
    pub worker_command: Vec<OsString>,
    /// `MADBASE_FUNCTIONS_WORKERS`.
    pub workers: usize,
    /// `MADBASE_FUNCTIONS_QUEUE`.
    pub queue: usize,
    /// `MADBASE_FUNCTIONS_QUEUE_SECONDS`.
    pub queue_wait: Duration,
    /// `MADBASE_FUNCTIONS_TENANT_CONCURRENCY`.
    pub tenant_concurrency: usize,
    /// `MADBASE_FUNCTIONS_WALL_SECONDS`.
    pub wall: Duration,
    /// `MADBASE_FUNCTIONS_CPU_MS`.
    pub cpu_ms: u64,
    /// `MADBASE_FUNCTIONS_MEMORY_MB`, in bytes.
    pub memory_bytes: u64,
    /// `MADBASE_FUNCTIONS_MAX_REQUEST_BYTES`.
    pub max_request_bytes: usize,
    /// `MADBASE_FUNCTIONS_MAX_RESPONSE_BYTES`.
    pub max_response_bytes: u64,
    /// `MADBASE_FUNCTIONS_MAX_FETCHES`.
    pub max_fetches: u32,
    /// `MADBASE_FUNCTIONS_MAX_FETCH_BYTES`.
    pub max_fetch_bytes: u64,
    /// `MADBASE_FUNCTIONS_FETCH_ALLOW`.
    pub fetch_allow: Vec<String>,
    /// `MADBASE_FUNCTIONS_CODE_CACHE_SECONDS`.
    pub code_ttl: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("control_url", &self.control_url)
            .field("public_url", &self.public_url)
            .field("proxy_url", &self.proxy_url)
            .field("worker_command", &self.worker_command)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

const MIB: u64 = 1024 * 1024;

impl Config {
    /// Reads and validates the variables in the table above; the first problem is the error.
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        let count = |name: &str, default: u64| -> Result<u64, ConfigError> {
            match env.parse::<u64>(name, "a whole number")? {
                Some(0) if name != madbase_platform::env::MADBASE_FUNCTIONS_QUEUE => {
                    Err(ConfigError {
                        var: name.to_owned(),
                        problem: "must be at least 1".to_owned(),
                    })
                }
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
        let worker_command = match env.raw(madbase_platform::env::MADBASE_FUNCTIONS_WORKER_CMD) {
            Some(cmd) => cmd.split_whitespace().map(OsString::from).collect(),
            None => {
                let exe = std::env::current_exe().map_err(|e| ConfigError {
                    var: madbase_platform::env::MADBASE_FUNCTIONS_WORKER_CMD.to_owned(),
                    problem: format!(
                        "is not set and this executable's path is unknown ({e}); set it to `/path/to/madbase functions-worker`"
                    ),
                })?;
                vec![exe.into_os_string(), OsString::from("functions-worker")]
            }
        };
        let fetch_allow = env
            .raw(madbase_platform::env::MADBASE_FUNCTIONS_FETCH_ALLOW)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let public_url = env.url(
            madbase_platform::env::MADBASE_PUBLIC_URL,
            "http://127.0.0.1:8000",
        )?;
        Ok(Config {
            common: CommonConfig::from_env(Service::Functions, env)?,
            jwt_secret: secrets::jwt_secret(env)?,
            control_url: env.url(
                madbase_platform::env::MADBASE_CONTROL_URL,
                "http://127.0.0.1:8001",
            )?,
            public_url: public_url.clone(),
            proxy_url: env.url(
                madbase_platform::env::MADBASE_FUNCTIONS_PROXY_URL,
                &public_url,
            )?,
            worker_command,
            workers: size(count(
                madbase_platform::env::MADBASE_FUNCTIONS_WORKERS,
                parallelism,
            )?),
            queue: size(count(madbase_platform::env::MADBASE_FUNCTIONS_QUEUE, 64)?),
            queue_wait: env.seconds(
                madbase_platform::env::MADBASE_FUNCTIONS_QUEUE_SECONDS,
                Duration::from_secs(5),
            )?,
            tenant_concurrency: size(count(
                madbase_platform::env::MADBASE_FUNCTIONS_TENANT_CONCURRENCY,
                20,
            )?),
            wall: env.seconds(
                madbase_platform::env::MADBASE_FUNCTIONS_WALL_SECONDS,
                Duration::from_secs(150),
            )?,
            cpu_ms: count(madbase_platform::env::MADBASE_FUNCTIONS_CPU_MS, 2000)?,
            memory_bytes: count(madbase_platform::env::MADBASE_FUNCTIONS_MEMORY_MB, 256)?
                .saturating_mul(MIB),
            max_request_bytes: size(count(
                madbase_platform::env::MADBASE_FUNCTIONS_MAX_REQUEST_BYTES,
                6 * MIB,
            )?),
            max_response_bytes: count(
                madbase_platform::env::MADBASE_FUNCTIONS_MAX_RESPONSE_BYTES,
                6 * MIB,
            )?,
            max_fetches: u32::try_from(count(
                madbase_platform::env::MADBASE_FUNCTIONS_MAX_FETCHES,
                50,
            )?)
            .unwrap_or(u32::MAX),
            max_fetch_bytes: count(
                madbase_platform::env::MADBASE_FUNCTIONS_MAX_FETCH_BYTES,
                10 * MIB,
            )?,
            fetch_allow,
            code_ttl: env.seconds(
                madbase_platform::env::MADBASE_FUNCTIONS_CODE_CACHE_SECONDS,
                Duration::from_secs(2),
            )?,
        })
    }
}

/// Builds the functions service: routes, readiness checks, metrics. Worker
/// processes start on demand (the first invocations), not here.
pub fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    let http = client::internal_client();
    let metrics = Metrics::new();
    let tenants = TenantClient::new(&config.control_url, config.jwt_secret.clone(), &metrics);
    let code = code::CodeCache::new(
        &config.control_url,
        &config.jwt_secret,
        config.code_ttl,
        &tenants,
    );
    let pool = pool::Pool::new(
        pool::PoolConfig {
            command: config.worker_command.clone(),
            size: config.workers,
            queue: config.queue,
            queue_wait: config.queue_wait,
        },
        &metrics,
    );
    let invoker = invoke::Invoker::new(config, tenants, code, pool, &metrics);
    let internal = history::Internal {
        history: invoker.history(),
        jwt_secret: config.jwt_secret.clone(),
    };
    let api = Router::new()
        .route("/functions/v1/{name}", any(invoke::invoke))
        .route("/functions/v1/{name}/{*rest}", any(invoke::invoke))
        .with_state(invoker)
        .merge(
            Router::new()
                .route(
                    "/internal/v1/tenants/{id}/functions/{name}/invocations",
                    axum::routing::get(history::invocations),
                )
                .with_state(internal),
        );
    Ok(ServiceApp {
        service: Service::Functions,
        api,
        ready: vec![ReadyCheck::http("control", http, &config.control_url)],
        metrics,
    })
}
