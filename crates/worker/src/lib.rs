//! madbase worker: the PostgREST-compatible data API over each tenant's database.
//!
//! `/rest/v1/<table>` and `/rest/v1/rpc/<function>` (`routes`): the
//! tenant comes from `X-Madbase-Tenant` (set by the proxy) and the JWT is
//! verified with the tenant's secret (`auth`); every request runs in one
//! transaction (`tx`) as the JWT's role on the tenant's pool ([`pool`]),
//! with SQL built only in `sql` from the query string ([`query`]), the
//! `Prefer` header ([`prefer`]) and the tenant's schema cache (`schema`).
//! Response JSON is built by Postgres; errors are `error::Code`s.
#![warn(missing_docs)]

mod auth;
pub(crate) mod conns;
mod context;
pub(crate) mod error;
pub mod pool;
pub mod prefer;
pub mod query;
mod read;
mod request;
mod response;
mod routes;
mod rpc;
pub(crate) mod schema;
pub(crate) mod sql;
mod state;
mod tx;
mod write;

use std::time::Duration;

use axum::Router;
use axum::routing::any;
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, client, secrets};
use madbase_tenancy::{Tenancy, TenantClient};

use crate::pool::{PoolConfig, Pools};
pub use crate::state::{AppState, Shared};

/// The worker service's configuration, from the environment.
#[derive(Clone)]
pub struct Config {
    /// Listeners, logging and telemetry settings shared by every service.
    pub common: CommonConfig,
    /// `JWT_SECRET`: signs the internal tokens used to ask control about tenants.
    pub jwt_secret: secrets::SecretString,
    /// `MADBASE_CONTROL_URL`, default `http://127.0.0.1:8001`.
    pub control_url: String,
    /// `MADBASE_WORKER_STATEMENT_TIMEOUT_MS` (default 10000): per-request `statement_timeout`.
    pub statement_timeout: Duration,
    /// `MADBASE_WORKER_MAX_ROWS` (default 1000, 0 = unlimited): rows a read returns at most.
    pub max_rows: Option<i64>,
    /// `MADBASE_WORKER_POOL_MAX_PER_TENANT` (default 10).
    pub pool_max_per_tenant: u32,
    /// `MADBASE_WORKER_POOL_MAX_TOTAL` (default 100): connections over all tenants.
    pub pool_max_total: u32,
    /// `MADBASE_WORKER_POOL_TIMEOUT_MS` (default 5000): waiting for a connection (then 504 PGRST003).
    pub pool_timeout: Duration,
    /// `MADBASE_WORKER_POOL_IDLE_SECONDS` (default 300): a pool unused this long is closed.
    pub pool_idle: Duration,
    /// `MADBASE_WORKER_SCHEMAS` (default `public`): exposed schemas, the first is the default.
    pub schemas: Vec<String>,
    /// `MADBASE_DB_AGGREGATES_ENABLED` (`true`/`false`, default `false`, as
    /// PostgREST's `db-aggregates-enabled`): aggregate functions in
    /// `select` (`count()`, `col.sum()`, …); when off they are 400 PGRST123.
    pub db_aggregates_enabled: bool,
    /// `MADBASE_DB_PLAN_ENABLED` (`true`/`false`, default `false`, as
    /// PostgREST's `db-plan-enabled`): `Accept:
    /// application/vnd.pgrst.plan[+json|+text]` answers the `EXPLAIN` of the
    /// request's statement (`for=`, `options=analyze|verbose|settings|buffers|wal`);
    /// when off it is 406 PGRST107.
    pub db_plan_enabled: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("control_url", &self.control_url)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_rows", &self.max_rows)
            .field("pool_max_per_tenant", &self.pool_max_per_tenant)
            .field("pool_max_total", &self.pool_max_total)
            .field("pool_timeout", &self.pool_timeout)
            .field("pool_idle", &self.pool_idle)
            .field("schemas", &self.schemas)
            .field("db_aggregates_enabled", &self.db_aggregates_enabled)
            .field("db_plan_enabled", &self.db_plan_enabled)
            .finish_non_exhaustive()
    }
}

fn bad(var: &str, problem: String) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        problem,
    }
}

fn positive<S: Source>(env: &Env<S>, var: &str, default: u64) -> Result<u64, ConfigError> {
    match env.parse::<u64>(var, "a positive integer")? {
        None => Ok(default),
        Some(0) => Err(bad(var, "must be greater than 0".to_owned())),
        Some(n) => Ok(n),
    }
}

impl Config {
    /// Reads and validates the worker's variables; the first problem is the error.
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        let pool_max_per_tenant = positive(
            env,
            madbase_platform::env::MADBASE_WORKER_POOL_MAX_PER_TENANT,
            10,
        )?;
        let pool_max_total = positive(
            env,
            madbase_platform::env::MADBASE_WORKER_POOL_MAX_TOTAL,
            100,
        )?;
        if pool_max_total < pool_max_per_tenant {
            return Err(bad(
                madbase_platform::env::MADBASE_WORKER_POOL_MAX_TOTAL,
                format!(
                    "{pool_max_total} is less than MADBASE_WORKER_POOL_MAX_PER_TENANT ({pool_max_per_tenant})"
                ),
            ));
        }
        let as_u32 =
            |var: &str, v: u64| u32::try_from(v).map_err(|_| bad(var, format!("{v} is too large")));
        let max_rows =
            match env.parse::<i64>(madbase_platform::env::MADBASE_WORKER_MAX_ROWS, "an integer")? {
                None => Some(1000),
                Some(0) => None,
                Some(n) if n > 0 => Some(n),
                Some(n) => {
                    return Err(bad(
                        madbase_platform::env::MADBASE_WORKER_MAX_ROWS,
                        format!("{n} is negative (0 means unlimited)"),
                    ));
                }
            };
        let schemas: Vec<String> = env
            .raw(madbase_platform::env::MADBASE_WORKER_SCHEMAS)
            .unwrap_or_else(|| "public".to_owned())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if schemas.is_empty() {
            return Err(bad(
                madbase_platform::env::MADBASE_WORKER_SCHEMAS,
                "names no schema".to_owned(),
            ));
        }
        Ok(Config {
            common: CommonConfig::from_env(Service::Worker, env)?,
            jwt_secret: secrets::jwt_secret(env)?,
            control_url: env.url(
                madbase_platform::env::MADBASE_CONTROL_URL,
                "http://127.0.0.1:8001",
            )?,
            statement_timeout: Duration::from_millis(positive(
                env,
                madbase_platform::env::MADBASE_WORKER_STATEMENT_TIMEOUT_MS,
                10_000,
            )?),
            max_rows,
            pool_max_per_tenant: as_u32(
                madbase_platform::env::MADBASE_WORKER_POOL_MAX_PER_TENANT,
                pool_max_per_tenant,
            )?,
            pool_max_total: as_u32(
                madbase_platform::env::MADBASE_WORKER_POOL_MAX_TOTAL,
                pool_max_total,
            )?,
            pool_timeout: Duration::from_millis(positive(
                env,
                madbase_platform::env::MADBASE_WORKER_POOL_TIMEOUT_MS,
                5_000,
            )?),
            pool_idle: Duration::from_secs(positive(
                env,
                madbase_platform::env::MADBASE_WORKER_POOL_IDLE_SECONDS,
                300,
            )?),
            schemas,
            db_aggregates_enabled: env
                .parse::<bool>(
                    madbase_platform::env::MADBASE_DB_AGGREGATES_ENABLED,
                    "true or false",
                )?
                .unwrap_or(false),
            db_plan_enabled: env
                .parse::<bool>(
                    madbase_platform::env::MADBASE_DB_PLAN_ENABLED,
                    "true or false",
                )?
                .unwrap_or(false),
        })
    }
}

/// Closes idle pools every `every`, for as long as the process runs (a
/// supervised task: a panic is logged, counted and restarted).
async fn close_idle_pools(pools: Pools, every: Duration) -> Result<(), String> {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        pools.close_idle();
    }
}

/// Builds the worker service: routes, readiness checks, metrics. Must be
/// called inside a Tokio runtime when pools should be closed when idle.
pub fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    let http = client::internal_client();
    let metrics = Metrics::new();
    let tenants = TenantClient::new(&config.control_url, config.jwt_secret.clone(), &metrics);
    let pools = Pools::new(
        PoolConfig {
            max_per_tenant: config.pool_max_per_tenant,
            max_total: config.pool_max_total,
            acquire_timeout: config.pool_timeout,
            idle_pool: config.pool_idle,
            idle_connection: config.pool_idle.min(Duration::from_secs(60)),
            schemas: config.schemas.clone(),
        },
        &metrics,
    );
    if tokio::runtime::Handle::try_current().is_ok() {
        let pools = pools.clone();
        let every = (config.pool_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        madbase_platform::tasks::supervise("idle-pool-closer", move || {
            close_idle_pools(pools.clone(), every)
        });
    }
    let state = std::sync::Arc::new(Shared {
        tenancy: Tenancy::new(tenants),
        pools,
        statement_timeout_ms: config.statement_timeout.as_millis().to_string().into(),
        max_rows: config.max_rows,
        schemas: std::sync::Arc::new(config.schemas.clone()),
        aggregates: config.db_aggregates_enabled,
        plans: config.db_plan_enabled,
    });
    // The tenant databases' servers, as the pools' LISTEN connections
    // see them (no connection of its own, no query per probe).
    let pools = state.pools.clone();
    let database = ReadyCheck::new("database", move || {
        let down = pools.unreachable_servers();
        async move {
            if down.is_empty() {
                Ok(())
            } else {
                Err(format!("unreachable: {}", down.join(", ")))
            }
        }
    });
    let api = Router::new()
        .route("/rest/v1/rpc/{function}", any(routes::rpc))
        .route("/rest/v1/{table}", any(routes::table))
        .with_state(state);
    Ok(ServiceApp {
        service: Service::Worker,
        api,
        ready: vec![
            ReadyCheck::http("control", http, &config.control_url),
            database,
        ],
        metrics,
    })
}
