//! madbase's tenancy contract, the one place that knows who is calling:
//! tenant ids, roles, API keys and user JWTs (HS256 with the tenant's
//! secret), the platform's own tokens (`admin`, `internal`), the cached
//! client of control's internal tenant API with its change feed, and
//! [`Tenancy`], which every service asks "which tenant, which role, which
//! claims" ([`Caller`]), with one table of refusals ([`Failure::answer`]).
//!
//! No other crate verifies a tenant's keys or asks control about tenants
//! (`tests/boundary.rs` checks the sources for it).
#![warn(missing_docs)]

pub mod caller;
pub mod id;
pub mod jwt;
pub mod role;
pub mod tenants;

pub use caller::{ApiKey, Caller, Failure, KeySource, Refusal, Surface, Tenancy, Tenant};
pub use id::{TenantId, is_valid_id};
pub use jwt::VerifiedClaims;
pub use role::Role;
pub use tenants::{
    Invalidation, LookupError, TenantClient, TenantInfo, internal_get, normalize_cors_origins,
};
