//! The tenant-lookup client proxy, worker and functions use to ask control
//! (`GET /internal/v1/tenants/{id}`) about a tenant.
//!
//! Lookups are cached for a TTL and loaded once however many requests miss
//! at the same time; when control is unreachable the last good entry keeps
//! being served (stale); "not found" is cached briefly so unknown names
//! cannot hammer control; control's change feed drops an entry the moment
//! the tenant changes (see [`TenantClient`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use madbase_platform::client;
use madbase_platform::metrics::Metrics;
use madbase_platform::secrets::{ExposeSecret, SecretString};

use crate::jwt;

/// What services need to know about a tenant. Served by control's internal
/// API only; never logged (its secrets are `SecretString`s, which only the
/// internal API's JSON writes out).
#[derive(Clone, Serialize, Deserialize)]
pub struct TenantInfo {
    /// The tenant id (its subdomain).
    pub id: String,
    /// The tenant's JWT secret (verifies its API keys and user JWTs).
    #[serde(serialize_with = "exposed")]
    pub jwt_secret: SecretString,
    /// Bumped by every key rotation.
    pub key_version: i32,
    /// The tenant's database name.
    pub database: String,
    /// Connection details of the tenant's authenticator role.
    pub db_host: String,
    /// The port of the tenant cluster.
    pub db_port: u16,
    /// The login of the tenant's authenticator role.
    pub authenticator_user: String,
    /// The password of the tenant's authenticator role.
    #[serde(serialize_with = "exposed")]
    pub authenticator_password: SecretString,
    /// The browser origins the proxy allows for this tenant's data API
    /// (`["*"]`: any), set through control's tenant settings; `None`: the
    /// platform's `MADBASE_CORS_ORIGINS`.
    #[serde(default)]
    pub cors_origins: Option<Vec<String>>,
}

/// Writes a secret's text: only for control's internal API answer.
fn exposed<S: serde::Serializer>(secret: &SecretString, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(secret.expose_secret())
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Option<Arc<TenantInfo>>,
    fetched: Instant,
    /// Set by a resync: reload before use, but still good to serve stale
    /// when control is unreachable.
    expired: bool,
}

/// What control's change feed announced (see [`TenantClient::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Something of this tenant changed: its keys, settings or deletion
    /// (the client has dropped it from its cache).
    Tenant(String),
    /// This tenant's functions, their versions, secrets or limits changed
    /// (the tenant itself did not: it stays cached).
    Functions(String),
    /// Changes may have been missed: drop everything derived from tenants.
    All,
}

/// At most this many tenants (found or not) are cached per client: every
/// well-formed unknown id becomes a "not found" entry, so without a bound a
/// stream of made-up ids would grow the cache without end.
pub const MAX_CACHED_TENANTS: usize = 10_000;

/// What every clone of one [`TenantClient`] shares.
#[derive(Debug)]
struct Shared {
    /// At most `capacity` entries (see [`Shared::store`]).
    cache: Mutex<HashMap<String, Entry>>,
    capacity: usize,
    /// One lock per tenant being loaded: concurrent misses of one tenant
    /// wait for a single control call (single flight).
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped by every invalidation: a load that started before one stores
    /// its (possibly outdated) answer as expired.
    generation: AtomicU64,
    /// Set once the change-feed task is running.
    following: AtomicBool,
    /// Re-announces the feed to the service's own caches.
    announce: tokio::sync::broadcast::Sender<Invalidation>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            cache: Mutex::default(),
            capacity: MAX_CACHED_TENANTS,
            loading: Mutex::default(),
            generation: AtomicU64::default(),
            following: AtomicBool::default(),
            announce: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

impl Shared {
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Caches `entry` for `id`, keeping at most `capacity` entries. When a
    /// new id finds the cache full, "not found" entries past
    /// `negative_ttl` go first (they serve nothing); if that frees too
    /// little, the oldest entries are evicted ("not found" ones before
    /// found ones, which can still be served stale) down to nine tenths of
    /// the capacity, so a full cache is swept once per tenth of its size
    /// rather than on every insert.
    fn store(&self, id: &str, entry: Entry, negative_ttl: Duration) {
        let mut cache = self.cache();
        if cache.len() >= self.capacity && !cache.contains_key(id) {
            cache.retain(|_, e| e.value.is_some() || e.fetched.elapsed() < negative_ttl);
            let keep = self.capacity - self.capacity.div_ceil(10);
            if cache.len() > keep {
                let mut by_age: Vec<(bool, Instant, String)> = cache
                    .iter()
                    .map(|(k, e)| (e.value.is_some(), e.fetched, k.clone()))
                    .collect();
                let evict = cache.len() - keep;
                by_age.select_nth_unstable(evict - 1);
                for (_, _, k) in &by_age[..evict] {
                    cache.remove(k);
                }
            }
        }
        cache.insert(id.to_owned(), entry);
    }

    fn drop_one(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache().remove(id);
    }

    /// After a gap in the feed: every entry is reloaded before its next
    /// use (and kept only for serving stale while control is unreachable).
    fn expire_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for entry in self.cache().values_mut() {
            entry.expired = true;
        }
    }
}

/// A cached client of control's internal tenant API.
///
/// - Entries live [`TenantClient::new`]'s TTL; misses of one tenant are
///   loaded once however many requests wait for it (single flight);
///   "not found" is cached for a shorter negative TTL.
/// - When control is unreachable, the last good entry is served (stale).
/// - From the first lookup on, a background task follows control's change
///   feed (`GET /internal/v1/changes`) and drops a tenant's entry the moment
///   control commits a change to it (key rotation, delete, settings), so a
///   revoked key is refused at once; after any gap in the feed every entry
///   is reloaded before its next use. While the feed is down (reconnecting with backoff),
///   the TTL bounds how long a revoked key is still accepted.
#[derive(Debug, Clone)]
pub struct TenantClient {
    http: reqwest::Client,
    control_url: String,
    jwt_secret: SecretString,
    ttl: Duration,
    negative_ttl: Duration,
    shared: Arc<Shared>,
    lookups: Family<OutcomeLabels, Counter>,
    feed: FeedMetrics,
}

/// The change feed's metrics.
#[derive(Debug, Clone, Default)]
struct FeedMetrics {
    up: Gauge,
    invalidations: Family<ReasonLabels, Counter>,
}

impl TenantClient {
    /// A client with a 30 s TTL and 5 s negative TTL, registering
    /// `madbase_tenant_lookups_total{outcome}`,
    /// `madbase_tenant_change_feed_up` and
    /// `madbase_tenant_invalidations_total{reason}` on `metrics`.
    pub fn new(control_url: &str, jwt_secret: impl Into<SecretString>, metrics: &Metrics) -> Self {
        let lookups = Family::default();
        metrics.register(
            "madbase_tenant_lookups",
            "Tenant lookups by outcome: hit, miss, stale, not_found, error",
            lookups.clone(),
        );
        let feed = FeedMetrics::default();
        metrics.register(
            "madbase_tenant_change_feed_up",
            "1 while the tenant change feed from control is connected",
            feed.up.clone(),
        );
        metrics.register(
            "madbase_tenant_invalidations",
            "Tenant cache entries dropped by the change feed: tenant (one changed) or resync (all)",
            feed.invalidations.clone(),
        );
        TenantClient {
            http: client::internal_client(),
            control_url: control_url.trim_end_matches('/').to_owned(),
            jwt_secret: jwt_secret.into(),
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            shared: Arc::default(),
            lookups,
            feed,
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
        self.shared.drop_one(id);
    }

    /// The cached entry when it is within its TTL (counted as a hit).
    fn fresh(&self, id: &str) -> Option<Option<Arc<TenantInfo>>> {
        let entry = self.shared.cache().get(id).cloned()?;
        let ttl = if entry.value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        if entry.expired || entry.fetched.elapsed() >= ttl {
            return None;
        }
        self.count(if entry.value.is_some() {
            "hit"
        } else {
            "not_found"
        });
        Some(entry.value)
    }

    /// The tenant, `None` when control says it does not exist.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<TenantInfo>>, LookupError> {
        self.follow_changes();
        if let Some(value) = self.fresh(id) {
            return Ok(value);
        }
        let lock = self
            .shared
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone();
        let _loading = lock.lock().await;
        // Whoever held the lock before may have loaded it.
        if let Some(value) = self.fresh(id) {
            return Ok(value);
        }
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let result = self.fetch(id).await;
        let outcome = match result {
            Ok(value) => {
                self.count(if value.is_some() { "miss" } else { "not_found" });
                // An invalidation while this load was in flight: the answer
                // may predate the change; keep it only for serving stale.
                let expired = self.shared.generation.load(Ordering::SeqCst) != generation;
                self.shared.store(
                    id,
                    Entry {
                        value: value.clone(),
                        fetched: Instant::now(),
                        expired,
                    },
                    self.negative_ttl,
                );
                Ok(value)
            }
            Err(e) => {
                let cached = self.shared.cache().get(id).and_then(|e| e.value.clone());
                match cached {
                    Some(v) => {
                        tracing::warn!(tenant = id, error = %e, "control unreachable: serving the cached tenant");
                        self.count("stale");
                        Ok(Some(v))
                    }
                    None => {
                        self.count("error");
                        Err(e)
                    }
                }
            }
        };
        let mut loading = self
            .shared
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if loading.get(id).is_some_and(|l| Arc::ptr_eq(l, &lock)) {
            loading.remove(id);
        }
        outcome
    }

    /// Every change the feed announces from now on, for caches a service
    /// keeps beside this one (e.g. the functions service's code cache).
    /// Also starts following the feed. A receiver that lags behind gets
    /// `RecvError::Lagged`: treat that as [`Invalidation::All`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Invalidation> {
        let rx = self.shared.announce.subscribe();
        self.follow_changes();
        rx
    }

    /// Starts following control's change feed (once per client and its
    /// clones; needs a Tokio runtime, else does nothing).
    pub fn follow_changes(&self) {
        if self.shared.following.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.shared.following.swap(true, Ordering::SeqCst) {
            return;
        }
        let follower = Follower {
            shared: Arc::downgrade(&self.shared),
            url: format!("{}/internal/v1/changes", self.control_url),
            jwt_secret: self.jwt_secret.clone(),
            metrics: self.feed.clone(),
            ever_live: AtomicBool::new(false),
        };
        let _guard = runtime.enter();
        let follower = Arc::new(follower);
        madbase_platform::tasks::supervise("tenant-change-feed", move || {
            Arc::clone(&follower).run()
        });
    }

    async fn fetch(&self, id: &str) -> Result<Option<Arc<TenantInfo>>, LookupError> {
        internal_get(
            &self.http,
            &self.control_url,
            &self.jwt_secret,
            &format!("tenants/{id}"),
        )
        .await
        .map(|t| t.map(Arc::new))
    }
}

/// `GET <control_url>/internal/v1/<path>` with an internal token: the JSON
/// answer, `None` on 404, an error otherwise (the one way services ask
/// control about a tenant or its functions).
pub async fn internal_get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    control_url: &str,
    jwt_secret: &SecretString,
    path: &str,
) -> Result<Option<T>, LookupError> {
    let token = jwt::platform_token(
        jwt_secret.expose_secret(),
        "internal",
        Duration::from_secs(300),
    );
    let url = format!("{control_url}/internal/v1/{path}");
    let resp = http
        .get(&url)
        .headers(client::propagation_headers())
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| LookupError(client::describe(&e)))?;
    match resp.status() {
        s if s.is_success() => resp
            .json::<T>()
            .await
            .map(Some)
            .map_err(|e| LookupError(format!("bad answer from control: {e}"))),
        reqwest::StatusCode::NOT_FOUND => Ok(None),
        s => Err(LookupError(format!("control answered {s}"))),
    }
}

/// Control sends a line at least this often (its `PING_EVERY` is 10 s); a
/// feed silent for longer is dead.
const FEED_SILENCE: Duration = Duration::from_secs(30);

/// The background task that follows control's change feed for one client
/// (and its clones); it ends when the last clone is dropped.
struct Follower {
    shared: std::sync::Weak<Shared>,
    url: String,
    jwt_secret: SecretString,
    metrics: FeedMetrics,
    /// Set by the first hello (a later one follows a gap).
    ever_live: AtomicBool,
}

/// One line of the feed.
#[derive(Deserialize)]
struct FeedLine {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
}

impl Follower {
    /// Ends (`Ok`) when the last clone of the client is gone.
    async fn run(self: Arc<Self>) -> Result<(), String> {
        // No overall timeout: the response is endless. Silence is detected
        // per chunk instead.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .user_agent(concat!("madbase/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        while self.shared.strong_count() > 0 {
            match self.follow_once(&http).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::debug!(error = %e, "tenant change feed unavailable; retrying"),
            }
            self.metrics.up.set(0);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Follows the feed until it ends or fails; `Ok` when it was live.
    async fn follow_once(&self, http: &reqwest::Client) -> Result<(), String> {
        let token = jwt::platform_token(
            self.jwt_secret.expose_secret(),
            "internal",
            Duration::from_secs(300),
        );
        let mut resp = http
            .get(&self.url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| client::describe(&e))?;
        if !resp.status().is_success() {
            return Err(format!("control answered {}", resp.status()));
        }
        let mut buf = Vec::new();
        let mut live = false;
        loop {
            let chunk = match tokio::time::timeout(FEED_SILENCE, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(client::describe(&e)),
                Err(_) => return Err("the feed went silent".to_owned()),
            };
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Some(shared) = self.shared.upgrade() else {
                    return Ok(());
                };
                let Ok(line) = serde_json::from_slice::<FeedLine>(&line) else {
                    continue;
                };
                match (line.kind.as_str(), line.id) {
                    // Live from here on. After a gap, whatever changed
                    // meanwhile is unknown: reload everything. (Entries
                    // loaded before the very first hello are as old as a
                    // lookup is: milliseconds; the TTL bounds that race.)
                    ("hello", _) => {
                        live = true;
                        self.metrics.up.set(1);
                        if self.ever_live.swap(true, Ordering::SeqCst) {
                            shared.expire_all();
                            let _ = shared.announce.send(Invalidation::All);
                            self.invalidated("resync");
                        }
                    }
                    ("resync", _) => {
                        shared.expire_all();
                        let _ = shared.announce.send(Invalidation::All);
                        self.invalidated("resync");
                    }
                    ("tenant", Some(id)) => {
                        shared.drop_one(&id);
                        let _ = shared.announce.send(Invalidation::Tenant(id));
                        self.invalidated("tenant");
                    }
                    ("functions", Some(id)) => {
                        let _ = shared.announce.send(Invalidation::Functions(id));
                        self.invalidated("functions");
                    }
                    _ => {}
                }
            }
        }
        if live {
            Ok(())
        } else {
            Err("the feed ended before it started".to_owned())
        }
    }

    fn invalidated(&self, reason: &'static str) {
        self.metrics
            .invalidations
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_but_reach_the_internal_json() {
        let info = TenantInfo {
            id: "acme".into(),
            jwt_secret: "tenant-jwt-secret-value".into(),
            key_version: 1,
            database: "t_acme".into(),
            db_host: "db".into(),
            db_port: 5432,
            authenticator_user: "acme_authenticator".into(),
            authenticator_password: "authenticator-password-value".into(),
            cors_origins: None,
        };
        let client = TenantClient::new(
            "http://control",
            "platform-jwt-secret-value",
            &Metrics::new(),
        );
        for debug in [
            format!("{info:?}"),
            format!("{client:?}"),
            format!("{:?}", Arc::new(info.clone())),
        ] {
            for secret in [
                "tenant-jwt-secret-value",
                "authenticator-password-value",
                "platform-jwt-secret-value",
            ] {
                assert!(!debug.contains(secret), "{debug}");
            }
        }
        // Control's internal answer carries them, and services read them back.
        let json = serde_json::to_string(&info).expect("json");
        assert!(
            json.contains("tenant-jwt-secret-value")
                && json.contains("authenticator-password-value")
        );
        let back: TenantInfo = serde_json::from_str(&json).expect("read back");
        assert_eq!(back.jwt_secret.expose_secret(), "tenant-jwt-secret-value");
        assert_eq!(
            back.authenticator_password.expose_secret(),
            "authenticator-password-value"
        );
    }

    fn client_with_capacity(control_url: &str, capacity: usize) -> TenantClient {
        let mut client = TenantClient::new(control_url, "platform-secret", &Metrics::new());
        client.shared = Arc::new(Shared {
            capacity,
            ..Shared::default()
        });
        client
    }

    fn entry(found: bool, fetched: Instant) -> Entry {
        let value = found.then(|| {
            Arc::new(TenantInfo {
                id: "kept".into(),
                jwt_secret: "s".into(),
                key_version: 1,
                database: "t_kept".into(),
                db_host: "db".into(),
                db_port: 5432,
                authenticator_user: "kept_authenticator".into(),
                authenticator_password: "p".into(),
                cors_origins: None,
            })
        });
        Entry {
            value,
            fetched,
            expired: false,
        }
    }

    #[test]
    fn the_cache_stays_bounded_and_evicts_unknown_ids_first() {
        let shared = Shared {
            capacity: 100,
            ..Shared::default()
        };
        let ttl = Duration::from_secs(5);
        let old = Instant::now();
        shared.store("kept", entry(true, old), ttl);
        for i in 0..1_000 {
            shared.store(&format!("unknown-{i}"), entry(false, Instant::now()), ttl);
            assert!(
                shared.cache().len() <= 100,
                "{} entries",
                shared.cache().len()
            );
        }
        // The found tenant, though the oldest, outlived every "not found".
        assert!(
            shared
                .cache()
                .get("kept")
                .is_some_and(|e| e.value.is_some())
        );
        // The most recent unknown id is still cached.
        assert!(shared.cache().contains_key("unknown-999"));
        // Re-storing a cached id in a full cache evicts nothing.
        let len = shared.cache().len();
        shared.store("unknown-999", entry(false, Instant::now()), ttl);
        assert_eq!(shared.cache().len(), len);
        // With only found tenants, the oldest go.
        let full = Shared {
            capacity: 10,
            ..Shared::default()
        };
        for i in 0..10 {
            full.store(&format!("t-{i}"), entry(true, Instant::now()), ttl);
        }
        full.store("newest", entry(true, Instant::now()), ttl);
        let cache = full.cache();
        assert!(cache.len() <= 10 && cache.contains_key("newest") && !cache.contains_key("t-0"));
    }

    /// Control answering 404 to everything, counting the requests.
    async fn control_that_knows_no_tenant() -> (String, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            counted.fetch_add(1, Ordering::SeqCst);
                            let answer = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                            if conn.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, requests)
    }

    #[tokio::test]
    async fn many_unknown_tenants_do_not_grow_the_cache_past_its_bound() {
        let (url, requests) = control_that_knows_no_tenant().await;
        let client = client_with_capacity(&url, 50);
        for i in 0..500 {
            let id = format!("unknown-{i}");
            assert!(client.get(&id).await.expect("control answers").is_none());
            assert!(client.shared.cache().len() <= 50);
        }
        // Negative caching still works for what is kept: no control call.
        let before = requests.load(Ordering::SeqCst);
        assert!(client.get("unknown-499").await.expect("cached").is_none());
        assert_eq!(requests.load(Ordering::SeqCst), before);
    }

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
