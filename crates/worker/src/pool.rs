//! Per-tenant connection pools (as the tenant's authenticator role) and
//! schema caches: created lazily, bounded per tenant and in total (the
//! least recently used pool is closed to make room), closed when idle.
//! Each pool keeps one `LISTEN pgrst` connection; a notification marks the
//! schema cache stale and the next request reloads it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use madbase_platform::Metrics;
use madbase_platform::secrets::ExposeSecret as _;
use madbase_tenancy::TenantInfo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::task::JoinHandle;

use crate::conns::{Conns, DbError, Target};
use crate::schema::Schema;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connections one tenant's pool opens at most.
    pub max_per_tenant: u32,
    /// Connections all pools open at most together.
    pub max_total: u32,
    /// How long a request waits for a connection.
    pub acquire_timeout: Duration,
    /// A pool unused this long is closed.
    pub idle_pool: Duration,
    /// An idle connection unused this long is closed.
    pub idle_connection: Duration,
    /// The exposed schemas the schema cache loads.
    pub schemas: Vec<String>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TenantLabel {
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    tenant: String,
    state: &'static str,
}

/// A change of where a pool connects (e.g. a new password) replaces it.
fn matches(target: &Target, t: &TenantInfo) -> bool {
    target.host == t.db_host
        && target.port == t.db_port
        && target.database == t.database
        && target.user == t.authenticator_user
        && target.password.expose_secret() == t.authenticator_password.expose_secret()
}

fn target_of(t: &TenantInfo) -> Target {
    Target {
        host: t.db_host.clone(),
        port: t.db_port,
        database: t.database.clone(),
        user: t.authenticator_user.clone(),
        password: t.authenticator_password.clone(),
    }
}

/// One tenant's pool and schema cache.
#[derive(Debug)]
pub struct TenantDb {
    /// The tenant id.
    pub id: String,
    /// The connections requests use.
    pub conns: Arc<Conns>,
    /// The `LISTEN` connection is open.
    listening: Arc<AtomicBool>,
    /// Its last connection ended, or failed without the server answering
    /// (or answering that it is starting or shutting down): the server is
    /// unreachable, for `/ready`.
    unreachable: Arc<AtomicBool>,
    target: Target,
    last_used: AtomicU64,
    stale: Arc<AtomicBool>,
    schema: tokio::sync::Mutex<Option<Arc<Schema>>>,
    last_miss_reload: Mutex<Option<Instant>>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl TenantDb {
    /// The schema cache, (re)loaded when missing or marked stale.
    pub async fn schema(&self, pools: &Pools) -> Result<Arc<Schema>, DbError> {
        let mut guard = self.schema.lock().await;
        if let Some(s) = guard.as_ref()
            && !self.stale.load(Ordering::Acquire)
        {
            return Ok(s.clone());
        }
        self.stale.store(false, Ordering::Release);
        let mut lease = self.conns.acquire().await?;
        let loaded = Arc::new(Schema::load(lease.conn()?, &pools.config.schemas).await?);
        lease.release();
        pools
            .reloads
            .get_or_create(&TenantLabel {
                tenant: self.id.clone(),
            })
            .inc();
        tracing::debug!(tenant = %self.id, "schema cache loaded");
        *guard = Some(loaded.clone());
        Ok(loaded)
    }

    /// Marks the cache stale after a miss (a table created since), at most
    /// once a second so unknown names cannot force reloads.
    pub fn stale_after_miss(&self) -> bool {
        let mut last = self
            .last_miss_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(Instant::now());
        self.stale.store(true, Ordering::Release);
        true
    }

    fn stop(&self) {
        if let Some(h) = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
    }
}

/// All tenants' pools.
#[derive(Debug, Clone)]
pub struct Pools {
    inner: Arc<Mutex<HashMap<String, Arc<TenantDb>>>>,
    /// The settings every pool uses.
    pub config: Arc<PoolConfig>,
    epoch: Instant,
    reloads: Family<TenantLabel, Counter>,
    /// `madbase_worker_query_duration_seconds`: the time of a request's database transaction.
    pub query_duration: Histogram,
}

impl Pools {
    /// No pools yet; registers the pool metrics on `metrics`.
    pub fn new(config: PoolConfig, metrics: &Metrics) -> Self {
        let reloads = Family::<TenantLabel, Counter>::default();
        metrics.register(
            "madbase_worker_schema_cache_reloads",
            "Schema cache loads per tenant",
            reloads.clone(),
        );
        let query_duration = madbase_platform::metrics::latency_histogram();
        metrics.register(
            "madbase_worker_query_duration_seconds",
            "Time of a request's database transaction",
            query_duration.clone(),
        );
        let pools = Pools {
            inner: Arc::default(),
            config: Arc::new(config),
            epoch: Instant::now(),
            reloads,
            query_duration,
        };
        metrics.register_collector(PoolCollector {
            pools: pools.inner.clone(),
            max: pools.config.max_per_tenant,
        });
        pools
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The tenant's pool, created (and its LISTEN started) on first use.
    pub fn get(&self, tenant: &TenantInfo) -> Arc<TenantDb> {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(db) = map.get(&tenant.id)
            && matches(&db.target, tenant)
        {
            db.last_used.store(self.now(), Ordering::Relaxed);
            return db.clone();
        }
        if let Some(old) = map.remove(&tenant.id) {
            close(old);
        }
        let max_pools = (self.config.max_total / self.config.max_per_tenant.max(1)).max(1) as usize;
        while map.len() >= max_pools {
            let Some(lru) = map
                .values()
                .min_by_key(|d| d.last_used.load(Ordering::Relaxed))
                .map(|d| d.id.clone())
            else {
                break;
            };
            if let Some(old) = map.remove(&lru) {
                tracing::info!(tenant = %lru, "closing the least recently used pool to make room");
                close(old);
            }
        }
        let target = target_of(tenant);
        // The LISTEN connection counts against the tenant's limit.
        let conns = Conns::new(
            target.clone(),
            self.config.max_per_tenant.saturating_sub(1).max(1),
            self.config.acquire_timeout,
        );
        let stale = Arc::new(AtomicBool::new(false));
        let listening = Arc::new(AtomicBool::new(false));
        let unreachable = Arc::new(AtomicBool::new(false));
        let db = Arc::new(TenantDb {
            id: tenant.id.clone(),
            conns,
            listening: listening.clone(),
            unreachable: unreachable.clone(),
            target: target.clone(),
            last_used: AtomicU64::new(self.now()),
            stale: stale.clone(),
            schema: tokio::sync::Mutex::new(None),
            last_miss_reload: Mutex::new(None),
            listener: Mutex::new(None),
        });
        let handle = {
            let (id, target, stale, listening) = (tenant.id.clone(), target, stale, listening);
            madbase_platform::tasks::supervise("schema-listener", move || {
                let listen = listen(
                    id.clone(),
                    target.clone(),
                    stale.clone(),
                    listening.clone(),
                    unreachable.clone(),
                );
                async move {
                    listen.await;
                    Ok(())
                }
            })
        };
        *db.listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        map.insert(tenant.id.clone(), db.clone());
        db
    }

    /// Closes the pools unused for longer than the idle time.
    pub fn close_idle(&self) {
        for db in self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            db.conns.expire(self.config.idle_connection);
        }
        let limit = self.config.idle_pool.as_secs();
        let now = self.now();
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle: Vec<String> = map
            .values()
            .filter(|d| now.saturating_sub(d.last_used.load(Ordering::Relaxed)) >= limit)
            .map(|d| d.id.clone())
            .collect();
        for id in idle {
            if let Some(db) = map.remove(&id) {
                tracing::info!(tenant = %id, "closing an idle pool");
                close(db);
            }
        }
    }

    /// Closes one tenant's pool (e.g. after its credentials changed).
    pub fn remove(&self, id: &str) {
        let db = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        if let Some(db) = db {
            close(db);
        }
    }

    /// Number of open pools.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// True when no pool is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The database servers (`host:port`) the open pools use of which
    /// every pool lost its `LISTEN` connection and cannot open it again:
    /// what `/ready` reports. A server no pool uses yet is not known.
    pub fn unreachable_servers(&self) -> Vec<String> {
        let mut servers: HashMap<String, bool> = HashMap::new();
        for db in self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            let down = db.unreachable.load(Ordering::Relaxed);
            *servers
                .entry(format!("{}:{}", db.target.host, db.target.port))
                .or_insert(true) &= down;
        }
        let mut down: Vec<String> = servers
            .into_iter()
            .filter_map(|(server, down)| down.then_some(server))
            .collect();
        down.sort();
        down
    }
}

fn close(db: Arc<TenantDb>) {
    db.stop();
    // In-flight requests keep their connections until they finish.
    db.conns.close();
}

/// `LISTEN pgrst`: `reload schema` (or an empty payload) marks the cache
/// stale; a lost connection too, since notifications may have been missed.
/// Aborted with its pool.
async fn listen(
    tenant: String,
    target: Target,
    stale: Arc<AtomicBool>,
    listening: Arc<AtomicBool>,
    unreachable: Arc<AtomicBool>,
) {
    loop {
        let ended = listen_once(&target, &stale, &listening, &unreachable).await;
        listening.store(false, Ordering::Relaxed);
        stale.store(true, Ordering::Release);
        // The server answered with an error of the request (a dropped
        // database, a changed password): it is up.
        let down = match &ended {
            Ok(()) => true,
            Err(e) => e.as_db_error().is_none_or(|d| {
                let c = d.code().code();
                c.starts_with("08") || c.starts_with("57P")
            }),
        };
        unreachable.store(down, Ordering::Relaxed);
        match ended {
            Ok(()) => tracing::debug!(tenant = %tenant, "LISTEN connection closed; reconnecting"),
            Err(e) => {
                tracing::debug!(tenant = %tenant, error = %e, "LISTEN connection failed; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One `LISTEN` connection until it ends.
async fn listen_once(
    target: &Target,
    stale: &AtomicBool,
    listening: &AtomicBool,
    unreachable: &AtomicBool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = target.config().connect(tokio_postgres::NoTls).await?;
    listening.store(true, Ordering::Relaxed);
    unreachable.store(false, Ordering::Relaxed);
    let subscribe = client.batch_execute(crate::sql::LISTEN);
    tokio::pin!(subscribe);
    let mut subscribed = false;
    loop {
        tokio::select! {
            r = &mut subscribe, if !subscribed => {
                r?;
                subscribed = true;
            }
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let payload = n.payload().trim();
                    if payload.is_empty() || payload == "reload schema" {
                        tracing::info!(channel = n.channel(), "schema reload requested");
                        stale.store(true, Ordering::Release);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
}

/// `madbase_worker_pools`, `madbase_worker_pool_connections{tenant,state}`
/// and `madbase_worker_pool_max_connections{tenant}`, read at scrape time.
#[derive(Debug)]
struct PoolCollector {
    pools: Arc<Mutex<HashMap<String, Arc<TenantDb>>>>,
    max: u32,
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot: Vec<(String, u32, usize)> = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|d| {
                let (open, idle) = d.conns.sizes();
                (
                    d.id.clone(),
                    open + u32::from(d.listening.load(Ordering::Relaxed)),
                    idle as usize,
                )
            })
            .collect();
        let pools = ConstGauge::new(snapshot.len() as i64);
        pools.encode(encoder.encode_descriptor(
            "madbase_worker_pools",
            "Open tenant connection pools",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "madbase_worker_pool_connections",
                "Connections of each tenant pool by state",
                None,
                MetricType::Gauge,
            )?;
            for (tenant, size, idle) in &snapshot {
                let idle = (*idle as i64).min(i64::from(*size));
                for (state, v) in [("idle", idle), ("in_use", i64::from(*size) - idle)] {
                    let labels = StateLabels {
                        tenant: tenant.clone(),
                        state,
                    };
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "madbase_worker_pool_max_connections",
            "Connection limit of each tenant pool",
            None,
            MetricType::Gauge,
        )?;
        for (tenant, _, _) in &snapshot {
            let labels = TenantLabel {
                tenant: tenant.clone(),
            };
            ConstGauge::new(i64::from(self.max)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
