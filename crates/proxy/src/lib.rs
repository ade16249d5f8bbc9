//! madbase proxy: the public edge (tenant routing, API keys, rate limits,
//! forwarding to worker and functions).
//!
//! At this stage the service answers health and readiness (control
//! reachable); routing builds on it.

use axum::Router;
use madbase_platform::config::{ConfigError, Env, Source};
use madbase_platform::{CommonConfig, Metrics, ReadyCheck, Service, ServiceApp, client, secrets};

/// The proxy's configuration, from the environment.
#[derive(Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `JWT_SECRET`: signs the internal tokens used to ask control about tenants.
    pub jwt_secret: String,
    /// `MADBASE_CONTROL_URL`, default `http://127.0.0.1:8001`.
    pub control_url: String,
    /// `MADBASE_WORKER_URL`, default `http://127.0.0.1:8002`.
    pub worker_url: String,
    /// `MADBASE_FUNCTIONS_URL`, default `http://127.0.0.1:8003`.
    pub functions_url: String,
    /// `MADBASE_DOMAIN`: tenants are `<tenant>.<domain>`; default `localhost`.
    pub domain: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("control_url", &self.control_url)
            .field("worker_url", &self.worker_url)
            .field("functions_url", &self.functions_url)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn from_env<S: Source>(env: &Env<S>) -> Result<Self, ConfigError> {
        let domain = env
            .raw("MADBASE_DOMAIN")
            .unwrap_or_else(|| "localhost".to_owned());
        let valid_domain = !domain.is_empty()
            && domain.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_domain {
            return Err(ConfigError {
                var: "MADBASE_DOMAIN".into(),
                problem: format!("{domain:?} is not a DNS name like api.example.com"),
            });
        }
        Ok(Config {
            common: CommonConfig::from_env(Service::Proxy, env)?,
            jwt_secret: secrets::jwt_secret(env)?,
            control_url: env.url("MADBASE_CONTROL_URL", "http://127.0.0.1:8001")?,
            worker_url: env.url("MADBASE_WORKER_URL", "http://127.0.0.1:8002")?,
            functions_url: env.url("MADBASE_FUNCTIONS_URL", "http://127.0.0.1:8003")?,
            domain: domain.to_ascii_lowercase(),
        })
    }
}

/// Builds the proxy: routes, readiness checks, metrics.
pub fn app(config: &Config) -> anyhow::Result<ServiceApp> {
    let http = client::internal_client();
    Ok(ServiceApp {
        service: Service::Proxy,
        api: Router::new(),
        ready: vec![ReadyCheck::http("control", http, &config.control_url)],
        metrics: Metrics::new(),
    })
}
