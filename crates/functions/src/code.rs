//! Functions' code and secrets from control
//! (`GET /internal/v1/tenants/{id}/functions/{name}`), cached for a short
//! TTL so that a redeploy or a delete takes effect within seconds. One
//! lookup per (tenant, name) at a time; when control is unreachable the last
//! good answer keeps being served.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use madbase_platform::client;
use serde::Deserialize;

/// A deployed function's current version, as control serves it.
#[derive(Clone, Deserialize)]
pub(crate) struct FunctionCode {
    pub name: String,
    pub version: i64,
    pub sha256: String,
    pub verify_jwt: bool,
    /// Shared by every invocation (up to 1 MiB: never copied per call).
    #[serde(deserialize_with = "shared_str")]
    pub source: Arc<str>,
    /// The tenant's function secrets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for FunctionCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCode")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .field("verify_jwt", &self.verify_jwt)
            .finish_non_exhaustive()
    }
}

fn shared_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    String::deserialize(d).map(Arc::from)
}

/// Control could not be asked and nothing is cached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("function lookup failed: {0}")]
pub(crate) struct LookupError(pub String);

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

#[derive(Debug, Clone)]
struct Cached {
    fetched: Instant,
    value: Option<Arc<FunctionCode>>,
}

/// Entries kept before the cache starts over (names come from requests).
const MAX_ENTRIES: usize = 10_000;

/// The cache of functions' code.
#[derive(Debug)]
pub(crate) struct CodeCache {
    http: reqwest::Client,
    control_url: String,
    jwt_secret: String,
    ttl: Duration,
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl CodeCache {
    pub(crate) fn new(control_url: &str, jwt_secret: &str, ttl: Duration) -> Self {
        CodeCache {
            http: client::internal_client(),
            control_url: control_url.trim_end_matches('/').to_owned(),
            jwt_secret: jwt_secret.to_owned(),
            ttl,
            slots: Mutex::default(),
        }
    }

    /// The function's current version; `None` when it (or the tenant) does
    /// not exist.
    pub(crate) async fn get(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Arc<FunctionCode>>, LookupError> {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() >= MAX_ENTRIES {
                slots.clear();
            }
            slots
                .entry((tenant.to_owned(), name.to_owned()))
                .or_default()
                .clone()
        };
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && c.fetched.elapsed() < self.ttl
        {
            return Ok(c.value.clone());
        }
        match self.fetch(tenant, name).await {
            Ok(value) => {
                *cached = Some(Cached {
                    fetched: Instant::now(),
                    value: value.clone(),
                });
                Ok(value)
            }
            Err(e) => match cached.as_ref().and_then(|c| c.value.clone()) {
                Some(stale) => {
                    tracing::warn!(tenant, function = name, error = %e, "control unreachable: running the cached function");
                    Ok(Some(stale))
                }
                None => Err(e),
            },
        }
    }

    async fn fetch(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Arc<FunctionCode>>, LookupError> {
        madbase_tenancy::internal_get(
            &self.http,
            &self.control_url,
            &self.jwt_secret,
            &format!("tenants/{tenant}/functions/{name}"),
        )
        .await
        .map(|c| c.map(Arc::new))
        .map_err(|e| LookupError(e.0))
    }
}
