//! The tenant change feed: `GET /internal/v1/changes`.
//!
//! A trigger on `tenants` (migration `…_tenant_change_notify.sql`) NOTIFYs
//! `madbase_tenant_changes` with the tenant's id at every commit that
//! touches a row; triggers on `functions`, `function_versions`,
//! `function_secrets` and `function_limits` NOTIFY `madbase_function_changes`
//! the same way (migration `…_function_change_channel.sql`). One task per
//! control process LISTENs on both channels and relays each id to every
//! connected service as one NDJSON line:
//!
//! - `{"type":"hello"}`: first line; the subscriber is live from here on;
//! - `{"type":"tenant","id":"…"}`: drop that tenant from your cache;
//! - `{"type":"functions","id":"…"}`: that tenant's functions, their
//!   versions, secrets or limits changed (only the functions service's code
//!   and env depend on them; the tenant itself is unchanged);
//! - `{"type":"resync"}`: changes may have been missed (the listener's
//!   database connection was re-established, or this subscriber fell
//!   behind): drop everything;
//! - `{"type":"ping"}`: every [`PING_EVERY`], so a subscriber can tell a
//!   quiet feed from a dead one.
//!
//! The services' side is `madbase_tenancy::TenantClient`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use http::header;
use madbase_platform::CancellationToken;
use madbase_platform::server::Draining;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use crate::AppState;

/// The channel the `tenants` trigger notifies.
pub const CHANNEL: &str = "madbase_tenant_changes";

/// The channel the triggers on the function tables notify.
pub const FUNCTIONS_CHANNEL: &str = "madbase_function_changes";

/// A subscriber sees a line at least this often.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// How many changes a slow subscriber may lag before it is told to resync.
const BACKLOG: usize = 4096;

/// One change relayed to subscribers.
#[derive(Debug, Clone)]
enum Change {
    Tenant(String),
    Functions(String),
    Resync,
}

/// The relay: cloned into the router state.
#[derive(Debug, Clone)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
    subscribers: Gauge,
}

impl Changes {
    /// Starts the listener task on `db` and registers its metrics.
    pub fn start(db: PgPool, metrics: &madbase_platform::Metrics) -> Changes {
        let (tx, _) = broadcast::channel(BACKLOG);
        let subscribers = Gauge::default();
        metrics.register(
            "madbase_tenant_change_subscribers",
            "Services connected to the tenant change feed",
            subscribers.clone(),
        );
        let notifications = Counter::default();
        metrics.register(
            "madbase_tenant_change_notifications",
            "Tenant changes relayed from the control database",
            notifications.clone(),
        );
        let relay = Changes { tx, subscribers };
        let tx = relay.tx.clone();
        madbase_platform::tasks::supervise("tenant-change-listener", move || {
            listen(db.clone(), tx.clone(), notifications.clone())
        });
        relay
    }
}

/// LISTENs for ever: reconnects with backoff, and tells subscribers to
/// resync whenever notifications may have been lost. (Supervised: a panic
/// restarts it.)
async fn listen(
    db: PgPool,
    tx: broadcast::Sender<Change>,
    notifications: Counter,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut listener = match PgListener::connect_with(&db).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "tenant change feed: cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if let Err(e) = listener.listen_all([CHANNEL, FUNCTIONS_CHANNEL]).await {
            tracing::warn!(error = %e, "tenant change feed: LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(200);
        // Anything committed before LISTEN took effect was not seen.
        let _ = tx.send(Change::Resync);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    notifications.inc();
                    let id = n.payload().to_owned();
                    let _ = tx.send(if n.channel() == FUNCTIONS_CHANNEL {
                        Change::Functions(id)
                    } else {
                        Change::Tenant(id)
                    });
                }
                // The connection was lost: what is notified until LISTEN
                // is back is gone, so subscribers resync once it is back
                // (above), not now: while the database is down a reload
                // would only wait for it, and their cached entries are
                // still good (issue 24: a Postgres restart under load).
                Ok(None) => {
                    tracing::warn!("tenant change feed: connection lost; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tenant change feed: listener failed; restarting");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}

fn line(change: &Change) -> Bytes {
    let value = match change {
        Change::Tenant(id) => serde_json::json!({"type": "tenant", "id": id}),
        Change::Functions(id) => serde_json::json!({"type": "functions", "id": id}),
        Change::Resync => serde_json::json!({"type": "resync"}),
    };
    let mut bytes = value.to_string().into_bytes();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Decrements the subscriber gauge when the response stream is dropped.
struct Subscribed(Gauge);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /internal/v1/changes`: the NDJSON change feed (internal token).
pub async fn feed(
    State(state): State<AppState>,
    draining: Option<Extension<Draining>>,
) -> Response {
    let draining = draining.map_or_else(CancellationToken::new, |Extension(d)| d.0);
    let relay = &state.changes;
    let rx = relay.tx.subscribe();
    relay.subscribers.inc();
    let guard = Subscribed(relay.subscribers.clone());
    let mut ticker = tokio::time::interval(PING_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The interval's first tick is immediate: it carries the hello.
    let hello = Bytes::from_static(b"{\"type\":\"hello\"}\n");
    let ping = Bytes::from_static(b"{\"type\":\"ping\"}\n");
    let lines = stream::unfold(
        (rx, ticker, guard, true),
        move |(mut rx, mut ticker, guard, first)| {
            let (hello, ping) = (hello.clone(), ping.clone());
            let draining = draining.clone();
            async move {
                if first {
                    ticker.tick().await;
                    return Some((Ok::<_, Infallible>(hello), (rx, ticker, guard, false)));
                }
                let bytes = tokio::select! {
                    got = rx.recv() => match got {
                        Ok(change) => line(&change),
                        Err(broadcast::error::RecvError::Lagged(_)) => line(&Change::Resync),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = ticker.tick() => ping,
                    // The feed ends with the service: subscribers reconnect
                    // (to another replica, or to this one when it is back).
                    () = draining.cancelled() => return None,
                };
                Some((Ok(bytes), (rx, ticker, guard, false)))
            }
        },
    );
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}
