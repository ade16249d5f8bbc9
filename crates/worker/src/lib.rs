//! madbase worker: the PostgREST-compatible data API over each tenant's database.
//!
//! At this stage the service answers health and readiness (control reachable);
//! its API builds on it.

use axum::Router;
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, client, secrets};

/// The worker service's configuration, from the environment.
#[derive(Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `JWT_SECRET`: signs the internal tokens used to ask control about tenants.
    pub jwt_secret: String,
    /// `MADBASE_CONTROL_URL`, default `http://127.0.0.1:8001`.
    pub control_url: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("control_url", &self.control_url)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_env(Service::Worker, env)?,
            jwt_secret: secrets::jwt_secret(env)?,
            control_url: env.url("MADBASE_CONTROL_URL", "http://127.0.0.1:8001")?,
        })
    }
}

/// Builds the worker service: routes, readiness checks, metrics.
pub fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    let http = client::internal_client();
    Ok(ServiceApp {
        service: Service::Worker,
        api: Router::new(),
        ready: vec![ReadyCheck::http("control", http, &config.control_url)],
        metrics: Metrics::new(),
    })
}
