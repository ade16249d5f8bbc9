//! Mechanisms shared by every madbase service: configuration, telemetry,
//! request IDs, metrics, health and readiness, the two listeners, graceful
//! shutdown, the JSON error body and outgoing-request propagation.
//!
//! Business types (tenants, keys, tables) never live here.
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod env;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod pgbin;
pub mod request_id;
pub mod secrets;
pub mod server;
pub mod service;
pub mod tasks;
pub mod telemetry;
pub mod text;

pub use config::{CommonConfig, ConfigError, Env};
pub use error::ApiError;
pub use health::ReadyCheck;
pub use metrics::Metrics;
pub use server::{Listeners, ServiceApp};
pub use service::Service;
pub use tokio_util::sync::CancellationToken;

/// The crate version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision of this build (`MADBASE_REVISION` at compile time,
/// set by the flake), or `unknown`.
pub const REVISION: &str = match option_env!("MADBASE_REVISION") {
    Some(r) => r,
    None => "unknown",
};
