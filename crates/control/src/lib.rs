//! madbase control: the control plane (tenants, keys, secrets at rest).
//!
//! At this stage it owns the connection to the control database and answers
//! health and readiness; the tenant API builds on it.

use std::str::FromStr as _;
use std::time::Duration;

use axum::Router;
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, secrets};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Control's configuration, from the environment.
#[derive(Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `DATABASE_URL`: the control database.
    pub database_url: String,
    /// `DEFAULT_TENANT_DB_URL`: the cluster tenant databases are created on
    /// (default: `DATABASE_URL`'s server, database `postgres`).
    pub tenant_db_url: String,
    /// `JWT_SECRET`.
    pub jwt_secret: String,
    /// `MADBASE_MASTER_KEY`, decoded.
    pub master_key: [u8; 32],
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
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(Service::Control, env)?;
        let database_url = env.required(
            "DATABASE_URL",
            "the control database, postgres://user:pass@host:5432/db",
        )?;
        check_pg_url("DATABASE_URL", &database_url)?;
        let tenant_db_url = match env.raw("DEFAULT_TENANT_DB_URL") {
            Some(url) => {
                check_pg_url("DEFAULT_TENANT_DB_URL", &url)?;
                url
            }
            None => with_database(&database_url, "postgres"),
        };
        Ok(Config {
            common,
            database_url,
            tenant_db_url,
            jwt_secret: secrets::jwt_secret(env)?,
            master_key: secrets::master_key(env)?,
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

/// Builds the control service: pools, routes, readiness checks, metrics.
pub fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    let options =
        PgConnectOptions::from_str(&config.database_url)?.application_name("madbase-control");
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let metrics = Metrics::new();
    Ok(ServiceApp {
        service: Service::Control,
        api: Router::new(),
        ready: vec![database_check(pool)],
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
