//! madbase functions: runs tenant JavaScript functions in a sandbox.
//!
//! `/functions/v1/{name}` checks the tenant and its key and counts the run;
//! deploying functions and the JavaScript sandbox are not built yet, so
//! every invocation answers 404 `function_not_found` (see `invoke.rs`).

mod invoke;

use axum::Router;
use axum::routing::any;
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::tenants::TenantClient;
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, client, secrets};

/// The functions service's configuration, from the environment.
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
            common: CommonConfig::from_env(Service::Functions, env)?,
            jwt_secret: secrets::jwt_secret(env)?,
            control_url: env.url("MADBASE_CONTROL_URL", "http://127.0.0.1:8001")?,
        })
    }
}

/// Builds the functions service: routes, readiness checks, metrics.
pub fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    let http = client::internal_client();
    let metrics = Metrics::new();
    let invoker = invoke::Invoker::new(
        TenantClient::new(&config.control_url, &config.jwt_secret, &metrics),
        &metrics,
    );
    let api = Router::new()
        .route("/functions/v1/{name}", any(invoke::invoke))
        .route("/functions/v1/{name}/{*rest}", any(invoke::invoke))
        .with_state(invoker);
    Ok(ServiceApp {
        service: Service::Functions,
        api,
        ready: vec![ReadyCheck::http("control", http, &config.control_url)],
        metrics,
    })
}
