//! What every request handler shares: the tenants, the pools and the
//! limits, built by [`crate::app`].

use madbase_tenancy::Tenancy;

use crate::pool::Pools;

/// Shared state of the API handlers, behind one `Arc` (axum clones the
/// state for every request).
pub type AppState = std::sync::Arc<Shared>;

/// What [`AppState`] points at.
#[derive(Debug)]
pub struct Shared {
    /// Who is calling: the tenant client and the verified-key cache.
    pub tenancy: Tenancy,
    /// Each tenant's connection pool and schema cache.
    pub pools: Pools,
    /// The `statement_timeout` every transaction sets, in milliseconds, as text.
    pub statement_timeout_ms: std::sync::Arc<str>,
    /// Rows a read returns at most (None: unlimited).
    pub max_rows: Option<i64>,
    /// The exposed schemas; the first is the default.
    pub schemas: std::sync::Arc<Vec<String>>,
    /// Aggregate functions in `select` are allowed.
    pub aggregates: bool,
    /// `Accept: application/vnd.pgrst.plan…` is answered (`MADBASE_DB_PLAN_ENABLED`).
    pub plans: bool,
}
