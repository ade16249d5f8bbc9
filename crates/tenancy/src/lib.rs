//! madbase's tenancy contract, the one place that knows who is calling:
//! tenant ids, API keys and user JWTs (HS256 with the tenant's secret),
//! the platform's own tokens (`admin`, `internal`), and the cached client
//! of control's internal tenant API with its change feed.
//!
//! No other crate verifies a tenant's keys or asks control about tenants
//! (`tests/boundary.rs` checks the sources for it).

pub mod jwt;
pub mod tenants;

pub use tenants::{
    Invalidation, LookupError, TenantClient, TenantInfo, internal_get, is_valid_id,
    normalize_cors_origins,
};
