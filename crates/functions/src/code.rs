//! Functions' code and secrets from control
//! (`GET /internal/v1/tenants/{id}/functions/{name}`), cached. Control's
//! change feed (a deploy, a delete, a secret or a limit changed: the
//! tenant's id, relayed by [`TenantClient::subscribe`]) makes every entry of
//! that tenant stale at once and has them reloaded in the background, so the
//! next invocation runs the new version without waiting for control; the
//! short TTL only bounds how long a change can go unseen while the feed is
//! down. One lookup per (tenant, name) at a time; when control is
//! unreachable the last good answer keeps being served.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use madbase_platform::client;
use madbase_platform::secrets::SecretString;
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
    /// The tenant's function secrets (read only when an invocation's
    /// environment is built).
    #[serde(default)]
    pub env: BTreeMap<String, SecretString>,
    /// The tenant's overrides of the service's limits.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// The source compiled to bytecode (`madbase_js::worker::compile`), in
    /// the background once loaded: workers then load it instead of parsing
    /// the source at a cold start. Empty until then, or when it does not
    /// compile (the worker reports the error from the source).
    #[serde(skip)]
    pub compiled: std::sync::OnceLock<Arc<[u8]>>,
}

impl FunctionCode {
    /// Takes the bytecode of `previous` when it is the same code (a reload
    /// after the TTL), else compiles in the background.
    fn compile_unless_known(code: &Option<Arc<Self>>, previous: Option<&Cached>) {
        let Some(code) = code else {
            return;
        };
        let known = previous
            .and_then(|c| c.value.as_ref())
            .filter(|p| {
                p.version == code.version && p.sha256 == code.sha256 && p.source == code.source
            })
            .and_then(|p| p.compiled.get().cloned());
        match known {
            Some(compiled) => {
                let _ = code.compiled.set(compiled);
            }
            None => Self::compile_in_background(code),
        }
    }

    /// Compiles the source into [`FunctionCode::compiled`] on a blocking
    /// thread (a 200 KiB bundle takes ~35 ms: never on an invocation's path).
    fn compile_in_background(code: &Arc<Self>) {
        let code = code.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            match madbase_js::worker::compile(&code.name, &code.source) {
                Ok(compiled) => {
                    tracing::debug!(
                        function = code.name,
                        version = code.version,
                        bytes = compiled.len(),
                        took_ms = started.elapsed().as_secs_f64() * 1e3,
                        "compiled to bytecode"
                    );
                    let _ = code.compiled.set(Arc::from(compiled));
                }
                Err(e) => {
                    tracing::debug!(function = code.name, error = %e, "does not compile to bytecode");
                }
            }
        });
    }
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

/// What the change feed said: an entry fetched before its tenant's (or
/// everyone's) last change is stale.
#[derive(Debug, Default)]
struct Changes {
    /// The feed, when no task follows it (no Tokio runtime at start): read
    /// at each lookup instead.
    feed: Option<broadcast::Receiver<Invalidation>>,
    /// The last change of each tenant announced.
    tenants: HashMap<String, Instant>,
    /// The last time everything was announced stale (a gap in the feed).
    all: Option<Instant>,
}

impl Changes {
    fn tenant_changed(&mut self, id: String) {
        if self.tenants.len() >= MAX_ENTRIES {
            self.tenants.clear();
            self.all = Some(Instant::now());
        }
        self.tenants.insert(id, Instant::now());
    }

    fn all_changed(&mut self) {
        self.tenants.clear();
        self.all = Some(Instant::now());
    }

    /// Reads what the feed announced since the last call (without a task).
    fn drain(&mut self) {
        while let Some(feed) = self.feed.as_mut() {
            match feed.try_recv() {
                Ok(Invalidation::Tenant(id) | Invalidation::Functions(id)) => {
                    self.tenant_changed(id);
                }
                Ok(Invalidation::All) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.all_changed();
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
///
/// A task follows the change feed: it notes each announced change at once
/// and then reloads the tenant's cached entries, so the first invocation
/// after a redeploy does not wait for control (an invocation that comes
/// first loads the entry itself).
#[derive(Debug)]
pub(crate) struct CodeCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The tenant cache the same announcements empty (re-filled with the
    /// code, so a redeploy's first invocation does not wait for control).
    tenants: TenantClient,
    http: reqwest::Client,
    control_url: String,
    jwt_secret: SecretString,
    ttl: Duration,
    slots: Mutex<HashMap<(String, String), Slot>>,
    changes: Mutex<Changes>,
}

impl CodeCache {
    /// A cache following `tenants`' change feed.
    pub(crate) fn new(
        control_url: &str,
        jwt_secret: &SecretString,
        ttl: Duration,
        tenants: &TenantClient,
    ) -> Self {
        let inner = Arc::new(Inner {
            tenants: tenants.clone(),
            http: client::internal_client(),
            control_url: control_url.trim_end_matches('/').to_owned(),
            jwt_secret: jwt_secret.clone(),
            ttl,
            slots: Mutex::default(),
            changes: Mutex::default(),
        });
        let feed = tenants.subscribe();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let _guard = runtime.enter();
                let weak = Arc::downgrade(&inner);
                let mut first = Some(feed);
                madbase_platform::tasks::supervise("function-code-feed", move || {
                    let weak = weak.clone();
                    let feed = first.take();
                    async move {
                        let feed = match feed {
                            Some(feed) => feed,
                            // A restart after a failure: announcements may
                            // have been missed meanwhile.
                            None => {
                                let Some(inner) = weak.upgrade() else {
                                    return Ok(());
                                };
                                let feed = inner.tenants.subscribe();
                                inner.changes().all_changed();
                                feed
                            }
                        };
                        follow(weak, feed).await;
                        Ok(())
                    }
                });
            }
            Err(_) => inner.changes().feed = Some(feed),
        }
        CodeCache { inner }
    }

    /// The function's current version; `None` when it (or the tenant) does
    /// not exist.
    pub(crate) async fn get(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Arc<FunctionCode>>, LookupError> {
        let inner = &self.inner;
        let slot = {
            let mut slots = inner
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
            && inner.fresh(tenant, c.fetched)
        {
            return Ok(c.value.clone());
        }
        let started = Instant::now();
        match inner.fetch(tenant, name).await {
            Ok(value) => {
                FunctionCode::compile_unless_known(&value, cached.as_ref());
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
}

/// Follows the change feed until the cache is gone.
async fn follow(inner: std::sync::Weak<Inner>, mut feed: broadcast::Receiver<Invalidation>) {
    loop {
        let event = feed.recv().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match event {
            Ok(Invalidation::Tenant(id) | Invalidation::Functions(id)) => {
                inner.changes().tenant_changed(id.clone());
                tokio::spawn(refresh(inner, id));
            }
            Ok(Invalidation::All) | Err(broadcast::error::RecvError::Lagged(_)) => {
                inner.changes().all_changed();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Reloads the cached entries of `tenant` that a change made stale, and
/// the tenant itself (the change dropped it from the tenant cache).
async fn refresh(inner: Arc<Inner>, tenant: String) {
    let slots: Vec<(String, Slot)> = inner
        .slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|((t, _), _)| *t == tenant)
        .map(|((_, name), slot)| (name.clone(), slot.clone()))
        .collect();
    if slots.is_empty() {
        return;
    }
    // An error here is the next invocation's to report.
    let _ = inner.tenants.get(&tenant).await;
    for (name, slot) in slots {
        let mut cached = slot.lock().await;
        // Never loaded, or loaded again meanwhile (by an invocation).
        if cached
            .as_ref()
            .is_none_or(|c| inner.fresh(&tenant, c.fetched))
        {
            continue;
        }
        let started = Instant::now();
        if let Ok(value) = inner.fetch(&tenant, &name).await {
            FunctionCode::compile_unless_known(&value, cached.as_ref());
            *cached = Some(Cached {
                fetched: started,
                value,
            });
        }
    }
}

impl Inner {
    fn changes(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether an entry fetched at `fetched` may still be used.
    fn fresh(&self, tenant: &str, fetched: Instant) -> bool {
        if fetched.elapsed() >= self.ttl {
            return false;
        }
        let mut changes = self.changes();
        changes.drain();
        !changes.outdated(tenant, fetched)
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
