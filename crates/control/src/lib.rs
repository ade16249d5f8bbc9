//! madbase control: the control plane (tenants, keys, secrets at rest).
//!
//! Owns the control database (sqlx migrations, compile-time checked queries),
//! creates tenants' databases and roles on the tenant cluster, issues their
//! keys and keeps their secrets encrypted at rest.
#![warn(missing_docs)]

mod api;
mod changes;
pub mod console;
pub(crate) mod crypto;
mod function_limits;
mod function_secrets;
mod functions;
mod interrupted;
pub(crate) mod provision;
pub mod sql;
mod store;

use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::secrets::ExposeSecret as _;
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, secrets};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::crypto::Sealer;

/// Control's configuration, from the environment.
#[derive(Clone)]
pub struct Config {
    /// Listeners, logging and telemetry settings shared by every service.
    pub common: CommonConfig,
    /// `DATABASE_URL`: the control database (its password inside).
    pub database_url: secrets::SecretString,
    /// `DEFAULT_TENANT_DB_URL`: the cluster tenant databases are created on
    /// (default: `DATABASE_URL`'s server, database `postgres`; its password
    /// inside).
    pub tenant_db_url: secrets::SecretString,
    /// `JWT_SECRET`.
    pub jwt_secret: secrets::SecretString,
    /// `MADBASE_MASTER_KEY`, decoded.
    pub master_key: secrets::MasterKey,
    /// `MADBASE_PUBLIC_URL`: where clients reach the proxy (for `rest_url`),
    /// default `http://localhost:8000`.
    pub public_url: String,
    /// `MADBASE_SQL_TIMEOUT_SECONDS`: statement timeout of the SQL endpoint (default 30).
    pub sql_timeout: Duration,
    /// `MADBASE_DB_CONNECT_SECONDS`: how long start-up waits for the control
    /// database (default 30).
    pub connect_wait: Duration,
    /// The operator console's sign-in (`MADBASE_CONSOLE_PASSWORD[_FILE]`).
    pub console: console::ConsoleConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("database_url", &"<redacted>")
            .field("tenant_db_url", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads and validates control's variables; the first problem is the error.
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(Service::Control, env)?;
        let database_url = env.required(
            madbase_platform::env::DATABASE_URL,
            "the control database, postgres://user:pass@host:5432/db",
        )?;
        check_pg_url(madbase_platform::env::DATABASE_URL, &database_url)?;
        let tenant_db_url = match env.raw(madbase_platform::env::DEFAULT_TENANT_DB_URL) {
            Some(url) => {
                check_pg_url(madbase_platform::env::DEFAULT_TENANT_DB_URL, &url)?;
                url
            }
            None => with_database(&database_url, "postgres"),
        };
        Ok(Config {
            common,
            database_url: database_url.into(),
            tenant_db_url: tenant_db_url.into(),
            jwt_secret: secrets::jwt_secret(env)?,
            master_key: secrets::master_key(env)?,
            public_url: env.url(
                madbase_platform::env::MADBASE_PUBLIC_URL,
                "http://localhost:8000",
            )?,
            sql_timeout: env.seconds(
                madbase_platform::env::MADBASE_SQL_TIMEOUT_SECONDS,
                Duration::from_secs(30),
            )?,
            connect_wait: env.seconds(
                madbase_platform::env::MADBASE_DB_CONNECT_SECONDS,
                Duration::from_secs(30),
            )?,
            console: console::ConsoleConfig::from_env(env)?,
        })
    }
}

fn check_pg_url(var: &str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError {
            var: var.to_owned(),
            problem: "is not a postgres:// or postgresql:// URL".to_owned(),
        });
    }
    PgConnectOptions::from_str(url)
        .map(|_| ())
        .map_err(|e| ConfigError {
            var: var.to_owned(),
            problem: format!("is not a Postgres connection URL: {e}"),
        })
}

/// `url` with its database replaced by `db` (query string kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (url, String::new()),
    };
    let start = head.find("://").map_or(0, |i| i + 3);
    let server = match head[start..].find('/') {
        Some(i) => &head[..start + i],
        None => head,
    };
    format!("{server}/{db}{query}")
}

/// Shared state of the control handlers.
#[derive(Clone)]
pub struct AppState {
    db: PgPool,
    admin: PgPool,
    cluster: PgConnectOptions,
    sealer: Sealer,
    jwt_secret: secrets::SecretString,
    public_url: String,
    sql_limits: sql::Limits,
    metrics: ControlMetrics,
    changes: changes::Changes,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Connects to the control database (retrying for up to `wait` while it
/// starts), applies the migrations and checks the master key.
pub async fn connect_and_migrate(config: &Config, wait: Duration) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(config.database_url.expose_secret())?
        .application_name("madbase-control");
    let deadline = std::time::Instant::now() + wait;
    let pool = loop {
        match PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => break pool,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "control database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context("connecting to the control database (DATABASE_URL)"));
            }
        }
    };
    MIGRATOR
        .run(&pool)
        .await
        .context("applying the control database migrations")?;
    check_master_key(&pool, &Sealer::new(&config.master_key.expose_secret().0)).await?;
    Ok(pool)
}

/// The control schema's migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const KEY_CHECK: &str = "master_key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"madbase master key check v1";

/// Fails when `MADBASE_MASTER_KEY` is not the key this database's secrets
/// were sealed with (stored on first start).
async fn check_master_key(db: &PgPool, sealer: &Sealer) -> anyhow::Result<()> {
    let stored = store::init_meta(db, KEY_CHECK, &sealer.seal(KEY_CHECK_PLAINTEXT)).await?;
    match sealer.open(&stored) {
        Ok(plain) if plain == KEY_CHECK_PLAINTEXT => Ok(()),
        _ => anyhow::bail!(
            "MADBASE_MASTER_KEY is not the key this control database was set up with; \
             refusing to start (tenant secrets could not be decrypted)"
        ),
    }
}

/// Builds the control service: migrates, checks the master key, routes.
pub async fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    let db = connect_and_migrate(config, config.connect_wait).await?;
    let cluster = api::cluster_options(config.tenant_db_url.expose_secret())?;
    let admin = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(cluster.clone());
    let metrics = Metrics::new();
    let control_metrics = ControlMetrics::new(&metrics, db.clone());
    control_metrics.refresh_tenants(&db).await;
    interrupted::start(db.clone(), admin.clone());
    let state = AppState {
        db: db.clone(),
        admin,
        cluster,
        sealer: Sealer::new(&config.master_key.expose_secret().0),
        jwt_secret: config.jwt_secret.clone(),
        public_url: config.public_url.clone(),
        sql_limits: sql::Limits {
            statement_timeout: config.sql_timeout,
            max_rows: 10_000,
            max_bytes: 8 << 20,
        },
        metrics: control_metrics,
        changes: changes::Changes::start(db.clone(), &metrics),
    };
    let admin_api = Router::new()
        .route("/v1/tenants", post(api::create).get(api::list))
        .route("/v1/tenants/{id}", get(api::get).delete(api::delete))
        .route("/v1/tenants/{id}/keys/rotate", post(api::rotate))
        .route("/v1/tenants/{id}/sql", post(api::run_sql))
        .route(
            "/v1/tenants/{id}/settings",
            get(api::settings).patch(api::patch_settings),
        )
        .route("/v1/tenants/{id}/functions", get(functions::list))
        .route(
            "/v1/tenants/{id}/functions/{name}",
            get(functions::get)
                .put(functions::deploy)
                .delete(functions::delete),
        )
        .route(
            "/v1/tenants/{id}/secrets",
            get(function_secrets::list)
                .put(function_secrets::put)
                .delete(function_secrets::delete_many),
        )
        .route(
            "/v1/tenants/{id}/secrets/{name}",
            axum::routing::delete(function_secrets::delete_one),
        )
        .route(
            "/v1/tenants/{id}/function-limits",
            get(function_limits::get)
                .put(function_limits::put)
                .delete(function_limits::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), "admin"),
            api::require_role,
        ));
    let internal_api = Router::new()
        .route("/internal/v1/tenants/{id}", get(api::internal_get))
        .route(
            "/internal/v1/tenants/{id}/functions/{name}",
            get(functions::internal_get),
        )
        .route("/internal/v1/changes", get(changes::feed))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), "internal"),
            api::require_role,
        ));
    let routes = admin_api
        .merge(internal_api)
        .with_state(state.clone())
        .merge(console::router(state, &config.console))
        .layer(DefaultBodyLimit::max(1 << 20));
    Ok(ServiceApp {
        service: Service::Control,
        api: routes,
        ready: vec![database_check(db)],
        metrics,
    })
}

fn database_check(pool: PgPool) -> ReadyCheck {
    ReadyCheck::new("database", move || {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
}

/// Control's own metrics.
#[derive(Clone, Debug)]
struct ControlMetrics {
    tenants: Gauge,
    operations: Family<OpLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

/// `madbase_db_pool_connections{pool,state}` read at scrape time.
#[derive(Debug)]
struct PoolCollector(PgPool);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let size = i64::from(self.0.size());
        let idle = i64::try_from(self.0.num_idle()).unwrap_or(i64::MAX);
        let family = Family::<PoolLabels, Gauge>::default();
        family
            .get_or_create(&PoolLabels {
                pool: "control",
                state: "idle",
            })
            .set(idle);
        family
            .get_or_create(&PoolLabels {
                pool: "control",
                state: "in_use",
            })
            .set(size - idle);
        family
            .get_or_create(&PoolLabels {
                pool: "control",
                state: "max",
            })
            .set(i64::from(self.0.options().get_max_connections()));
        family.encode(encoder.encode_descriptor(
            "madbase_db_pool_connections",
            "Control database pool connections by state",
            None,
            family.metric_type(),
        )?)
    }
}

impl ControlMetrics {
    fn new(metrics: &Metrics, db: PgPool) -> Self {
        let tenants = Gauge::default();
        metrics.register("madbase_tenants", "Active tenants", tenants.clone());
        let operations = Family::<OpLabels, Counter>::default();
        metrics.register(
            "madbase_tenant_operations",
            "Tenant operations by op (create, delete, rotate) and outcome",
            operations.clone(),
        );
        metrics.register_collector(PoolCollector(db));
        ControlMetrics {
            tenants,
            operations,
        }
    }

    fn operation(&self, op: &'static str, ok: bool) {
        let outcome = if ok { "success" } else { "error" };
        self.operations
            .get_or_create(&OpLabels { op, outcome })
            .inc();
    }

    async fn refresh_tenants(&self, db: &PgPool) {
        match store::count(db).await {
            Ok(n) => {
                self.tenants.set(n);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count tenants"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/control?sslmode=disable", "postgres"),
            "postgres://u:p@h:5432/postgres?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
