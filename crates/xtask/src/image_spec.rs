//! `nix/images.toml`, the one description of the service images, as read by
//! both the Nix lint (`nix.rs`, which checks it against what `nix/images.nix`
//! reads) and the non-Nix image builder (`images.rs`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::util::root;

/// Where the description lives, relative to the workspace root.
pub const PATH: &str = "nix/images.toml";

/// The variables derived per service (by the flake and by `cargo xtask
/// images`); `[env]` must not set them.
pub const DERIVED_ENV: [&str; 3] = ["MADBASE_SERVICE", "MADBASE_LISTEN", "MADBASE_ADMIN_LISTEN"];

/// `nix/images.toml`: the keys `nix/images.nix` reads. Unknown top-level keys
/// are an error, so a key the flake would silently ignore cannot be added.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub registry: String,
    pub source: String,
    pub vendor: String,
    pub licenses: String,
    pub binary: String,
    pub uid: u32,
    pub gid: u32,
    pub user_name: String,
    pub env: BTreeMap<String, String>,
    pub healthcheck: Healthcheck,
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Deserialize)]
pub struct Healthcheck {
    pub args: Vec<String>,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
    pub start_period_seconds: u64,
    pub retries: u32,
}

#[derive(Debug, Deserialize)]
pub struct Service {
    pub title: String,
    pub description: String,
    pub api_port: u16,
    pub admin_port: u16,
}

impl ImageSpec {
    /// Parses the text of `nix/images.toml`.
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).context(PATH)
    }

    /// Reads and parses the workspace's `nix/images.toml`.
    pub fn load() -> Result<Self> {
        let text = std::fs::read_to_string(root().join(PATH))
            .with_context(|| format!("reading {PATH}"))?;
        Self::parse(&text)
    }

    /// The environment of `service`'s image, exactly as `nix/images.nix`
    /// sets it: `[env]` plus the derived `MADBASE_SERVICE`, `MADBASE_LISTEN`
    /// and `MADBASE_ADMIN_LISTEN`, sorted by name (Nix attribute order).
    pub fn service_env(&self, name: &str, service: &Service) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.insert("MADBASE_SERVICE".to_owned(), name.to_owned());
        env.insert(
            "MADBASE_LISTEN".to_owned(),
            format!("0.0.0.0:{}", service.api_port),
        );
        env.insert(
            "MADBASE_ADMIN_LISTEN".to_owned(),
            format!("0.0.0.0:{}", service.admin_port),
        );
        env
    }

    /// `<registry>/<service>`, the image name the flake gives `service`.
    pub fn image_name(&self, service: &str) -> String {
        format!("{}/{service}", self.registry)
    }
}
