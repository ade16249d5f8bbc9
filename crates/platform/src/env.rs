//! The environment variables madbase reads, in one place: every name is a
//! constant here with what it means, and configuration reads use these
//! constants, not string literals. `tests/env_names.rs` checks that every
//! `MADBASE_…` name in `crates/`, `compose.yaml`, `deploy/` and the docs is
//! declared here. Defaults and units are the README's configuration table.

/// Declares each variable as a `&str` constant of its own name, and [`ALL`].
macro_rules! variables {
    ($($(#[$doc:meta])+ $name:ident,)+) => {
        $($(#[$doc])+ pub const $name: &str = stringify!($name);)+
        /// Every name declared here.
        pub const ALL: &[&str] = &[$(stringify!($name)),+];
    };
}

variables! {
    // Secrets and databases.
    /// The platform secret (at least 32 bytes) that signs admin and internal
    /// tokens; every service.
    JWT_SECRET,
    /// 32 random bytes, base64: encrypts tenant secrets at rest (control).
    MADBASE_MASTER_KEY,
    /// A file holding `MADBASE_MASTER_KEY` (never passed to function workers).
    MADBASE_MASTER_KEY_FILE,
    /// The control database's URL (control).
    DATABASE_URL,
    /// The cluster tenant databases are created on (control; default: the
    /// server of `DATABASE_URL`, database `postgres`).
    DEFAULT_TENANT_DB_URL,

    // Every service: listeners, logs, shutdown, request limits.
    /// The API listen address (defaults: ports 8000–8003 on `0.0.0.0`).
    MADBASE_LISTEN,
    /// The admin listen address (`/health`, `/ready`, `/metrics`; ports 9000–9003).
    MADBASE_ADMIN_LISTEN,
    /// The proxy's API listen address when several services share a process.
    MADBASE_PROXY_LISTEN,
    /// The proxy's admin listen address when several services share a process.
    MADBASE_PROXY_ADMIN_LISTEN,
    /// Control's API listen address when several services share a process.
    MADBASE_CONTROL_LISTEN,
    /// Control's admin listen address when several services share a process.
    MADBASE_CONTROL_ADMIN_LISTEN,
    /// The worker's API listen address when several services share a process.
    MADBASE_WORKER_LISTEN,
    /// The worker's admin listen address when several services share a process.
    MADBASE_WORKER_ADMIN_LISTEN,
    /// The functions service's API listen address when several services share a process.
    MADBASE_FUNCTIONS_LISTEN,
    /// The functions service's admin listen address when several services share a process.
    MADBASE_FUNCTIONS_ADMIN_LISTEN,
    /// The log filter (default `info`, e.g. `madbase_platform=debug,info`).
    MADBASE_LOG,
    /// The log format: `json` (default) or `pretty`.
    MADBASE_LOG_FORMAT,
    /// Seconds in-flight requests may take to finish after SIGTERM (10).
    MADBASE_DRAIN_SECONDS,
    /// The largest request head in bytes (32768; beyond it 431).
    MADBASE_MAX_HEADER_BYTES,
    /// Seconds a client may take to send a request head (10).
    MADBASE_HEADER_READ_TIMEOUT_SECONDS,
    /// Which service `madbase healthcheck` probes by default.
    MADBASE_SERVICE,
    /// The source revision baked into a build (read at compile time).
    MADBASE_REVISION,
    /// OpenTelemetry: where traces are exported (all signals).
    OTEL_EXPORTER_OTLP_ENDPOINT,
    /// OpenTelemetry: where traces are exported (traces only; wins).
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    /// OpenTelemetry: the export protocol, `grpc` or `http/protobuf`.
    OTEL_EXPORTER_OTLP_PROTOCOL,
    /// OpenTelemetry: the trace export protocol (wins).
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    /// OpenTelemetry: the service name in exported spans.
    OTEL_SERVICE_NAME,

    // Where the services find each other.
    /// Control's URL (proxy, worker, functions; default `http://127.0.0.1:8001`).
    MADBASE_CONTROL_URL,
    /// The worker's URL (proxy; default `http://127.0.0.1:8002`).
    MADBASE_WORKER_URL,
    /// The functions service's URL (proxy, control's console; default
    /// `http://127.0.0.1:8003`).
    MADBASE_FUNCTIONS_URL,
    /// Where clients reach the proxy: control's `rest_url`, a function's
    /// `request.url`.
    MADBASE_PUBLIC_URL,

    // Proxy.
    /// Tenants are `<tenant>.<domain>` (default `localhost`).
    MADBASE_DOMAIN,
    /// Addresses/CIDR ranges of proxies in front whose `X-Forwarded-Proto`
    /// and `-Host` are kept.
    MADBASE_TRUSTED_PROXIES,
    /// Browser origins allowed to call `/rest/v1` (comma-separated, or `*`).
    MADBASE_CORS_ORIGINS,
    /// Per-tenant requests per second (1000; 0 disables the limit).
    MADBASE_RATE_LIMIT_RPS,
    /// Per-tenant burst (2000).
    MADBASE_RATE_LIMIT_BURST,
    /// The largest request body in bytes (10 MiB; beyond it 413).
    MADBASE_MAX_BODY_BYTES,
    /// Seconds to open an upstream connection (2).
    MADBASE_UPSTREAM_CONNECT_TIMEOUT_SECONDS,
    /// Seconds the worker has to answer (30).
    MADBASE_REST_TIMEOUT_SECONDS,
    /// Seconds the functions service has to answer (155).
    MADBASE_FUNCTIONS_TIMEOUT_SECONDS,
    /// Seconds a tenant stays cached (30).
    MADBASE_TENANT_CACHE_SECONDS,
    /// Seconds an unknown tenant stays cached (5).
    MADBASE_TENANT_NEGATIVE_CACHE_SECONDS,
    /// `false` keeps the HTTP hop when the upstream runs in the same process.
    MADBASE_PROXY_IN_PROCESS,
    /// `true`: HTTP/2 cleartext (prior knowledge) to the worker and the
    /// functions service, requests multiplexed (false).
    MADBASE_UPSTREAM_HTTP2,

    // Worker.
    /// Per-request statement timeout in milliseconds (10000).
    MADBASE_WORKER_STATEMENT_TIMEOUT_MS,
    /// The most rows a read returns (1000; 0 = unlimited).
    MADBASE_WORKER_MAX_ROWS,
    /// Connections per tenant (10).
    MADBASE_WORKER_POOL_MAX_PER_TENANT,
    /// Connections over all tenants (100).
    MADBASE_WORKER_POOL_MAX_TOTAL,
    /// Milliseconds to wait for a connection before 504 PGRST003 (5000).
    MADBASE_WORKER_POOL_TIMEOUT_MS,
    /// Seconds an idle tenant pool is kept (300).
    MADBASE_WORKER_POOL_IDLE_SECONDS,
    /// The exposed schemas, the first the default (`public`).
    MADBASE_WORKER_SCHEMAS,
    /// Aggregate functions in `select` (PostgREST's `db-aggregates-enabled`).
    MADBASE_DB_AGGREGATES_ENABLED,
    /// Answers `Accept: application/vnd.pgrst.plan` (PostgREST's `db-plan-enabled`).
    MADBASE_DB_PLAN_ENABLED,

    // Functions.
    /// Where functions reach the proxy (default `MADBASE_PUBLIC_URL`).
    MADBASE_FUNCTIONS_PROXY_URL,
    /// Worker processes (default: the available parallelism).
    MADBASE_FUNCTIONS_WORKERS,
    /// The worker processes' command (default: this executable's `functions-worker`).
    MADBASE_FUNCTIONS_WORKER_CMD,
    /// Invocations waiting for a worker (64).
    MADBASE_FUNCTIONS_QUEUE,
    /// Seconds an invocation waits for a worker before 503 (5).
    MADBASE_FUNCTIONS_QUEUE_SECONDS,
    /// Concurrent invocations per tenant (20; beyond it 429).
    MADBASE_FUNCTIONS_TENANT_CONCURRENCY,
    /// Wall-clock seconds per invocation (150; beyond it 504, worker killed).
    MADBASE_FUNCTIONS_WALL_SECONDS,
    /// CPU milliseconds per invocation (2000; beyond it 546).
    MADBASE_FUNCTIONS_CPU_MS,
    /// Memory per runtime in MiB (256).
    MADBASE_FUNCTIONS_MEMORY_MB,
    /// The largest invocation request body in bytes (6 MiB).
    MADBASE_FUNCTIONS_MAX_REQUEST_BYTES,
    /// The largest function response body in bytes (6 MiB).
    MADBASE_FUNCTIONS_MAX_RESPONSE_BYTES,
    /// `fetch` calls per invocation (50).
    MADBASE_FUNCTIONS_MAX_FETCHES,
    /// The largest `fetch` response body in bytes (10 MiB).
    MADBASE_FUNCTIONS_MAX_FETCH_BYTES,
    /// Private hosts/CIDRs `fetch` may reach (comma list).
    MADBASE_FUNCTIONS_FETCH_ALLOW,
    /// Seconds a function's code and secrets are cached at most (2).
    MADBASE_FUNCTIONS_CODE_CACHE_SECONDS,
    /// Runtimes a worker process keeps (read by the worker process, through
    /// `madbase_js::worker::env`: the js crate does not depend on this one;
    /// a test in `crates/functions` checks the names are equal).
    MADBASE_FUNCTIONS_RUNTIMES_PER_WORKER,
    /// Seconds an idle runtime is kept (read by the worker process, through
    /// `madbase_js::worker::env`).
    MADBASE_FUNCTIONS_RUNTIME_IDLE_SECS,
    /// `1`: workers offer test-only hooks; never in production (read by the
    /// worker process, through `madbase_js::worker::env`).
    MADBASE_FUNCTIONS_TEST_HOOKS,

    // Control.
    /// The SQL endpoint's statement timeout in seconds (30).
    MADBASE_SQL_TIMEOUT_SECONDS,
    /// Seconds start-up waits for the control database (30).
    MADBASE_DB_CONNECT_SECONDS,
    /// The operator console's password (at least 12 bytes).
    MADBASE_CONSOLE_PASSWORD,
    /// A file holding the console's password.
    MADBASE_CONSOLE_PASSWORD_FILE,
    /// Seconds an idle console session lasts (43200).
    MADBASE_CONSOLE_IDLE_SECONDS,
    /// `name=http://host:admin-port,…`: the services the console's health page shows.
    MADBASE_CONSOLE_SERVICES,
    /// Seconds between the console's scrapes of their `/metrics` (15).
    MADBASE_CONSOLE_SCRAPE_SECONDS,

    // compose.yaml (published ports), not read by madbase.
    /// The host address compose publishes on (127.0.0.1).
    MADBASE_BIND,
    /// The host port of the proxy (8000).
    MADBASE_PROXY_PORT,
    /// The host port of control (8001).
    MADBASE_CONTROL_PORT,
    /// The host port of Grafana (3000).
    MADBASE_GRAFANA_PORT,

    // Tests and the xtask harness.
    /// Where the reliability scenarios append their figures (JSON lines).
    MADBASE_RELIABILITY_OUT,
    /// Seconds of the mixed soak.
    MADBASE_SOAK_SECONDS,
    /// Seconds between the soak's samples.
    MADBASE_SOAK_SAMPLE_SECONDS,
    /// Tenants of the soak.
    MADBASE_SOAK_TENANTS,
    /// Set: the postgrest-js compatibility test is skipped (no Node.js).
    MADBASE_SKIP_JS_COMPAT,
    /// The Chromium the browser walkthrough drives.
    MADBASE_CHROMIUM,
    /// The tenant's URL on the proxy, for the browser walkthrough's script.
    MADBASE_URL,
}
