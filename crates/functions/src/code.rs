//! Functions' code and secrets from control
//! (`GET /internal/v1/tenants/{id}/functions/{name}`), cached. Control's
//! change feed (a deploy, a delete, a secret or a limit changed: the
//! tenant's id, relayed by [`TenantClient::subscribe`]) makes every entry of
//! that tenant stale at once, so the next invocation loads the new version;
//! the short TTL only bounds how long a change can go unseen while the feed
//! is down. One lookup per (tenant, name) at a time; when control is
//! unreachable the last good answer keeps being served.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use madbase_platform::client;
use madbase_tenancy::{Invalidation, TenantClient};
use serde::Deserialize;
use tokio::sync::broadcast;

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
    /// The tenant's overrides of the service's limits.
    #[serde(default)]
    pub limits: LimitOverrides,
}

/// A tenant's overrides of the functions service's limits, set in control
/// (`PUT /v1/tenants/{id}/function-limits`); `None`: the service's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct LimitOverrides {
    pub cpu_ms: Option<u64>,
    pub wall_seconds: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_concurrent: Option<u64>,
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
    /// When the lookup that got it started (a change announced while it
    /// was in flight makes it stale).
    fetched: Instant,
    value: Option<Arc<FunctionCode>>,
}

/// Entries kept before the cache starts over (names come from requests).
const MAX_ENTRIES: usize = 10_000;

/// What the change feed said, applied lazily: an entry fetched before its
/// tenant's (or everyone's) last change is stale.
#[derive(Debug)]
struct Changes {
    feed: broadcast::Receiver<Invalidation>,
    /// The last change of each tenant announced.
    tenants: HashMap<String, Instant>,
    /// The last time everything was announced stale (a gap in the feed).
    all: Option<Instant>,
}

impl Changes {
    /// Reads what the feed announced since the last call.
    fn drain(&mut self) {
        loop {
            match self.feed.try_recv() {
                Ok(Invalidation::Tenant(id)) => {
                    if self.tenants.len() >= MAX_ENTRIES {
                        self.tenants.clear();
                        self.all = Some(Instant::now());
                    }
                    self.tenants.insert(id, Instant::now());
                }
                Ok(Invalidation::All) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.tenants.clear();
                    self.all = Some(Instant::now());
                }
                Err(
                    broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed,
                ) => return,
            }
        }
    }

    /// Whether something was fetched (started) at `fetched` before a change
    /// of `tenant`.
    fn outdated(&self, tenant: &str, fetched: Instant) -> bool {
        self.all.is_some_and(|at| fetched <= at)
            || self.tenants.get(tenant).is_some_and(|at| fetched <= *at)
    }
}

/// The cache of functions' code.
#[derive(Debug)]
pub(crate) struct CodeCache {
    http: reqwest::Client,
    control_url: String,
    jwt_secret: String,
    ttl: Duration,
    slots: Mutex<HashMap<(String, String), Slot>>,
    changes: Mutex<Changes>,
}

impl CodeCache {
    /// A cache following `tenants`' change feed.
    pub(crate) fn new(
        control_url: &str,
        jwt_secret: &str,
        ttl: Duration,
        tenants: &TenantClient,
    ) -> Self {
        CodeCache {
            http: client::internal_client(),
            control_url: control_url.trim_end_matches('/').to_owned(),
            jwt_secret: jwt_secret.to_owned(),
            ttl,
            slots: Mutex::default(),
            changes: Mutex::new(Changes {
                feed: tenants.subscribe(),
                tenants: HashMap::new(),
                all: None,
            }),
        }
    }

    /// Whether an entry fetched at `fetched` may still be used.
    fn fresh(&self, tenant: &str, fetched: Instant) -> bool {
        if fetched.elapsed() >= self.ttl {
            return false;
        }
        let mut changes = self
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        changes.drain();
        !changes.outdated(tenant, fetched)
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
            && self.fresh(tenant, c.fetched)
        {
            return Ok(c.value.clone());
        }
        let started = Instant::now();
        match self.fetch(tenant, name).await {
            Ok(value) => {
                *cached = Some(Cached {
                    fetched: started,
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
