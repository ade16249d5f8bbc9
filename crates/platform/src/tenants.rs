//! The tenant-lookup client proxy, worker and functions use to ask control
//! (`GET /internal/v1/tenants/{id}`) about a tenant.
//!
//! Lookups are cached for a TTL; when control is unreachable the last good
//! entry keeps being served (stale); "not found" is cached briefly so unknown
//! names cannot hammer control.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::{client, jwt};

/// What services need to know about a tenant. Served by control's internal
/// API only; never logged.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantInfo {
    pub id: String,
    /// The tenant's JWT secret (verifies its API keys and user JWTs).
    pub jwt_secret: String,
    /// Bumped by every key rotation.
    pub key_version: i32,
    /// The tenant's database name.
    pub database: String,
    /// Connection details of the tenant's authenticator role.
    pub db_host: String,
    pub db_port: u16,
    pub authenticator_user: String,
    pub authenticator_password: String,
    /// The browser origins the proxy allows for this tenant's data API
    /// (`["*"]`: any), set through control's tenant settings; `None`: the
    /// platform's `MADBASE_CORS_ORIGINS`.
    #[serde(default)]
    pub cors_origins: Option<Vec<String>>,
}

impl std::fmt::Debug for TenantInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantInfo")
            .field("id", &self.id)
            .field("key_version", &self.key_version)
            .field("database", &self.database)
            .field("cors_origins", &self.cors_origins)
            .finish_non_exhaustive()
    }
}

/// True when `id` has the shape of a tenant id: `^[a-z][a-z0-9-]{2,39}$`.
pub fn is_valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (3..=40).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// At most this many CORS origins per list.
pub const MAX_CORS_ORIGINS: usize = 100;

/// A list of allowed browser origins, normalised (trimmed, lowercase), or
/// why it is not one: `*` alone (any origin), or up to
/// [`MAX_CORS_ORIGINS`] origins as browsers send them in `Origin`
/// (`scheme://host[:port]`, no path or trailing slash, e.g.
/// `https://app.example.com`, `http://localhost:3000`,
/// `capacitor://localhost`). An empty list allows no origin.
pub fn normalize_cors_origins<S: AsRef<str>>(list: &[S]) -> Result<Vec<String>, String> {
    if list.len() > MAX_CORS_ORIGINS {
        return Err(format!("at most {MAX_CORS_ORIGINS} origins"));
    }
    let list: Vec<String> = list
        .iter()
        .map(|s| s.as_ref().trim().to_ascii_lowercase())
        .collect();
    if list.iter().any(|o| o == "*") {
        return if list.len() == 1 {
            Ok(list)
        } else {
            Err("\"*\" (any origin) cannot be combined with other origins".to_owned())
        };
    }
    for origin in &list {
        let valid = origin.len() <= 255
            && origin.split_once("://").is_some_and(|(scheme, host)| {
                scheme.starts_with(|c: char| c.is_ascii_lowercase())
                    && scheme.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)
                    })
                    && !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
            });
        if !valid {
            return Err(format!(
                "{origin:?} is not an origin like https://app.example.com or http://localhost:3000 \
                 (scheme://host[:port], no path, no trailing slash)"
            ));
        }
    }
    Ok(list)
}

/// Why a lookup failed (control unreachable and nothing cached).

#[derive(Debug, Clone, thiserror::Error)]
#[error("tenant lookup failed: {0}")]
pub struct LookupError(pub String);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Option<Arc<TenantInfo>>,
    fetched: Instant,
}

/// A cached client of control's internal tenant API.
#[derive(Debug, Clone)]
pub struct TenantClient {
    http: reqwest::Client,
    control_url: String,
    jwt_secret: String,
    ttl: Duration,
    negative_ttl: Duration,
    cache: Arc<Mutex<HashMap<String, Entry>>>,
    lookups: Family<OutcomeLabels, Counter>,
}

impl TenantClient {
    /// A client with a 30 s TTL and 5 s negative TTL, registering
    /// `madbase_tenant_lookups_total{outcome}` on `metrics`.
    pub fn new(control_url: &str, jwt_secret: &str, metrics: &Metrics) -> Self {
        let lookups = Family::default();
        metrics.register(
            "madbase_tenant_lookups",
            "Tenant lookups by outcome: hit, miss, stale, not_found, error",
            lookups.clone(),
        );
        TenantClient {
            http: client::internal_client(),
            control_url: control_url.trim_end_matches('/').to_owned(),
            jwt_secret: jwt_secret.to_owned(),
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            cache: Arc::default(),
            lookups,
        }
    }

    /// Changes the cache lifetimes.
    pub fn with_ttl(mut self, ttl: Duration, negative_ttl: Duration) -> Self {
        self.ttl = ttl;
        self.negative_ttl = negative_ttl;
        self
    }

    fn count(&self, outcome: &'static str) {
        self.lookups.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Drops a cached entry (e.g. after a key was refused, to pick up a rotation).
    pub fn invalidate(&self, id: &str) {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }

    /// The tenant, `None` when control says it does not exist.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<TenantInfo>>, LookupError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        if let Some(entry) = &cached {
            let ttl = if entry.value.is_some() {
                self.ttl
            } else {
                self.negative_ttl
            };
            if entry.fetched.elapsed() < ttl {
                self.count(if entry.value.is_some() {
                    "hit"
                } else {
                    "not_found"
                });
                return Ok(entry.value.clone());
            }
        }
        match self.fetch(id).await {
            Ok(value) => {
                self.count(if value.is_some() { "miss" } else { "not_found" });
                self.cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(
                        id.to_owned(),
                        Entry {
                            value: value.clone(),
                            fetched: Instant::now(),
                        },
                    );
                Ok(value)
            }
            Err(e) => match cached {
                Some(Entry { value: Some(v), .. }) => {
                    tracing::warn!(tenant = id, error = %e, "control unreachable: serving the cached tenant");
                    self.count("stale");
                    Ok(Some(v))
                }
                _ => {
                    self.count("error");
                    Err(e)
                }
            },
        }
    }

    async fn fetch(&self, id: &str) -> Result<Option<Arc<TenantInfo>>, LookupError> {
        let token = jwt::platform_token(&self.jwt_secret, "internal", Duration::from_secs(300));
        let url = format!("{}/internal/v1/tenants/{id}", self.control_url);
        let resp = self
            .http
            .get(&url)
            .headers(client::propagation_headers())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| LookupError(client::describe(&e)))?;
        match resp.status() {
            s if s.is_success() => resp
                .json::<TenantInfo>()
                .await
                .map(|t| Some(Arc::new(t)))
                .map_err(|e| LookupError(format!("bad answer from control: {e}"))),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => Err(LookupError(format!("control answered {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_cors_origins;

    #[test]
    fn cors_origin_lists() {
        let ok = |l: &[&str]| normalize_cors_origins(l).expect("valid");
        assert_eq!(ok(&["*"]), ["*"]);
        assert!(ok(&[]).is_empty());
        assert_eq!(
            ok(&[" HTTPS://App.Example.com ", "http://localhost:3000"]),
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert_eq!(ok(&["capacitor://localhost"]), ["capacitor://localhost"]);
        assert_eq!(ok(&["http://[::1]:8080"]), ["http://[::1]:8080"]);
        for bad in [
            &["*", "https://a.example"][..],
            &["https://a.example/"],
            &["https://a.example/path"],
            &["a.example"],
            &["https://"],
            &["https://a b"],
            &["1http://a.example"],
        ] {
            assert!(normalize_cors_origins(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=100).map(|i| format!("https://a{i}.example")).collect();
        assert!(normalize_cors_origins(&many).is_err());
    }
}
